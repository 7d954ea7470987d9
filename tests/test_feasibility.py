"""Clients that cannot take part are flagged with the reason, and energy is accounted per phase."""

import shutil

import pandas as pd
import pytest
import yaml

from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.errors import InputError
from fedhq_sim.feasibility import training_step
from fedhq_sim.policies import Policy, RoundContext, register_policy
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.scenario import load_scenario
from tests.conftest import PROFILES, tiny_scenario_dict


def _with_lorawan_site(data):
    data["sites"].append(
        {"name": "field", "backhaul": "lte", "devices": [{"device": "rpi4", "link": "lorawan_eu868", "count": 1}]}
    )
    return data


def test_a_lorawan_only_client_is_flagged_unable_to_carry_an_update(write_scenario):
    simulation = Simulation(load_scenario(write_scenario(_with_lorawan_site(tiny_scenario_dict()))))
    field = [row for row in simulation.world.feasibility if row.client.startswith("field/")]
    assert len(field) == 3 and not any(row.able for row in field)
    assert all(row.reason.startswith("link: ") and "lorawan_eu868" in row.reason for row in field)
    assert all(row.transfer_s > 10 * 60 for row in field)
    lorawan_id = field[0].client_id
    assert lorawan_id not in simulation.eligible
    result = simulation.run()
    assert lorawan_id not in {p.client_id for p in result.phases}


