"""Label-balanced training loss: which examples share a label, the weights, and that a prompt that only tilts the
answers towards the training sample's majority label no longer wins the loop."""

import math

import numpy as np
import pytest

from pmpo.data.examples import Dataset, MultipleChoice, Preference, Supervised
from pmpo.loop.optimizer import PMPO
from pmpo.loop.selection import select
from pmpo.loop.settings import OptimizerConfig
from pmpo.scoring.balance import MAX_WEIGHT, label_weights, labels
from pmpo.scoring.loss import LossMatrix

# A training split of 30 True and 13 False (the navigate sample's was 24 to 19).
NAVIGATE = [MultipleChoice(f"q{i}", ("True", "False"), "True" if i < 30 else "False") for i in range(43)]


def test_labels_are_shared_options_by_text_and_varying_options_by_position():
    assert labels(NAVIGATE)[:1] + labels(NAVIGATE)[-1:] == ["True", "False"]
    varying = [MultipleChoice("q", (f"a{i}", f"b{i}", f"c{i}"), f"b{i}") for i in range(3)]
    assert labels(varying) == ["option 2"] * 3


def test_supervised_tasks_have_labels_only_when_each_has_five_examples_on_average():
    few = [Supervised(f"r{i}", "positive" if i % 3 else "negative") for i in range(30)]
    assert labels(few) == [e.target for e in few]
    counts = [Supervised(f"q{i}", str(i % 15)) for i in range(50)]  # 15 answers among 50: not a classification
    assert labels(counts) is None
    assert labels([Preference("x", "a", ("b",))] * 10) is None
    assert labels([*few[:5], NAVIGATE[0]]) is None  # mixed kinds


def test_weights_give_each_label_the_same_total_and_average_one():
    w = label_weights(NAVIGATE)
    assert w.mean() == pytest.approx(1.0)
    assert w[:30].sum() == pytest.approx(w[30:].sum())
    assert label_weights(NAVIGATE[:30]) is None  # one label: nothing to balance


def test_a_rare_labels_weight_is_clipped():
    rare = [Supervised(f"x{i}", "a") for i in range(36)] + [Supervised(f"y{i}", "b") for i in range(4)]
    common, lone = 40 / (2 * 36), 40 / (2 * 4)  # balanced, each of the four would count for five
    w = label_weights(rare)
    assert lone > MAX_WEIGHT and w[-1] / w[0] == pytest.approx(MAX_WEIGHT / common)
    assert w[-4:].sum() < w[:36].sum()  # the rare label gets less than its balanced half


def _tilt(delta: float) -> np.ndarray:
    """Per-example preference losses of a prompt that only moves the prior towards True by `delta` nats, for a
    model at chance: -log sigmoid(+delta) on True examples, -log sigmoid(-delta) on False ones."""
    sign = np.array([1.0 if e.target == "True" else -1.0 for e in NAVIGATE])
    return np.log1p(np.exp(-sign * delta))


def test_a_pure_tilt_lowers_the_plain_mean_but_not_the_balanced_one():
    chance, tilted = np.full(43, math.log(2)), _tilt(0.5)
    assert tilted.mean() < chance.mean()
    w = label_weights(NAVIGATE)
    assert (tilted * w).mean() > (chance * w).mean()


class TiltSteps:
    """Steps whose one rewrite tilts the answers towards the majority label, with spread to pair away."""

    model_identity = "tilt"
    noise = np.random.default_rng(0).normal(0, 0.3, 43)

    def losses(self, prompts, train, iteration):
        rows = [math.log(2) + self.noise if p == "start" else _tilt(0.5) + self.noise for p in prompts]
        loss = np.stack(rows)[:, : len(train)]
        return LossMatrix(loss, loss, np.ones(loss.shape, dtype=np.int64))

    def segments(self, prompt, prompt_loss, train, iteration):
        return [prompt], ()

    def rewrites(self, incumbent, train, hard, effects, iteration, seen):
        return ([] if "tilted" in seen else ["tilted"]), {}

    def select(self, incumbent, candidates, iteration):
        return select(incumbent, candidates)


@pytest.mark.parametrize("balance, kept", [(True, "start"), (False, "tilted")])
def test_the_loop_keeps_a_tilt_only_under_the_plain_mean(balance, kept):
    config = OptimizerConfig(iterations=1, balance_labels=balance)
    result = PMPO(config=config, steps=TiltSteps()).optimize("start", Dataset("navigate", tuple(NAVIGATE)))
    assert result.best.prompt == kept
