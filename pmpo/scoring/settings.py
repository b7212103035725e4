"""The `scoring:` block (how a prompt's loss is computed and batched) and the `racing:` block (when a candidate's
scoring stops early)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pmpo.settings import Strict

Objective = Literal["preference", "ce"]


class ScorerSettings(Strict):
    """How a prompt's loss is computed; optimisation and evaluation must agree on it. The batching fields change
    no loss beyond float noise, only the speed."""

    # Measured with SmolLM2: on 2 CPU cores 1-4k tokens run the matmuls near their peak and more only adds
    # activation memory; on an H200 the small model is launch-bound and 8k batches ran 1.3-3.6x faster than 2k in
    # the plain-cache path.
    token_budget: int | None = Field(
        None, ge=1, description="tokens (padded) per forward pass (default: 2048 on CPU, 8192 on CUDA)"
    )
    # Every example of one candidate shares the prompt: its KV cache is computed once and reused.
    reuse_prefix: bool = Field(True, description="compute the prompt's KV cache once per candidate and reuse it")
    # shared: examples attend to the prefix's one copy (pmpo.scoring.prefix_attention; no per-batch copy, short
    # examples packed into rows); expand: transformers' own cache with the prefix copied into every row (SDPA
    # kernels). auto: shared on CPU, where it ran 10-25% faster and packing removes 10-45% padding; expand on
    # CUDA, where SDPA's fused kernels beat the hand-written attention's extra launches.
    prefix_attention: Literal["auto", "shared", "expand"] = Field(
        "auto", description="how examples attend to the reused prefix (auto: shared on CPU, expand on CUDA)"
    )
    # Packed rows (the shared path) feed an example's input once for all its completions, each completion seeing
    # the input and itself only (pmpo.scoring.batching). Multiple choice scored each option after its own copy of
    # the question: on BIG-bench's four multiple-choice samples that was most of the tokens. Measured in
    # benchmarks/bench_options.py (docs/benchmarks.md, "Options share their question"). False: a copy each.
    share_inputs: bool = Field(True, description="packed rows: feed an input once for all its completions")
    # preference: the paper's recipe for multiple choice, -log sigmoid(beta * (s_correct - s_distractor)),
    # which rewards prompts that separate the answer from the distractors, not ones that merely make it likely.
    mc_objective: Objective = Field(
        "preference", description="multiple-choice loss: preference over distractors, or CE on the answer"
    )
    beta: float = Field(1.0, gt=0, description="the preference loss's beta (the paper: 1)")


class RacingSettings(Strict):
    """Racing: score every candidate on a first slice of the training set, finish only the competitive ones."""

    # Off by default because a dropped candidate's recorded loss covers only the examples it was scored on.
    # Measured (benchmarks/bench_loss.py, bench_racing.py; SmolLM2, 13 real rewrite candidates x 50 examples,
    # 7 sets from 6 BIG-bench tasks, 200 example orders each): these defaults never changed the pick and
    # scored 35-77% of the pairs (2.0-2.6x faster on object_counting); margin 1 changed it in up to 15% of
    # the orders. With the defaults' gated selection (docs/benchmarks.md, "Racing with the defaults") it scored 0.92x
    # the tokens over 8 tasks, more on multiple choice (close losses drop few; each round is a batch of its own), and
    # changed one pick for the worse.
    enabled: bool = Field(False, description="race the candidates (a dropped one's loss covers only its slice)")
    # Fewer makes the standard error too rough to trust; two is the least that has a spread at all.
    first_slice: int = Field(10, ge=2, description="examples every candidate is scored on first")
    growth: float = Field(2.0, gt=1, description="each round scores the survivors on this many times more examples")
    # 3 keeps the chance of dropping a truly better candidate small even over 12 candidates and several rounds.
    margin: float = Field(
        3.0, ge=0, description="drop when worse than the leader by this many standard errors of the paired difference"
    )
