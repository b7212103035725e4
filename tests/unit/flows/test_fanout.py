"""The waiting refresh rides out a Prefect server that fails its polls for a while (a database restart under it),
and gives up with one line naming the server only when the outage lasts too long."""

from __future__ import annotations

import httpx
import pytest

from flows.fanout import PrefectUnavailable, _outage

REQUEST = httpx.Request("GET", "http://prefect.test/api/flow_runs/x")


def _status(code: int) -> httpx.HTTPStatusError:
    return httpx.HTTPStatusError("server said no", request=REQUEST, response=httpx.Response(code, request=REQUEST))


def test_a_failing_poll_starts_the_outage_clock_and_a_later_one_keeps_it(monkeypatch):
    monkeypatch.setattr("flows.fanout.time.monotonic", lambda: 1000.0)
    assert _outage(_status(500), None, outage_s=60) == 1000.0
    assert _outage(httpx.ConnectError("refused"), 970.0, outage_s=60) == 970.0  # 30 s in: still waiting


def test_an_outage_longer_than_allowed_is_one_error_naming_the_server(monkeypatch):
    monkeypatch.setattr("flows.fanout.time.monotonic", lambda: 1000.0)
    with pytest.raises(PrefectUnavailable, match=r"the Prefect server at .* failed every poll for 60 s .*ConnectError"):
        _outage(httpx.ConnectError("refused"), 900.0, outage_s=60)


def test_a_request_the_server_refuses_is_not_an_outage():
    with pytest.raises(httpx.HTTPStatusError):
        _outage(_status(404), None, outage_s=60)
