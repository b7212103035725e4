"""Rewrite requests, reply parsing and variant filtering; `propose` plumbing on the tiny random model."""


import pytest

from pmpo.data.examples import MultipleChoice, Preference, Supervised
from pmpo.errors import ContextLengthError, RewriteParseError
from pmpo.models.generation import greedy
from pmpo.scoring.loss import Scorer
from pmpo.text.rendering import render
from pmpo.loop.result import SegmentEffect
from pmpo.rewriting.proposal import (
    REJECT_REASONS,
    Proposal,
    RewriteSettings,
    build_request,
    choose_template,
    expected_answer,
    filter_variants,
    hard_examples,
    UnclosedPromptError,
    parse_prompt,
    propose,
    short_reply_cut_off,
)

EFFECTS = (SegmentEffect(0, "Read the text.", 1.25), SegmentEffect(1, "Be creative.", -0.5))
TASK = "Classify the sentiment of a product review."
PROMPT = "Read the text. Be creative."


def test_hard_examples_are_the_highest_losses_with_ties_to_the_lower_index():
    assert hard_examples([1.0, 5.0, 3.0, 5.0, 0.5], 3) == [1, 3, 2]
    assert hard_examples([2.0, 2.0, 2.0], 2) == [0, 1]
    assert hard_examples([1.0], 3) == [0]
    assert hard_examples([1.0, 2.0], 0) == []


def test_choose_template():
    assert choose_template("auto", 135_000_000, 1_000_000_000) == "short"
    assert choose_template("auto", 7_000_000_000, 1_000_000_000) == "full"
    assert choose_template("full", 135_000_000, 1_000_000_000) == "full"
    assert choose_template("short", 7_000_000_000, 1_000_000_000) == "short"
    with pytest.raises(ValueError, match="'tiny'"):
        choose_template("tiny", 1, 1)


def test_expected_answer_per_kind():
    assert expected_answer(Supervised("x", "y")) == "y"
    assert expected_answer(MultipleChoice("x", ("a", "b"), "b")) == "b"
    assert expected_answer(Preference("x", "good", ("bad",))) == "good"


@pytest.mark.parametrize("template", ["full", "short"])
def test_build_request_shows_every_part(template):
    example = Supervised("Review: The blender broke after two days.", "negative")
    request = build_request(template, task_description=TASK, example=example, prompt=PROMPT, effects=EFFECTS)
    for part in (TASK, example.input, "negative", PROMPT, "Read the text.", "Be creative.", "<prompt>"):
        assert part in request
    if template == "full":
        assert "+1.25" in request and "-0.50" in request and "hurts" in request
        assert "output format" in request and "</prompt>" in request
    else:
        assert request.endswith("New instruction: <prompt>")
        assert 'Good part: "Read the text."' in request and 'Weak part: "Be creative."' in request


@pytest.mark.parametrize("template", ["full", "short"])
def test_build_request_shows_options_and_a_rejected_answer(template):
    mc = MultipleChoice("Is it plausible?", ("yes", "no"), "no")
    request = build_request(template, task_description=TASK, example=mc, prompt=PROMPT, effects=EFFECTS)
    assert "yes" in request and "no" in request and "Options" in request
    pref = Preference("Write a haiku.", "An old silent pond", ("Roses are red",))
    request = build_request(template, task_description=TASK, example=pref, prompt=PROMPT, effects=EFFECTS)
    assert "An old silent pond" in request and "Roses are red" in request


def test_build_request_clips_long_inputs():
    example = Supervised("word " * 2000, "y")
    request = build_request("full", task_description=TASK, example=example, prompt=PROMPT, effects=EFFECTS)
    assert len(request) < 4000


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<prompt>Answer with one word.</prompt>", "Answer with one word."),
        ("Sure! Here it is:\n<prompt>\n  Answer with one word.\n</prompt>\nHope it helps.", "Answer with one word."),
        ("<prompt>First.</prompt> and <prompt>Second.</prompt>", "First."),
        ("Use <prompt></prompt> tags.\n<PROMPT>Real one.</PROMPT>", "Real one."),
        ("<prompt>Closed.</prompt> then <prompt>cut off", "Closed."),
        ("<prompt>\n```\nFenced prompt.\n```\n</prompt>", "Fenced prompt."),
        ("```\n<prompt>Inside a fence.</prompt>\n```", "Inside a fence."),
        ("<prompt>  </prompt>", ""),
    ],
)
def test_parse_prompt(reply, expected):
    assert parse_prompt(reply) == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Answer with one word.</prompt>", "Answer with one word."),
        ("\n Answer with one word.\nTask: next entry", "Answer with one word."),
        ("<prompt>Repeated tag.</prompt>", "Repeated tag."),
        ("no closing tag at all", "no closing tag at all"),
        ("</prompt>", ""),
    ],
)
def test_parse_prompt_opened(reply, expected):
    assert parse_prompt(reply, opened=True) == expected


