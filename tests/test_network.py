"""The flow network against closed-form results, and max-min fairness as a law."""

import itertools
import math

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhq_sim.network import DirectedLink, FlowNetwork, TransferStalledError, mathis_rate_bps, max_min_rates

MBIT = 1e6


def run_transfers(links, starts):
    """Run transfers ``(name, start_s, route, nbytes)``; return ``{name: finish_s}``."""
    env = simpy.Environment()
    network = FlowNetwork(env, links, np.random.default_rng(0))
    finished = {}

    def sender(name, start, route, nbytes):
        yield env.timeout(start)
        yield from network.transfer(route, nbytes)
        finished[name] = env.now

    for name, start, route, nbytes in starts:
        env.process(sender(name, start, route, nbytes))
    env.run()
    return finished


def lossless(capacity_bps, latency_s=0.0):
    return DirectedLink(capacity_bps, latency_s, 0.0, 0.0)


def test_one_transfer_takes_latency_plus_size_over_bandwidth():
    done = run_transfers({"l": lossless(8 * MBIT, 0.010)}, [("a", 0.0, ["l"], 1_000_000)])
    assert done["a"] == pytest.approx(0.010 + 1.0)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_n_equal_flows_on_one_link_finish_at_n_times_s_over_b(n):
    starts = [(i, 0.0, ["l"], 1_000_000) for i in range(n)]
    done = run_transfers({"l": lossless(8 * MBIT)}, starts)
    assert all(t == pytest.approx(n * 1.0) for t in done.values())


def test_two_uploads_sharing_a_link_take_longer_than_one_alone():
    links = {"access_a": lossless(100 * MBIT), "access_b": lossless(100 * MBIT), "backhaul": lossless(10 * MBIT)}
    alone = run_transfers(links, [("a", 0.0, ["access_a", "backhaul"], 500_000)])
    shared = run_transfers(
        links, [("a", 0.0, ["access_a", "backhaul"], 500_000), ("b", 0.0, ["access_b", "backhaul"], 500_000)]
    )
    assert alone["a"] == pytest.approx(0.4)
    assert shared["a"] == pytest.approx(0.8)
    assert shared["a"] > alone["a"]


def test_staggered_start_gives_piecewise_finish_times():
    # a alone for 0.5 s (half of its 1 s of work), then both share: a needs 0.5 s more at half rate.
    done = run_transfers({"l": lossless(8 * MBIT)}, [("a", 0.0, ["l"], 1_000_000), ("b", 0.5, ["l"], 1_000_000)])
    assert done["a"] == pytest.approx(1.5)
    assert done["b"] == pytest.approx(2.0)


def test_latency_adds_per_hop():
    links = {"x": lossless(1e12, 0.003), "y": lossless(1e12, 0.020), "z": lossless(1e12, 0.001)}
    done = run_transfers(links, [("a", 0.0, ["x", "y", "z"], 1)])
    assert done["a"] == pytest.approx(0.024, rel=1e-6)


def test_classic_two_bottleneck_example():
    # Links A (cap 1) and B (cap 2); f1 uses A, f2 uses A and B, f3 and f4 use B.
    routes = {"f1": ["A"], "f2": ["A", "B"], "f3": ["B"], "f4": ["B"]}
    rates = max_min_rates(routes, {"A": 1.0, "B": 2.0})
    assert rates["f1"] == pytest.approx(0.5)
    assert rates["f2"] == pytest.approx(0.5)
    assert rates["f3"] == pytest.approx(0.75)
    assert rates["f4"] == pytest.approx(0.75)


def test_a_ceiling_frees_capacity_for_the_others():
    rates = max_min_rates({"slow": ["l"], "fast": ["l"]}, {"l": 10.0}, {"slow": 2.0})
    assert rates == {"slow": pytest.approx(2.0), "fast": pytest.approx(8.0)}


def test_lossy_route_goodput_follows_the_mathis_formula():
    links = {"lossy": DirectedLink(1e9, 0.025, 0.0, 0.01)}
    expected_rate = 1460 * 8 / (0.05 * math.sqrt(0.01)) * math.sqrt(1.5)
    assert mathis_rate_bps(0.05, 0.01) == pytest.approx(expected_rate)
    done = run_transfers(links, [("a", 0.0, ["lossy"], 1_000_000)])
    assert done["a"] == pytest.approx(0.025 + 8e6 / expected_rate)


