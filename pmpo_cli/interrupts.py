"""How a `pmpo` command stops on SIGTERM or SIGINT: as an interrupt, quietly, and within a bounded time.

Service managers stop a command in two ways. systemd (the whole cgroup), `timeout` and Ctrl-C in a terminal signal
every process of the group; `docker stop` and Kubernetes signal PID 1 alone, then SIGKILL it after a grace period
(10 s by default in Docker). Either way the command turns the first signal into a KeyboardInterrupt: the flow marks
its run FAILED (an identical command resumes it), the CLI prints one line, and exit code stops the servers this
command started. Later signals are ignored, so that clean-up is not itself interrupted.

A watchdog bounds it all. It learns of the signal from the interpreter's wakeup fd, so it starts counting at once,
even while the main thread sits in a long native call (a forward pass) or in Prefect's own SIGTERM handler. If the
command has not exited `GRACE_S` after the first signal, the watchdog runs the last-resort clean-up (stop the
servers, then mark the runs it opened FAILED) for at most `LAST_RESORT_S`, prints the line if nobody has, and exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator

# With the last resort's second, under the 10 s that `docker stop` and Kubernetes' default grace allow before SIGKILL,
# leaving time to exit on a loaded machine. A flow that unwinds does so in well under a second; one that does not is
# stuck for good (a lock its interrupted code held, such as Prefect's event queue's), and waiting longer buys nothing.
GRACE_S = 7.0
# The last resort's own share: marking a run FAILED can wait on a SQLite lock (MLflow sets a 20 s busy timeout) that
# an interrupted write may hold; the run is resumed all the same, so the exit does not wait for it.
LAST_RESORT_S = 1.0
EXIT_CODE = 130  # what a shell reports for a command stopped by Ctrl-C
MESSAGE = "interrupted; run the same command again to resume where it stopped"
_STOPS = (signal.SIGTERM, signal.SIGINT)

_reported = threading.Lock()
_said = False
_raised = False  # set by the handler, which only the main thread runs
_signalled = threading.Event()  # set by the watchdog as soon as a stop signal arrives, whoever handles it


_watching: tuple[int, int] | None = None  # the wakeup pipe, made once per process with its watchdog


@contextlib.contextmanager
def installed(last_resort: Callable[[], None], report: Callable[[str], None], deadline: bool = True) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise one KeyboardInterrupt, and the exit is bounded by `GRACE_S`.

    Main thread only (Python runs signal handlers there). The handlers go back as they were after the block, unless
    a signal came: then they stay, so that a later signal cannot cut the exit code short. `deadline=False`: the
    interrupt only, for a command that bounds its own stop.
    """
    if deadline:
        wakeup = signal.set_wakeup_fd(_watchdog(last_resort, report), warn_on_full_buffer=False)
    before = {sig: signal.signal(sig, _interrupt) for sig in _STOPS}
    try:
        yield
    finally:
        if deadline:
            signal.set_wakeup_fd(wakeup)
        if not _raised:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def _watchdog(last_resort: Callable[[], None], report: Callable[[str], None]) -> int:
    """The write end of the watchdog's wakeup pipe; the pipe and its thread are made once per process."""
    global _watching
    if _watching is None:
        read, write = os.pipe()
        os.set_blocking(write, False)  # the interpreter writes from its C signal handler: it must never block
        threading.Thread(target=_watch, args=(read, last_resort, report), name="pmpo-interrupt", daemon=True).start()
        _watching = (read, write)
        # Registered before anything this command starts: atexit runs it last, after the servers are stopped.
        atexit.register(_skip_finalization)
    return _watching[1]


def say_once(report: Callable[[str], None]) -> None:
    """Print the interrupt's line, unless the watchdog (or an earlier call) already has."""
    global _said
    with _reported:
        if not _said:
            _said = True
            report(MESSAGE)


def stopped_by_signal(exc: BaseException | None) -> bool:
    """Whether `exc` came of a stop signal: raised while the interrupt unwound (a library's clean-up that failed on
    the way, such as Prefect's crash report for a task run not yet created), or after a signal arrived."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "TerminationSignal":  # Prefect's SIGTERM
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return signalled()


def signalled() -> bool:
    """Whether a stop signal has arrived while the handlers were installed."""
    return _raised or _signalled.is_set()


def _interrupt(signum: int, frame: object) -> None:
    global _raised
    if _raised:
        return  # a later signal: the clean-up of the first is under way, and bounded by the watchdog
    _raised = True
    raise KeyboardInterrupt


def _skip_finalization() -> None:
    """After an interrupt, end the process once the exit handlers ran: tearing down torch, Prefect and MLflow
    object by object takes seconds more (over ten on a busy machine) and does nothing a stopped command needs."""
    if _raised:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(EXIT_CODE)


def _watch(read: int, last_resort: Callable[[], None], report: Callable[[str], None]) -> None:
    while True:
        data = os.read(read, 64)
        if not data:
            return
        if any(b in _STOPS for b in data):
            break
    _signalled.set()
    time.sleep(GRACE_S)
    cleaning = threading.Thread(target=_quietly, args=(last_resort,), name="pmpo-last-resort", daemon=True)
    cleaning.start()
    cleaning.join(LAST_RESORT_S)
    say_once(report)
    sys.stderr.flush()
    os._exit(EXIT_CODE)


def _quietly(clean_up: Callable[[], None]) -> None:
    """Run the last resort; a failure there must not print a traceback under the interrupt's one line."""
    with contextlib.suppress(Exception):
        clean_up()