def test_parse_prompt_without_tags_names_the_problem_and_quotes_the_reply():
    with pytest.raises(RewriteParseError) as info:
        parse_prompt("I think the instruction\nis fine as it is.")
    message = str(info.value)
    assert "<prompt>" in message and "'I think the instruction is fine as it is.'" in message


@pytest.mark.parametrize(
    "reply",
    ["<prompt>Cut off in the middle of a sen", "Why it fails: ...\n<prompt></prompt><prompt>Cut off again"],
)
def test_parse_prompt_rejects_an_unclosed_block_as_cut_off(reply):
    with pytest.raises(UnclosedPromptError, match="never closes <prompt>"):
        parse_prompt(reply)


@pytest.mark.parametrize(
    ("reply", "n_tokens", "cut"),
    [
        ("Answer with one word.</prompt>", 160, False),  # closed, however long
        ("Answer with one word.\nTask: next", 160, False),  # stopped at the end of its line: complete
        ("Answer with one word.", 40, False),  # the model ended it well within the budget
        ("Answer with one word and then also", 159, True),  # ran into the budget mid-line
        ("<prompt>Answer with one word and", 160, True),
    ],
)
def test_short_reply_cut_off_only_when_it_ran_into_the_budget_mid_line(reply, n_tokens, cut):
    assert short_reply_cut_off(reply, n_tokens, budget=160) is cut


def test_filter_variants_counts_cut_off_short_replies_as_unclosed():
    replies = ["Answer with one word", "Be brief.</prompt>"]
    kept, rejected = filter_variants(
        replies, current="x", seen=(), max_chars=100, opened=True, cut_off=[True, False]
    )
    assert kept == ["Be brief."]
    assert rejected["unclosed"] == 1 and rejected["no_tags"] == 0


def test_filter_variants_counts_each_reason():
    replies = [
        "no tags here",  # no_tags
        "<prompt>Cut off in the mid",  # unclosed
        "<prompt> </prompt>",  # empty
        "<prompt>Read the text.   Be creative.</prompt>",  # unchanged (whitespace differs)
        "<prompt>Seen before.</prompt>",  # duplicate of `seen`
        "<prompt>  New one.  </prompt>",  # kept
        "<prompt>New   one.</prompt>",  # duplicate within the batch
        "<prompt>" + "x" * 50 + "</prompt>",  # too_long
        "<prompt>Another new one.</prompt>",  # kept
    ]
    kept, rejected = filter_variants(replies, current=PROMPT, seen=["Seen  before."], max_chars=40, opened=False)
    assert kept == ["New one.", "Another new one."]
    assert rejected == {"no_tags": 1, "unclosed": 1, "empty": 1, "unchanged": 1, "duplicate": 2, "too_long": 1, "variables": 0}
    assert tuple(rejected) == REJECT_REASONS


def test_filter_variants_opened_never_reports_missing_tags():
    kept, rejected = filter_variants(["Be brief.</prompt>", ""], current="x", seen=(), max_chars=100, opened=True)
    assert kept == ["Be brief."]
    assert rejected["no_tags"] == 0 and rejected["empty"] == 1


# Slow: the FULL template has the tiny model write four long replies per request (~50 s on 2 cores).
@pytest.mark.slow
@pytest.mark.parametrize("template", ["full", "short"])
def test_propose_on_tiny_model_accounts_for_every_sample(tiny_lm, template):
    settings = RewriteSettings(template=template, n_variants=3, max_new_tokens=12)
    kwargs = dict(
        prompt=PROMPT,
        example=Supervised("Review: great.", "positive"),
        effects=EFFECTS,
        task_description=TASK,
        settings=settings,
    )
    proposal = propose(tiny_lm, seed=0, **kwargs)
    assert isinstance(proposal, Proposal)
    assert len(proposal.variants) + sum(proposal.rejected.values()) == 3
    assert PROMPT in proposal.request
    assert propose(tiny_lm, seed=0, **kwargs) == proposal  # same seed, same proposal