def test_an_interrupted_transfer_frees_its_share_at_once():
    env = simpy.Environment()
    network = FlowNetwork(env, {"l": lossless(8 * MBIT)}, np.random.default_rng(0))
    finished = {}

    def sender(name):
        try:
            yield from network.transfer(["l"], 1_000_000)
            finished[name] = env.now
        except simpy.Interrupt:
            finished[name] = None

    a, _ = env.process(sender("a")), env.process(sender("b"))

    def cut():
        yield env.timeout(0.5)
        a.interrupt()

    env.process(cut())
    env.run()
    # b got half the link for 0.5 s (0.25 of its work), then all of it: 0.75 s more.
    assert finished == {"a": None, "b": pytest.approx(1.25)}
    assert network.active_flows == 0


@st.composite
def flow_sets(draw):
    n_links = draw(st.integers(1, 6))
    capacity = {f"l{i}": draw(st.floats(0.1, 1000.0)) for i in range(n_links)}
    n_flows = draw(st.integers(1, 12))
    routes = {
        f"f{j}": draw(st.lists(st.sampled_from(sorted(capacity)), min_size=1, max_size=n_links, unique=True))
        for j in range(n_flows)
    }
    ceilings = {f: draw(st.floats(0.05, 2000.0)) for f in routes if draw(st.booleans())}
    return routes, capacity, ceilings


@settings(max_examples=200, deadline=None)
@given(flow_sets())
def test_max_min_rates_respect_capacity_and_are_fair(case):
    routes, capacity, ceilings = case
    rates = max_min_rates(routes, capacity, ceilings)
    load = {link: sum(rates[f] for f, r in routes.items() if link in r) for link in capacity}
    for link, used in load.items():
        assert used <= capacity[link] * (1 + 1e-9)
    for flow, rate in rates.items():
        assert rate > 0
        if rate >= ceilings.get(flow, math.inf) * (1 - 1e-9):
            continue
        # Not at its ceiling: some link on its route is full and no flow there gets more.
        bottlenecks = [
            link
            for link in routes[flow]
            if load[link] >= capacity[link] * (1 - 1e-9)
            and all(rates[g] <= rate * (1 + 1e-9) for g, r in routes.items() if link in r)
        ]
        assert bottlenecks, f"{flow} could grow without taking from a smaller flow"


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5_000_000), min_size=1, max_size=6),
    starts=st.lists(st.floats(0.0, 2.0), min_size=6, max_size=6),
    grow=st.integers(1, 1_000_000),
)
def test_finish_times_never_decrease_when_a_flow_grows(sizes, starts, grow):
    links = {"l": lossless(10 * MBIT)}
    base = [(i, starts[i], ["l"], s) for i, s in enumerate(sizes)]
    bigger = [(0, starts[0], ["l"], sizes[0] + grow), *base[1:]]
    before, after = run_transfers(links, base), run_transfers(links, bigger)
    assert all(after[i] >= before[i] - 1e-9 for i in before)


@pytest.mark.parametrize("clock_start_s", [0.0, 3e7, 1e9])
def test_flows_finish_at_any_simulated_time(clock_start_s):
    starts = [(i, clock_start_s + 0.1 * i, ["l"], 123_457 * (i + 1)) for i in range(6)]
    done = run_transfers({"l": lossless(7.3 * MBIT)}, starts)
    assert len(done) == 6
    total_bits = sum(8 * s for *_, s in starts)
    assert max(done.values()) == pytest.approx(clock_start_s + total_bits / (7.3 * MBIT), rel=1e-9)


def reference_finish_times(links, flows):
    """Brute force: per-flow max-min rates recomputed at every start and finish."""
    capacity = {name: link.capacity_bps for name, link in links.items()}
    pending = sorted((start, name) for name, (start, _, _) in flows.items())
    remaining, active, finished, now = {}, {}, {}, 0.0
    while pending or active:
        rates = max_min_rates(active, capacity)
        next_finish = min((now + remaining[f] / rates[f] for f in active), default=math.inf)
        next_start = pending[0][0] if pending else math.inf
        step_to = min(next_finish, next_start)
        for f in active:
            remaining[f] -= rates[f] * (step_to - now)
        now = step_to
        for f in [f for f in active if remaining[f] <= 1e-6 * flows[f][2] * 8]:
            finished[f] = now
            del active[f]
        while pending and pending[0][0] <= now:
            _, name = pending.pop(0)
            active[name] = flows[name][1]
            remaining[name] = flows[name][2] * 8.0
    return finished


