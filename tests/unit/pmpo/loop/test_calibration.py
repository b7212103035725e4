"""The calibration's evidence for the cost plan: its rewrite requests (the first iteration's, up to hard_k) and the
replies they kept, counted as the run counts them."""

import pytest

from pmpo.data import load_dataset, split_dataset
from pmpo.loop.calibration import calibrate
from pmpo.loop.settings import OptimizerConfig
from pmpo.rewriting.settings import RewriteSettings
from pmpo.scoring.loss import Scorer
from pmpo.scoring.settings import ScorerSettings
from support.rewriters import ScriptedRewriter

PROMPT = "Read the review.\nAnswer with one word: positive or negative."


def _echo(seed: int, n: int) -> list[str]:
    """One variant, repeated n times: one reply kept per request."""
    return [f"Read the review {seed % 997}. Answer with one word: positive or negative."] * n


@pytest.mark.parametrize("hard_k,requests", [(3, 2), (1, 1)])
def test_the_keep_rate_counts_every_reply_of_the_calibrations_requests(tiny_lm, hard_k, requests):
    train = split_dataset(load_dataset("builtin:sentiment", limit=40), seed=0, train_fraction=1.0, train_cap=8).train
    config = OptimizerConfig(rewrite=RewriteSettings(hard_k=hard_k, n_variants=3))
    rewriter = ScriptedRewriter(_echo, "echoing")

    def usage():
        return tiny_lm.usage.snapshot() + rewriter.usage.snapshot()

    rates = calibrate(Scorer(tiny_lm, ScorerSettings()), rewriter, usage, tiny_lm, PROMPT, train, config, examples=4)
    assert rewriter.requests == requests  # two when the run sends two or more, never more than hard_k
    assert (rates.keep.kept, rates.keep.replies) == (requests, 3 * requests)  # the repeats are dropped
    assert rates.kept_fraction == pytest.approx((requests + 1) / (3 * requests + 2))
    assert rates.rewrite_request_s > 0
