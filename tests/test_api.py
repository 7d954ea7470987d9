"""The Python API: load, change in code, simulate, DataFrames, figures, the results folder."""

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


def test_a_run_from_code_writes_the_folder_the_cli_writes(tmp_path):
    from fedhq_sim.checkpoint import read_checkpoint
    from fedhq_sim.cli import main

    data = tiny_scenario_dict()
    data["training"]["rounds"] = 1
    path = scenario_file(tmp_path, data)
    run = api.simulate(path, out=tmp_path / "api")
    assert run.folder == tmp_path / "api" and list(run.rounds["round"]) == [0, 1]
    assert main(["run", str(path), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    written = {p.name for p in (tmp_path / "api").iterdir()}
    assert written == {p.name for p in (tmp_path / "cli").iterdir()}
    assert {"feasibility.csv", "checkpoint.pt", "report.html", "trace.json"} <= written
    for name in ("rounds.csv", "events.csv", "link_utilisation.csv", "feasibility.csv", "resolved.json", "trace.json"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert read_checkpoint(tmp_path / "api")["finished"] is True
    assert json.loads((tmp_path / "api" / "run.json").read_text())["command"] == "fedhq_sim.api"
    with pytest.raises(InputError, match="not empty"):
        api.simulate(path, out=tmp_path / "api")


def test_values_set_in_code_are_in_the_folder_a_run_writes(result, tmp_path):
    plant, _ = result
    run = api.simulate(plant.with_values({"training.rounds": 1, "sites[1].backhaul": "fibre_1g"}), out=tmp_path / "o")
    scenario_text = (run.folder / "scenario.yaml").read_text()
    assert "# override: sites[1].backhaul = 'fibre_1g'" in scenario_text and "fibre_1g" in scenario_text
    assert json.loads((run.folder / "resolved.json").read_text())["overrides"]["training.rounds"] == 1


def test_a_bad_value_set_in_code_names_its_key(result):
    plant, _ = result
    with pytest.raises(InputError, match=r"training\.rounds"):
        api.simulate(plant.with_values({"training.rounds": 0}))


def test_compare_from_code_returns_a_summary_and_a_median_table(result):
    plant, _ = result
    summary, table = api.compare(plant.with_values({"training.rounds": 1}), ["all-ptq", "all-qat"], seeds=[1])
    assert list(table["policy"]) == ["all-ptq", "all-qat"]
    assert summary.loc[summary["policy"] == "all-qat", "qat_share"].item() == 1.0


@pytest.mark.parametrize(("mode", "timing_only"), [("buffered", False), ("async", True), ("semi-sync", True)])
def test_every_asynchronous_mode_runs_from_code_and_from_the_command_line(tmp_path, mode, timing_only):
    """The same folder from both front doors, with the staleness columns, and a report."""
    from fedhq_sim.cli import main

    data = tiny_scenario_dict()
    data["training"].update(rounds=3, mode=mode)
    if mode == "semi-sync":
        data["training"]["aggregation"] = {"period": "0.1 s"}  # shorter than some turns: updates carry over
    path = scenario_file(tmp_path, data)
    run = api.simulate(path, out=tmp_path / "api", timing_only=timing_only)
    assert list(run.rounds["round"]) == [0, 1, 2, 3]
    assert run.rounds["reported"].iloc[1:].sum() >= 3 and {"staleness_mean", "staleness_max"} <= set(run.rounds)
    assert "staleness" in run.events
    assert timing_only or run.rounds["deployed_accuracy"].iloc[1:].notna().all()
    flags = ["--timing-only"] if timing_only else []
    assert main(["run", str(path), "--out", str(tmp_path / "cli"), "--quiet", *flags]) == 0
    for name in ("rounds.csv", "events.csv", "link_utilisation.csv", "trace.json"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert (tmp_path / "cli" / "report.html").stat().st_size > 0


def test_a_sweep_compares_the_modes_of_one_scenario(tmp_path):
    from fedhq_sim.cli import main

    data = tiny_scenario_dict()
    data["training"]["rounds"] = 2
    path = scenario_file(tmp_path, data)
    command = ["sweep", str(path), "--set", "training.mode=sync,buffered,async", "--seeds", "1", "--timing-only"]
    assert main([*command, "--out", str(tmp_path / "sweep"), "--quiet", "--jobs", "1"]) == 0
    summary = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert len(summary) == 3 and summary["simulated_s"].gt(0).all()
