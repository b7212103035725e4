"""MLflow's training rows as pmpo examples: inputs fill the variables, expectations are the references, and a
row without what the prompt needs is named in the error."""

import math

import pytest

from integrations.mlflow_examples import reference, to_dataset, to_example
from pmpo.data.examples import Supervised
from pmpo.errors import DataError
from pmpo.text.template import chat_prompt


def test_inputs_fill_the_templates_variables_and_expected_response_is_the_reference():
    rows = [
        {"inputs": {"question": "2+2?", "style": "terse"}, "expectations": {"expected_response": "4"}},
        {"inputs": {"question": "3+3?", "style": "terse"}, "expectations": {"expected_response": "6"}},
    ]
    data = to_dataset(rows, "Answer {{question}} in a {{style}} way.", "qa", description="arithmetic")
    assert data.examples[0] == Supervised(
        input="question: 2+2?\nstyle: terse", target="4", fields=(("question", "2+2?"), ("style", "terse"))
    )
    assert data.description == "arithmetic" and data.name == "qa" and len(data) == 2
    assert data.where(1) == "train_data, row 1"  # numbered from 0, as MLflow's own errors and the DataFrame


def test_a_prompt_without_variables_takes_the_one_input_whole():
    example = to_example({"inputs": {"review": "Great film."}, "outputs": "positive"}, 0)
    assert example == Supervised(input="Great film.", target="positive")


def test_a_chat_prompts_variables_are_read_from_all_its_messages():
    prompt = chat_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{{q}}"}])
    data = to_dataset([{"inputs": {"q": "hi"}, "expectations": {"answer": "hello"}}], prompt, "chat")
    assert data.examples[0].fields == (("q", "hi"),) and data.examples[0].target == "hello"


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"expectations": {"expected_response": "a", "other": "b"}}, "a"),
        ({"expectations": {"answer": "only"}}, "only"),  # one expectation: its value, whatever its key
        ({"expectations": {"a": 1, "b": 2}, "outputs": "from outputs"}, "from outputs"),
        ({"expectations": math.nan, "outputs": "o"}, "o"),  # a DataFrame's missing cell
        ({"outputs": {"label": 1}}, '{"label": 1}'),  # not text: as JSON
    ],
)
def test_the_reference_is_read_in_order(row, expected):
    assert reference(row, 0) == expected


def test_a_row_without_a_reference_is_named():
    with pytest.raises(DataError, match=r"row 3: expectations \['a', 'b'\] name no reference.*expected_response"):
        reference({"expectations": {"a": 1, "b": 2}, "outputs": math.nan}, 3)
    with pytest.raises(DataError, match="row 0: no reference output"):
        reference({"inputs": {"x": "y"}}, 0)


def test_a_row_lacking_a_variable_or_inputs_is_named():
    with pytest.raises(DataError, match=r"row 1: inputs lack the prompt's variable\(s\) style \(inputs: question\)"):
        to_dataset(
            [
                {"inputs": {"question": "a", "style": "b"}, "outputs": "x"},
                {"inputs": {"question": "c"}, "outputs": "y"},
            ],
            "{{question}} {{style}}",
            "qa",
        )
    with pytest.raises(DataError, match="row 0: 'inputs' must be a non-empty dict"):
        to_example({"inputs": {}, "outputs": "x"}, 0)
    with pytest.raises(DataError, match="train_data is empty"):
        to_dataset([], "p", "qa")
