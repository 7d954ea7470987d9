"""``fedhq-sim compare``: policies over seeds, the table, the figure, and its pure summaries."""

import math

import pandas as pd
import pytest

from fedhq_sim.batch import median_table, time_to_target
from fedhq_sim.cli import main
from fedhq_sim.compare import policy_overrides
from fedhq_sim.policies.choice import choose_policy
from fedhq_sim.scenario import load_scenario
from tests.conftest import scenario_file, tiny_scenario_dict


def comparison_scenario() -> dict:
    data = tiny_scenario_dict()
    data["training"].update(rounds=2, clients_per_round=2, local_steps=2)
    del data["training"]["local_epochs"]
    data["policy"] = {"name": "fedhq", "latency_budget": 0.2, "max_qat_fraction": 0.5}
    data["deployment"] = {"bits": 4}
    return data


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison: 2 policies x 2 seeds, run in 2 worker processes."""
    folder = tmp_path_factory.mktemp("compare")
    scenario = scenario_file(folder, comparison_scenario())
    out = folder / "out"
    argv = ["compare", str(scenario), "--policies", "all-ptq", "fedhq", "--seeds", "1", "2", "--target", "0.2"]
    code = main([*argv, "--out", str(out), "--jobs", "2", "--quiet"])
    return scenario, out, code


def test_compare_writes_the_table_the_figure_and_every_run(compared):
    _, out, code = compared
    assert code == 0
    for name in ("summary.csv", "rounds.csv", "table.csv", "table.md", "comparison.png", "compare.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(zip(summary["policy"], summary["seed"], strict=True)) == [
        ("all-ptq", 1),
        ("all-ptq", 2),
        ("fedhq", 1),
        ("fedhq", 2),
    ]
    assert (summary.loc[summary["policy"] == "all-ptq", "qat_share"] == 0).all()
    for policy in ("all-ptq", "fedhq"):
        assert (out / "runs" / f"policy={policy}-seed1" / "rounds.csv").is_file()
    assert "| fedhq |" in (out / "table.md").read_text()


def test_the_comparison_report_renders_in_a_headless_browser(compared):
    from tests.conftest import render_in_chromium

    dom = render_in_chromium(compared[1] / "report.html")
    assert 'data-figures-loaded="1" data-figures="1"' in dom
    assert "fedhq" in dom and "all-ptq" in dom


def test_a_comparison_in_worker_processes_equals_a_serial_run(compared, tmp_path):
    scenario, out, _ = compared
    serial = tmp_path / "serial"
    argv = ["compare", str(scenario), "--policies", "all-ptq", "fedhq", "--seeds", "1", "2", "--target", "0.2"]
    assert main([*argv, "--out", str(serial), "--jobs", "1", "--quiet"]) == 0
    for policy in ("all-ptq", "fedhq"):
        for seed in (1, 2):
            run = f"runs/policy={policy}-seed{seed}/rounds.csv"
            assert (serial / run).read_bytes() == (out / run).read_bytes(), run


def test_compare_refuses_an_unknown_policy_and_a_bad_target(compared, tmp_path, capsys):
    scenario, _, _ = compared
    assert main(["compare", str(scenario), "--policies", "nope", "--out", str(tmp_path / "a")]) == 2
    assert "policy.name" in capsys.readouterr().err
    assert main(["compare", str(scenario), "--target", "1.5", "--out", str(tmp_path / "b")]) == 2
    assert "--target" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_policy_keeps_only_the_scenario_options_it_accepts(write_scenario):
    path = write_scenario(comparison_scenario())
    assert policy_overrides(path, "all-ptq") == {"policy": {"name": "all-ptq"}}
    hybrid = policy_overrides(path, "random-hybrid")["policy"]
    assert hybrid == {"name": "random-hybrid", "latency_budget": 0.2, "max_qat_fraction": 0.5}
    loaded = load_scenario(path, policy_overrides(path, "all-fp32") | {"seed": 9})
    assert loaded.spec.seed == 9 and choose_policy(loaded).options.bits == 4  # fp32 clients, 4-bit deployment


def test_a_set_value_holds_for_every_policy(write_scenario):
    from fedhq_sim.compare import policy_variants

    path = write_scenario(comparison_scenario())
    for variant in policy_variants(path, ["all-ptq", "fedhq"], [1], {"deployment.bits": 8}):
        assert choose_policy(load_scenario(path, variant.overrides)).options.bits == 8


USER_POLICY = """
from fedhq_sim.policies import Policy, register_policy
from fedhq_sim.quant.strategy import Strategy


