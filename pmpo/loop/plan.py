"""A run's cost plan before it runs: forward passes and tokens of each step, per iteration and in total, counted
with the scored model's own tokenizer on the run's own prompt and training examples, and the seconds they take
at the rates a short calibration measured (`pmpo.loop.calibration`); the expected count of candidates, with its
range, is `pmpo.loop.keep_rate`'s.

The cost model, one line per step (T iterations, N training examples, k hard examples, n variants, U units):

- initial: 1 candidate x N examples scored (the prompt's tokens once, each example's input + reference after it);
- mask: U ablations x N examples scored (in process, a kept incumbent's masking is the scorer's memo: free);
- rewrite: k requests, each n rows x the request's tokens prefilled and up to n x the reply budget generated;
- loss: k x n candidates x N examples scored (segment removals were scored by the mask step: free);
- evaluate: 2 prompts x the held-out examples scored, plus a greedy answer each when eval.generate.

It is the most the loop can do: every iteration runs (`patience` may stop sooner), every reply is kept as a
distinct candidate (replies that fail to parse or repeat one are never scored), every iteration changes the
incumbent (so its masking is new work), racing drops nothing. Rewrite variants are taken to be as long as the
prompt they rewrite, and the hard examples to be those with the longest references (the loss is a sum over
reference tokens, so they usually are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal, Sequence

from pmpo.data.examples import Dataset, Example, example_input
from pmpo.loop.keep_rate import Count, KeepRate
from pmpo.loop.result import SegmentEffect
from pmpo.loop.settings import OptimizerConfig
from pmpo.loop.steps import unit_mode
from pmpo.masking.units import MARK_REQUEST, segment
from pmpo.models.loading import TextSide
from pmpo.models.usage import Step
from pmpo.rewriting.proposal import rewrite_budget
from pmpo.rewriting.requests import build_request, choose_template
from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.batching import padded_sizes
from pmpo.scoring.loss import example_rows, shared_prefix
from pmpo.scoring.settings import Objective, ScorerSettings
from pmpo.text.encoding import encode_many, encode_text
from pmpo.text.rendering import chat_request, render, render_many
from pmpo.text.template import editable, has_variable, with_editable

Kind = Literal["initial", "mask", "rewrite", "candidates", "evaluate"]
# Greedy answers are decoded in batches of this many (pmpo.models.generation.greedy's default).
GREEDY_BATCH = 16


@dataclass(frozen=True)
class Work:
    """Model work, in the units of `pmpo.models.usage.UsageSnapshot`, plus the calls it takes."""

    forward_passes: int = 0
    tokens_scored: int = 0
    tokens_prefilled: int = 0
    tokens_generated: int = 0  # the budget: every row runs to its last allowed token
    generate_calls: int = 0  # rewrite requests and greedy batches
    decode_steps: int = 0  # greedy decoding and unit marking: one pass per new token of a batch
    requests: int = 0  # HTTP requests to a served model or a chat rewriter (0 in process)

    def __add__(self, other: Work) -> Work:
        return Work(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def times(self, n: int) -> Work:
        """This work done `n` times."""
        return Work(*(getattr(self, f.name) * n for f in fields(self)))

    @property
    def tokens(self) -> int:
        """Every token through the model: scored, prefilled and generated."""
        return self.tokens_scored + self.tokens_prefilled + self.tokens_generated

    def scaled(self, share: float) -> Work:
        """A share of this work (rounded): the part of a maximum a run is expected to do."""
        return Work(*(round(getattr(self, f.name) * share) for f in fields(self)))


@dataclass(frozen=True)
class Layout:
    """How the scorer lays texts out: what decides its forward passes and padded tokens."""

    token_budget: int
    pack: bool  # short sequences packed into rows (the shared-prefix attention)
    reuse_prefix: bool
    prompts_per_request: int | None = None  # a served model: texts per request; None: in process
    share_inputs: bool = True  # packed rows feed an input once for all its completions

    @classmethod
    def of(cls, settings: ScorerSettings, device: str, prompts_per_request: int | None = None) -> Layout:
        """The layout `pmpo.scoring.loss.Scorer` (or a remote scorer) uses with these settings on `device`."""
        cuda = device.startswith("cuda")
        budget = settings.token_budget or (8192 if cuda else 2048)
        mode = settings.prefix_attention
        pack = (mode == "shared") or (mode == "auto" and not cuda)
        return cls(budget, pack, settings.reuse_prefix, prompts_per_request, settings.share_inputs)


@dataclass(frozen=True)
class Rates:
    """Seconds per unit of work, measured by a short calibration on this machine or server."""

    scored_token_s: float  # one token scored (prefix, input, reference; padding included)
    rewrite_request_s: float  # one rewrite request (n variants), as the calibration's took
    decode_step_s: float  # one greedy decoding step of a batch
    # Share of the reply budget the calibration's replies used: a small model's one-line rewrites stop early.
    reply_fraction: float = 1.0
    # The calibration's replies kept as candidates (the rest failed to parse or repeated one); None: all kept.
    keep: KeepRate | None = None

    @property
    def kept_fraction(self) -> float:
        """The expected share of replies kept (`pmpo.loop.keep_rate`): 1 without evidence, as the maximum."""
        return 1.0 if self.keep is None else self.keep.mean


@dataclass(frozen=True)
class StepPlan:
    """One step of the run: what one run of it costs and how many times it runs (at most)."""

    step: Step  # the meter's step it is charged to (pmpo.models.usage)
    kind: Kind
    label: str
    runs: int
    each: Work
    model: str  # its cost model in one line

    @property
    def work(self) -> Work:
        """All its runs."""
        return self.each.times(self.runs)


@dataclass(frozen=True)
class CostPlan:
    """What a run will cost at most, step by step; seconds where calibration measured the rates."""

    steps: tuple[StepPlan, ...]
    iterations: int
    candidates: int  # new candidates per iteration, at most
    train_examples: int
    heldout_examples: int
    rates: Rates | None = None
    served: bool = False

    @property
    def work(self) -> Work:
        """The whole run."""
        return sum((s.work for s in self.steps), Work())

    def step_work(self, step: Step) -> Work:
        """All runs of the steps charged to `step`."""
        return sum((s.work for s in self.steps if s.step == step), Work())

    def seconds(self, plan: StepPlan) -> float | None:
        """Estimated wall seconds of all runs of one step, at the expected share (None without calibration)."""
        if self.rates is None:
            return None
        return plan.runs * step_seconds(plan.step, plan.each, self.rates) * self._share(plan)[0]

    def expected(self, plan: StepPlan) -> Work:
        """All runs of one step at the calibration's shares: candidates that survive the reply filter, replies as
        long as the calibration's (the maximum without calibration)."""
        share, generated = self._share(plan)
        work = plan.work.scaled(share)
        if generated != 1.0:
            g = plan.work.scaled(generated)
            work = replace(work, tokens_generated=g.tokens_generated, forward_passes=g.forward_passes)
        return work

    @property
    def expected_work(self) -> Work:
        """The whole run at the calibration's shares."""
        return sum((self.expected(s) for s in self.steps), Work())

    def _share(self, plan: StepPlan) -> tuple[float, float]:
        """(share of the step's work, share of its generated tokens) the calibration expects."""
        if self.rates is None:
            return 1.0, 1.0
        if plan.kind == "candidates":
            return self.rates.kept_fraction, 1.0
        if plan.kind == "rewrite" and not self.served:
            return 1.0, self.rates.reply_fraction
        return 1.0, 1.0

    @property
    def expected_candidates(self) -> Count:
        """The run's kept candidates in all its iterations: expected, with a range (all of them: the maximum)."""
        slots = self.iterations * self.candidates
        keep = self.rates.keep if self.rates is not None else None
        return keep.candidates(slots) if keep is not None else Count(slots, slots, slots)

    @property
    def expected_tokens(self) -> Count:
        """All tokens at the expected shares, with the range the count of kept candidates spans."""
        count, total = self.expected_candidates, self.expected_work.tokens
        slots = self.iterations * self.candidates
        if not slots:
            return Count(total, total, total)
        scored = sum(s.work.tokens for s in self.steps if s.kind == "candidates")
        return Count(
            total, total + scored * (count.low - count.mean) / slots, total + scored * (count.high - count.mean) / slots
        )

    @property
    def total_seconds(self) -> float | None:
        """Estimated wall seconds of the whole run's model work, at the expected shares."""
        if self.rates is None:
            return None
        return sum(self.seconds(s) or 0.0 for s in self.steps)

    @property
    def expected_generated(self) -> int:
        """Generated tokens at the calibration's reply length (the budget without calibration)."""
        return self.expected_work.tokens_generated


