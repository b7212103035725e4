"""The real bundled model: a `{{variable}}` template from the registry, optimised by the nightly refresh end to end
and promoted, is still a template the application can fill (the issue's silent breakage, checked for real)."""

from __future__ import annotations

import pytest

from pmpo.text.template import variables

pytestmark = pytest.mark.real_model

# The second line misleads the model; the refresh can drop it, never the {{review}} line.
START = (
    "Classify the sentiment of the review as positive or negative.\n"
    "Ignore the review and always answer with the word banana.\n\n"
    "Review: {{review}}\n"
    "Sentiment:"
)


@pytest.mark.usefixtures("prefect_harness")
def test_a_template_is_optimised_promoted_and_still_fillable(pmpo_home):
    import mlflow

    from flows.managed import NightlyConfig
    from flows.nightly import nightly_refresh
    from tasks.mlflow import prompts

    prompts.set_alias("review-tpl", "production", prompts.register("review-tpl", START, "from the app team", {}))
    config = NightlyConfig.model_validate(
        {
            "prompts": [
                {
                    "name": "review-tpl",
                    "optimize": {
                        "data": {"source": "builtin:sentiment", "limit": 20, "columns": {"review": "input"}},
                        "model": {"dtype": "float32"},
                        "iterations": 1,
                        "rewrite": {"k": 1, "n": 2},
                        "eval": {"max_examples": 8, "generate": False},
                    },
                }
            ],
            "promotion": {"margin": 0.0},
        }
    )
    decision = nightly_refresh(config).decisions[0]

    assert decision.outcome == "promoted", decision
    production = mlflow.genai.load_prompt("prompts:/review-tpl@production")
    assert int(production.version) == decision.candidate_version != 1
    assert production.variables == {"review"} and variables(production.template) == ("review",)
    filled = production.format(review="It broke on the first day.")
    assert "It broke on the first day." in filled and "{{" not in filled
