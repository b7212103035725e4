"""The APE-style baseline of the quality benchmark: template, parsing, dedupe, proposal loop, selection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import ape  # noqa: E402

from pmpo.data.examples import Dataset, Preference, Supervised  # noqa: E402
from pmpo.text.rendering import render  # noqa: E402


def _train(n: int = 8) -> Dataset:
    return Dataset("t", tuple(Supervised(f"question {i}", f"answer {i}") for i in range(n)))


def test_forward_request_is_apes_template_ending_where_the_instruction_goes():
    demos = [Supervised("2 + 2", "4"), Preference("Greet", "Hello!", ("Go away.",)), Supervised("3 - 1", "2")]
    text = ape.forward_request(demos)
    assert text.startswith("I gave a friend an instruction and three inputs. The friend read the instruction")
    assert "Here are the input-output pairs:\n\nInput: 2 + 2\nOutput: 4\n\nInput: Greet\nOutput: Hello!\n\n" in text
    assert text.endswith("Input: 3 - 1\nOutput: 2\n\nThe instruction was")
    assert "Go away." not in text  # a preference demo shows its preferred output only


@pytest.mark.parametrize(
    "raw, expected",
    [
        (" to add the two numbers.\nInput: 5 + 5\nOutput: 10", "Add the two numbers."),
        (' "Sort the words alphabetically." Then he left.', "Sort the words alphabetically."),
        (": 'classify each review as positive or negative'", "Classify each review as positive or negative."),
        ('\n\n A number is odd." Find it using arithmetic.', "A number is odd."),
        (" to answer with the count of objects! It was easy.", "Answer with the count of objects."),
        (' Always face forward".', "Always face forward."),
        ("", None),
        ("   \n  ", None),
        (" yes.", None),  # one word is not an instruction
        (" Output: 10", None),  # the model went on with the demonstrations
        (" " + "word " * 70, None),  # rambling
    ],
)
def test_parse_instruction_keeps_the_first_sentence_as_an_imperative(raw, expected):
    assert ape.parse_instruction(raw) == expected


def test_dedupe_ignores_case_and_spacing_keeps_first_seen_order():
    out = ape.dedupe(["Add the numbers.", None, "add  the numbers.", "Subtract them.", "ADD THE NUMBERS.", None])
    assert out == ["Add the numbers.", "Subtract them."]


def test_select_prefers_accuracy_then_the_shorter_text_then_the_earlier_proposal():
    assert ape.select(["a b c", "a b", "x y z w"], [0.5, 0.2, 0.9]) == 2
    assert ape.select(["long instruction.", "short one.", "short two."], [0.5, 0.5, 0.5]) == 1
    assert ape.select(["same len", "same len"], [0.1, 0.1]) == 0
    with pytest.raises(ape.NoInstruction, match="no candidate"):
        ape.select([], [])


def test_propose_samples_demo_subsets_until_n_distinct_instructions(monkeypatch, tiny_lm):
    replies = iter(
        [
            [" to add the numbers.", " to add the numbers.", " Output: 3", " to subtract them."],
            [" To Add The Numbers.", " to multiply them.", " to divide them.", ""],
        ]
    )
    calls = []

    def fake_sample(lm, text, n, *, seed, **kwargs):
        calls.append((text, n, seed))
        return next(replies)

    monkeypatch.setattr(ape, "sample", fake_sample)
    train = _train()
    found, requests = ape.propose(tiny_lm, train, 3, seed=0)
    assert found == ["Add the numbers.", "Subtract them.", "Multiply them."]
    assert requests == 2
    assert calls[0][2] != calls[1][2]  # a fresh sampling seed per request
    for text, n, _ in calls:
        assert n == 4
        shown = [e for e in train.examples if f"Input: {e.input}\nOutput: {e.target}" in text]
        assert len(shown) == 5 and text.endswith("The instruction was")


def test_propose_gives_up_after_its_request_budget(monkeypatch, tiny_lm):
    monkeypatch.setattr(ape, "sample", lambda *a, **k: [" to add the numbers."] * 4)
    found, requests = ape.propose(tiny_lm, _train(), 8, seed=0, settings=ape.ApeSettings(max_requests_per_candidate=1))
    assert found == ["Add the numbers."]
    assert requests == 2  # ceil(8 / 4 * 1)


def test_training_accuracy_scores_each_prompts_greedy_replies_with_the_labels_guard(monkeypatch, tiny_lm):
    """Replies scripted per prompt (the tiny model only says newlines): per-prompt shares, 'contains' matching."""
    replies = {"Say yes.": "The review is positive.", "Say no.": "negative", "Hedge.": "positive or negative"}
    seen = {}

    def fake_greedy(lm, texts, *, max_new_tokens):
        seen["texts"], seen["max_new_tokens"] = texts, max_new_tokens
        return [next(r for p, r in replies.items() if p in t) for t in texts]

    monkeypatch.setattr(ape, "greedy", fake_greedy)
    targets = ["positive", "positive", "negative", "positive"]
    train = Dataset("t", tuple(Supervised(f"review {i}", t) for i, t in enumerate(targets)))
    accuracies = ape.training_accuracy(tiny_lm, list(replies), train, answer_tokens=7)
    assert accuracies == [0.75, 0.25, 0.0]  # a reply naming both labels is wrong
    assert seen["max_new_tokens"] == 7
    assert seen["texts"][5] == render(tiny_lm.tokenizer, tiny_lm.placement, "Say no.", "review 1").text


def test_ape_selects_the_proposal_with_the_best_training_accuracy(monkeypatch, tiny_lm):
    monkeypatch.setattr(
        ape,
        "sample",
        lambda *a, **k: [
            " to add the numbers.",
            " to name the answer now.",
            " to reply with the answer.",
            " to be brief.",
        ],
    )
    scripted = {"Add the numbers.": 0.25, "Name the answer now.": 0.5, "Reply with the answer.": 0.5, "Be brief.": 0.0}
    monkeypatch.setattr(ape, "training_accuracy", lambda lm, prompts, train, **k: [scripted[p] for p in prompts])
    result = ape.ape(tiny_lm, _train(), 4, seed=1)
    assert result.candidates == tuple(scripted)
    assert result.accuracies == tuple(scripted.values())
    assert result.best == "Name the answer now."  # ties with "Reply with the answer." at 0.5, and is shorter
    assert result.best_accuracy == 0.5 and result.requests == 1