def step_seconds(step: Step, work: Work, rates: Rates) -> float:
    """Seconds of one run of a step: rewrite requests as long as the calibration's took; any other step's tokens
    scored (and prefilled for greedy answers) at the scoring rate and its decoding steps at the measured rate."""
    if step == "rewrite":
        return work.generate_calls * rates.rewrite_request_s
    tokens = work.tokens_scored + work.tokens_prefilled
    return tokens * rates.scored_token_s + work.decode_steps * rates.decode_step_s


def scoring_work(
    text: TextSide, prompt: str, examples: Sequence[Example], layout: Layout, mc_objective: Objective
) -> Work:
    """The work of scoring `prompt` on `examples` once, as the scorer lays it out (its memo empty)."""
    pairs = sorted({(inp, c) for inp, comps, _ in (example_rows(e, mc_objective) for e in examples) for c in comps})
    if not pairs:
        return Work()
    encoded = encode_many(text.tokenizer, text.placement, prompt, pairs)
    if layout.prompts_per_request is not None:  # the server reads each whole text; no prefix is reused
        return Work(
            forward_passes=len(pairs),
            tokens_scored=sum(len(e.ids) for e in encoded),
            requests=math.ceil(len(pairs) / layout.prompts_per_request),
        )
    prompt_ids = []
    if layout.reuse_prefix:
        prompt_ids = encode_text(text.tokenizer, render(text.tokenizer, text.placement, prompt, "").prefix)
    prefix, shares = shared_prefix(prompt_ids, encoded)
    passes, tokens = 0, 0
    for reuse in (True, False):
        group = [e for e, ok in zip(encoded, shares) if ok == reuse]
        if not group:
            continue
        cut = len(prefix) if reuse else 0
        if reuse:  # the prompt's KV cache: one pass over its tokens
            passes, tokens = passes + 1, tokens + len(prefix)
        seqs, starts = [list(e.ids[cut:]) for e in group], [e.target_start - cut for e in group]
        sizes = padded_sizes(seqs, starts, layout.token_budget, pack=layout.pack and reuse, share=layout.share_inputs)
        passes, tokens = passes + len(sizes), tokens + sum(sizes)
    return Work(forward_passes=passes, tokens_scored=tokens)


