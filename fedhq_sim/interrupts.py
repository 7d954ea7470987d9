"""Stopping a run on Ctrl-C or SIGTERM so that the stop is never lost.

A signal handler's exception is raised wherever the main thread happens to be. CPython drops
it, printing only "Exception ignored in ...", when that place is a finalizer or a weakref
callback (and code outside ours may catch ``BaseException``): the run would then go on to its
end as if never asked to stop. So the handlers also record the request, and a run asks
:func:`raise_if_stopped` at every round's end, once the round is saved: a stop that was
swallowed still stops the run there, with everything up to that round kept.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM arrived (raised from its handler, as SIGINT raises KeyboardInterrupt)."""


_requested: list[int] = []  # the signals received while the handlers were installed


def _stop(signum: int, _frame: object) -> None:
    _requested.append(signum)
    _raise(signum)


def _raise(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated
    raise KeyboardInterrupt


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within: SIGINT raises KeyboardInterrupt and SIGTERM raises :class:`Terminated`, and
    both are remembered for :func:`raise_if_stopped`. The previous handlers come back after
    (``main`` is also called inside other programs, tests among them). Off the main thread,
    where Python lets no handler be set, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        number: signal.getsignal(number)
        for number in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(number) != signal.SIG_IGN  # nohup, a background job: left ignored
    }
    for number in previous:
        signal.signal(number, _stop)
    outer = list(_requested)  # a nested call keeps an outer run's request
    _requested.clear()
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _requested[:] = outer


def raise_if_stopped() -> None:
    """Raise the stop that a signal asked for, if its first raise was swallowed somewhere."""
    if _requested:
        _raise(_requested[0])
