"""The Python API: load, change in code, simulate, DataFrames, figures, save."""

import json

import pandas as pd
import pytest

from fedhq_sim import api
from fedhq_sim.errors import InputError
from tests.conftest import scenario_file, tiny_scenario_dict


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    plant = api.load(scenario_file(tmp_path_factory.mktemp("api"), tiny_scenario_dict()))
    return plant, api.simulate(plant.with_values({"training.rounds": 1, "sites[1].backhaul": "fibre_1g"}))


def test_values_changed_in_code_reach_the_run_and_results_are_dataframes(result):
    _, run = result
    assert isinstance(run.rounds, pd.DataFrame) and list(run.rounds["round"]) == [0, 1]
    assert run.scenario.backhauls["yard"].name == "fibre_1g"
    assert {"download", "compute", "upload"} == set(run.events["phase"])
    assert set(run.latency_breakdown()["part"]) == {"download", "compute", "upload", "waiting", "server"}
    for plot in (run.plot_accuracy, run.plot_latency, run.plot_timeline, run.plot_strategies, run.plot_energy):
        assert plot().get_xlabel()  # every axis is labelled


def test_a_saved_result_is_the_folder_the_cli_writes_with_its_overrides(result, tmp_path):
    _, run = result
    out = run.save(tmp_path / "out")
    for name in ("rounds.csv", "events.csv", "trace.json", "report.html", "client_timeline.png"):
        assert (out / name).is_file(), name
    scenario_text = (out / "scenario.yaml").read_text()
    assert "# override: sites[1].backhaul = 'fibre_1g'" in scenario_text and "fibre_1g" in scenario_text
    assert json.loads((out / "run.json").read_text())["command"] == "fedhq_sim.api"
    assert json.loads((out / "resolved.json").read_text())["overrides"]["training.rounds"] == 1
    with pytest.raises(InputError, match="not empty"):
        run.save(out)


def test_a_bad_value_set_in_code_names_its_key(result):
    plant, _ = result
    with pytest.raises(InputError, match=r"training\.rounds"):
        api.simulate(plant.with_values({"training.rounds": 0}))


def test_compare_from_code_returns_a_summary_and_a_median_table(result):
    plant, _ = result
    summary, table = api.compare(plant.with_values({"training.rounds": 1}), ["all-ptq", "all-qat"], seeds=[1])
    assert list(table["policy"]) == ["all-ptq", "all-qat"]
    assert summary.loc[summary["policy"] == "all-qat", "qat_share"].item() == 1.0
