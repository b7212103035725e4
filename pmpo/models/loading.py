"""Resolve a model spec to a loaded model, its tokenizer and a stable identity."""

from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pmpo.errors import ModelNotAvailableError
from pmpo.models.bundled import BUNDLED_NAME, bundled_checkpoint

# The settings live in pmpo.models.settings; their names are re-exported here, where callers look for them.
from pmpo.models.settings import DEFAULT_MODEL, Backend, Device, DType, ModelSettings, Placement  # noqa: F401
from pmpo.models.usage import Usage


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready to score and generate, with the identity that goes into cache keys."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    identity: str  # name + file hash or revision: stable across processes and machines
    placement: Literal["system", "user", "plain"]
    device: torch.device
    dtype: torch.dtype
    context_length: int
    n_params: int
    # The work this model did in this process (the scorer and generation count it); not part of its identity.
    usage: Usage = field(default_factory=Usage, compare=False, repr=False)


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True where this CPU multiplies bf16 matrices faster than fp32 (timed once per process, ~0.1 s)."""
    # Measured, not read from /proc/cpuinfo flags: without AMX / AVX-512 BF16 kernels torch emulates bf16,
    # 40-150x slower than fp32 (an AVX2 EPYC here: 0.2-0.9 vs 30+ GFLOP/s), and flags alone miss other
    # CPUs with native bf16 (e.g. ARM) or builds that lack the kernels.
    # Timings alternate between the dtypes and the best of 7 counts: on a shared 2-core box at load 11-15 a best
    # of 3 per dtype once called bf16 faster (preempted fp32 runs), which would have made scoring ~60x slower.
    a32 = torch.randn(256, 256)
    a16 = a32.to(torch.bfloat16)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    with torch.inference_mode():
        for _ in range(7):
            for a in (a32, a16):
                start = time.perf_counter()
                a @ a
                best[a.dtype] = min(best[a.dtype], time.perf_counter() - start)
    return best[torch.bfloat16] < 0.8 * best[torch.float32]


def cuda_auto_dtype(device: torch.device) -> torch.dtype:
    """The fast half-precision dtype of a GPU: bf16 from compute capability 8.0, fp16 on 7.x, else fp32."""
    # Read the capability, not torch.cuda.is_bf16_supported(): by default that also says True where bf16 is
    # only emulated (it creates a bf16 tensor on a pre-Ampere card), which runs far below the fp16 tensor cores.
    # ROCm builds report their own numbers here; every AMD GPU torch runs on handles bf16.
    if torch.version.hip:
        return torch.bfloat16
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:  # Ampere and later: bf16 tensor cores
        return torch.bfloat16
    if major == 7:  # Volta, Turing: fp16 tensor cores, no bf16 ones (the scorer takes logits in fp32)
        return torch.float16
    return torch.float32  # Pascal and older: half precision is slow or unsupported on most of these cards


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    """Turn a dtype setting into a torch dtype for `device`."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return cuda_auto_dtype(device)
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def resolve_device(device: Device) -> torch.device:
    """Turn a device setting into a torch device; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelNotAvailableError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(device)


def resolve_checkpoint(spec: str, revision: str | None = None) -> tuple[Path, str]:
    """Return (local directory, identity) for a built-in name, a local directory or a hub id."""
    if spec == BUNDLED_NAME:
        return bundled_checkpoint()
    path = Path(spec).expanduser()
    if path.is_dir():
        return path, f"{path.name}@sha256:{_dir_hash(path)}"
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"model path {spec!r} is not a directory with a model in it")
    return _hub_snapshot(spec, revision)


@functools.lru_cache(maxsize=16)
def _dir_hash(path: Path) -> str:
    """Hash of the config and weight files of a local checkpoint (content, not paths)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.suffix in {".json", ".safetensors", ".bin", ".model", ".gguf"})
    if not any(p.name == "config.json" for p in files):
        raise ModelNotAvailableError(f"model directory {str(path)!r} has no config.json")
    for p in files:
        digest.update(p.name.encode())
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _hub_snapshot(repo_id: str, revision: str | None) -> tuple[Path, str]:
    """Find a hub model in the local HF cache, downloading it only when the hub is reachable."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]
    try:
        local = snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=patterns)
    except Exception:
        if offline:
            raise ModelNotAvailableError(_not_available(repo_id, "HF_HUB_OFFLINE is set")) from None
        try:
            local = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
        except Exception as exc:
            raise ModelNotAvailableError(_not_available(repo_id, type(exc).__name__)) from None
    path = Path(local)
    return path, f"{repo_id}@{path.name}"  # snapshot folders are named by commit hash


def _not_available(repo_id: str, why: str) -> str:
    return (
        f"model {repo_id!r} is not in the local Hugging Face cache and could not be downloaded ({why}). "
        f"On a machine with internet run `huggingface-cli download {repo_id}` (and copy ~/.cache/huggingface), "
        f"or pass a local directory that holds config.json and the weights, "
        f"or use the bundled model {BUNDLED_NAME!r}."
    )


@dataclass(frozen=True)
class TextSide:
    """A model's tokenizer, where its prompt goes and how long its context is: enough to check that texts fit
    without loading the weights (a fully cached rerun never loads them)."""

    tokenizer: Any
    placement: Literal["system", "user", "plain"]
    context_length: int


def load_text_side(settings: ModelSettings | str = ModelSettings()) -> TextSide:
    """The tokenizer, placement and context length of the model named by `settings`, without its weights."""
    from transformers import AutoConfig, AutoTokenizer

    if isinstance(settings, str):
        settings = ModelSettings(spec=settings)
    path, _ = resolve_checkpoint(settings.spec, settings.revision)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    placement = settings.placement
    if placement == "auto":
        placement = "system" if getattr(tokenizer, "chat_template", None) else "plain"
    config = AutoConfig.from_pretrained(path)
    return TextSide(tokenizer, placement, int(getattr(config, "max_position_embeddings", 2048)))


def load_model(settings: ModelSettings | str = ModelSettings()) -> LoadedModel:
    """Load the model named by `settings` (or a spec string) for scoring and generation."""
    from transformers import AutoModelForCausalLM

    if isinstance(settings, str):
        settings = ModelSettings(spec=settings)
    path, identity = resolve_checkpoint(settings.spec, settings.revision)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    text = load_text_side(settings)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=text.tokenizer,
        identity=identity,
        placement=text.placement,
        device=device,
        dtype=dtype,
        context_length=text.context_length,
        n_params=sum(p.numel() for p in model.parameters()),
    )