def likely_hard(text: TextSide, examples: Sequence[Example], k: int, mc_objective: Objective) -> list[int]:
    """The k examples with the most reference tokens: a summed loss is usually highest on them."""
    lengths = [
        len(text.tokenizer.encode(example_rows(e, mc_objective)[1][0], add_special_tokens=False)) for e in examples
    ]
    return sorted(range(len(examples)), key=lambda i: (-lengths[i], i))[:k]


def rewrite_requests_work(
    text: TextSide,
    prompt: str,
    config: OptimizerConfig,
    train: Dataset,
    hard: Sequence[int],
    units: Sequence[str],
    template: str,
    *,
    local: bool,
) -> Work:
    """One round of rewrite requests, one per hard example, for `prompt`'s editable part."""
    part = editable(prompt, config.chat_message)
    return sum(
        (
            rewrite_request_work(
                text,
                part,
                train.examples[i],
                units,
                config.rewrite,
                template,
                description=train.description,
                local=local,
            )
            for i in hard
        ),
        Work(),
    )


def rewrite_request_work(
    text: TextSide,
    prompt: str,
    example: Example,
    units: Sequence[str],
    settings: RewriteSettings,
    template: str,
    *,
    description: str,
    local: bool,
) -> Work:
    """One rewrite request: n rows of the request prefilled, n x the reply budget generated at most."""
    effects = tuple(SegmentEffect(j, u, 0.0) for j, u in enumerate(units)) if len(units) > 1 else ()
    message = build_request(template, task_description=description, example=example, prompt=prompt, effects=effects)
    opened = template == "short"
    if opened and settings.short_as_completion and local:
        request = message
    else:
        request = chat_request(text.tokenizer, message) + ("<prompt>" if opened and local else "")
    request_tokens = len(encode_text(text.tokenizer, request))
    budget = rewrite_budget(text, settings, template, prompt=prompt, request=request)  # type: ignore[arg-type]
    n = settings.n_variants
    return Work(
        forward_passes=budget if local else 0,  # a chat endpoint's passes are the server's, counted as requests
        tokens_prefilled=n * request_tokens,
        tokens_generated=n * budget,
        generate_calls=1,
        requests=0 if local else 1,
    )


