"""The rewriter apart from the scored model: a chat endpoint (a real `transformers serve` of the bundled model,
started by this module), its config block and flags, its one-line errors, and an optimisation flow whose rewrites
come from the server, with its identity on record and its API key nowhere in any record."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flows.config import ConfigError, OptimizeConfig, build
from pmpo.data.examples import Supervised
from pmpo.loop.steps import unit_mode
from pmpo.masking.units import model_units
from pmpo.rewriting.backends import ChatRewriter, RewriterError, _with_stop, as_rewriter
from pmpo.rewriting.proposal import RewriteSettings, propose
from pmpo.rewriting.requests import choose_template
from pmpo.rewriting.settings import RewriterSettings
from pmpo.scoring.loss import Scorer
from pmpo_cli.main import build_parser, main
from pmpo_cli.options import config_values
from support.pipeline import PROMPT, tiny_values
from testkit.chat_server import transformers_serve
from testkit.echo_server import free_port

FAKE_KEY = "sk-pmpo-LEAKCHECK-5c1d7e9a0b"  # recognisable: found anywhere, it leaked
KEY_ENV = "PMPO_TEST_REWRITER_KEY"


# This test machine's CPUs are shared: a reply may take minutes, and a retried request would only queue behind
# the one still generating.
PATIENT = {"timeout_s": 600.0, "max_retries": 0}


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    """`transformers serve` pinned to the bundled SmolLM2 checkpoint on a free port, stopped after the module."""
    with transformers_serve(tmp_path_factory.mktemp("serve") / "serve.log") as server:
        yield server


# --- without a server -------------------------------------------------------------------------------------


def test_a_rewriter_of_unknown_size_counts_as_large_unless_set():
    assert choose_template("auto", None, 1_000_000_000) == "full"
    assert unit_mode("auto", None, 1_000_000_000) == "model"
    assert choose_template("short", None, 1_000_000_000) == "short"
    assert unit_mode("splitter", None, 1_000_000_000) == "splitter"
    assert choose_template("auto", 135_000_000, 1_000_000_000) == "short"


@pytest.mark.parametrize(
    ("rewriter", "says"),
    [
        ({"backend": "local"}, "rewriter: backend local needs spec"),
        ({"backend": "openai", "base_url": "http://x/v1"}, "rewriter: backend openai needs base_url and model"),
        (
            {"backend": "openai", "base_url": "http://x/v1", "model": "m", "api_key_env": "sk-abc-123"},
            "rewriter.api_key_env: takes the NAME of an environment variable",
        ),
        ({"backend": "remote"}, "rewriter.backend: Input should be 'same', 'local' or 'openai'"),
        ({"api_key": "sk-abc"}, "rewriter.api_key: Extra inputs are not permitted"),
    ],
)
def test_bad_rewriter_blocks_get_one_line_naming_the_field(rewriter, says):
    with pytest.raises(ConfigError) as err:
        build(OptimizeConfig, {"rewriter": rewriter})
    assert says in str(err.value) and "\n" not in str(err.value)
    assert "sk-abc" not in str(err.value)


def test_the_default_rewriter_is_the_scored_model():
    assert OptimizeConfig().rewriter.backend == "same"


def test_rewriter_flags_fill_the_block():
    parser = build_parser()
    args = parser.parse_args(
        ["optimize", "--rewriter-base-url", "http://h:1/v1", "--rewriter-model", "big", "--rewriter-api-key-env", "K"]
    )
    assert config_values(args)["rewriter"] == {
        "backend": "openai",
        "base_url": "http://h:1/v1",
        "model": "big",
        "api_key_env": "K",
    }
    args = parser.parse_args(["optimize", "--rewriter-spec", "some/model"])
    assert config_values(args)["rewriter"] == {"backend": "local", "spec": "some/model"}
    assert "rewriter" not in config_values(parser.parse_args(["optimize"]))


def test_a_reply_that_stopped_at_a_stop_string_ends_with_it():
    stop = ("</prompt>",)
    assert _with_stop("Why. <prompt>Be brief.", "stop", stop) == "Why. <prompt>Be brief.</prompt>"  # OpenAI strips it
    assert (
        _with_stop("<prompt>Be brief.</prompt>", "stop", stop) == "<prompt>Be brief.</prompt>"
    )  # some servers keep it
    assert _with_stop("<prompt>Be bri", "length", stop) == "<prompt>Be bri"  # cut off: stays unclosed
    assert _with_stop("<prompt>Be brief.", "stop", ()) == "<prompt>Be brief."


def test_a_chat_reply_cut_off_by_the_token_limit_is_counted_unclosed(tiny_lm):
    from testkit.echo_server import echo_app, serving

    choices = [
        ("Answer in one word.", "stop"),  # ended its turn: complete (the API strips the "</prompt>" it stopped at)
        ("<prompt>Say yes or no</prompt>", "stop"),  # a server that keeps the stop string
        ("Answer briefly.\nNext review: the", "length"),  # ran out past the end of its line: the line is whole
        ("Answer with one word, and think about the", "length"),  # ran out mid-instruction, though it reads whole
        ("Reply positive or", None),  # no finish_reason: not shown to have ended, so not trusted as whole
    ]
    with serving(echo_app(tiny_lm, "chat", chat_choices=choices)) as url:
        rewriter = ChatRewriter.connect(RewriterSettings(backend="openai", base_url=url, model="chat"))
        short = propose(
            rewriter,
            prompt=PROMPT,
            example=Supervised("Review: great.", "positive"),
            effects=(),
            task_description="Sentiment.",
            settings=RewriteSettings(template="short", n_variants=5),
            seed=0,
        )
    assert short.variants == ("Answer in one word.", "Say yes or no", "Answer briefly.")
    assert short.rejected["unclosed"] == 2 and sum(short.rejected.values()) == 2


def test_a_server_that_decodes_greedily_whatever_the_temperature_is_named_once(tiny_lm, caplog):
    from testkit.echo_server import echo_app, serving

    same = [("<prompt>Say yes or no</prompt>", "stop")]  # every request gets the same reply, whatever its seed
    mixed = [
        ("<prompt>Say yes</prompt>", "stop"),
        ("<prompt>Say no</prompt>", "stop"),
        ("<prompt>Say it</prompt>", "stop"),
    ]
    with (
        serving(echo_app(tiny_lm, "greedy", chat_choices=same)) as greedy_url,
        serving(echo_app(tiny_lm, "sampling", chat_choices=mixed)) as sampling_url,
        caplog.at_level(logging.WARNING, logger="pmpo.rewriting.backends"),
    ):
        greedy = ChatRewriter.connect(RewriterSettings(backend="openai", base_url=greedy_url, model="greedy"))
        sampling = ChatRewriter.connect(RewriterSettings(backend="openai", base_url=sampling_url, model="sampling"))
        args = {"n": 3, "temperature": 0.8, "top_p": 0.95, "seed": 0, "max_tokens": 20}
        for _ in range(2):
            assert len(set(greedy.reply("Rewrite.", **args))) == 1
        assert len(set(sampling.reply("Rewrite.", **args))) == 3
        greedy.reply("Rewrite.", **(args | {"temperature": 0.0}))  # asked for greedy: nothing to say
    warned = [r.getMessage() for r in caplog.records if "identical replies" in r.getMessage()]
    assert len(warned) == 1 and greedy_url in warned[0] and "decode greedily" in warned[0]


def test_missing_key_variable_is_named_not_guessed(monkeypatch):
    monkeypatch.delenv("PMPO_NO_SUCH_KEY", raising=False)
    with pytest.raises(
        RewriterError, match="rewriter.api_key_env: the environment variable PMPO_NO_SUCH_KEY is not set"
    ):
        ChatRewriter.connect(
            RewriterSettings(backend="openai", base_url=_dead_url(), model="m", api_key_env="PMPO_NO_SUCH_KEY")
        )


def test_server_down_is_one_line_without_the_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    url = _dead_url()
    with pytest.raises(RewriterError) as err:
        ChatRewriter.connect(
            RewriterSettings(backend="openai", base_url=url, model="m", api_key_env=KEY_ENV, max_retries=0, timeout_s=5)
        )
    said = str(err.value)  # the wording the scorer's errors share (pmpo.remote.connection)
    assert said.startswith(f"cannot reach the rewriter at {url} (") and FAKE_KEY not in said and "\n" not in said
    assert said.endswith("): is it running, and is rewriter.base_url right?")
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no client traceback behind it


def test_cli_reports_an_unreachable_rewriter_in_one_line(capsys, pmpo_home, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    url = _dead_url()
    argv = [
        "optimize",
        "--model",
        str(tiny_model_dir),
        "--rewriter-base-url",
        url,
        "--rewriter-model",
        "m",
        "--rewriter-api-key-env",
        KEY_ENV,
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pmpo: error: cannot reach the rewriter at {url} (") and "\n" not in err
    assert err.endswith("is it running, and is rewriter.base_url right?")


# --- against a real chat server --------------------------------------------------------------------------


def test_chat_rewriter_returns_n_replies_and_counts_their_tokens(chat_server):
    settings = RewriterSettings(
        backend="openai", base_url=chat_server.base_url, model=chat_server.model, revision="r1", **PATIENT
    )
    rewriter = ChatRewriter.connect(settings)
    assert rewriter.identity == f"openai:{chat_server.base_url}#{chat_server.model}@r1"
    assert rewriter.n_params is None
    replies = rewriter.reply("Name a colour.", n=2, temperature=0.8, top_p=0.95, seed=7, max_tokens=6)
    assert len(replies) == 2 and all(isinstance(r, str) and r for r in replies)
    used = rewriter.usage.snapshot()
    assert 2 <= used.tokens_generated <= 12  # from the server's usage: at most 6 per reply
    assert used.tokens_prefilled > 0
    [short] = rewriter.reply(
        "Say hello to the world.", n=1, temperature=0.8, top_p=0.95, seed=7, max_tokens=12, stop=(" ",)
    )
    assert short.endswith(" ") and len(short.split()) < 6  # the server stopped at a space, well before 12 tokens


def test_wrong_model_name_is_one_line_naming_what_is_served(chat_server):
    with pytest.raises(RewriterError) as err:
        ChatRewriter.connect(
            RewriterSettings(backend="openai", base_url=chat_server.base_url, model="no-such-model", **PATIENT)
        )
    assert str(err.value).startswith(
        f"rewriter.model: the rewriter at {chat_server.base_url} does not serve a model named 'no-such-model'; it serves"
    )
    assert chat_server.model in str(err.value)


def test_chat_rewriter_proposes_parsed_variants_and_marks_units(chat_server, tiny_lm):
    rewriter = ChatRewriter.connect(
        RewriterSettings(backend="openai", base_url=chat_server.base_url, model=chat_server.model, **PATIENT)
    )
    settings = RewriteSettings(template="short", n_variants=2, max_new_tokens=8)
    proposal = propose(
        rewriter,
        prompt=PROMPT,
        example=Supervised("Review: great.", "positive"),
        effects=(),
        task_description="Sentiment.",
        settings=settings,
        seed=3,
        scorer=Scorer(tiny_lm),
    )
    assert len(proposal.variants) + sum(proposal.rejected.values()) == 2  # every reply accounted for
    assert all(v and "<prompt>" not in v for v in proposal.variants)
    units = model_units(rewriter, PROMPT, seed=0)  # marked by the server's model, or the splitter's fallback
    assert units.remove(()) == PROMPT and 1 <= len(units.spans) <= 5
    assert as_rewriter(tiny_lm).identity == tiny_lm.identity  # an in-process model is its own rewriter


@pytest.mark.usefixtures("prefect_harness")
def test_flow_rewritten_through_the_server_records_it_and_never_the_key(
    chat_server, pmpo_home, tiny_model_dir, monkeypatch, capfd
):
    from flows.optimize import optimize_prompt
    from tasks.mlflow import runs, store

    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    logged = _debug_log(monkeypatch)  # the HTTP client's own debug lines are records too
    rewriter = {
        "backend": "openai",
        "base_url": chat_server.base_url,
        "model": chat_server.model,
        "api_key_env": KEY_ENV,
        **PATIENT,
    }
    values = tiny_values(
        tiny_model_dir,
        iterations=1,
        rewriter=rewriter,
        rewrite={"k": 1, "n": 2, "max_new_tokens": 12, "template": "short"},
        eval={"max_examples": 4, "generate": False},
    )
    summary = optimize_prompt(OptimizeConfig.model_validate(values))

    identity = f"openai:{chat_server.base_url}#{chat_server.model}@unpinned"
    assert summary.rewriter_identity == identity and summary.model_identity != identity
    rewrites = [c for c in summary.candidates if c.origin == "rewrite"]
    assert rewrites and all(c.prompt != PROMPT for c in rewrites)  # parsed variants the server wrote
    assert summary.cost.total.steps["rewrite"].tokens_generated > 0  # the server's reported usage
    params, tags = store.client().get_run(summary.run_id).data.params, runs.run_tags(summary.run_id)
    assert params["rewriter.identity"] == identity and params["rewriter.api_key_env"] == KEY_ENV
    assert tags["pmpo.rewriter_identity"] == identity
    assert tags["pmpo.rewrite_template"] == "short" and tags["pmpo.units"] == "model"  # unknown size: large

    records = [p for p in pmpo_home.rglob("*") if p.is_file()] + _prefect_files()
    assert records and all(FAKE_KEY.encode() not in p.read_bytes() for p in records)
    out, err = capfd.readouterr()
    assert FAKE_KEY not in out + err + "\n".join(logged.lines)
    # the chat requests were logged (openai logs no URLs: one line per request), the key never was
    assert sum("Sending HTTP Request: POST" in line for line in logged.lines) >= 3  # 1 mark + 2 replies


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + repr(record.args))


def _debug_log(monkeypatch) -> _Lines:
    """Every line the HTTP client stack, pmpo and Prefect log at DEBUG, whatever logging config Prefect installs."""
    handler = _Lines()
    for name in ("openai", "httpx", "httpcore", "pmpo", "tasks", "flows", "prefect"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "level", logging.DEBUG)
        monkeypatch.setattr(logger, "disabled", False)  # a logging config may have switched it off
        monkeypatch.setattr(logger, "handlers", [*logger.handlers, handler])  # the old list comes back after the test
    return handler


def _prefect_files() -> list[Path]:
    """The Prefect API's database (flow parameters, task runs) and local result storage, where they are files."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = str(
        settings.server.database.connection_url.get_secret_value()
        if hasattr(settings.server.database.connection_url, "get_secret_value")
        else settings.server.database.connection_url
    )
    files = []
    if url.startswith("sqlite"):
        db = Path(url.split("///", 1)[1])
        files += [p for p in db.parent.glob(db.name + "*") if p.is_file()]
    storage = Path(settings.results.local_storage_path)
    if storage.is_dir():
        files += [p for p in storage.rglob("*") if p.is_file()]
    assert files, f"no Prefect records found (database {url})"
    return files