@register_policy("compare-user-policy")
class EveryoneQAT(Policy):
    def assign(self, ctx):
        return {cid: Strategy("qat", self.options.bits) for cid in ctx.selected}
"""


def test_compare_finds_a_user_policy_from_the_scenarios_module(write_scenario, tmp_path):
    (tmp_path / "mine.py").write_text(USER_POLICY)
    data = comparison_scenario()
    data["policy"] = {"name": "all-ptq", "module": "mine.py"}
    path = write_scenario(data)
    overrides = policy_overrides(path, "compare-user-policy")
    assert overrides == {"policy": {"name": "compare-user-policy", "module": "mine.py"}}


def test_an_input_error_survives_the_trip_back_from_a_worker_process():
    import pickle

    from fedhq_sim.errors import InputError

    error = pickle.loads(pickle.dumps(InputError("s.yaml", "data", "no Dirichlet draw")))
    assert str(error) == "s.yaml: data: no Dirichlet draw" and error.key_path == "data"


def test_time_to_target_is_the_first_round_that_reaches_it():
    rounds = pd.DataFrame({"end_s": [0.0, 1.0, 2.5, 4.0], "deployed_accuracy": [0.1, 0.5, 0.82, 0.79]})
    assert time_to_target(rounds, 0.8) == 2.5
    assert math.isnan(time_to_target(rounds, 0.9))


def test_the_policy_table_gives_median_and_range_over_seeds_and_counts_the_seeds_that_reached():
    summary = pd.DataFrame(
        {
            "policy": ["a", "a", "a", "b"],
            "time_to_target_s": [1.0, 3.0, math.nan, 2.0],
            "final_deployed_accuracy": [0.8, 0.9, 0.7, 0.85],
            "late_deployed_accuracy": [0.75, 0.9, 0.7, 0.8],
            "mean_round_latency_s": [1.0, 1.0, 1.0, 2.0],
            "qat_share": [0.0, 0.0, 0.0, 0.5],
            "energy_j": [1.0, 2.0, 3.0, 4.0],
        }
    )
    table = median_table(summary, ["policy"]).set_index("policy")
    assert list(table.index) == ["a", "b"]  # first-seen order
    assert table.loc["a", "reached"] == 2 and table.loc["a", "seeds"] == 3
    assert table.loc["a", "time_to_target_s_median"] == 2.0
    assert (table.loc["a", "final_deployed_accuracy_min"], table.loc["a", "final_deployed_accuracy_max"]) == (0.7, 0.9)


def test_a_runs_late_accuracy_is_the_mean_of_its_last_rounds_not_the_last_one():
    from pathlib import Path

    from fedhq_sim.batch import LATE_ROUNDS, Variant, VariantResult, run_summary

    accuracy = [0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.6, 0.95]  # round 0 (no training) then 7 rounds
    rounds = pd.DataFrame(
        {
            "round": range(8),
            "deployed_accuracy": accuracy,
            "fp32_accuracy": accuracy,
            "latency_s": [0.0] + [1.0] * 7,
            "end_s": range(8),
            "n_ptq": [0] + [2] * 7,
            "n_qat": [0] * 8,
            "energy_j": [0.0] + [1.0] * 7,
        }
    )
    result = VariantResult(Variant(Path("s.yaml"), {"policy": "p"}, 1), rounds, 0.0, {}, [])
    row = run_summary(result, target=0.9)
    assert LATE_ROUNDS == 5 and row["late_deployed_accuracy"] == pytest.approx((0.7 + 0.8 + 0.9 + 0.6 + 0.95) / 5)
    assert row["final_deployed_accuracy"] == 0.95 and row["time_to_target_s"] == 5
