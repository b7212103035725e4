"""The copy detector: a rewrite that quotes the hard example is rejected as `copies_example`."""

from pmpo.data import MultipleChoice, Preference, Supervised
from pmpo.rewriting.copying import COPY_RUN_WORDS, copied_run, example_texts
from pmpo.rewriting.replies import REJECT_REASONS, filter_variants

EXAMPLE = Supervised("The battery died after two days, terrible phone.", "negative")
PROMPT = "Classify the sentiment of the review."


def test_a_run_of_the_examples_words_is_a_copy_whatever_the_case_and_punctuation():
    run = copied_run("Say NEGATIVE when the battery died; after two days!", example_texts(EXAMPLE), prompt=PROMPT)
    assert run == " ".join(["the", "battery", "died", "after"][:COPY_RUN_WORDS])


def test_the_threshold_edge():
    texts = ["alpha beta gamma delta epsilon"]
    n = COPY_RUN_WORDS
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    assert copied_run(" ".join(words[:n]), texts, prompt="x", n=n) is not None
    assert copied_run(" ".join(words[: n - 1]) + " zeta", texts, prompt="x", n=n) is None
    assert copied_run("alpha beta gamma", texts, prompt="x", n=3) == "alpha beta gamma"
    assert copied_run("alpha beta gamma", texts, prompt="x", n=4) is None


def test_the_prompts_own_words_are_not_a_copy():
    example = Supervised("Classify the sentiment of the review: great phone.", "positive")
    assert copied_run("Please classify the sentiment of the review.", example_texts(example), prompt=PROMPT) is None
    # one new word in the run is enough for it to count
    assert copied_run("classify the sentiment of this", ["classify the sentiment of this phone"], prompt=PROMPT)


def test_template_variables_are_exempt_and_break_runs():
    example = Supervised("{{review}}", "x", fields=(("review", "great phone love it"),))
    assert copied_run("Read {{review}} and answer.", example_texts(example), prompt="Read {{ review }}.") is None
    assert copied_run("great phone {{review}} love it", ["great phone love it"], prompt="x", n=3) is None


def test_the_texts_checked_are_the_input_fields_and_the_references():
    assert example_texts(EXAMPLE) == (EXAMPLE.input, "negative")
    templated = Supervised("ignored", "yes", aliases=("y",), fields=(("q", "Is it?"), ("ctx", "It is.")))
    assert example_texts(templated) == ("Is it?", "It is.", "yes", "y")
    question = MultipleChoice("Pick one.", ("left side of the road", "right side"), "right side")
    assert example_texts(question) == ("Pick one.", "right side")  # the other options are labels, fair to name
    assert example_texts(Preference("q", "the good answer", ("bad",))) == ("q", "the good answer")


def test_filter_variants_rejects_copies_under_their_own_reason():
    assert "copies_example" in REJECT_REASONS
    replies = [
        "<prompt>Classify the review; the battery died after two days means negative.</prompt>",
        "<prompt>Classify the sentiment of the review as positive or negative.</prompt>",
    ]
    kept, rejected = filter_variants(
        replies, current=PROMPT, seen=(), max_chars=500, opened=False, examples=example_texts(EXAMPLE)
    )
    assert kept == ["Classify the sentiment of the review as positive or negative."]
    assert rejected["copies_example"] == 1
    kept, rejected = filter_variants(replies, current=PROMPT, seen=(), max_chars=500, opened=False)
    assert len(kept) == 2 and rejected["copies_example"] == 0  # no examples given: nothing to copy
