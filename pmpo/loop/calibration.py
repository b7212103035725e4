"""A short calibration for the cost plan: score a few batches and send a couple of rewrite requests with the
run's real scorer and rewriter, here or on the server, and turn the time they took and the replies they kept into
rates (`pmpo.loop.plan.Rates`).

Rates, not a FLOP model: they hold this machine's (or server's) speed, its load and the model's dtype at once.
"""

from __future__ import annotations

import time
from typing import Callable

from pmpo.data.examples import Dataset
from pmpo.loop.keep_rate import KeepRate
from pmpo.loop.plan import Rates, likely_hard, rewrite_requests_work
from pmpo.loop.settings import OptimizerConfig
from pmpo.loop.steps import rewrite_prompts
from pmpo.models.loading import TextSide
from pmpo.models.usage import UsageSnapshot
from pmpo.rewriting.backends import Rewriter, local_model
from pmpo.rewriting.requests import choose_template
from pmpo.scoring.loss import BaseScorer

# Examples scored for the rate: enough for a few full batches of the BIG-bench samples, a few seconds on 2 cores.
CALIBRATION_EXAMPLES = 24
# Rewrite requests sent (at most hard_k: the first iteration's). One request's n replies share an example and a
# seed stream, so they tell little about the rewriter's keep rate; a second request differs in both.
CALIBRATION_REQUESTS = 2


def calibrate(
    scorer: BaseScorer,
    rewriter: Rewriter,
    usage: Callable[[], UsageSnapshot],
    text: TextSide,
    prompt: str,
    train: Dataset,
    config: OptimizerConfig,
    *,
    examples: int = CALIBRATION_EXAMPLES,
    requests: int = CALIBRATION_REQUESTS,
) -> Rates:
    """Rates from scoring `prompt` on some of `train` and rewrite requests on its likely hardest examples (as many
    as `requests`, at most the run's hard_k), the same requests as the run's first iteration when its hard examples
    are these.

    `usage`: the counters of the scorer's and the rewriter's model work (as `Steps.usage`).
    """
    warm, timed = train.examples[:2], train.examples[2 : 2 + examples] or train.examples[:2]
    scorer.loss_matrix([prompt], warm)  # the first call sets up attention and allocates: not the run's rate
    before, start = usage(), time.perf_counter()
    scorer.loss_matrix([prompt + " "], timed)  # a prompt the scorer's memo has never seen
    scored_s, scored = time.perf_counter() - start, (usage() - before).tokens_scored
    scored_token_s = scored_s / max(scored, 1)

    rw = config.rewrite
    hard = likely_hard(text, train.examples, max(min(requests, rw.hard_k), 1), scorer.settings.mc_objective)
    before, start = usage(), time.perf_counter()
    kept, _ = rewrite_prompts(rewriter, prompt, train, hard, (), rw, 1, frozenset({prompt}), scorer, seed=config.seed)
    request_s, spent = (time.perf_counter() - start) / len(hard), usage() - before
    template = choose_template(rw.template, rewriter.n_params, rw.small_model_params)
    planned = rewrite_requests_work(
        text, prompt, config, train, hard, (), template, local=local_model(rewriter) is not None
    )
    # A chat endpoint's replies are not counted here: its budget stands.
    fraction = spent.tokens_generated / planned.tokens_generated if spent.tokens_generated else 1.0
    decode = max(len(hard) * request_s - spent.tokens_prefilled * scored_token_s, 0.0) / max(spent.forward_passes, 1)
    return Rates(
        scored_token_s=scored_token_s,
        rewrite_request_s=request_s,
        decode_step_s=decode,
        reply_fraction=min(fraction, 1.0),
        keep=KeepRate(kept=len(kept), replies=len(hard) * rw.n_variants),
    )
