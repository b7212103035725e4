"""The `rewrite:` block (how rewrite requests are built and sampled) and the `rewriter:` block (which model writes
them: the scored model, another in-process model, or an OpenAI-compatible chat endpoint)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator

from pmpo.settings import MAX_RETRIES, TIMEOUT_S, ApiKeyEnv, Device, DType, MaxRetries, Strict, TimeoutS

Template = Literal["auto", "full", "short"]
Backend = Literal["same", "local", "openai"]


class RewriteSettings(Strict):
    """The rewrite step: k hard examples, n sampled variants each (the paper: 3 x 4), and how they are asked for.

    A config file may name the first two `k` and `n`, as it always has.
    """

    # The paper: one request for each of the 3 highest-loss examples, 4 sampled variants per request (8 measured
    # with the bundled rewriter: the same held-out gains at 1.9x the tokens, docs/benchmarks.md). `k` and `n`
    # come first among the names: a JSON schema (the Prefect run form, which the server validates) shows the first.
    hard_k: int = Field(
        3,
        ge=1,
        validation_alias=AliasChoices("k", "hard_k"),
        serialization_alias="k",
        description="hard examples per iteration (one rewrite request each)",
    )
    n_variants: int = Field(
        4,
        ge=1,
        validation_alias=AliasChoices("n", "n_variants"),
        serialization_alias="n",
        description="variants sampled per request",
    )
    # auto: SHORT below `small_model_params`, else FULL.
    template: Template = Field(
        "auto", description="the request: full (the paper's), short (a fill-in form for small models), auto: by size"
    )
    # Below ~1B parameters models lose track of a long multi-part request and echo it back; the short fill-in
    # form keeps them on task (and the splitter, not the model, marks units).
    small_model_params: int = Field(1_000_000_000, ge=1, description="a rewriter below this many parameters is small")
    # A good instruction is a few sentences, more is usually rambling. It grows to 2 x the current prompt's tokens
    # + 32 for long prompts (a rewrite restates the prompt), so a reply is not cut off mid-instruction; the
    # model's context caps it.
    max_new_tokens: int = Field(160, ge=8, description="tokens a rewrite may run to (at least; more for long prompts)")
    # Room for the one-or-two-sentence diagnosis the FULL template asks for first.
    diagnosis_tokens: int = Field(64, ge=0, description="extra tokens of the full template's diagnosis")
    temperature: float = Field(0.8, gt=0, description="sampling temperature: diverse variants, still mostly on topic")
    # Cuts the long tail of junk tokens a small model samples at this temperature.
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling's probability mass")
    # Longer variants are almost always a model that never closed the tag and ran on, and long prompts cost
    # scoring time on every example.
    max_prompt_chars: int = Field(1500, ge=1, description="variants longer than this are dropped")
    # Measured on SmolLM2-135M-Instruct: as a chat turn the SHORT form mostly answered the example or echoed the
    # request; as a completion nearly every reply was a one-line instruction closed with </prompt>.
    short_as_completion: bool = Field(True, description="send the short form as text to continue, not as a chat turn")


class RewriterSettings(Strict):
    """Which model writes the rewrites and marks prompt units: the scored model (the paper's default), another
    in-process model, or an OpenAI-compatible chat endpoint. Selection is by the scored model's loss either way.

    Never the API key itself: only the variable that holds it.
    """

    # same: the scored model rewrites for itself, as in the paper; a stronger rewriter helps a small model most.
    backend: Backend = Field(
        "same", description="same: the scored model; local: another model in this process; openai: a chat endpoint"
    )
    spec: str | None = Field(None, description="local: built-in name, hub id or directory of the rewriter model")
    dtype: DType = Field("auto", description="local: the rewriter's dtype")
    device: Device = Field("auto", description="local: the rewriter's device")
    base_url: str | None = Field(None, description="openai: the endpoint, e.g. http://localhost:8000/v1")
    model: str | None = Field(None, description="openai: the served model's name")
    api_key_env: ApiKeyEnv = None
    timeout_s: TimeoutS = TIMEOUT_S
    max_retries: MaxRetries = MAX_RETRIES
    # Unknown counts as large: a served model is usually the bigger one.
    n_params: int | None = Field(
        None,
        ge=1,
        description="openai, or same with a served model: its size, for template/units auto (unknown: large)",
    )
    # A server can swap the weights behind one name; a name alone would reuse rewrites the old weights wrote.
    revision: str | None = Field(None, description="pins the rewriter's weights in the cache key")

    @model_validator(mode="after")
    def _backend_fields(self) -> "RewriterSettings":
        if self.backend == "local" and not self.spec:
            raise ValueError("backend local needs spec (the rewriter model)")
        if self.backend == "openai" and not (self.base_url and self.model):
            raise ValueError("backend openai needs base_url and model")
        return self
