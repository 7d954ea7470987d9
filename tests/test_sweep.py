"""``fedhq-sim sweep``: a grid over scenario values, capacity curves and their report."""

import itertools
import json

import pandas as pd
import pytest

from fedhq_sim.cli import main
from fedhq_sim.sweep import grid_variants
from tests.conftest import scenario_file, tiny_scenario_dict


def sweep_scenario() -> dict:
    data = tiny_scenario_dict()
    data["training"].update(rounds=1, clients_per_round=2)
    return data


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    scenario = scenario_file(folder, sweep_scenario())
    out = folder / "out"
    argv = [
        "sweep",
        str(scenario),
        "--set",
        "training.clients_per_round=2,4",
        "--set",
        "sites[1].backhaul=lte,fibre_1g",
    ]
    code = main([*argv, "--seeds", "1", "--target", "0.1", "--out", str(out), "--jobs", "1", "--quiet"])
    return out, code


def test_a_sweep_runs_every_grid_point_and_draws_capacity_curves(swept):
    out, code = swept
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    points = set(zip(summary["training.clients_per_round"], summary["sites[1].backhaul"], strict=True))
    assert points == set(itertools.product([2, 4], ["lte", "fibre_1g"]))
    for name in ("capacity.png", "table.md", "sweep.json", "report.html"):
        assert (out / name).stat().st_size > 0
    assert "| 2 | lte | " in (out / "table.md").read_text()  # integer keys stay integers
    info = json.loads((out / "sweep.json").read_text())
    assert info["by"] == ["training.clients_per_round", "sites[1].backhaul"]
    runs = pd.read_csv(out / "rounds.csv")
    selected = runs[runs["round"] == 1].groupby("variant")["selected"].first()
    assert selected["2 / lte"] == 2 and selected["4 / lte"] == 4  # the override reached the run


def test_the_backhaul_override_changes_only_the_network_time(swept):
    out, _ = swept
    summary = pd.read_csv(out / "summary.csv").set_index(["training.clients_per_round", "sites[1].backhaul"])
    for n in (2, 4):
        assert summary.loc[(n, "fibre_1g"), "mean_round_latency_s"] <= summary.loc[(n, "lte"), "mean_round_latency_s"]


def test_grid_variants_take_every_combination_for_every_seed(tmp_path):
    variants = grid_variants(tmp_path / "s.yaml", [("a", [1, 2]), ("b.c", ["x"])], [7, 8])
    assert [(dict(v.label), v.seed) for v in variants] == [
        ({"a": 1, "b.c": "x"}, 7),
        ({"a": 1, "b.c": "x"}, 8),
        ({"a": 2, "b.c": "x"}, 7),
        ({"a": 2, "b.c": "x"}, 8),
    ]
    assert variants[0].folder_name == "a=1-c=x-seed7"


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--set", "training.rounds"], "KEY=VALUE"),
        (["--set", "sites[9].backhaul=lte"], "sites[9].backhaul"),
        (["--set", "training.rounds=0"], "training.rounds"),
        (["--set", "a=1", "--set", "a=2"], "once"),
        (["--set", "seed=1,2"], "--seeds"),
    ],
)
def test_a_bad_sweep_fails_before_any_run_with_one_line(write_scenario, tmp_path, capsys, argv, problem):
    scenario = write_scenario(sweep_scenario())
    assert main(["sweep", str(scenario), *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
