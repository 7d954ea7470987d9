"""Client availability: shifts, maintenance, traces; selection and mid-round failures."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhq_sim.availability import DAY_S, Availability, ClientAvailability, Window
from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.scenario import load_scenario
from tests.conftest import tiny_scenario_dict

HOUR = 3600.0


def test_a_day_shift_and_a_night_shift_across_midnight():
    day = ClientAvailability(shifts=(Window(6 * HOUR, 14 * HOUR),))
    night = ClientAvailability(shifts=(Window(22 * HOUR, 6 * HOUR),))
    assert day.available(7 * HOUR, 0.0) and not day.available(15 * HOUR, 0.0)
    assert night.available(23 * HOUR, 0.0) and night.available(DAY_S + 5 * HOUR, 0.0)
    assert not night.available(12 * HOUR, 0.0)
    # The simulation starting at 13:00, the day shift ends one hour in.
    rules = Availability({0: day}, day_start_s=13 * HOUR)
    assert rules.available(0, 0.0) and rules.next_change(0, 0.0) == pytest.approx(HOUR)
    assert rules.next_available([0], 2 * HOUR) == pytest.approx(17 * HOUR)  # 06:00 next day


def test_maintenance_and_trace_intervals():
    rules = Availability(
        {0: ClientAvailability(maintenance=(Window(10.0, 20.0),)), 1: ClientAvailability(trace=(Window(5.0, 8.0),))}
    )
    assert rules.available(0, 9.9) and not rules.available(0, 10.0) and rules.available(0, 20.0)
    assert rules.next_change(0, 0.0) == 10.0 and rules.next_change(0, 10.0) == 20.0
    assert not rules.available(1, 0.0) and rules.next_available([1], 0.0) == 5.0
    assert rules.next_change(1, 5.0) == 8.0 and rules.next_change(1, 9.0) == math.inf
    assert rules.available(2, 1e9) and rules.next_change(2, 0.0) == math.inf


@given(
    start=st.floats(0, DAY_S - 1),
    length=st.floats(60, DAY_S - 60),
    day_start=st.floats(0, DAY_S - 1),
    t=st.floats(0, 3 * DAY_S),
)
def test_next_change_is_the_first_time_the_answer_flips(start, length, day_start, t):
    shift = Window(start, (start + length) % DAY_S)
    rules = Availability({0: ClientAvailability(shifts=(shift,))}, day_start_s=day_start)
    change = rules.next_change(0, t)
    assert change > t and change <= t + DAY_S
    assert rules.available(0, change) != rules.available(0, t)
    midway = t + (change - t) / 2
    assert rules.available(0, midway) == rules.available(0, t)


def _run(write_scenario, availability, rounds=1, per_round=4):
    data = tiny_scenario_dict()
    data["training"].update(rounds=rounds, clients_per_round=per_round)
    data["availability"] = availability
    return Simulation(load_scenario(write_scenario(data))).run()


def test_a_site_in_maintenance_is_not_selected(write_scenario):
    result = _run(write_scenario, {"maintenance": [{"site": "hall", "start": "0 s", "duration": "1 h"}]})
    assert {p.site for p in result.phases} == {"yard"}
    assert result.rounds[-1].selected == 2


def test_a_shift_ending_mid_round_fails_its_clients_and_says_so(write_scenario):
    # Day starts at 21:59:59.9; the yard works 06:00-22:00, so it goes offline 0.1 s in.
    result = _run(
        write_scenario, {"day_start": "79199.9 s", "shifts": [{"sites": ["yard"], "start": "6 h", "end": "22 h"}]}
    )
    failed = [p for p in result.phases if p.status == "failed"]
    assert {p.site for p in failed} == {"yard"} and len(failed) == 2
    assert all(p.end_s == pytest.approx(0.1) and "went offline at 0.100 s" in p.reason for p in failed)
    assert result.rounds[-1].failed == 2 and result.rounds[-1].reported == 2


def test_the_server_waits_until_a_client_is_on(write_scenario, tmp_path):
    trace = tmp_path / "on.csv"
    trace.write_text("client,start_s,end_s\nhall/rpi4-0,30,1000\nhall/rpi4-1,30,1000\nyard/rpi5-0,30,1000\n")
    data_trace = {"trace": str(trace), "maintenance": [{"client": "yard/rpi5-1", "start": "0 s", "duration": "1 h"}]}
    result = _run(write_scenario, data_trace, rounds=2, per_round=3)
    first = [p for p in result.phases if p.round == 1]
    assert min(p.start_s for p in first) == pytest.approx(30.0)
    assert {p.client for p in result.phases} == {"hall/rpi4-0", "hall/rpi4-1", "yard/rpi5-0"}


def test_a_trace_naming_an_unknown_client_is_an_input_error(write_scenario, tmp_path, capsys):
    trace = tmp_path / "bad.csv"
    trace.write_text("client,start_s,end_s\nhall/rpi4-0,0,10\nroof/rpi4-9,0,10\n")
    data = tiny_scenario_dict()
    data["availability"] = {"trace": str(trace)}
    assert main(["validate", str(write_scenario(data))]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: {trace}: line 3.client: unknown client 'roof/rpi4-9' (names look like 'site/device-0')"
    )
