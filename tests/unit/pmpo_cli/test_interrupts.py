"""The interrupt's deadline: a command whose main thread does not return after SIGTERM (stuck in clean-up that
waits on something) still stops its servers and exits within the grace period, with one line, even when the last
resort itself waits (a store locked by the interrupted write); a later signal does not interrupt the clean-up of the
first."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pmpo_cli.interrupts import GRACE_S, LAST_RESORT_S, MESSAGE

STUCK = textwrap.dedent(
    """
    import os, signal, sys, time
    from pmpo_cli import interrupts

    def say(line):
        print(f"pmpo: error: {line}", file=sys.stderr, flush=True)

    def last_resort():
        print("servers stopped", flush=True)
        if sys.argv[1] == "stuck":  # a run marked FAILED while this process's own interrupted write holds the lock
            time.sleep(60)
        raise OSError("the store is locked")  # printed nowhere: the one line stays the only one

    with interrupts.installed(last_resort=last_resort, report=say):
        try:
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal: ignored
            time.sleep(60)  # clean-up that never ends
    """
)


@pytest.mark.parametrize("last_resort", ["returns", "stuck"])
def test_a_stuck_clean_up_is_cut_short_by_the_deadline(last_resort):
    argv = [sys.executable, "-c", STUCK, last_resort]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=30)
    took = time.monotonic() - sent
    assert child.returncode == 130
    assert GRACE_S - 0.5 <= took < 10, took  # not before the grace, and inside Docker's 10 s
    assert GRACE_S + LAST_RESORT_S < 10  # even a last resort that never returns
    assert out.split() == ["interrupted", "servers", "stopped"]
    assert err.splitlines() == [f"pmpo: error: {MESSAGE}"]


def test_without_a_signal_the_handlers_go_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    from pmpo_cli import interrupts

    with interrupts.installed(last_resort=lambda: None, report=lambda line: None):
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
