"""Clients that cannot take part are flagged with the reason, and energy is accounted per phase."""

import shutil

import pandas as pd
import pytest
import yaml

from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.errors import InputError
from fedhq_sim.scenario import load_scenario
from tests.conftest import PROFILES, tiny_scenario_dict


def _with_lorawan_site(data):
    data["sites"].append(
        {"name": "field", "backhaul": "lte", "devices": [{"device": "rpi4", "link": "lorawan_eu868", "count": 1}]}
    )
    return data


def test_a_lorawan_only_client_is_flagged_unable_to_carry_an_update(write_scenario):
    simulation = Simulation(load_scenario(write_scenario(_with_lorawan_site(tiny_scenario_dict()))))
    field = [row for row in simulation.feasibility if row.client.startswith("field/")]
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
    tiny = [row for row in simulation.feasibility if row.device == "tiny_board"]
    assert tiny and not any(row.able for row in tiny)
    for row in tiny:
        assert row.memory_needed_bytes > row.memory_available_bytes == 256_000
        assert row.reason.startswith(f"memory: {row.strategy} training needs ")
        assert "device tiny_board has 0.2 MiB available" in row.reason


def test_qat_can_be_refused_where_fp32_fits_and_the_client_is_then_dropped_with_the_reason(tmp_path):
    from fedhq_sim.feasibility import memory_needed
    from fedhq_sim.quant.strategy import FP32, Strategy

    fp32 = memory_needed("small_cnn", 10, FP32, (32, 1, 8, 8))
    qat = memory_needed("small_cnn", 10, Strategy("qat", 8), (32, 1, 8, 8))
    assert qat > fp32
    library = _library_with_small_device(tmp_path, f"{(fp32 + qat) // 2} B")
    data = tiny_scenario_dict()
    data["profiles_dir"] = str(library)
    data["sites"] = [
        {"name": "hall", "backhaul": "fibre_1g", "devices": [{"device": "tiny_board", "link": "wifi6", "count": 1}]}
    ]
    data["training"]["clients_per_round"] = 1
    data["policy"] = {"name": "all-qat"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    simulation = Simulation(load_scenario(path))
    assert simulation.able[0] == frozenset({"fp32", "ptq8"})
    result = simulation.run()
    unable = [p for p in result.phases if p.status == "unable"]
    assert len(unable) == data["training"]["rounds"]
    assert all(p.reason.startswith("memory: qat8 training needs") for p in unable)
    assert all(r.reported == 0 for r in result.rounds[1:])


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
        assert r.energy_idle_j > 0
        assert r.energy_j == pytest.approx(r.energy_compute_j + r.energy_radio_j + r.energy_idle_j)
