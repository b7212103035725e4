"""MLflow's training rows as pmpo examples: `inputs` fill the template's variables, `expectations` are the
references. Plain Python (no mlflow import), so the mapping is tested without a store.

A row is what `mlflow.genai.optimize_prompts` hands an optimizer: `{"inputs": {...}, "outputs": ...,
"expectations": {...}}` (a DataFrame's record, so a missing cell is NaN). The reference is, in this order:
`expectations["expected_response"]`; the one value of an expectations dict with a single key; `outputs` (what
MLflow's own evaluation uses when there are no expectations). Rows are numbered from 0, as in MLflow's own
errors and a DataFrame's index.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

from pmpo.data.examples import Dataset, Supervised
from pmpo.errors import DataError
from pmpo.text.template import Fields, prompt_variables

EXPECTED = "expected_response"  # MLflow's own key for the reference answer (its scorers read it too)


def to_dataset(rows: Sequence[dict[str, Any]], prompt: str, name: str, description: str = "") -> Dataset:
    """The rows as supervised examples for `prompt` (its variables are checked against every row's inputs)."""
    if not rows:
        raise DataError(f"prompt {name!r}: PMPO needs training rows with references; train_data is empty")
    needed = prompt_variables(prompt)
    examples = tuple(to_example(row, i, needed) for i, row in enumerate(rows))
    return Dataset(
        name=name, examples=examples, description=description, origin="train_data", rows=tuple(range(len(examples)))
    )


def to_example(row: dict[str, Any], index: int, variables: Sequence[str] = ()) -> Supervised:
    """One row as an example; errors name the row and what is missing."""
    inputs = row.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise DataError(f"train_data row {index}: 'inputs' must be a non-empty dict of the prompt's variables")
    missing = [v for v in variables if v not in inputs]
    if missing:
        raise DataError(
            f"train_data row {index}: inputs lack the prompt's variable(s) {', '.join(missing)} "
            f"(inputs: {', '.join(map(str, inputs))})"
        )
    fields = tuple((str(k), as_text(v)) for k, v in inputs.items())
    # A prompt without variables takes the whole input after it: the one value, or `name: value` lines.
    text = fields[0][1] if len(fields) == 1 else Fields(fields).text
    return Supervised(input=text, target=reference(row, index), fields=fields if variables else ())


def reference(row: dict[str, Any], index: int) -> str:
    """The row's reference output (see the module's order); an error naming the row when it has none."""
    expectations = row.get("expectations")
    if isinstance(expectations, dict) and expectations:
        if EXPECTED in expectations and not _absent(expectations[EXPECTED]):
            return as_text(expectations[EXPECTED])
        if len(expectations) == 1:
            [value] = expectations.values()
            if not _absent(value):
                return as_text(value)
        if _absent(row.get("outputs")):
            raise DataError(
                f"train_data row {index}: expectations {sorted(expectations)} name no reference: "
                f"give '{EXPECTED}' (or a single expectation, or 'outputs')"
            )
    if _absent(row.get("outputs")):
        raise DataError(
            f"train_data row {index}: no reference output: give expectations={{'{EXPECTED}': ...}} or 'outputs'"
        )
    return as_text(row["outputs"])


def as_text(value: Any) -> str:
    """A value as the text the model reads or should produce: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
