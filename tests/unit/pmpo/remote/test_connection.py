"""The shared OpenAI-compatible server code (pmpo.remote.connection): key reading, the served-model check, and one error
mapper for the scorer and the rewriter whose messages never hold the API key, whatever the server sent back."""

from __future__ import annotations

from dataclasses import dataclass

import openai
import pytest

from pmpo.errors import PmpoError
from pmpo.remote.client import SCORER, RemoteError
from pmpo.remote.connection import Connection, Speaker, error_message, pick_model, read_key
from pmpo.rewriting.backends import CHAT, SERVED_SAME, RewriterError

try:
    import httpx2 as http  # what this openai release builds its requests and responses with
except ImportError:  # pragma: no cover - older openai releases use httpx
    import httpx as http

FAKE_KEY = "sk-pmpo-LEAKCHECK-e9d41b77c2"  # recognisable: found in any message, it leaked
KEY_ENV = "PMPO_TEST_ENDPOINT_KEY"
URL = "http://127.0.0.1:9/v1"
REQUEST = http.Request("POST", f"{URL}/completions")


@dataclass(frozen=True)
class Settings:
    base_url: str = URL
    model: str | None = "smol"
    api_key_env: str | None = KEY_ENV
    timeout_s: float = 30.0
    max_retries: int = 2


def _status(cls: type, code: int, body: object) -> openai.APIStatusError:
    """An error the client raises for HTTP `code` whose decoded body is `body`."""
    return cls(f"Error code: {code} - {body}", response=http.Response(code, request=REQUEST), body=body)


def _unreachable() -> openai.APIConnectionError:
    exc = openai.APIConnectionError(request=REQUEST)
    exc.__cause__ = ConnectionError(f"proxy http://user:{FAKE_KEY}@proxy:3128 refused the connection")
    return exc


# Every kind of client error, each carrying the key where a careless server or proxy would echo it.
ERRORS = {
    "timeout": openai.APITimeoutError(request=REQUEST),
    "connection": _unreachable(),
    "refused key": _status(openai.AuthenticationError, 401, {"message": f"Incorrect API key provided: {FAKE_KEY}"}),
    "no endpoint": _status(openai.NotFoundError, 404, {"detail": f"Not Found (Authorization: Bearer {FAKE_KEY})"}),
    "wrong model": _status(openai.NotFoundError, 404, {"message": f"model smol not found for key {FAKE_KEY}"}),
    "bad request": _status(openai.BadRequestError, 400, {"error": f"key={FAKE_KEY} cannot use logits_all"}),
    "no echo": _status(openai.BadRequestError, 400, {"error": {"message": "Only no echo is supported", "type": "x"}}),
    "server error": _status(openai.InternalServerError, 500, f"<html>{FAKE_KEY}</html>"),
    "no body": _status(openai.InternalServerError, 503, None),
    # A key 285 characters in: clipping before scrubbing would leave its first characters in the line.
    "long body": _status(openai.InternalServerError, 500, {"message": "x" * 285 + FAKE_KEY}),
    "bad reply": openai.APIResponseValidationError(
        http.Response(200, request=REQUEST), {"k": FAKE_KEY}, message=FAKE_KEY
    ),
}


@pytest.mark.parametrize("speaker", [SCORER, CHAT], ids=["scorer", "rewriter"])
@pytest.mark.parametrize("kind", list(ERRORS))
def test_no_message_holds_the_key_or_a_piece_of_it(speaker, kind):
    said = error_message(ERRORS[kind], speaker, Settings(), FAKE_KEY, "/completions")
    assert "LEAK" not in said  # nor any piece of it long enough to tell
    assert "\n" not in said and len(said) < 600
    assert f"{speaker.name} at {URL}" in said  # says which server, whichever error it was


