"""The nightly refresh on the tiny model under a throwaway Prefect API: a second refresh on the same data keeps
production, a candidate that is worse on held-out data is never promoted however low its training loss (and a
better one is), each decision is judged on its own held-out draw and records it, a prompt with broken data fails
alone and is named, and every decision is on record."""

from __future__ import annotations

import json

import pytest
import yaml

from pmpo.errors import PmpoError

# prefect, mlflow and the flows are imported inside the tests: imported while collecting, they would set up their
# logging before `pmpo`'s CLI tests can quiet it.

PROMPT = "Read the review. Answer with one word."
LIMIT, HELDOUT = 30, 6  # a test split of about 24 (a seeded hash split): each decision draws 6 of them afresh
KEPT = ("no_loss_gain", "loss_interval_crosses_margin", "no_new_candidate")
# Prompts to pick a deliberately worse and a better candidate from (by their measured held-out loss).
POOL = [
    PROMPT,
    "Say whether the review is positive or negative.",
    "zebra quantum umbrella seventeen",
    "negative negative negative negative",
    f"{PROMPT} {PROMPT}",
    "The review below is about a product. Reply positive or negative.",
]


def managed(model_dir, name: str = "sent", source: str = "builtin:sentiment") -> dict:
    """A managed prompt that optimises for one tiny iteration and checks 6 held-out examples by loss only."""
    return {
        "name": name,
        "optimize": {
            "data": {"source": source, "limit": LIMIT},
            "model": {"spec": str(model_dir), "dtype": "float32"},
            "prompt": PROMPT,
            "iterations": 1,
            "rewrite": {"k": 1, "n": 2, "max_new_tokens": 8},
            "eval": {"max_examples": HELDOUT, "generate": False},
        },
    }


def inline(model_dir, margin: float = 0.0):
    from flows.managed import NightlyConfig

    return NightlyConfig.model_validate({"prompts": [managed(model_dir)], "promotion": {"margin": margin}})


@pytest.fixture
def prompts(pmpo_home):
    from tasks.mlflow import prompts

    return prompts


@pytest.fixture(scope="module")
def heldout_losses(tiny_lm):
    """Each pool prompt's loss on the held-out draw of the refresh's decisions 0, 1 and 2 about `sent`, measured
    without the refresh: {decision: {prompt: loss}}."""
    from pmpo.data import load_dataset, split_dataset
    from pmpo.evaluation.heldout import evaluate
    from pmpo.evaluation.rotation import decision_draw

    test = split_dataset(load_dataset("builtin:sentiment", limit=LIMIT), seed=0).test
    losses = {}
    for k in range(3):  # the flows' draw: seeded by the decision's number, stratified by label
        heldout = decision_draw(test, HELDOUT, base_seed=0, name="sent", number=k, reuse_budget=10).examples
        losses[k] = {p: evaluate(tiny_lm, p, heldout, generate=False).loss for p in POOL}
    return losses


# -- the promotion rule and the prompts file, without a flow --------------------------------------------------


def _evaluation(losses, correct=None):
    from pmpo.evaluation.heldout import Evaluation

    return Evaluation(
        prompt="p",
        n_examples=len(losses),
        loss=sum(losses) / len(losses),
        loss_per_token=1.0,
        accuracy=None if correct is None else sum(correct) / len(correct),
        option_accuracy=None,
        example_losses=tuple(losses),
        example_correct=correct,
    )


def test_the_promotion_settings_reach_the_gate():
    from flows.managed import PromotionRule

    before = tuple(2.0 + 0.1 * (i % 5) for i in range(40))
    after = tuple(x * 0.9 for x in before)  # 10% lower on every example
    right, lost = (True,) * 40, (False,) * 10 + (True,) * 30
    rule = PromotionRule()
    assert (rule.margin, rule.max_accuracy_drop, rule.confidence) == (0.01, 0.1, 0.95)
    assert rule.decide(_evaluation(before), _evaluation(after), seed=0).why == "promoted"
    assert PromotionRule(margin=0.2).decide(_evaluation(before), _evaluation(after), seed=0).why == "no_loss_gain"
    assert rule.decide(_evaluation(before, right), _evaluation(after, lost), seed=0).why == "accuracy_drop"
    off = PromotionRule(max_accuracy_drop=None)  # the accuracy guard off
    assert off.decide(_evaluation(before, right), _evaluation(after, lost), seed=0).promote


