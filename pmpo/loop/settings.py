"""The PMPO loop's settings: how many iterations (and when to stop early), how prompts are split for masking, and
the selection, rewrite and racing blocks. `pmpo.optimize`, `PMPO` and the flow's parameter
(flows.config.OptimizeConfig extends it) share them, so the library and `pmpo optimize` run the same default
search."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.settings import RacingSettings
from pmpo.settings import Strict


class SelectionSettings(Strict):
    """When a candidate replaces the incumbent (and when a unit's removal is proposed at all)."""

    # The paper keeps any strictly lower mean loss. Over 40-50 training examples that is a coin toss when two
    # prompts differ by less than their paired standard error: deletions and rewrites won on noise and lost on
    # held-out data (issue 19). So a gain must exceed z paired standard errors of the per-example difference
    # (candidate - incumbent), as racing compares candidates. z = 0 is the paper's rule exactly (strict <).
    # 1.0 by the quality benchmark (docs/benchmarks.md, the after run of 2026-12-06): over 8 tasks it lowered
    # held-out loss as much as strict < did, with +1.5 points more pooled acc and no task losing past 2 points.
    # 2.0, for the dozen candidates an iteration compares ("A gate for a dozen candidates"): the same pooled gains
    # within 0.2 points, and one task's held-out loss gain refused.
    gate_z: float = Field(
        1.0, ge=0, description="a candidate must lower the loss by more than this many paired standard errors"
    )
    # A prompt that makes the model indifferent between options scores about ln 2 per pair, less than a model
    # confidently wrong half the time: a loss-only win can shift the label prior and lose answers (issue 19). The
    # options' ranking comes from the same forward passes, so no pass is added. Any drop in hits is refused, not
    # a drop beyond noise: one hit is 2 points of 50, and a loss gain that costs answers is the failure we guard.
    # Both rankings: acc (summed NLL) and acc_norm (per byte, the held-out headline for multiple choice).
    keep_accuracy: bool = Field(
        True,
        description="multiple choice: refuse a candidate with lower training accuracy (acc or acc_norm) than the "
        "incumbent",
    )
    # The accuracy guard misses the same win where the hits do not move: the benchmark's navigate pick kept
    # training acc and acc_norm, lowered the loss 0.835 -> 0.707 only by shrinking the margins towards ln 2, and
    # lost 9 points of held-out acc_norm. So a gain must also clear the gate with each prompt's preference pairs at
    # its best softening (pmpo.scoring.temperature): a less sure model gains nothing there, a better ranking does.
    # Where the model ranks the answers well both prompts keep their losses as scored and this changes nothing.
    # Measured (docs/benchmarks.md, "The tempered gate"): navigate -9 -> 0 points of acc_norm, pooled acc +0.8 -> +1.5
    # and acc_norm +0.3 -> +1.3 points over six BIG-bench tasks, at 0.7% more tokens.
    tempered_gate: bool = Field(
        True,
        description="preference examples: a gain must also clear the gate with each prompt's margins at its best "
        "softening",
    )


class DemonstrationSettings(Strict):
    """Demonstrations chosen by loss: candidates that add k training examples to the incumbent (beyond the paper)."""

    # For small models, examples in the prompt are often worth more than any rewording (issue 19). Off until the
    # quality benchmark (benchmarks/bench_quality.py, the pmpo_demos arm) shows a held-out gain worth its cost: each
    # set is one more candidate scored on the training set, with a longer prompt.
    k: int = Field(0, ge=0, description="training examples added as demonstrations per candidate (0: off)")
    # Each set is one candidate: one loss row over the training set. 2 try the clearest examples and one seeded
    # draw at the cost of two rewrites' scoring.
    sets: int = Field(2, ge=1, description="demonstration sets (candidates) tried per iteration")


class BudgetSettings(Strict):
    """When a run stops before its last iteration because it has spent enough (`pmpo.loop.budget`)."""

    # Tokens, not passes or requests: they are what a model's time and a server's bill grow with. Counted as this
    # process computes them: a step the task cache serves is free, so a rerun goes on from where the last one
    # stopped (its key holds no budget).
    max_tokens: int | None = Field(
        None, ge=1, description="stop at the next step once this many tokens were scored, prefilled or generated"
    )
    max_seconds: float | None = Field(
        None, gt=0, description="stop at the next step once the loop has run this many seconds"
    )


class OptimizerConfig(Strict):
    """Settings of the PMPO loop."""

    # The paper runs T = 20. 2 show the method at work (masking, rewrites, selection, twice) and keep the README demo
    # under three minutes on an idle 2-core CPU (2 min 45 s, `pmpo optimize` from an empty store). The quality
    # benchmark (docs/benchmarks.md, "Iterations, label balance and the acc_norm guard") ran 6: 1.44x the tokens,
    # a little lower held-out loss and 1.2 points less pooled accuracy. A longer search fits the training sample.
    iterations: int = Field(2, ge=0, description="PMPO iterations (the paper: 20)")
    # A search that has stopped improving stops: a rewrite round costs most of an iteration, and after a few
    # rounds with nothing accepted the next rarely differs (the same incumbent, the same hard examples).
    patience: int | None = Field(
        2, ge=0, description="stop after this many iterations in a row accept no candidate (0 or none: never)"
    )
    max_units: int = Field(5, ge=1, description="most removable units a prompt is split into (the paper: 5)")
    # auto: the rewriter marks <mask> units (the paper's way) when it has at least rewrite.small_model_params
    # parameters, as the FULL template does; below that the deterministic splitter, since small models do not
    # follow the marking request. "model" falls back to the splitter whenever the marks are unusable.
    units: Literal["auto", "splitter", "model"] = Field("auto", description="how the prompt is split for masking")
    # False is the paper's ablation without masking: no mask forward passes, no dL table, no removals.
    masking: bool = Field(True, description="measure each unit's dL and show it to the rewriter")
    # Dropping a unit whose dL is below zero past the selection gate is a candidate too: it was already scored by
    # the masking analysis.
    segment_removal: bool = Field(True, description="also try the prompt without each unit that hurts")
    # A training sample's label shares are not the task's: a prompt that only tilts the answers towards its
    # majority label lowers the plain mean and loses on held-out data (pmpo.scoring.balance). Weighing every label
    # the same in the training loss (and in the accuracy guard) takes that gain away at no cost; held-out
    # evaluation keeps the plain mean. False is the paper's plain mean. Measured (docs/benchmarks.md): pooled acc
    # -0.5 -> +0.8 points, logical_deduction -12 -> +1 over six BIG-bench tasks.
    balance_labels: bool = Field(True, description="weigh every label equally in the training loss")
    # The system message is where a chat prompt's instruction usually is; the other messages stay as they are.
    chat_message: int | None = Field(
        None, ge=0, description="chat prompts: index of the message to optimise (default: system)"
    )
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    rewrite: RewriteSettings = Field(default_factory=RewriteSettings)
    demonstrations: DemonstrationSettings = Field(default_factory=DemonstrationSettings)
    # Off by default: stop scoring clearly worse candidates after a first slice of the training set.
    racing: RacingSettings = Field(default_factory=RacingSettings)
    seed: int = Field(0, description="seed of the rewrites' sampling and the racing slices (the flows': and the split)")
    # None: no limit. `pmpo optimize --dry-run` prints what a run costs at most, to choose one by.
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