def _capture_requests(monkeypatch):
    sent = []

    def fake_sample(lm, text, n, **kwargs):
        sent.append(text)
        return [" Answer with one word.</prompt>", "Answer with one word.", "Read the text. Be creative."][:n]

    monkeypatch.setattr("pmpo.rewriting.proposal.sample", fake_sample)
    return sent


def _propose_short(lm, **settings):
    return propose(
        lm,
        prompt=PROMPT,
        example=Supervised("Review: great.", "positive"),
        effects=EFFECTS,
        task_description=TASK,
        settings=RewriteSettings(template="short", n_variants=3, **settings),
        seed=0,
    )


def test_propose_sends_the_short_form_as_a_completion(tiny_lm, monkeypatch):
    sent = _capture_requests(monkeypatch)
    proposal = _propose_short(tiny_lm)
    assert sent == [proposal.request]  # plain text, no chat template around it
    assert proposal.variants == ("Answer with one word.",)
    assert proposal.rejected["duplicate"] == 1 and proposal.rejected["unchanged"] == 1


def test_propose_can_send_the_short_form_as_a_chat_turn(tiny_lm, monkeypatch):
    sent = _capture_requests(monkeypatch)
    proposal = _propose_short(tiny_lm, short_as_completion=False)
    assert sent[0].startswith("<|im_start|>") and proposal.request in sent[0]
    assert sent[0].endswith("<|im_start|>assistant\n<prompt>")
    assert proposal.variants == ("Answer with one word.",)



def _capture_budget(monkeypatch, replies):
    calls = []

    def fake_sample(lm, text, n, **kwargs):
        calls.append(kwargs["max_new_tokens"])
        return replies[:n]

    monkeypatch.setattr("pmpo.rewriting.proposal.sample", fake_sample)
    return calls


def test_short_proposal_rejects_a_reply_cut_off_by_the_budget_and_keeps_a_finished_one(tiny_lm, monkeypatch):
    runaway = "Answer " + "with one more word " * 60  # no newline, no closing tag, longer than any budget
    calls = _capture_budget(monkeypatch, [runaway, "Answer with one word.", "Reply briefly.</prompt>"])
    proposal = _propose_short(tiny_lm)
    assert len(tiny_lm.tokenizer.encode(runaway, add_special_tokens=False)) >= calls[0]
    assert proposal.variants == ("Answer with one word.", "Reply briefly.")
    assert proposal.rejected["unclosed"] == 1


@pytest.mark.parametrize("template", ["full", "short"])
def test_rewrite_budget_grows_with_the_prompt_and_stops_at_the_context(tiny_lm, monkeypatch, template):
    example = MultipleChoice("Is it plausible?", ("yes", "no"), "no")
    settings = RewriteSettings(template=template, n_variants=1, max_new_tokens=60, diagnosis_tokens=10)
    extra = 10 if template == "full" else 0
    budgets = []
    for prompt, wanted in (("Answer yes or no.", 60), ("Answer yes or no. " * 8, 60), ("Answer yes or no.", 5000)):
        calls = _capture_budget(monkeypatch, ["<prompt>New.</prompt>"])
        wide = settings.model_copy(update={"max_new_tokens": wanted})
        proposal = propose(tiny_lm, prompt=prompt, example=example, effects=(), task_description=TASK, settings=wide, seed=0)
        budgets.append((calls[0], proposal.request))
    tokens = [len(tiny_lm.tokenizer.encode(p, add_special_tokens=False)) for p in ("Answer yes or no. " * 8,)]
    assert budgets[0][0] == 60 + extra  # a short prompt keeps the setting
    assert budgets[1][0] == 2 * tokens[0] + 32 + extra  # a long one gets room to be restated
    # The tiny model's 512-token context caps a budget that would run past it (the request comes first).
    assert budgets[2][0] < 5000 and budgets[2][0] <= tiny_lm.context_length
    # A request that leaves no room for a whole rewritten prompt is refused, not run past the context.
    _capture_budget(monkeypatch, ["<prompt>New.</prompt>"])
    with pytest.raises(ContextLengthError, match="rewrite request is .* tokens"):
        propose(tiny_lm, prompt="Answer yes or no. " * 80, example=example, effects=(), task_description=TASK,
                settings=settings, seed=0)  # fmt: skip


