"""How the device probe times its measurements: all of them in turns, each summarized as a mean.

A device profile is built from ratios of measurements: a line through a size sweep, a
residual of a workload minus its charged operations, an in-situ factor of a probe round
over its tight-loop charge. On a shared host whose speed swings by 15-20 % within seconds
(docs/fidelity.md), two measurements taken a few seconds apart see different hosts, and
their ratio carries that swing: one pass's in-situ factors ranged from 0.7 to 1.5 when each
measurement's loops ran back to back. :class:`InterleavedTimer` takes every measurement's
timed loops in turns (one loop of each, then the next turn), so each one's loops are spread
over the whole pass and every number sees the host over the same period.

Each measurement is summarized by :func:`typical_seconds`, a mean: a client's round is
charged its total time, interruptions of the host included at the rate they happen, and a
median of short loops leaves them out (the median of 4 ms loops of a small convolution
came out 6 % below its mean per call here). The slowest loop is dropped, so that one long
stall does not count as the host's speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

TARGET_LOOP_S = 0.004
"""Each timed loop repeats its call until it lasts about this long (timer resolution)."""


def typical_seconds(times: Sequence[float]) -> float:
    """Mean of ``times`` without its largest value (all of them when there are fewer than 3)."""
    if not times:
        raise ValueError("typical_seconds needs at least one timing")
    kept = sorted(times)[:-1] if len(times) >= 3 else list(times)
    return sum(kept) / len(kept)


class Timing:
    """The timings one measurement will have once its timer has run."""

    def __init__(self) -> None:
        self.values: list[tuple[float, ...]] = []

    def part(self, index: int) -> float:
        """The typical seconds of the ``index``-th number each turn gave."""
        if not self.values:
            raise RuntimeError("the timer has not run yet")
        return typical_seconds([value[index] for value in self.values])

    @property
    def seconds(self) -> float:
        return self.part(0)


class InterleavedTimer:
    """Measurements registered first, then timed in ``repeats`` turns of one loop each."""

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self._jobs: list[tuple[Callable[[], tuple[float, ...]], Timing]] = []

    def job(self, turn: Callable[[], tuple[float, ...]]) -> Timing:
        """Register a measurement that times itself: each turn returns its seconds."""
        timing = Timing()
        self._jobs.append((turn, timing))
        return timing

    def loop(self, fn: Callable[[], Any]) -> Timing:
        """Register the seconds per call of ``fn``: each turn calls it once untimed, then
        times a loop of as many calls as last about :data:`TARGET_LOOP_S`."""
        fn()
        start = time.perf_counter()
        fn()
        once = max(time.perf_counter() - start, 1e-7)
        calls = max(1, min(1000, round(TARGET_LOOP_S / once)))

        def turn() -> tuple[float]:
            fn()  # the loop runs warm, as a tight loop does, after the other measurements' turns
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            return ((time.perf_counter() - start) / calls,)

        return self.job(turn)

    def run(self) -> None:
        """Take every registered measurement's turns, one of each per round."""
        for _ in range(self.repeats):
            for turn, timing in self._jobs:
                timing.values.append(turn())
        self._jobs.clear()