def test_the_cli_warns_about_unable_clients_and_writes_the_feasibility_table(write_scenario, tmp_path, capsys):
    scenario = write_scenario(_with_lorawan_site(tiny_scenario_dict()))
    assert main(["run", str(scenario), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "warning: field/rpi4-0 can run no strategy and is never selected; ptq8: link: " in out
    table = pd.read_csv(tmp_path / "out" / "feasibility.csv")
    assert len(table) == 5 * 3
    assert table.loc[table["client"] == "field/rpi4-0", "able"].eq(False).all()


def _library_with_small_device(tmp_path, memory: str):
    library = tmp_path / "profiles"
    shutil.copytree(PROFILES, library)
    source = yaml.safe_load((library / "devices" / "rpi4.yaml").read_text())
    source["name"] = "tiny_board"
    source["memory"] = memory
    source["memory_reserved"] = "0 B"
    (library / "devices" / "tiny_board.yaml").write_text(yaml.safe_dump(source))
    return library


def test_a_model_too_big_for_the_device_memory_is_refused_with_a_message(tmp_path):
    library = _library_with_small_device(tmp_path, "256 kB")
    data = tiny_scenario_dict()
    data["profiles_dir"] = str(library)
    data["model"] = "resnet8"
    data["sites"][0]["devices"] = [{"device": "tiny_board", "link": "wifi6", "count": 1}]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    simulation = Simulation(load_scenario(path))
    tiny = [row for row in simulation.world.feasibility if row.device == "tiny_board"]
    assert tiny and not any(row.able for row in tiny)
    for row in tiny:
        assert row.memory_needed_bytes > row.memory_available_bytes == 256_000
        assert row.reason.startswith(f"memory: {row.strategy} training needs ")
        assert "device tiny_board has 0.2 MiB available" in row.reason


@register_policy("test-qat-regardless")
class _QATRegardless(Policy):
    """Assigns QAT to everyone while declaring every strategy possible, as an adaptive policy may."""

    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        return dict.fromkeys(ctx.selected, Strategy("qat", 8))


def _fp32_only_board_scenario(tmp_path, policy: str):
    fp32 = training_step("small_cnn", 10, FP32, (32, 1, 8, 8)).memory_bytes
    qat = training_step("small_cnn", 10, Strategy("qat", 8), (32, 1, 8, 8)).memory_bytes
    assert qat > fp32
    library = _library_with_small_device(tmp_path, f"{(fp32 + qat) // 2} B")
    data = tiny_scenario_dict()
    data["profiles_dir"] = str(library)
    data["sites"] = data["sites"][:1]
    data["sites"][0]["devices"] = [
        {"device": "tiny_board", "link": "wifi6", "count": 1},
        {"device": "rpi4", "link": "wifi6", "count": 1},
    ]
    data["training"]["clients_per_round"] = 2
    data["policy"] = {"name": policy}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_fixed_policy_never_selects_a_client_that_cannot_run_its_strategy(tmp_path, capsys):
    path = _fp32_only_board_scenario(tmp_path, "all-qat")
    simulation = Simulation(load_scenario(path))
    assert simulation.world.able[0] == frozenset({"fp32", "ptq8"})
    assert 0 not in simulation.eligible
    result = simulation.run()
    assert 0 not in {p.client_id for p in result.phases}
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: hall/tiny_board-0 is never selected: policy all-qat gives it qat8, which it cannot run; memory:"
        in err
    )
    ptq = Simulation(load_scenario(_fp32_only_board_scenario(tmp_path / "ptq", "all-ptq")))
    assert 0 in ptq.eligible


def test_a_strategy_the_client_cannot_run_is_recorded_as_unable_with_the_reason(tmp_path):
    result = Simulation(load_scenario(_fp32_only_board_scenario(tmp_path, "test-qat-regardless"))).run()
    unable = [p for p in result.phases if p.status == "unable"]
    assert [p.client_id for p in unable] == [0] * len(result.rounds[1:])
    assert all(p.reason.startswith("memory: qat8 training needs") for p in unable)
    for record in result.rounds[1:]:
        assert (record.unable, record.dropped, record.reported, record.n_qat) == (1, 0, 1, 1)


def test_no_client_able_to_take_part_is_an_input_error(write_scenario):
    data = tiny_scenario_dict()
    for site in data["sites"]:
        for group in site["devices"]:
            group["link"] = "lorawan_eu868"
    with pytest.raises(InputError, match="sites: no client can take part: link: "):
        Simulation(load_scenario(write_scenario(data)))


def test_energy_per_phase_is_power_times_time_and_rounds_add_it_up(write_scenario):
    scenario = load_scenario(write_scenario(tiny_scenario_dict()))
    result = Simulation(scenario).run()
    devices = {c.name: c.device for c in scenario.clients}
    links = {c.name: c.link for c in scenario.clients}
    for p in result.phases:
        seconds = p.end_s - p.start_s
        if p.phase == "compute":
            expected = devices[p.client].power.active * seconds
        elif p.phase == "download":
            expected = links[p.client].radio_power.receive * seconds
        else:
            expected = links[p.client].radio_power.transmit * seconds
        assert p.energy_j == pytest.approx(expected)
        assert p.energy_j > 0
    for r in result.rounds[1:]:
        mine = [p for p in result.phases if p.round == r.round]
        assert r.energy_compute_j == pytest.approx(sum(p.energy_j for p in mine if p.phase == "compute"))
        assert r.energy_radio_j == pytest.approx(sum(p.energy_j for p in mine if p.phase != "compute"))
        idle = 0.0
        for client in {p.client for p in mine}:
            computing = sum(p.end_s - p.start_s for p in mine if p.client == client and p.phase == "compute")
            idle += devices[client].power.idle * (r.latency_s - computing)
        assert r.energy_idle_j == pytest.approx(idle) and idle > 0
        assert r.energy_j == pytest.approx(r.energy_compute_j + r.energy_radio_j + r.energy_idle_j)


def test_a_client_whose_training_cannot_fit_the_deadline_is_flagged_with_the_time(write_scenario):
    data = tiny_scenario_dict()
    data["training"]["round_deadline"] = "60 ms"
    with pytest.raises(
        InputError, match=r"sites: no client can take part: time: transfers \(.*\) and .* training steps on"
    ):
        Simulation(load_scenario(write_scenario(data)))


@pytest.mark.parametrize("policy", ["all-fp32", "all-ptq", "all-qat", "hybrid", "deadline-greedy", "coarse-init"])
def test_every_policy_runs_a_round_end_to_end(write_scenario, policy):
    data = tiny_scenario_dict()
    data["training"]["rounds"] = 1
    data["policy"] = {"name": policy} | ({"qat_fraction": 0.5} if policy == "hybrid" else {})
    record = Simulation(load_scenario(write_scenario(data))).run().rounds[-1]
    assert record.reported == record.selected == 3
    expected = {"all-fp32": "n_fp32", "all-ptq": "n_ptq", "all-qat": "n_qat"}.get(policy)
    if expected:
        assert getattr(record, expected) == 3


def _with_hall_outage(stall_timeout=None):
    data = tiny_scenario_dict()
    data["training"]["rounds"] = 1
    data["training"]["clients_per_round"] = 4
    data["network"] = {"outages": [{"link": "backhaul:hall", "start": "0 s", "duration": "20 s"}]}
    if stall_timeout:
        data["network"]["stall_timeout"] = stall_timeout
    return data


def test_a_backhaul_outage_stalls_the_site_and_the_round_waits_it_out(write_scenario):
    calm = tiny_scenario_dict()
    calm["training"].update(rounds=1, clients_per_round=4)
    before = Simulation(load_scenario(write_scenario(calm))).run().rounds[-1]
    after = Simulation(load_scenario(write_scenario(_with_hall_outage()))).run().rounds[-1]
    assert before.latency_s < 5 and after.latency_s > 20
    assert after.reported == 4 and after.failed == 0


def test_a_transfer_stalled_past_the_timeout_fails_and_is_logged(write_scenario):
    result = Simulation(load_scenario(write_scenario(_with_hall_outage("2 s")))).run()
    failed = [p for p in result.phases if p.status == "failed"]
    assert {p.site for p in failed} == {"hall"} and len(failed) == 2
    assert all(p.phase == "download" and p.end_s == pytest.approx(p.start_s + 2.0, abs=0.05) for p in failed)
    assert all("down for more than 2 s" in p.reason for p in failed)
    record = result.rounds[-1]
    assert (record.failed, record.reported, record.dropped) == (2, 2, 0)


def test_an_outage_on_an_unknown_link_is_an_input_error(write_scenario, capsys):
    data = _with_hall_outage()
    data["network"]["outages"][0]["link"] = "backhaul:roof"
    assert main(["validate", str(write_scenario(data))]) == 2
    assert (
        "network.outages[0].link: 'backhaul:roof' names no link; use 'server', 'backhaul:<site>'"
        in capsys.readouterr().err
    )


def test_overlapping_outages_keep_the_link_down_until_the_last_one_ends(write_scenario):
    data = tiny_scenario_dict()
    data["training"].update(rounds=1, round_deadline="30 s")
    data["network"] = {
        "outages": [
            {"link": "server", "start": "0 s", "duration": "10 s"},
            {"link": "server", "start": "5 s", "duration": "1 h"},
        ]
    }
    simulation = Simulation(load_scenario(write_scenario(data)))
    record = simulation.run().rounds[-1]
    assert record.reported == 0 and record.dropped == record.selected
    server = [s for s in simulation.network.samples if s.link == ("server", "core")]
    assert all(s.rate_bps == 0 for s in server if 0 < s.time_s < 3605)