def test_prompts_file_entries_are_all_validated_before_the_refresh_starts(tmp_path, tiny_model_dir):
    from flows.managed import ManagedPrompt, NightlyConfig, plan

    path = tmp_path / "prompts.yaml"
    broken = {"name": "typo", "optimize": {"itrations": 3}}
    path.write_text(yaml.safe_dump({"promotion": {"margin": 0.2}, "prompts": [managed(tiny_model_dir), broken]}))
    # A key typo is a config error of the whole file, before any refresh run exists: file, entry, key, close match.
    with pytest.raises(PmpoError, match=r"prompts\[1\] \(typo\): optimize.itrations: Extra .*'iterations'\?"):
        plan(NightlyConfig(prompts_file=str(path)))

    broken["optimize"] = {"iterations": 3}
    path.write_text(yaml.safe_dump({"promotion": {"margin": 0.2}, "prompts": [managed(tiny_model_dir), broken]}))
    p = plan(NightlyConfig(prompts_file=str(path)))
    assert [e.label for e in p.entries] == ["sent", "typo"] and p.rule.margin == 0.2
    assert all(isinstance(e.managed(), ManagedPrompt) for e in p.entries)
    # A setting the parameter gives explicitly wins over the file's.
    assert plan(NightlyConfig(prompts_file=str(path), promotion={"margin": 0.05})).rule.margin == 0.05


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("promotion: {margin: 0.1}\n", "expected `prompts:`"),
        ("prompts: [{name: a}, {name: a}]\n", "listed twice: a"),
        ("prompts: [{name: a}]\nmargin: 0.1\n", "margin: Extra inputs"),
    ],
)
def test_bad_prompts_files_name_the_problem(tmp_path, text, says):
    from flows.managed import NightlyConfig, plan

    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PmpoError, match=says):
        plan(NightlyConfig(prompts_file=str(path)))


# -- the refresh as a flow ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_second_refresh_on_the_same_data_keeps_production(prompts, tiny_model_dir):
    from flows.nightly import nightly_refresh
    from tasks.mlflow import prompts, runs

    config = inline(tiny_model_dir)
    first = nightly_refresh(config).decisions[0]
    v1 = prompts.get_version("sent", 1)
    assert v1.text == PROMPT and v1.tags["pmpo.decision"] == "initial"  # no production yet: the initial prompt
    production = prompts.get_version("sent", "production")
    assert production.version == first.production_version
    # Margin 0, no accuracy measured: promoted exactly when the loss change's whole interval is below zero.
    assert (first.outcome == "promoted") == (first.loss_change.high < 0) and first.why in ("promoted", *KEPT)
    assert first.heldout.decision_number == 0 and len(first.heldout.hashes) == HELDOUT

    second = nightly_refresh(config).decisions[0]

    assert second.candidate.loss >= second.production.loss  # the premise: nothing better on held-out data
    assert second.outcome == "kept"
    assert prompts.get_version("sent", "production").version == production.version
    if second.candidate_version is None:  # the optimiser kept production's text: the check is noted on it
        assert "kept" in prompts.get_version("sent", production.version).tags["pmpo.last_check"]
    else:
        assert prompts.get_version("sent", second.candidate_version).tags["pmpo.decision"] == "kept"
    assert runs.run_tags(second.run_id)["pmpo.nightly.decision"] == "kept"


