"""math-verify equivalence with a deadline that works in any thread (used by :class:`rlavr.answers.MathAnswers`).

math-verify bounds its ``parse``/``verify`` with ``signal.alarm``, which only works in the main thread; elsewhere
(a TRL trainer's helper thread, a thread pool) it must be called with its timeouts off, and one adversarial
answer (``x^{x^{x^{...}}}``, 100 characters: seconds; 300: ~25 s; 1000: minutes) then stalls the caller.
rlavr therefore calls math-verify with its timeouts off and bounds each call itself:

* in the main thread: a ``SIGALRM`` interval timer around each ``parse`` / ``verify`` call (what math-verify
  does, but the timeout is reported to the caller instead of being logged and swallowed);
* in any other thread: the check runs in one persistent worker subprocess (this file run as a script, so it
  imports neither rlavr nor the user's ``__main__``), which uses the same timer in ITS main thread; a check the
  timer cannot stop (a long C-level computation) is ended by killing the worker after a hard deadline (the
  worker restarts on the next check). A thread cannot be killed; a process can.

This module imports nothing from rlavr: the worker runs it by path.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["AlarmTimeout", "alarm_available", "equivalent_strings"]

_CACHE_MAX = 65536


class AlarmTimeout(BaseException):  # mirrors math-verify's TimeoutException (a BaseException too)
    """Raised by the interval timer; a BaseException so that ``except Exception`` in math-verify/sympy cannot
    swallow it."""


def alarm_available() -> bool:
    """Whether a ``SIGALRM`` timer can bound a call here: POSIX, the main thread, and no timer already pending
    (someone else's alarm is never overwritten)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    try:
        return signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    except (OSError, ValueError):  # pragma: no cover - exotic platforms
        return False


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    if seconds is None:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise AlarmTimeout

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, old)


def _quiet_math_verify() -> None:
    """math-verify warns once per process that its timeouts are off ("you must provide the logic for timeout
    interruption yourself"): rlavr does, so the warning would only mislead. Marks it as already shown."""
    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True  # type: ignore[attr-defined]
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True  # type: ignore[attr-defined]


_warm = False


def _warm_up() -> None:
    """Parse and verify a known-easy pair once per process, unbounded: math-verify builds its grammar and sympy
    its caches on first use (about a second), which must not be charged to the first bounded call."""
    global _warm
    if not _warm:
        _warm = True
        equivalent_strings("1/2", "0.5", None, {})


def _parse(s: str, seconds: float | None, cache: dict[Any, tuple[list[Any], bool]]) -> tuple[list[Any], bool]:
    """``(parsed, timed_out)`` for one answer; failures and timeouts parse to ``[]`` (and are cached: an answer
    that timed out is not tried again)."""
    key = (s, seconds)
    hit = cache.get(key)
    if hit is not None:
        return hit[0], False
    from math_verify import parse

    _quiet_math_verify()
    if seconds is not None:
        _warm_up()
    timed_out = False
    try:
        with _alarm(seconds):
            out = list(parse(f"${s}$", parsing_timeout=None))  # type: ignore[arg-type]
    except AlarmTimeout:
        out, timed_out = [], True
    except Exception:  # sympy/latex2sympy errors: unparseable
        out = []
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = (out, timed_out)
    return out, timed_out


def equivalent_strings(a: str, b: str, seconds: float | None,
                       cache: dict[Any, tuple[list[Any], bool]]) -> tuple[bool, int, bool]:
    """math-verify equivalence of two answer strings, each ``parse`` and each ``verify`` direction bounded by
    ``seconds`` (``None``: unbounded; the caller must then be allowed to block).

    Returns ``(equivalent, parse_timeouts, verify_timed_out)``. A timed-out or failing step counts as "not
    equivalent" (as before); ``verify`` is tried in both directions (math-verify's is not symmetric).
    Must run in the main thread when ``seconds`` is not ``None`` (see :func:`alarm_available`).
    """
    pa, ta = _parse(a, seconds, cache)
    pb, tb = _parse(b, seconds, cache)
    parse_timeouts = int(ta) + int(tb)
    if not pa or not pb:
        return False, parse_timeouts, False
    from math_verify import verify

    verify_timed_out = False
    for x, y in ((pa, pb), (pb, pa)):
        try:
            with _alarm(seconds):
                ok = bool(verify(x, y, timeout_seconds=None))  # type: ignore[arg-type]
        except AlarmTimeout:
            verify_timed_out = True
            continue
        except Exception:  # sympy errors: not equivalent this way round
            continue
        if ok:
            return True, parse_timeouts, verify_timed_out
    return False, parse_timeouts, verify_timed_out


def _serve() -> None:  # pragma: no cover - runs in the worker subprocess (exercised through MathAnswers)
    """Worker loop: one JSON request per stdin line ``{"a", "b", "t"}``, one JSON reply per stdout line."""
    import logging

    logging.disable(logging.CRITICAL)  # math-verify's "timeout is disabled" warning: the timer is ours
    _warm_up()  # before "ready", so that the first check is not charged for it
    cache: dict[Any, tuple[list[Any], bool]] = {}
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        eq, pt, vt = equivalent_strings(req["a"], req["b"], req["t"], cache)
        out.write(json.dumps({"eq": eq, "parse_timeouts": pt, "verify_timeout": vt}) + "\n")
        out.flush()


if __name__ == "__main__":  # pragma: no cover
    _serve()
