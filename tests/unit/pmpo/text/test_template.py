"""Prompts as teams store them: `{{variable}}` templates and chat prompts render, score, mask, rewrite and load
from data with several fields without ever losing a variable (tiny random model; no signal needed)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from pmpo.data import load_dataset
from pmpo.data.examples import Dataset, Supervised, example_input, example_key
from pmpo.errors import DataError
from pmpo.loop.result import SegmentEffect
from pmpo.loop.steps import prompt_units, removal_prompts, rewrite_prompts, segment_effects
from pmpo.rewriting.proposal import RewriteSettings
from pmpo.rewriting.replies import filter_variants
from pmpo.rewriting.requests import build_request
from pmpo.scoring.loss import Scorer, ScorerSettings
from pmpo.text.encoding import render_pairs
from pmpo.text.rendering import render
from pmpo.text.template import (
    Fields,
    TemplateError,
    chat_messages,
    chat_prompt,
    editable,
    from_registry,
    prompt_variables,
    to_registry,
    variables,
    with_editable,
)

TEMPLATE = "Classify the sentiment of the review.\nBe brief.\n\nReview: {{review}}\nAnswer with positive or negative."
CHAT = chat_prompt(
    [
        {"role": "system", "content": "You label product reviews.\nReply with one word."},
        {"role": "user", "content": "Product: {{product}}\nReview: {{review}}"},
    ]
)
ROWS = [
    {"review": "Loved it, works great.", "product": "kettle", "target": "positive"},
    {"review": "Broke after a day.", "product": "lamp", "target": "negative"},
    {"review": "Best purchase this year.", "product": "chair", "target": "positive"},
]


def _examples(rows=ROWS) -> tuple[Supervised, ...]:
    return tuple(
        Supervised(input=r["review"], target=r["target"], fields=(("review", r["review"]), ("product", r["product"])))
        for r in rows
    )


# --- the template itself ---------------------------------------------------------------------------------


def test_variables_follow_mlflow_syntax_and_chat_prompts_round_trip():
    assert variables("{{ a }} and {{b}} then {{a}} and {single} {{x.y}}") == ("a", "b", "x.y")
    messages = chat_messages(CHAT)
    assert [m.role for m in messages] == ["system", "user"]
    assert prompt_variables(CHAT) == ("product", "review")
    assert chat_messages(TEMPLATE) is None and chat_messages("[not json") is None
    # The optimised part is the system message; the user message (with the variables) stays as it is.
    assert editable(CHAT) == "You label product reviews.\nReply with one word."
    changed = with_editable(CHAT, "Label the review.")
    assert chat_messages(changed)[0].content == "Label the review." and chat_messages(changed)[1] == messages[1]
    assert editable(TEMPLATE) == TEMPLATE and with_editable(TEMPLATE, "new") == "new"
    # What MLflow stores and what comes back from it.
    assert to_registry(CHAT) == json.loads(CHAT) and to_registry(TEMPLATE) == TEMPLATE
    assert from_registry(json.loads(CHAT)) == CHAT and from_registry(TEMPLATE) == TEMPLATE


def test_a_chat_prompt_without_a_system_message_says_what_to_add():
    with pytest.raises(TemplateError, match="needs a system message"):
        editable(chat_prompt([{"role": "user", "content": "{{q}}"}]))


# --- rendering and scoring -----------------------------------------------------------------------------


def test_template_renders_as_the_user_message_filled_from_the_fields(tiny_lm):
    tok = tiny_lm.tokenizer
    fields = Fields((("review", "Broke after a day."), ("product", "lamp")))
    [(text, at)] = render_pairs(tok, "system", TEMPLATE, [(fields, "negative")])
    filled = TEMPLATE.replace("{{review}}", "Broke after a day.")
    expected = tok.apply_chat_template(
        [{"role": "user", "content": filled}], tokenize=False, add_generation_prompt=True
    )
    assert text == expected + "negative" and text[at:] == "negative"
    # The reusable prefix is everything before the first variable.
    context = render(tok, "system", TEMPLATE, fields)
    assert context.prefix == expected[: expected.index("Broke after a day.")]


def test_chat_prompt_renders_with_the_chat_template(tiny_lm):
    tok = tiny_lm.tokenizer
    fields = Fields((("review", "Loved it."), ("product", "kettle")))
    [(text, at)] = render_pairs(tok, "system", CHAT, [(fields, "positive")])
    expected = tok.apply_chat_template(
        [
            {"role": "system", "content": "You label product reviews.\nReply with one word."},
            {"role": "user", "content": "Product: kettle\nReview: Loved it."},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert (text[:at], text[at:]) == (expected, "positive")
    # Without variables, a chat prompt takes the example's input as the user's turn.
    plain = chat_prompt([{"role": "system", "content": "Label it."}])
    [(text, _)] = render_pairs(tok, "system", plain, [("Loved it.", "positive")])
    assert text.startswith(render(tok, "system", "Label it.", "Loved it.").text)


def test_a_variable_without_a_field_names_both(tiny_lm):
    with pytest.raises(TemplateError, match=r"\{\{review\}\} has no field in the example \(fields: input\)"):
        render_pairs(tiny_lm.tokenizer, "system", TEMPLATE, [("just one text", "positive")])
    # A single-input example fills {{input}}.
    [(text, _)] = render_pairs(tiny_lm.tokenizer, "system", "Review: {{input}}", [("fine", "positive")])
    assert "Review: fine" in text


def test_template_scores_the_same_with_and_without_prefix_reuse(tiny_lm):
    examples = _examples()
    for prompt in (TEMPLATE, CHAT, "Review: {{review}} of {{product}}"):  # the last: its first variable comes early
        fast = Scorer(tiny_lm).loss_matrix([prompt], examples).loss
        slow = Scorer(tiny_lm, ScorerSettings(reuse_prefix=False)).loss_matrix([prompt], examples).loss
        np.testing.assert_allclose(fast, slow, rtol=1e-4)
    # The variable's value is really in what is scored: another review, another loss.
    swapped = tuple(Supervised(e.input, e.target, fields=(("review", "x"), ("product", "y"))) for e in examples)
    assert not np.allclose(Scorer(tiny_lm).loss_matrix([TEMPLATE], swapped).loss, fast)


def test_fields_leave_single_input_fingerprints_alone():
    plain = Supervised("q", "a")
    assert example_input(plain) == "q"
    assert example_key(plain) != example_key(Supervised("q", "a", fields=(("input", "q"),)))
    assert example_input(_examples()[0]) == Fields((("review", "Loved it, works great."), ("product", "kettle")))


# --- masking and rewriting keep every variable -----------------------------------------------------------


def test_masking_never_cuts_out_a_variable(tiny_lm):
    train = Dataset("t", _examples())
    scorer = Scorer(tiny_lm)
    units = prompt_units(tiny_lm, TEMPLATE, 1, units="splitter", max_units=5, small_model_params=10**9, seed=0)
    assert any("{{review}}" in t for t in units.texts)
    loss = float(scorer.loss_matrix([TEMPLATE], train.examples).prompt_loss()[0])
    effects = segment_effects(scorer, loss, units, train)
    assert effects and all("{{" not in e.text for e in effects)  # the variable's unit is never measured
    hurting = [SegmentEffect(e.index, e.text, -1.0) for e in effects]  # pretend every measured unit hurts
    for prompt in removal_prompts(TEMPLATE, list(units.texts), hurting):
        assert variables(prompt) == ("review",)


def test_masking_a_chat_prompt_cuts_its_system_message_only(tiny_lm):
    train = Dataset("t", _examples())
    scorer = Scorer(tiny_lm)
    units = prompt_units(tiny_lm, CHAT, 1, units="splitter", max_units=5, small_model_params=10**9, seed=0)
    assert units.texts == ("You label product reviews.", "Reply with one word.")
    loss = float(scorer.loss_matrix([CHAT], train.examples).prompt_loss()[0])
    effects = segment_effects(scorer, loss, units, train)
    assert len(effects) == 2
    removed = removal_prompts(CHAT, list(units.texts), [SegmentEffect(0, effects[0].text, -1.0)])
    assert [editable(p) for p in removed] == ["Reply with one word."]
    assert chat_messages(removed[0])[1] == chat_messages(CHAT)[1]
    # The loss of a removal is what the masking analysis measured for it.
    again = float(scorer.loss_matrix(removed, train.examples).prompt_loss()[0])
    assert again == pytest.approx(loss + effects[0].delta_loss, abs=1e-6)


def test_a_rewrite_that_drops_renames_or_adds_a_variable_is_rejected_under_its_own_reason():
    replies = [
        "<prompt>Classify: {{review}}</prompt>",  # kept
        "<prompt>Classify the review.</prompt>",  # dropped
        "<prompt>Classify: {{text}}</prompt>",  # renamed
        "<prompt>Classify {{review}} of {{product}}</prompt>",  # added
    ]
    kept, rejected = filter_variants(
        replies, current="Review: {{review}}", seen=(), max_chars=500, opened=False, variables=("review",)
    )
    assert kept == ["Classify: {{review}}"] and rejected["variables"] == 3
    # A prompt without variables must not gain one either.
    _, rejected = filter_variants(replies[:1], current="Classify.", seen=(), max_chars=500, opened=False)
    assert rejected["variables"] == 1


def test_the_rewrite_request_shows_the_variables_and_asks_to_keep_them():
    example = Supervised("Broke after a day.", "negative")
    full = build_request("full", task_description="t", example=example, prompt=TEMPLATE, effects=())
    assert "{{review}} is replaced by each example's text. Keep it exactly as written" in full
    short = build_request("short", task_description="t", example=example, prompt=TEMPLATE, effects=())
    assert short.endswith("Keep exactly: {{review}}\nNew instruction: <prompt>")
    assert "Keep" not in build_request("short", task_description="t", example=example, prompt="Classify.", effects=())


def test_rewrites_of_a_chat_prompt_go_back_into_its_messages(tiny_lm, monkeypatch):
    replies = ["Label the review in one word.</prompt>", "Label {{review}}.</prompt>"]
    monkeypatch.setattr("pmpo.rewriting.proposal.sample", lambda *a, **k: list(replies))
    rewrite = RewriteSettings(hard_k=1, n_variants=2, template="short")
    train = Dataset("t", _examples())
    variants, rejected = rewrite_prompts(tiny_lm, CHAT, train, [0], (), rewrite, 1, frozenset({CHAT}), seed=0)
    assert rejected["variables"] == 1  # the system message had no variable: adding one is refused
    [variant] = variants
    assert editable(variant) == "Label the review in one word."
    assert chat_messages(variant)[1] == chat_messages(CHAT)[1]


# --- data with several fields ---------------------------------------------------------------------------


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_several_columns_fill_several_variables(tmp_path):
    ds = load_dataset(_jsonl(tmp_path / "d.jsonl", ROWS), variables=("product", "review"))
    assert ds.examples[0].fields == (("product", "kettle"), ("review", "Loved it, works great."))
    assert ds.examples[0].input == "product: kettle\nreview: Loved it, works great."  # no input column
    from pmpo.data.rows import ColumnMap

    renamed = [{"text": r["review"], "item": r["product"], "target": r["target"]} for r in ROWS]
    path = tmp_path / "r.csv"
    path.write_text("text,item,target\n" + "".join(f'"{r["text"]}",{r["item"]},{r["target"]}\n' for r in renamed))
    mapped = load_dataset(
        path, columns=ColumnMap.from_pairs(["review=text", "product=item"]), variables=("review", "product")
    )
    assert mapped.examples[1].fields == (("review", "Broke after a day."), ("product", "lamp"))


def test_a_variable_with_no_column_names_both(tmp_path):
    with pytest.raises(DataError, match=r"variable \{\{title\}\} has no field: no column 'title'.*--column title="):
        load_dataset(_jsonl(tmp_path / "d.jsonl", ROWS), variables=("review", "title"))
    with pytest.raises(DataError, match=r"builtin:sentiment: the prompt's variable \{\{review\}\}"):
        load_dataset("builtin:sentiment", limit=3, variables=("review",))
    from pmpo.data.rows import ColumnMap

    builtin = load_dataset(
        "builtin:sentiment", limit=3, columns=ColumnMap.from_pairs(["review=input"]), variables=("review",)
    )
    assert builtin.examples[0].fields == (("review", builtin.examples[0].input),)


def test_a_column_no_variable_uses_is_ignored_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pmpo.data.rows"):
        ds = load_dataset(_jsonl(tmp_path / "d.jsonl", ROWS), variables=("review",))
    assert ds.examples[0].fields == (("review", "Loved it, works great."),)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'product'" in warnings[0] and "ignored" in warnings[0]
    # A column mapped to a variable the prompt does not have is a mistake (a typo, most often), not unused.
    from pmpo.data.rows import ColumnMap

    with pytest.raises(DataError, match=r"column mapping item=product: 'item' is neither .* nor the prompt's"):
        load_dataset(tmp_path / "d.jsonl", columns=ColumnMap.from_pairs(["item=product"]), variables=("review",))


def test_column_flags_and_config_map_template_variables():
    from flows.config import DataConfig
    from pmpo_cli.options import columns

    assert columns(["review=text", "target=label"]) == {"review": "text", "target": "label"}
    assert DataConfig(columns={"review": "text", "target": "label"}).columns == {"review": "text", "target": "label"}
    with pytest.raises(ValueError, match="nor a template variable name"):
        DataConfig(columns={"re view": "text"})


def test_the_full_request_diagnoses_the_whole_chat_prompt(tiny_lm, monkeypatch):
    scored = []
    monkeypatch.setattr(
        "pmpo.rewriting.proposal.preferred_answer", lambda lm, scorer, prompt, example: scored.append(prompt)
    )
    monkeypatch.setattr("pmpo.rewriting.proposal.sample", lambda *a, **k: ["<prompt>Label the review.</prompt>"])
    rewrite = RewriteSettings(hard_k=1, n_variants=1, template="full")
    variants, _ = rewrite_prompts(
        tiny_lm, CHAT, Dataset("t", _examples()), [0], (), rewrite, 1, frozenset({CHAT}), seed=0
    )
    assert scored == [CHAT]  # what the model prefers is found under the whole prompt, not its system text alone
    assert [editable(v) for v in variants] == ["Label the review."]


def test_the_config_can_name_another_chat_message_to_optimise(tiny_lm, monkeypatch):
    two = chat_prompt(
        [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Label the review as positive or negative.\nBe brief.\n\nReview: {{review}}"},
        ]
    )
    train = Dataset("t", _examples())
    units = prompt_units(
        tiny_lm, two, 1, units="splitter", max_units=5, small_model_params=10**9, seed=0, chat_message=1
    )
    assert units.texts[0] == "Label the review as positive or negative." and units.message == 1
    effects = segment_effects(Scorer(tiny_lm), 0.0, units, train)
    assert [e.text for e in effects] == ["Label the review as positive or negative.", "Be brief."]  # not the variable
    [removed] = removal_prompts(two, list(units.texts), [SegmentEffect(1, "Be brief.", -1.0)], 1)  # as if it hurt
    assert chat_messages(removed)[0] == chat_messages(two)[0]
    assert chat_messages(removed)[1].content == "Label the review as positive or negative.\n\nReview: {{review}}"
    monkeypatch.setattr(
        "pmpo.rewriting.proposal.sample", lambda *a, **k: ["Say positive or negative. Review: {{review}}</prompt>"]
    )
    rewrite = RewriteSettings(hard_k=1, n_variants=1, template="short")
    variants, _ = rewrite_prompts(tiny_lm, two, train, [0], (), rewrite, 1, frozenset({two}), seed=0, chat_message=1)
    assert [chat_messages(v)[1].content for v in variants] == ["Say positive or negative. Review: {{review}}"]
    with pytest.raises(TemplateError, match="chat_message 5: the chat prompt has 2 message"):
        editable(two, 5)
