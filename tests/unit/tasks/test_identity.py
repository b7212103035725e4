"""Run identities and cache keys (tasks.identity): content, never objects or labels; pmpo's source in every key;
a served model named by one identity whether it scores or rewrites, in its cache keys and in the MLflow record."""

from __future__ import annotations

import pytest

from pmpo.data.examples import Dataset, Supervised
from pmpo.models.loading import ModelSettings
from pmpo.remote.connection import served_identity
from pmpo.rewriting.backends import chat_identity
from pmpo.rewriting.settings import RewriterSettings
from pmpo.scoring.loss import ScorerSettings
from tasks import caching, identity
from tasks.models import ModelRef
from tasks.rewriters import RewriterRef


def _data(description: str) -> Dataset:
    return Dataset("t", (Supervised("in", "out"),), description=description)


def _served(url: str = "http://h:8000/v1/", revision: str | None = None, prepend_bos: bool = False) -> ModelRef:
    settings = ModelSettings(backend="openai", base_url=url, revision=revision, prepend_bos=prepend_bos)
    return ModelRef(settings, ScorerSettings(), served_identity(url, "m", revision), "remote", "remote", "tok@sha256:2")


def test_cache_key_content_includes_description_and_source():
    assert identity.content(_data("Classify.")) != identity.content(_data("Translate."))
    assert len(identity.source_fingerprint()) == 16 and identity.source_fingerprint() == identity.source_fingerprint()


def test_cache_key_changes_with_pmpo_source(monkeypatch):
    policy = caching.ContentInputs()
    inputs = {"prompt": "Answer.", "data": _data("")}
    before = policy.compute_key(None, inputs, {})
    monkeypatch.setattr(identity, "source_fingerprint", lambda: "0" * 16)
    assert policy.compute_key(None, inputs, {}) != before


def test_local_cache_keys_are_unchanged_and_remote_keys_hold_the_tokenizer():
    local = identity.model_key(ModelRef(ModelSettings(spec="/m"), ScorerSettings(), "tiny@sha256:1", "float32", "cpu"))
    assert "tokenizer" not in local and "prepend_bos" not in local  # the keys of runs made before still hit
    remote = identity.model_key(_served(revision="r1"))
    assert remote["tokenizer"] == "tok@sha256:2" and remote["identity"] == "openai:http://h:8000/v1#m@r1"


def test_prepend_bos_is_in_the_key_not_in_the_identity():
    plain, bos = _served(), _served(prepend_bos=True)
    assert plain.identity == bos.identity  # the same model on the same server
    assert identity.model_key(bos) == {**identity.model_key(plain), "prepend_bos": True}  # other texts, other losses


@pytest.mark.parametrize("revision", [None, "r1"])
def test_a_served_model_has_one_identity_in_its_keys_and_its_record(revision):
    url = "http://h:8000/v1/"
    model = _served(url, revision)
    chat = RewriterSettings(backend="openai", base_url=url, model="m", revision=revision)
    writer = RewriterRef("same", chat_identity(chat, served=["m"]), chat=chat)  # the served model rewriting itself

    assert writer.identity == model.identity == f"openai:http://h:8000/v1#m@{revision or 'unpinned'}"
    tags = identity.record_tags(model, writer, _data(""), _data(""))
    assert tags["pmpo.model_identity"] == tags["pmpo.rewriter_identity"] == model.identity
    assert identity.model_key(model)["identity"] == identity.rewriter_key(writer)["identity"] == model.identity


@pytest.mark.server
def test_a_served_model_is_one_identity_to_the_scorer_the_rewriter_and_the_keys(tiny_lm, tiny_model_dir):
    from tasks import models, rewriters
    from testkit.echo_server import echo_app, serving

    with serving(echo_app(tiny_lm, "tiny")) as url:
        settings = ModelSettings(spec=str(tiny_model_dir), backend="openai", base_url=url, model="tiny", check=False)
        ref = models.model_ref(settings)
        same = rewriters.same_as(ref)
        chat = rewriters.chat_ref(
            RewriterSettings(backend="openai", base_url=url, model="tiny")
        )  # the same server named as a rewriter
        found = {
            "model": ref.identity,
            "scorer": models.scorer(ref).served.identity(),
            "same": same.identity,
            "same rewriter": rewriters.rewriter(same).identity,
            "chat": chat.identity,
            "model key": identity.model_key(ref)["identity"],
            "rewriter key": identity.rewriter_key(same)["identity"],
            **identity.record_tags(ref, same, _data(""), _data("")),
        }
    found = {k: v for k, v in found.items() if "fingerprint" not in k}
    assert set(found.values()) == {f"openai:{url.rstrip('/')}#tiny@unpinned"}, found


def test_a_given_description_replaces_the_datas_own_in_both_splits_and_the_key():
    from tasks.steps import load_split

    args = dict(
        format=None, columns={}, kind="auto", limit=10, hub_config=None, hub_split=None, seed=0,
        train_fraction=0.5, train_cap=None,
    )  # fmt: skip
    plain, _ = load_split.fn("builtin:sentiment", **args)
    dataset, split = load_split.fn("builtin:sentiment", **args, description="  Film reviews: positive or negative. ")
    assert dataset.description == split.train.description == split.test.description
    assert dataset.description == "Film reviews: positive or negative."
    assert dataset.fingerprint == plain.fingerprint  # the same examples...
    # ...but not the same rewrite requests, so not the same keys
    assert identity.content(dataset) != identity.content(plain)
