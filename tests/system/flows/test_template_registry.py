"""Registry round trip of templates and chat prompts: what pmpo registers, MLflow loads back in the same format
with the same variables, and the application can still fill with `prompt.format(**vars)`."""

from __future__ import annotations

import json

import pytest

from pmpo.text.template import chat_messages, chat_prompt, editable, prompt_variables, variables

CHAT = chat_prompt(
    [
        {"role": "system", "content": "You label product reviews.\nReply with one word."},
        {"role": "user", "content": "Product: {{product}}\nReview: {{review}}"},
    ]
)
TEMPLATE = "Classify the sentiment of the review.\n\nReview: {{review}}\nSentiment:"
ROWS = [
    {"review": r, "product": p, "target": t}
    for r, p, t in [
        ("Loved it, works great.", "kettle", "positive"),
        ("Broke after a day.", "lamp", "negative"),
        ("Best purchase this year.", "chair", "positive"),
        ("Terrible, returned it.", "desk", "negative"),
        ("Does exactly what it says.", "fan", "positive"),
        ("Cheap plastic, cracked.", "bowl", "negative"),
    ]
]


@pytest.fixture
def prompts(pmpo_home):
    from tasks.mlflow import prompts

    return prompts


def test_text_and_chat_templates_round_trip_through_the_registry(prompts):
    import mlflow

    prompts.register("tpl", TEMPLATE, "first", {})
    prompts.register("chat", CHAT, "first", {})
    assert prompts.get_version("tpl", 1).text == TEMPLATE
    assert prompts.get_version("chat", 1).text == CHAT  # pmpo's string form, the same candidate as before
    assert prompts.find_version("chat", CHAT) == 1

    loaded = mlflow.genai.load_prompt("prompts:/chat/1")
    assert not loaded.is_text_prompt and loaded.variables == {"product", "review"}  # MLflow's own chat format
    assert loaded.format(product="lamp", review="Broke.") == [
        {"role": "system", "content": "You label product reviews.\nReply with one word."},
        {"role": "user", "content": "Product: lamp\nReview: Broke."},
    ]
    assert mlflow.genai.load_prompt("prompts:/tpl/1").format(review="Fine.").endswith("Review: Fine.\nSentiment:")


@pytest.mark.usefixtures("prefect_harness")
def test_optimize_from_a_registered_chat_prompt_registers_a_chat_prompt_with_the_same_variables(
    prompts, tmp_path, tiny_model_dir
):
    import mlflow

    from flows.config import OptimizeConfig
    from flows.optimize import optimize_prompt

    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    prompts.set_alias("chat", "production", prompts.register("chat", CHAT, "first", {}))
    config = OptimizeConfig.model_validate(
        {
            "task": "chat",
            "data": {"source": str(data)},
            "model": {"spec": str(tiny_model_dir), "dtype": "float32"},
            "prompt": "prompts:/chat@production",
            "iterations": 1,
            "rewrite": {"k": 1, "n": 2, "max_new_tokens": 8},
            "eval": {"generate": False},
        }
    )
    summary = optimize_prompt(config)

    assert summary.initial_prompt == CHAT
    for row in summary.candidates:  # every candidate is the chat prompt with only its system message changed
        assert chat_messages(row.prompt)[1:] == chat_messages(CHAT)[1:]
        assert prompt_variables(row.prompt) == ("product", "review") and not variables(editable(row.prompt))
    loaded = mlflow.genai.load_prompt(f"prompts:/{summary.prompt_name}/{summary.prompt_version}")
    assert not loaded.is_text_prompt
    filled = loaded.format(product="lamp", review="Broke.")
    assert filled[-1] == {"role": "user", "content": "Product: lamp\nReview: Broke."}
