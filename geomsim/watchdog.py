"""No silent stall: a blocking call on a chunk that makes no progress for a set time is an error.

XLA's CPU runtime stalled here in about 1 of 20 fresh launches (every worker thread idle, the
caller in `BlockUntilReady`; issue 21 and benchmarks/RESULTS.md), and a run that waits forever
is the worst way for a long job to fail.  A call that never returns cannot be interrupted from
Python, so `watched` runs it on a daemon thread and, past the limit, raises `Stalled` in the
caller naming the chunk, leaving the stuck thread behind.  Interpreter shutdown could wait on
that thread inside XLA, so the command lines end through `finish`, which leaves at once with
`os._exit` when a thread was left stuck.

The limit is per call (`--stall-timeout SECONDS` on every command line, default 600 s: a
chunk of the default sweep runs in 0.6 s and the testbed's longest stage, compilation
included, in ~80 s here).  The sweep compiles its chunk program before it starts watching,
so there only the execution counts; elsewhere the first call of a program includes its
compilation.

Test hook: `GEOMSIM_TEST_STALL="TEXT[@N]"` makes every watched call whose name contains
TEXT sleep forever, on its first N attempts (every attempt without `@N`): a stall on demand,
the way a stuck runtime looks from outside.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

DEFAULT_SECONDS = 600.0
_limit: ContextVar[float] = ContextVar("geomsim_stall_seconds", default=DEFAULT_SECONDS)
_stuck: list[threading.Thread] = []
_TEST_HOOK = "GEOMSIM_TEST_STALL"
T = TypeVar("T")


class Stalled(RuntimeError):
    """A watched call made no progress within the limit."""

    def __init__(self, what: str, seconds: float, detail: str = ""):
        self.what, self.seconds = what, seconds
        super().__init__(f"{what}: no progress for {seconds:g} s{detail} (--stall-timeout sets the limit)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


class _SetLimit(argparse.Action):
    def __call__(self, _parser, _namespace, values, _option_string=None):  # argparse calls it positionally
        set_limit(values)


def add_stall_flag(parser: argparse.ArgumentParser) -> None:
    """`--stall-timeout SECONDS`: sets the limit for this process when parsed (stores nothing)."""
    parser.add_argument("--stall-timeout", metavar="SECONDS", type=_seconds, action=_SetLimit,
                        default=argparse.SUPPRESS,
                        help=f"a chunk making no progress for this long is an error (default {DEFAULT_SECONDS:g}); "
                             "the sweep retries it once in a fresh worker process")


def set_limit(seconds: float) -> None:
    """Set the limit of every later watched call in this context (a command line's flag)."""
    if not seconds > 0:
        raise ValueError(f"stall timeout: expected seconds > 0, got {seconds}")
    _limit.set(float(seconds))


@contextlib.contextmanager
def stall_limit(seconds: float) -> Iterator[None]:
    """The limit of the watched calls inside (restored afterwards)."""
    token = _limit.set(float(seconds))
    try:
        yield
    finally:
        _limit.reset(token)


def current_limit() -> float:
    return _limit.get()


def _test_stall(what: str, attempt: int) -> bool:
    spec = os.environ.get(_TEST_HOOK)
    if not spec:
        return False
    text, _, attempts = spec.partition("@")
    return text in what and (not attempts or attempt <= int(attempts))


def watched(what: str, fn: Callable[..., T], *args: Any, attempt: int = 1) -> T:
    """`fn(*args)` with its result ready (`jax.block_until_ready`); `Stalled(what)` when it has
    not returned within the current limit.  `attempt` only matters to the test hook."""
    import jax

    seconds = _limit.get()
    stall = _test_stall(what, attempt)
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            while stall:
                time.sleep(3600)
            box["value"] = jax.block_until_ready(fn(*args))
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"geomsim watched: {what}", daemon=True)
    thread.start()
    if not done.wait(seconds):
        _stuck.append(thread)
        raise Stalled(what, seconds)
    if "error" in box:
        raise box["error"]
    return box["value"]


def finish(code: int) -> int:
    """A command line's exit status; when a watched call was left stuck, leave now (os._exit):
    the interpreter's shutdown could wait on it forever."""
    if any(t.is_alive() for t in _stuck):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