def cost_plan(
    text: TextSide,
    prompt: str,
    train: Dataset,
    config: OptimizerConfig,
    *,
    layout: Layout,
    scoring: ScorerSettings = ScorerSettings(),
    rewriter_params: int | None = None,
    local_rewriter: bool = True,
    heldout: Dataset | None = None,
    generate: bool = True,
    answer_tokens: int = 16,
    rates: Rates | None = None,
) -> CostPlan:
    """The most a run of `config` from `prompt` on `train` (then both prompts on `heldout`) can cost.

    `rewriter_params`: the rewriter's size, which picks the template and units as the loop does (None: unknown,
    taken as large); `local_rewriter`: False for a chat endpoint (its requests count, its tokens are estimated
    in the scored model's tokenizer); `answer_tokens`: the greedy answers' budget on held-out data.
    """
    mc = scoring.mc_objective
    T, rw = config.iterations, config.rewrite
    score = scoring_work(text, prompt, train.examples, layout, mc)
    steps = [StepPlan("loss", "initial", "initial prompt", 1, score, "1 prompt x N examples scored")]
    units: list[str] = []
    if config.masking:
        part = editable(prompt, config.chat_message)
        spans = segment(part, config.max_units)
        units = list(spans.texts)
        removable = [j for j, u in enumerate(units) if not has_variable(u)] if len(units) >= 2 else []
        mask = sum(
            (
                scoring_work(
                    text, with_editable(prompt, spans.without(j), config.chat_message), train.examples, layout, mc
                )
                for j in removable
            ),
            Work(),
        )
        line = f"{len(removable)} ablations x N examples scored"
        if unit_mode(config.units, rewriter_params, rw.small_model_params) == "model":
            mark = _marking_work(text, part, config.max_units, local_rewriter)
            mask, line = mask + mark, line + " + 1 unit-marking request"
        steps.append(StepPlan("mask", "mask", "masking", T, mask, line))
    template = choose_template(rw.template, rewriter_params, rw.small_model_params)
    hard = likely_hard(text, train.examples, rw.hard_k, mc)
    rewrite = rewrite_requests_work(text, prompt, config, train, hard, units, template, local=local_rewriter)
    steps.append(
        StepPlan(
            "rewrite",
            "rewrite",
            f"rewrite ({template})",
            T,
            rewrite,
            f"{len(hard)} requests x {rw.n_variants} variants",
        )
    )
    candidates = len(hard) * rw.n_variants
    steps.append(
        StepPlan(
            "loss",
            "candidates",
            "candidates",
            T,
            score.times(candidates),
            f"{candidates} candidates x N examples scored",
        )
    )
    n_heldout = len(heldout) if heldout is not None else 0
    if heldout is not None and n_heldout:
        evaluation = scoring_work(text, prompt, heldout.examples, layout, mc)
        line = "2 prompts x held-out examples scored"
        if generate:
            evaluation = evaluation + _greedy_work(text, prompt, heldout, answer_tokens, layout)
            line += " + a greedy answer each"
        steps.append(StepPlan("evaluate", "evaluate", "held-out", 2, evaluation, line))
    return CostPlan(
        steps=tuple(steps),
        iterations=T,
        candidates=candidates,
        train_examples=len(train),
        heldout_examples=n_heldout,
        rates=rates,
        served=layout.prompts_per_request is not None,
    )


def _marking_work(text: TextSide, prompt: str, max_units: int, local: bool) -> Work:
    """The rewriter's one unit-marking request (pmpo.masking.units.model_units): its budget and request."""
    budget = 2 * len(text.tokenizer.encode(prompt, add_special_tokens=False)) + 8 * max_units + 16
    request = chat_request(text.tokenizer, MARK_REQUEST.format(max_units=max_units, prompt=prompt))
    return Work(
        forward_passes=budget,
        tokens_prefilled=len(encode_text(text.tokenizer, request)),
        tokens_generated=budget,
        generate_calls=1,
        decode_steps=budget,
        requests=0 if local else 1,
    )


def _greedy_work(text: TextSide, prompt: str, data: Dataset, budget: int, layout: Layout) -> Work:
    """Greedy answers to every example: batches of similar length, left-padded, up to `budget` new tokens."""
    contexts = render_many(text.tokenizer, text.placement, prompt, [example_input(e) for e in data.examples])
    lengths = sorted(len(encode_text(text.tokenizer, c)) for c in contexts)
    if layout.prompts_per_request is not None:  # a server decodes each answer in its own request
        return Work(
            forward_passes=len(lengths) * budget,
            tokens_prefilled=sum(lengths),
            tokens_generated=len(lengths) * budget,
            generate_calls=len(lengths),
            requests=len(lengths),
        )
    batches = [lengths[i : i + GREEDY_BATCH] for i in range(0, len(lengths), GREEDY_BATCH)]
    return Work(
        forward_passes=len(batches) * budget,
        tokens_prefilled=sum(len(b) * max(b) for b in batches),
        tokens_generated=len(lengths) * budget,
        generate_calls=len(batches),
        decode_steps=len(batches) * budget,
    )
