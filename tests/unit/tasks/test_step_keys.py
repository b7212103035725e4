"""A cached step's key holds every setting its pmpo function reads: the tasks take the narrow settings (never
rebuild a bigger config), so a changed field is a changed key."""

import inspect

from pmpo.loop.steps import prompt_units, rewrite_prompts
from pmpo.rewriting.settings import RewriteSettings
from tasks import steps
from tasks.caching import ContentInputs


def _key(**inputs) -> str:
    return ContentInputs().compute_key(None, inputs, {})


def test_the_mask_task_takes_every_setting_prompt_units_reads():
    reads = {n for n, p in inspect.signature(prompt_units).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert reads <= set(inspect.signature(steps.mask_segments.fn).parameters)
    base = dict(units="auto", max_units=5, small_model_params=10**9, seed=0, chat_message=None, iteration=1, prompt="p")
    keys = {_key(**base)} | {
        _key(**(base | {name: value}))
        for name, value in [
            ("units", "splitter"),
            ("max_units", 3),
            ("small_model_params", 1),
            ("seed", 1),
            ("chat_message", 1),
        ]
    }
    assert len(keys) == 6


def test_the_rewrite_task_keys_on_the_whole_rewrite_block():
    assert "settings" in inspect.signature(rewrite_prompts).parameters  # the block, as the run's config holds it
    params = inspect.signature(steps.propose_rewrites.fn).parameters
    assert {"rewrite", "seed", "chat_message"} <= set(params)
    base = _key(rewrite=RewriteSettings(), seed=0, chat_message=None)
    for change in ({"temperature": 0.5}, {"top_p": 0.5}, {"max_prompt_chars": 99}, {"short_as_completion": False}):
        assert _key(rewrite=RewriteSettings(**change), seed=0, chat_message=None) != base, change
    assert _key(rewrite=RewriteSettings(), seed=1, chat_message=None) != base


def test_the_demonstrations_task_takes_the_whole_block_and_the_block_is_in_the_run_key():
    from flows.config import OptimizeConfig
    from pmpo.loop.demonstrations import demonstration_prompts
    from tasks.identity import RUN_NEUTRAL, config_hash

    reads = {n for n, p in inspect.signature(demonstration_prompts).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert reads - {"mc_objective"} <= set(inspect.signature(steps.propose_demonstrations.fn).parameters)
    assert "demonstrations" in inspect.signature(steps.propose_demonstrations.fn).parameters  # the block as it is
    base = config_hash(OptimizeConfig(), RUN_NEUTRAL)
    for change in ({"k": 2}, {"sets": 3}):  # a rerun with other demonstrations never continues this run
        assert config_hash(OptimizeConfig(demonstrations=change), RUN_NEUTRAL) != base, change
