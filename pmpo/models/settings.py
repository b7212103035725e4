"""The `model:` block: which model scores (and, by default, rewrites) prompts, in this process or behind a server."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pmpo.models.bundled import BUNDLED_NAME
from pmpo.settings import MAX_RETRIES, TIMEOUT_S, ApiKeyEnv, Device, DType, MaxRetries, Strict, TimeoutS

Placement = Literal["auto", "system", "user", "plain"]
Backend = Literal["local", "openai"]
DEFAULT_MODEL = BUNDLED_NAME


class ModelSettings(Strict):
    """How to load and prompt a model: its weights in this process, or an OpenAI-compatible completions server."""

    spec: str = Field(DEFAULT_MODEL, description="built-in name, Hugging Face hub id, or local directory")
    # auto: bf16 where the hardware runs it fast (CUDA; CPUs where a timed bf16 matmul beats fp32, i.e.
    # native AMX/AVX-512 BF16), else fp32: emulated bf16 is far slower than fp32.
    # auto: bf16 where the hardware runs it fast (GPUs of compute capability >= 8.0; CPUs where a timed bf16 matmul
    # beats fp32, i.e. native AMX/AVX-512 BF16), fp16 on 7.x GPUs, else fp32: emulated bf16 is far slower.
    dtype: DType = Field(
        "auto", description="weights' dtype; auto: bf16 where the hardware runs it fast, fp16 on older GPUs, else fp32"
    )
    device: Device = Field("auto", description="auto: CUDA when torch sees one, else the CPU")
    # auto: the chat template's system message when the tokenizer has one, else a plain text prefix.
    placement: Placement = Field(
        "auto", description="where the prompt goes: system message, user turn, or plain prefix"
    )
    revision: str | None = Field(None, description="hub revision; backend openai: a label pinning the served weights")
    # local keeps the embedded path; openai scores through a server's /v1/completions (echo + logprobs): `spec`
    # (or `tokenizer`) then only names the tokenizer and chat template that render texts (pmpo.remote).
    backend: Backend = Field("local", description="local: load the weights; openai: score via a server")
    base_url: str | None = Field(None, description="openai: the server's API root, e.g. http://localhost:8000/v1")
    model: str | None = Field(None, description="openai: the served model's name (default: the one it serves)")
    api_key_env: ApiKeyEnv = None
    tokenizer: str | None = Field(
        None, description="openai: HF id or directory of the served model's tokenizer (default: spec)"
    )
    # 4 in flight keeps a batching server (vLLM, SGLang) busy and a one-request-at-a-time server (llama.cpp) queued
    # briefly; one at a time would leave a batching server idle between replies.
    max_concurrency: int = Field(4, ge=1, description="openai: requests in flight at once")
    timeout_s: TimeoutS = TIMEOUT_S
    max_retries: MaxRetries = MAX_RETRIES
    # 16 texts fill a server's batch without one slow request holding many; the self-check drops it to 1 for a
    # server that takes one prompt per request (llama-cpp-python).
    prompts_per_request: int = Field(16, ge=1, description="openai: texts sent in one request")
    # The self-check costs one request per server and process; off only for a server checked by other means.
    check: bool = Field(True, description="openai: refuse a server whose prompt log-probs fail the self-check")
    # Off: it adds a BOS token the model may not see in-process. On for llama.cpp's server, whose echoed
    # log-probs are aligned only after a leading BOS (pmpo.remote.check).
    prepend_bos: bool = Field(False, description="openai: begin every text with BOS (llama.cpp needs it)")

    @model_validator(mode="after")
    def _remote_needs_url(self) -> "ModelSettings":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend openai needs base_url (e.g. http://localhost:8000/v1)")
        return self