def _full_request(lm, monkeypatch, example, prompt=PROMPT, effects=EFFECTS):
    _capture_budget(monkeypatch, ["Too vague.\n<prompt>Answer with one word.</prompt>"])
    settings = RewriteSettings(template="full", n_variants=1)
    return propose(
        lm, prompt=prompt, example=example, effects=effects, task_description=TASK, settings=settings, seed=0
    ).request


def test_full_request_shows_the_distractor_the_model_ranks_first_and_asks_for_a_diagnosis(tiny_lm, monkeypatch):
    example = MultipleChoice("Review: it broke. Sentiment?", ("positive", "negative", "mixed", "neutral"), "negative")
    request = _full_request(tiny_lm, monkeypatch, example)
    wrong = ["positive", "mixed", "neutral"]
    nll, _ = Scorer(tiny_lm).completions(PROMPT, [(example.input, o) for o in ["negative", *wrong]])
    top = wrong[int(nll[1:].argmin())]
    rank = "above" if nll[1:].min() < nll[0] else "below"
    assert f"The wrong answer the model ranks highest under the current instruction ({rank} the expected one): {top}" in request
    assert "First, in one or two sentences, explain why the current instruction" in request
    assert "<prompt></prompt>" in request and "reasoning steps" in request and "Rephrase ambiguous" in request


def test_full_request_shows_the_models_greedy_answer_on_a_supervised_example(tiny_lm, monkeypatch):
    example = Supervised("Review: great.", "positive")
    request = _full_request(tiny_lm, monkeypatch, example)
    context = render(tiny_lm.tokenizer, tiny_lm.placement, PROMPT, example.input).text
    answer = greedy(tiny_lm, [context], max_new_tokens=16)[0].strip()
    line = next(x for x in request.splitlines() if x.startswith("The model's own answer under the current instruction: "))
    assert line.split(": ", 1)[1] == (answer or "(nothing)")[:400].strip()


def test_full_request_without_masking_effects_leaves_the_table_out(tiny_lm, monkeypatch):
    example = Preference("Write a haiku.", "An old silent pond", ("Roses are red", "A frog jumps"))
    with_table = _full_request(tiny_lm, monkeypatch, example)
    without = _full_request(tiny_lm, monkeypatch, example, effects=())
    assert "dL" in with_table and "+1.25" in with_table
    assert "dL" not in without and "Effect of each part" not in without
    assert "The wrong answer the model ranks highest" in without


def test_short_request_skips_the_models_preference(tiny_lm, monkeypatch):
    computed = []
    monkeypatch.setattr("pmpo.rewriting.proposal.preferred_answer", lambda *a: computed.append(a))
    _capture_budget(monkeypatch, ["Answer with one word.</prompt>"])
    _propose_short(tiny_lm)
    assert computed == []  # a scoring pass or greedy decode only the FULL template uses


def test_the_greedy_answer_comes_from_the_scorers_decoder_not_the_text_sides_type(tiny_lm):
    """A text side (no weights) renders; the scorer decodes. A scorer that cannot decode gives no greedy answer,
    and options still rank."""
    from pmpo.rewriting.diagnosis import preferred_answer
    from pmpo.models.loading import TextSide

    side = TextSide(tiny_lm.tokenizer, tiny_lm.placement, tiny_lm.context_length)
    scorer = Scorer(tiny_lm)
    example = Supervised(input="2+2?", target="4")
    context = render(tiny_lm.tokenizer, tiny_lm.placement, "Answer.", example.input).text
    expected = greedy(tiny_lm, [context], max_new_tokens=16)[0].strip()
    assert preferred_answer(side, scorer, "Answer.", example).text == expected
    mute = Scorer(tiny_lm)
    mute.decoder = lambda: None
    assert preferred_answer(side, mute, "Answer.", example) is None
    choice = MultipleChoice(input="2+2?", options=("3", "4", "5"), target="4")
    assert preferred_answer(side, mute, "Answer.", choice).text in {"3", "5"}