def test_each_error_names_what_to_fix_for_its_speaker():
    def said(kind: str, speaker: Speaker = SCORER, **settings) -> str:
        return error_message(ERRORS[kind], speaker, Settings(**settings), FAKE_KEY, "/completions")

    assert said("timeout") == (
        f"the scoring server at {URL}/completions did not answer within 30 s (2 retries): "
        "raise model.timeout_s or lower model.max_concurrency"
    )
    assert said("timeout", CHAT).endswith("raise rewriter.timeout_s")
    assert said("connection").startswith(f"cannot reach the scoring server at {URL} (proxy http://user:***@proxy")
    assert said("connection", CHAT).endswith("is it running, and is rewriter.base_url right?")
    assert said("refused key") == f"the scoring server at {URL} refused the API key from ${KEY_ENV} (HTTP 401)"
    assert "name the variable that holds it in rewriter.api_key_env" in said("refused key", CHAT, api_key_env=None)
    assert "a chat-only endpoint cannot return them" in said("no endpoint")  # the scorer needs /v1/completions
    assert said("no endpoint", CHAT).endswith("is rewriter.base_url the API root (…/v1)?")
    assert said("wrong model", CHAT).startswith(
        f"rewriter.model: the rewriter at {URL} does not serve 'smol': model smol"
    )
    assert said("bad request").endswith("--logits_all true)")  # the llama.cpp hint is the scorer's alone
    assert "logits_all true" not in said("bad request", CHAT)
    # rewriter: same with a served model: its own server rewrites, the model block is what to fix
    assert said("no endpoint", SERVED_SAME).endswith("name one that does in a rewriter: block (backend openai)")
    assert said("connection", SERVED_SAME).endswith("is model.base_url right?")
    assert said("no echo").endswith("score with one that can, e.g. vLLM)")  # llama.cpp's llama-server
    assert "Only no echo is supported" in said("no echo")  # the server's own words stay in the line
    assert said("no body").startswith(f"the scoring server at {URL}/completions failed: HTTP 503: ")


def test_a_failed_call_raises_the_speakers_error_without_the_client_traceback(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)

    def fail():
        raise ERRORS["server error"]

    for speaker, error in ((SCORER, RemoteError), (CHAT, RewriterError)):
        with pytest.raises(error) as err:
            Connection(Settings(), speaker).call(fail, "/models")
        assert "***" in str(err.value) and FAKE_KEY not in str(err.value)
        assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_missing_key_names_the_field_and_the_variable_never_a_value(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(RewriterError, match=f"^rewriter.api_key_env: the environment variable {KEY_ENV} is not set"):
        Connection(Settings(), CHAT)
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(PmpoError, match=f"^model.api_key_env: the environment variable {KEY_ENV} is not set"):
        read_key(KEY_ENV, "model.api_key_env")
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    assert read_key(KEY_ENV, "model.api_key_env") == FAKE_KEY and read_key(None, "model.api_key_env") is None


def test_the_served_model_check():
    assert pick_model(["a", "smol"], "smol", CHAT, URL) == "smol"
    assert pick_model(["only"], None, SCORER, URL) == "only"  # the scorer may leave the name unset
    with pytest.raises(RemoteError, match=r"^model.model: .* serves 'a', 'b': set model.model to the one to use$"):
        pick_model(["a", "b"], None, SCORER, URL)
    many = [f"m{i}" for i in range(9)]
    with pytest.raises(RewriterError) as err:
        pick_model(many, "big", CHAT, URL)
    assert str(err.value) == (
        f"rewriter.model: the rewriter at {URL} does not serve a model named 'big'; "
        "it serves 'm0', 'm1', 'm2', 'm3', 'm4' ..."
    )


def test_the_served_model_is_asked_of_a_real_server_with_the_key(tiny_lm, monkeypatch):
    from testkit.echo_server import echo_app, serving

    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with serving(echo_app(tiny_lm, "tiny", key=FAKE_KEY)) as url:
        assert Connection(Settings(base_url=url, model=None), SCORER).served_model(None) == "tiny"
        monkeypatch.setenv(KEY_ENV, "sk-wrong")
        with pytest.raises(RewriterError) as err:
            Connection(Settings(base_url=url), CHAT).served()
    assert str(err.value) == f"the rewriter at {url} refused the API key from ${KEY_ENV} (HTTP 401)"
