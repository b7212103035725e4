"""Demonstrations in a prompt: written as the task's own input and reference, placed in the instruction text (before
a template's variable part), and found again by text so no example is scored with itself in the prompt."""

from pmpo.data.examples import MultipleChoice, Supervised
from pmpo.text.demonstrations import demonstration, input_form, shown, usable, with_demonstrations
from pmpo.text.template import chat_messages, chat_prompt, prompt_variables

GREAT = Supervised("great film", "positive", fields=(("review", "great film"),))
DULL = Supervised("dull plot", "negative", fields=(("review", "dull plot"),))
PLAIN = [Supervised("great film", "positive"), Supervised("dull plot", "negative")]


def test_an_instruction_ends_with_numbered_demonstrations_input_then_reference():
    prompt = with_demonstrations("Label the review.", PLAIN)
    assert prompt == "Label the review.\n\nExample 1:\ngreat film\npositive\n\nExample 2:\ndull plot\nnegative"


def test_a_template_keeps_its_variables_and_the_demonstrations_come_before_its_variable_part():
    template = "Label the review.\n\nReview: {{review}}\nSentiment:"
    prompt = with_demonstrations(template, [GREAT, DULL])
    assert prompt_variables(prompt) == ("review",)
    assert prompt.endswith("\n\nReview: {{review}}\nSentiment:")  # the example to answer still comes last
    assert "Example 1:\nReview: great film\nSentiment: positive" in prompt
    assert prompt.index("Label the review.") < prompt.index("Example 1:") < prompt.index("{{review}}")


def test_a_chat_prompt_gets_them_in_its_optimised_message_in_the_user_templates_form():
    chat = chat_prompt([{"role": "system", "content": "Label it."}, {"role": "user", "content": "R: {{review}}"}])
    messages = chat_messages(with_demonstrations(chat, [GREAT]))
    assert messages[0].content == "Label it.\n\nExample 1:\nR: great film\npositive"
    assert messages[1].content == "R: {{review}}"


def test_shown_finds_the_examples_whose_demonstration_is_in_the_prompt_and_no_other():
    examples = [*PLAIN, Supervised("fine acting", "positive")]
    assert shown("Label the review.", examples) == []
    assert shown(with_demonstrations("Label the review.", PLAIN[1:]), examples) == [1]
    # By text: a prompt that keeps a demonstration (a rewrite of one with them) still shows it.
    assert shown("Say the label.\n\ngreat film\npositive", examples) == [0]
    template = "Label.\n\nReview: {{review}}\nSentiment:"
    assert shown(with_demonstrations(template, [DULL]), [GREAT, DULL]) == [1]


def test_an_example_whose_text_reads_as_a_variable_is_not_usable():
    assert usable(PLAIN[0])
    assert not usable(Supervised("see {{x}}", "y"))
    assert not usable(Supervised("a", "b", fields=(("other", "a"),)), input_form("Q: {{review}}"))
    mc = MultipleChoice("2+2?", ("3", "4"), "4")
    assert demonstration(mc) == "2+2?\n4"
