"""The asynchronous modes' clock on the engine-clock harness: closed-form arrival times,
versions and staleness for FedAsync, FedBuff and semi-sync rounds (no PyTorch work runs)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhq_sim.async_loop import IdlePool
from fedhq_sim.engine import Simulation
from tests.conftest import WIRE_LATENCY_S
from tests.test_engine_clock import (
    UPDATE_NBYTES,
    FixedWork,
    fleet_world,
    star_scenario,
)

DOWN_S, UP_S = WIRE_LATENCY_S + 1.0, WIRE_LATENCY_S + 0.5
assert UPDATE_NBYTES == 500_000  # 0.5 s on the wire


def turn_lengths(scenario, compute_s: list[float]) -> tuple[FixedWork, list[float]]:
    """Work whose client ``i`` computes ``compute_s[i]`` seconds, and each client's turn length;
    the server's aggregation is free, so versions follow arrivals at once."""
    pi = scenario.clients[0].device
    dispatches = {cid: round(c / pi.overheads.dispatch) for cid, c in enumerate(compute_s)}
    lengths = [DOWN_S + dispatches[cid] * pi.overheads.dispatch + UP_S for cid in dispatches]
    return FixedWork(dispatches, server_dispatches=0), lengths


def test_in_async_mode_two_clients_make_floor_t_over_a_plus_floor_t_over_b_versions_by_t(tmp_path, profiles):
    scenario = star_scenario(tmp_path, profiles, 2, rounds=12, mode="async")
    work, (a, b) = turn_lengths(scenario, [1.0, 2.7])
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds[1:]
    ends = [r.end_s for r in rounds]
    arrivals = sorted([i * a for i in range(1, 13)] + [j * b for j in range(1, 13)])[:12]
    assert ends == pytest.approx(arrivals, rel=1e-12)
    for t in (3.0, 7.5, ends[-1]):
        assert sum(end <= t + 1e-9 for end in ends) == int(t // a) + int(t // b) or t > ends[-1]
    # An update is stale by the versions the other client made while it was out.
    uploads = [p for p in simulation.phases if p.phase == "upload" and p.status == "completed"]
    for row in uploads:
        began = row.end_s - (a if row.client_id == 0 else b)
        missed = sum(began + 1e-9 < end < row.end_s - 1e-9 for end in ends)
        assert row.staleness == missed
    assert [r.staleness_max for r in rounds] == [
        max((p.staleness for p in uploads if abs(p.end_s - r.end_s) < 1e-9), default=0) for r in rounds
    ]
    assert all(r.reported == 1 for r in rounds)


def test_in_buffered_mode_a_version_is_made_at_every_kth_arrival(tmp_path, profiles):
    scenario = star_scenario(tmp_path, profiles, 4, rounds=6, mode="buffered", aggregation={"buffer_size": 2})
    work, lengths = turn_lengths(scenario, [0.3, 1.1, 2.3, 3.7])
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds[1:]
    # Every client restarts on arrival (all four slots, four clients), so arrivals are multiples.
    arrivals = sorted(k * length for length in lengths for k in range(1, 20))
    assert [r.end_s for r in rounds] == pytest.approx(arrivals[1:12:2], rel=1e-12)
    assert all(r.reported == 2 for r in rounds)
    assert [r.collect_end_s for r in rounds] == [r.end_s for r in rounds]  # the server's step is free


def test_in_semi_sync_mode_a_late_update_joins_the_next_round_with_its_staleness(tmp_path, profiles):
    period = 4.0
    scenario = star_scenario(
        tmp_path, profiles, 3, rounds=3, mode="semi-sync", round_deadline="20 s", aggregation={"period": "4 s"}
    )
    work, lengths = turn_lengths(scenario, [0.2, 1.5, 4.0])  # the last one's turn is 5.51 s
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds[1:]
    assert [r.end_s for r in rounds] == pytest.approx([period, 2 * period, 3 * period], rel=1e-12)
    assert [r.reported for r in rounds] == [2, 3, 2]
    assert [r.staleness_max for r in rounds] == [0, 1, 0]
    assert [r.selected for r in rounds] == [3, 2, 3]  # the late client was busy at round 2's start
    late = next(p for p in simulation.phases if p.client_id == 2 and p.phase == "upload")
    assert (late.round, late.staleness, late.end_s) == (1, 1, pytest.approx(lengths[2], rel=1e-12))


@pytest.mark.parametrize("mode", ["sync", "buffered"])
def test_a_time_limit_ends_the_run_with_the_first_version_that_reaches_it(tmp_path, profiles, mode):
    aggregation = {"aggregation": {"buffer_size": 1}} if mode == "buffered" else {}
    scenario = star_scenario(tmp_path, profiles, 2, rounds=50, mode=mode, time_limit="7 s", **aggregation)
    work, lengths = turn_lengths(scenario, [1.0, 2.7])
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds[1:]
    assert rounds[-1].end_s >= 7.0 > rounds[-2].end_s
    per_version = max(lengths) if mode == "sync" else None
    if per_version is not None:
        assert len(rounds) == int(7.0 // per_version) + 1
    if mode == "buffered":  # the turn in flight at the end is cancelled with the last version
        assert [p.status for p in simulation.phases][-1] == "cancelled"


@given(
    st.lists(st.integers(0, 200), unique=True, max_size=40),
    st.sets(st.integers(0, 200)),
    st.integers(0, 50),
    st.integers(0, 2**32 - 1),
)
def test_the_idle_pool_draws_distinct_available_clients_and_gives_them_out_once(ids, off, n, seed):
    pool = IdlePool(ids)
    chosen = pool.draw(np.random.default_rng(seed), n, lambda c: c not in off)
    ready = [c for c in ids if c not in off]
    assert chosen == sorted(set(chosen)) and set(chosen) <= set(ready)
    assert len(chosen) == min(n, len(ready))
    assert sorted(pool.items) == sorted(set(ids) - set(chosen))
    for c in chosen:
        pool.add(c)
    assert sorted(pool.items) == sorted(ids)
