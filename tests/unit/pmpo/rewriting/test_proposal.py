"""Hard examples and `propose` plumbing on the tiny random model: budgets, templates, what the request shows."""

import pytest

from pmpo.data.examples import MultipleChoice, Preference, Supervised
from pmpo.errors import ContextLengthError
from pmpo.loop.result import SegmentEffect
from pmpo.models.generation import greedy
from pmpo.rewriting.proposal import RewriteOutcome, RewriteSettings, hard_examples, propose
from pmpo.scoring.loss import Scorer
from pmpo.text.rendering import render

EFFECTS = (SegmentEffect(0, "Read the text.", 1.25), SegmentEffect(1, "Be creative.", -0.5))
TASK = "Classify the sentiment of a product review."
PROMPT = "Read the text. Be creative."


def test_hard_examples_are_the_highest_losses_with_ties_to_the_lower_index():
    assert hard_examples([1.0, 5.0, 3.0, 5.0, 0.5], 3) == [1, 3, 2]
    assert hard_examples([2.0, 2.0, 2.0], 2) == [0, 1]
    assert hard_examples([1.0], 3) == [0]
    assert hard_examples([1.0, 2.0], 0) == []


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
    assert isinstance(proposal, RewriteOutcome)
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
        proposal = propose(
            tiny_lm, prompt=prompt, example=example, effects=(), task_description=TASK, settings=wide, seed=0
        )
        budgets.append((calls[0], proposal.request))
    tokens = [len(tiny_lm.tokenizer.encode(p, add_special_tokens=False)) for p in ("Answer yes or no. " * 8,)]
    assert budgets[0][0] == 60 + extra  # a short prompt keeps the setting
    assert budgets[1][0] == 2 * tokens[0] + 32 + extra  # a long one gets room to be restated
    # The tiny model's 512-token context caps a budget that would run past it (the request comes first).
    assert budgets[2][0] < 5000 and budgets[2][0] <= tiny_lm.context_length
    # A request that leaves no room for a whole rewritten prompt is refused, not run past the context.
    _capture_budget(monkeypatch, ["<prompt>New.</prompt>"])
    with pytest.raises(ContextLengthError, match="rewrite request is .* tokens"):
        propose(
            tiny_lm,
            prompt="Answer yes or no. " * 80,
            example=example,
            effects=(),
            task_description=TASK,
            settings=settings,
            seed=0,
        )


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
    assert (
        f"The wrong answer the model ranks highest under the current instruction ({rank} the expected one): {top}"
        in request
    )
    assert "First, in one or two sentences, explain why the current instruction" in request
    assert "<prompt></prompt>" in request and "reasoning steps" in request and "Rephrase ambiguous" in request


def test_full_request_shows_the_models_greedy_answer_on_a_supervised_example(tiny_lm, monkeypatch):
    example = Supervised("Review: great.", "positive")
    request = _full_request(tiny_lm, monkeypatch, example)
    context = render(tiny_lm.tokenizer, tiny_lm.placement, PROMPT, example.input).text
    answer = greedy(tiny_lm, [context], max_new_tokens=16)[0].strip()
    line = next(
        x for x in request.splitlines() if x.startswith("The model's own answer under the current instruction: ")
    )
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
    from pmpo.models.loading import TextSide
    from pmpo.rewriting.diagnosis import preferred_answer

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
