"""The SimPy clock's pending events: listing them, and putting them back at exact times.

A resumed run (:mod:`fedhq_sim.checkpoint`) must process every later event exactly as the
uninterrupted run does, so it needs the events that run still had scheduled, at their exact
times and in their order. SimPy keeps them in ``env._queue`` as ``(time, priority, id,
event)`` and offers no public way to list them or to schedule at an absolute time; both
are done here, and only here.
"""

from __future__ import annotations

import heapq

import simpy


def pending_events(env: simpy.Environment) -> list[tuple[float, int, simpy.Event]]:
    """The events still scheduled on ``env``, in the order they will be processed."""
    return [(time, priority, event) for time, priority, _, event in sorted(env._queue, key=lambda e: e[:3])]


class _Placeholder(simpy.Event):
    """An event already triggered, to be processed at an absolute time: a pending event of the
    interrupted run, put back on the clock so the order of what follows is unchanged."""

    def __init__(self, env: simpy.Environment, time_s: float, priority: int) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        heapq.heappush(env._queue, (time_s, priority, next(env._eid), self))


def schedule_at(env: simpy.Environment, time_s: float, priority: int) -> simpy.Event:
    """An event that ``env`` will process at exactly ``time_s`` (no ``now + delay`` rounding)."""
    return _Placeholder(env, time_s, priority)


LATE = 2  # after SimPy's URGENT (0) and NORMAL (1) events of the same instant
LAST = 3  # after those too: a window that closes once the late events of its instant are done


def late_timeout(env: simpy.Environment, delay_s: float, priority: int = LATE) -> simpy.Event:
    """A timeout processed after every other event due at its instant, including those that
    events of that instant schedule for it: what ends exactly then ends before it (a turn's
    deadline is inclusive, as a round's is)."""
    event = env.event()
    event._ok, event._value = True, None
    env.schedule(event, priority, delay_s)
    return event
