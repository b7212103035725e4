"""Masking in the loop: ablations cut from the prompt's own text, dL against the same rendering, the
masking switch (the paper's ablation) and the choice of units; on the tiny random model."""

import pytest

from pmpo.data.examples import Dataset, Supervised
from pmpo.loop.optimizer import PMPO, OptimizerConfig
from pmpo.loop.result import SegmentEffect
from pmpo.loop.steps import prompt_units, removal_prompts, segment_effects, unit_mode
from pmpo.masking.units import segment
from pmpo.rewriting.proposal import RewriteSettings
from pmpo.scoring.loss import Scorer
from support.scorers import RecordingScorer

PROMPT = (
    "You label the sentiment of product reviews.\n"
    "\n"
    "Read the review carefully.\n"
    "  Ignore the star rating.\n"
    "\n"
    "Answer with one word: positive or negative."
)
TRAIN = Dataset(
    "reviews",
    tuple(
        Supervised(f"Review {i}: it {w}.", label)
        for i, (w, label) in enumerate(
            [("works", "positive"), ("broke", "negative"), ("is great", "positive"), ("failed", "negative")]
        )
    ),
)


def _loss(scorer, prompt):
    return float(scorer.loss_matrix([prompt], TRAIN.examples).prompt_loss()[0])


def test_dl_is_the_ablated_prompts_loss_minus_the_original_prompts(tiny_lm):
    scorer = RecordingScorer(tiny_lm)
    units = segment(PROMPT)
    baseline = _loss(scorer, PROMPT)
    effects = segment_effects(scorer, baseline, units, TRAIN)
    assert len(effects) == 4
    # The prompt itself again (a memo hit: its per-example losses pair with each ablation's), then the ablations.
    assert scorer.prompts[1] == PROMPT
    ablated = scorer.prompts[2:]
    assert ablated == [units.without(j) for j in range(4)]
    # Every ablation keeps the other paragraphs' blank lines and indentation byte for byte.
    assert ablated[1] == PROMPT.replace("Read the review carefully.\n  ", "")
    assert ablated[2] == PROMPT.replace("\n  Ignore the star rating.", "")
    for effect, text in zip(effects, ablated):
        assert effect.delta_loss == pytest.approx(_loss(Scorer(tiny_lm), text) - _loss(Scorer(tiny_lm), PROMPT))


def test_removal_prompts_cut_exactly_what_the_masking_analysis_cut():
    units = segment(PROMPT)
    effects = (SegmentEffect(0, units.texts[0], 0.5), SegmentEffect(2, units.texts[2], -0.1))
    assert removal_prompts(PROMPT, list(units.texts), effects) == [units.without(2)]
    assert removal_prompts(PROMPT, [], ()) == []


def _last_entry(request):
    """The SHORT form's own entry, after its few-shot demonstrations."""
    return request.rsplit("Old instruction:", 1)[1]


def _run(tiny_lm, monkeypatch, masking):
    requests = []

    def fake_sample(lm, text, n, **kwargs):
        requests.append(text)
        return [f"Reply with one word, variant {len(requests)}.</prompt>"] * n

    monkeypatch.setattr("pmpo.rewriting.proposal.sample", fake_sample)
    scorer = RecordingScorer(tiny_lm)
    config = OptimizerConfig(iterations=1, masking=masking, rewrite=RewriteSettings(hard_k=2, n_variants=1))
    result = PMPO(tiny_lm, config, scorer).optimize(PROMPT, TRAIN)
    return result, scorer.prompts, requests


def test_masking_off_scores_no_ablated_prompt_and_shows_no_table(tiny_lm, monkeypatch):
    result, scored, requests = _run(tiny_lm, monkeypatch, masking=False)
    ablations = {segment(PROMPT).without(j) for j in range(4)}
    assert not ablations & set(scored)
    assert scored == [PROMPT, *[c.prompt for c in result.candidates if c.origin == "rewrite"]]
    assert result.iterations[0].segments == ()
    assert all(c.origin in ("initial", "rewrite") for c in result.candidates)
    assert len(requests) == 2 and not any(" part: " in _last_entry(r) for r in requests)


def test_masking_on_scores_every_ablation(tiny_lm, monkeypatch):
    result, scored, requests = _run(tiny_lm, monkeypatch, masking=True)
    units = segment(PROMPT)
    assert scored[1] == PROMPT  # asked again for its per-example row: a memo hit, no forward pass
    assert [units.without(j) for j in range(4)] == scored[2:6]
    assert all(" part: " in _last_entry(r) for r in requests)  # the SHORT form's masking hints
    assert [e.text for e in result.iterations[0].segments] == list(units.texts)


def test_unit_mode_auto_follows_the_rewriters_size():
    assert unit_mode("auto", 135_000_000, 1_000_000_000) == "splitter"
    assert unit_mode("auto", 7_000_000_000, 1_000_000_000) == "model"
    assert unit_mode("splitter", 7_000_000_000, 1_000_000_000) == "splitter"
    assert unit_mode("model", 1, 1_000_000_000) == "model"
    with pytest.raises(ValueError, match="'lines'"):
        unit_mode("lines", 1, 1)


def test_auto_units_ask_a_large_enough_model_to_mark_them_as_spans(tiny_lm, monkeypatch):
    asked = []

    def fake_sample(lm, text, n, **kwargs):
        asked.append(text)
        return [
            "<mask>You label the sentiment of product reviews. Read the review carefully.</mask> "
            "<mask>Ignore the star rating. Answer with one word: positive or negative.</mask>"
        ]

    monkeypatch.setattr("pmpo.masking.units.sample", fake_sample)
    small = RewriteSettings().small_model_params  # the tiny model is far below 1B parameters: the splitter
    assert prompt_units(tiny_lm, PROMPT, 1, units="auto", max_units=5, small_model_params=small, seed=0) == segment(
        PROMPT
    )
    assert asked == []
    units = prompt_units(tiny_lm, PROMPT, 1, units="auto", max_units=5, small_model_params=1, seed=0)
    assert len(asked) == 1 and len(units.texts) == 2
    assert units.remove(()) == PROMPT
    assert units.without(1) == "You label the sentiment of product reviews.\n\nRead the review carefully."
