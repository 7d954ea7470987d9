"""The probe's timer: every measurement's loops taken in turns, each summarized as a mean."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhq_sim.timing import InterleavedTimer, typical_seconds


def test_the_typical_time_is_the_mean_without_the_slowest():
    assert typical_seconds([1.0, 2.0, 9.0]) == 1.5
    assert typical_seconds([3.0, 1.0]) == 2.0  # too few to tell a stall from the host's speed
    with pytest.raises(ValueError):
        typical_seconds([])


@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=30))
def test_the_typical_time_lies_between_the_fastest_and_the_slowest(times):
    assert min(times) - 1e-12 <= typical_seconds(times) <= max(times) + 1e-12


def test_measurements_are_taken_in_turns_one_loop_of_each_per_round():
    order: list[str] = []
    timer = InterleavedTimer(repeats=3)
    a = timer.job(lambda: (order.append("a"), (1.0, 2.0))[1])
    b = timer.job(lambda: (order.append("b"), (3.0,))[1])
    assert order == []  # nothing is timed before run()
    timer.run()
    assert order == ["a", "b"] * 3
    assert a.part(1) == 2.0 and b.seconds == 3.0


def test_a_loop_reports_seconds_per_call_and_a_timing_cannot_be_read_before_it_ran():
    calls = []
    timer = InterleavedTimer(repeats=2)
    timing = timer.loop(lambda: calls.append(1))
    with pytest.raises(RuntimeError):
        _ = timing.seconds
    timer.run()
    assert 0 < timing.seconds < 1e-3 and len(calls) > 4  # calibration, a warm call per turn, the loops
