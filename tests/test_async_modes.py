"""The asynchronous modes' clock on the engine-clock harness: closed-form arrival times,
versions and staleness for FedAsync, FedBuff and semi-sync rounds (no PyTorch work runs)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fedhq_sim.engine import Simulation
from fedhq_sim.feasibility import Feasibility
from fedhq_sim.idle_pool import IdlePool
from fedhq_sim.policies import Policy
from fedhq_sim.policies.choice import PolicyChoice
from fedhq_sim.policies.fixed import AllPTQ
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.scenario import LoadedScenario, load_scenario
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


def test_when_no_update_can_arrive_versions_that_apply_nothing_keep_the_run_going(tmp_path, profiles):
    """Every turn outlasts the deadline (10 s of compute, 3 s allowed): the run still ends."""
    scenario = star_scenario(tmp_path, profiles, 2, rounds=3, mode="buffered", round_deadline="3 s")
    work, _ = turn_lengths(scenario, [10.0, 10.0])
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds[1:]
    assert [r.end_s for r in rounds] == pytest.approx([3.0, 6.0, 9.0], rel=1e-12)
    assert all(r.status.startswith("no update arrived for 3 s") and r.reported == 0 for r in rounds)
    assert [r.dropped for r in rounds] == [2, 2, 2] and rounds[-1].cancelled == 2  # the last refills


def test_every_turn_trains_with_its_own_seed_and_none_begins_while_the_server_applies(tmp_path, profiles):
    scenario = star_scenario(tmp_path, profiles, 3, rounds=6, mode="buffered", aggregation={"buffer_size": 2})
    work, _ = turn_lengths(scenario, [0.3, 0.3, 1.0])
    work.server_dispatches = 200_000  # the server's step takes time: arrivals and refills meet it
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds[1:]
    assert len(work.seeds) == len(set(work.seeds)) > 6  # a client drawn again trains anew
    applying = [(r.collect_end_s, r.end_s) for r in rounds]
    assert all(collect < end for collect, end in applying)
    starts = [p.start_s for p in simulation.phases if p.phase == "download"]
    assert not [t for t in starts for collect, end in applying if collect < t < end]


def test_an_update_that_waits_for_the_server_is_weighted_by_its_staleness_when_applied(tmp_path, profiles):
    """Two clients arrive together; the server applies one, then the other, one version stale."""
    scenario = star_scenario(tmp_path, profiles, 2, rounds=2, mode="async")
    work, _ = turn_lengths(scenario, [1.0, 1.0])
    work.server_dispatches = 200_000
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds[1:]
    assert [r.staleness_max for r in rounds] == [0, 1]
    arrived = [p.staleness for p in simulation.phases if p.phase == "upload" and p.status == "completed"]
    assert arrived[:2] == [0, 0]  # on arrival neither was stale


class PTQSayingItMayGiveAnything(AllPTQ):
    """A user's policy that keeps the base class's ``strategies_for`` (every strategy)."""

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        return Policy.strategies_for(self, client_id)


def test_a_client_unable_to_run_its_strategy_waits_for_the_next_version(tmp_path, profiles):
    """A policy may assign PTQ to a client that can run fp32 only: its turn ends as it begins,
    and it is not drawn again at that instant (which would never end)."""
    scenario = star_scenario(tmp_path, profiles, 2, rounds=3, mode="async")
    world = fleet_world(scenario)
    choice = PolicyChoice(PTQSayingItMayGiveAnything, world.policy_choice.options)
    able = {**world.able, 1: frozenset({"fp32"})}
    world = replace(world, policy_choice=choice, able=able, feasibility=[unable_row(scenario, 1)])
    work, _ = turn_lengths(scenario, [1.0, 1.0])
    simulation = Simulation.on(world, work)
    rounds = simulation.run().rounds[1:]
    assert sum(r.unable for r in rounds) == 3 and all(r.reported == 1 for r in rounds)
    assert all(r.n_ptq == 1 for r in rounds)  # the unable turns are not counted as PTQ turns


def unable_row(scenario, client_id: int) -> Feasibility:
    client = scenario.clients[client_id]
    return Feasibility(client_id, client.name, client.device.name, client.link.name, "ptq8", False, "test", 0, 0, 0, 0)


def off_for_a_while(scenario_path, start: str, duration: str) -> LoadedScenario:
    """The scenario at ``scenario_path`` with its hall in maintenance for a while."""
    data = yaml.safe_load(scenario_path.read_text())
    data["availability"] = {"maintenance": [{"site": "hall", "start": start, "duration": duration}]}
    scenario_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_scenario(scenario_path)


@pytest.mark.parametrize("mode", ["buffered", "async"])
def test_a_spell_when_no_client_can_train_is_waited_out_not_filled_with_empty_versions(tmp_path, profiles, mode):
    scenario = star_scenario(tmp_path, profiles, 2, rounds=12, mode=mode, round_deadline="10 s")
    scenario = off_for_a_while(scenario.path, "6 s", "100 s")
    work, _ = turn_lengths(scenario, [1.0, 1.0])
    rounds = Simulation.on(fleet_world(scenario), work).run().rounds[1:]
    assert all(r.status == "ok" and r.reported >= 1 for r in rounds)
    assert rounds[-1].end_s > 106.0  # the run went on after the maintenance


def test_semi_sync_begins_turns_only_at_rounds_starts(tmp_path, profiles):
    scenario = star_scenario(
        tmp_path, profiles, 3, rounds=4, mode="semi-sync", round_deadline="20 s", aggregation={"period": "4 s"}
    )
    data = yaml.safe_load(scenario.path.read_text())
    data["training"]["clients_per_round"] = 2
    scenario.path.write_text(yaml.safe_dump(data, sort_keys=False))
    scenario = off_for_a_while(scenario.path, "0 s", "5 s")
    work, _ = turn_lengths(scenario, [3.0, 3.0, 3.0])
    simulation = Simulation.on(fleet_world(scenario), work)
    rounds = simulation.run().rounds[1:]
    starts = sorted({p.start_s for p in simulation.phases if p.phase == "download"})
    assert set(starts) <= {r.start_s for r in rounds}  # never in the middle of a round
    assert [r.selected for r in rounds] == [0, 0, 2, 1]  # off until 5 s; then at most 2 at once