@st.composite
def network_cases(draw):
    names = [f"l{i}" for i in range(draw(st.integers(1, 4)))]
    links = {n: lossless(draw(st.floats(1 * MBIT, 100 * MBIT))) for n in names}
    flows = {
        f"f{j}": (
            draw(st.floats(0.0, 1.0)),
            draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True)),
            draw(st.integers(1_000, 2_000_000)),
        )
        for j in range(draw(st.integers(1, 10)))
    }
    return links, flows


@settings(max_examples=80, deadline=None)
@given(network_cases())
def test_grouped_flows_finish_when_per_flow_max_min_says(case):
    links, flows = case
    done = run_transfers(links, [(name, start, route, size) for name, (start, route, size) in flows.items()])
    expected = reference_finish_times(links, flows)
    assert done == pytest.approx(expected, rel=1e-6, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(network_cases())
def test_every_byte_sent_is_delivered_and_no_link_exceeds_its_capacity(case):
    links, flows = case
    env = simpy.Environment()
    network = FlowNetwork(env, links, np.random.default_rng(0))

    def sender(start, route, nbytes):
        yield env.timeout(start)
        yield from network.transfer(route, nbytes)

    for start, route, nbytes in flows.values():
        env.process(sender(start, route, nbytes))
    env.run()
    for link, spec in links.items():
        series = [s for s in network.samples if s.link == link]
        assert all(s.rate_bps <= spec.capacity_bps * (1 + 1e-9) for s in series)
        carried = sum(a.rate_bps * (b.time_s - a.time_s) for a, b in itertools.pairwise(series))
        sent = sum(8 * nbytes for _, route, nbytes in flows.values() if link in route)
        assert carried == pytest.approx(sent, rel=1e-6)
        assert not series or series[-1].flows == 0


def _outage_run(stall_timeout_s, window=(0.4, 0.3)):
    """One 1 MB upload over two hops (8 Mbit/s access, 8 Mbit/s backhaul); the backhaul goes
    down at ``window[0]`` for ``window[1]`` seconds."""
    env = simpy.Environment()
    links = {"access": lossless(8 * MBIT), "backhaul": lossless(8 * MBIT)}
    network = FlowNetwork(env, links, np.random.default_rng(0), stall_timeout_s=stall_timeout_s)
    result = {}

    def upload():
        try:
            yield from network.transfer(["access", "backhaul"], 1_000_000)
            result["done"] = env.now
        except TransferStalledError as error:
            result["failed"] = (env.now, str(error))

    def outage():
        yield env.timeout(window[0])
        network.set_down("backhaul", True)
        yield env.timeout(window[1])
        network.set_down("backhaul", False)

    env.process(upload())
    env.process(outage())
    env.run()
    return result, network


def test_an_outage_in_the_middle_of_an_upload_delays_it_by_its_length():
    result, network = _outage_run(stall_timeout_s=None)
    assert result == {"done": pytest.approx(1.0 + 0.3)}
    backhaul = [(s.time_s, s.rate_bps) for s in network.samples if s.link == "backhaul"]
    assert backhaul == [
        (0.0, 8 * MBIT),
        (pytest.approx(0.4), 0.0),
        (pytest.approx(0.7), 8 * MBIT),
        (pytest.approx(1.3), 0.0),
    ]


def test_an_upload_stalled_longer_than_the_timeout_fails_after_the_timeout():
    result, network = _outage_run(stall_timeout_s=0.2)
    assert result["failed"][0] == pytest.approx(0.4 + 0.2)
    assert "link backhaul down for more than 0.2 s" in result["failed"][1]
    assert network.active_flows == 0


def test_an_outage_shorter_than_the_timeout_only_delays():
    result, _ = _outage_run(stall_timeout_s=0.5)
    assert result == {"done": pytest.approx(1.3)}


def test_other_flows_keep_the_capacity_a_stalled_flow_cannot_use():
    env = simpy.Environment()
    links = {"a": lossless(8 * MBIT), "b": lossless(8 * MBIT), "shared": lossless(8 * MBIT)}
    network = FlowNetwork(env, links, np.random.default_rng(0))
    done = {}

    def upload(name, route):
        yield from network.transfer(route, 1_000_000)
        done[name] = env.now

    def outage():
        yield env.timeout(0.0)
        network.set_down("a", True)
        yield env.timeout(1.0)
        network.set_down("a", False)

    env.process(upload("x", ["a", "shared"]))
    env.process(upload("y", ["b", "shared"]))
    env.process(outage())
    env.run()
    # y has the shared link alone while a is down: 1 s; then x alone: 1 s more.
    assert done == {"y": pytest.approx(1.0), "x": pytest.approx(2.0)}