@pytest.mark.usefixtures("prefect_harness")
def test_only_a_candidate_better_on_held_out_data_is_promoted(prompts, tiny_model_dir, heldout_losses):
    from prefect import flow

    from flows.managed import ManagedPrompt
    from flows.nightly import refresh
    from flows.promotion import Proposal
    from tasks.mlflow import prompts, queries, store

    night = heldout_losses  # decision k is judged on its own draw: the losses of each
    others = [p for p in POOL if p != PROMPT]
    worse, better = max(others, key=night[0].get), min(others, key=night[2].get)
    assert night[0][worse] > night[0][PROMPT] and night[1][worse] > night[1][PROMPT]  # the premises of this test
    assert night[2][better] < night[2][PROMPT]

    def propose(text):
        def make(m: ManagedPrompt, start: str | None) -> Proposal:  # the Proposer signature
            # A training loss far below anything real: promotion must not look at it.
            return Proposal(start_prompt=start or PROMPT, prompt=text, training_loss=0.0, start_training_loss=99.0)

        return make

    @flow
    def refresh_with(text: str):
        return refresh(inline(tiny_model_dir), propose=propose(text))

    bad = refresh_with(worse).decisions[0]
    assert (bad.outcome, bad.why) == ("kept", "no_loss_gain")
    assert bad.candidate.loss == pytest.approx(night[0][worse], rel=1e-5)
    assert bad.production.loss == pytest.approx(night[0][PROMPT], rel=1e-5)
    assert prompts.get_version("sent", "production").version == 1
    kept = prompts.get_version("sent", bad.candidate_version)
    assert kept.text == worse and kept.tags["pmpo.decision"] == "kept" and kept.tags["pmpo.training_loss"] == "0.000000"
    assert "not better" in kept.tags["pmpo.reason"] and kept.tags["pmpo.why"] == "no_loss_gain"
    assert kept.tags["pmpo.heldout.seed"] == str(bad.heldout.seed)
    again = refresh_with(worse).decisions[0]  # the same candidate the next night: judged again, not registered again
    assert (again.outcome, again.candidate_version) == ("kept", bad.candidate_version)
    assert prompts.version_numbers("sent") == [1, bad.candidate_version]
    # ... on a fresh draw: the next decision's, of the same size, from the same pool
    assert again.heldout.decision_number == 1 and again.heldout.seed != bad.heldout.seed
    assert again.heldout.hashes != bad.heldout.hashes and again.candidate.loss == pytest.approx(
        night[1][worse], rel=1e-5
    )
    assert (
        again.heldout.pool_size == bad.heldout.pool_size > HELDOUT
        and again.heldout.reused <= HELDOUT
        and again.heldout.warning is None
    )

    report = refresh_with(better)
    good = report.decisions[0]
    assert (good.outcome, good.why) == ("promoted", "promoted") and good.loss_change.high < 0
    assert good.heldout.decision_number == 2
    assert prompts.get_version("sent", "production").text == better
    assert prompts.get_version("sent", good.candidate_version).tags["pmpo.decision"] == "promoted"
    run = store.client().get_run(report.run_id)
    assert run.data.tags["pmpo.decision.sent"] == "promoted" and run.data.tags["pmpo.why.sent"] == "promoted"
    # MLflow's own link: the refresh's run page lists both versions it judged under "Registered prompts".
    linked = {(p["name"], int(p["version"])) for p in json.loads(run.data.tags["mlflow.linkedPrompts"])}
    assert linked == {("sent", 1), ("sent", good.candidate_version)}
    # The auditor's record: the examples (rows, hashes, seed) and the per-example losses the decision was made on.
    record = queries.run_json(report.run_id, "heldout/sent.json")
    assert record["hashes"] == good.heldout.hashes and record["seed"] == good.heldout.seed
    assert len(record["candidate_losses"]) == HELDOUT
    assert sum(record["candidate_losses"]) / HELDOUT == pytest.approx(good.candidate.loss, rel=1e-6)
    assert prompts.prompt_tags("sent")["pmpo.heldout.decisions"] == "3"


@pytest.mark.usefixtures("prefect_harness")
def test_a_prompt_with_broken_data_fails_alone_and_is_named(prompts, tmp_path, tiny_model_dir):
    from flows.managed import NightlyConfig
    from flows.nightly import NightlyRefreshFailed, nightly_refresh
    from tasks.mlflow import prompts, store

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "a", "target": "b"}\nnot json\n')
    path = tmp_path / "prompts.yaml"
    # The broken prompt comes first: the one after it must still be refreshed.
    path.write_text(
        yaml.safe_dump({"prompts": [managed(tiny_model_dir, "broken", str(broken)), managed(tiny_model_dir)]})
    )

    state = nightly_refresh(NightlyConfig(prompts_file=str(path)), return_state=True)

    assert state.is_failed()
    assert "broken" in state.message and "sent" not in state.message.split("failed:")[-1]
    error = state.result(raise_on_failure=False)
    assert isinstance(error, NightlyRefreshFailed)
    assert error.report.failed == ["broken"]
    assert "broken.jsonl, line 2" in str(error)
    ok = next(d for d in error.report.decisions if d.name == "sent")
    assert ok.outcome in ("promoted", "kept") and prompts.get_version("sent", "production") is not None
    run = store.client().get_run(error.report.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["pmpo.decision.broken"] == "failed" and run.data.tags["pmpo.decision.sent"] == ok.outcome
