"""Timing-only mode: the timings of a full run without running the work, and no accuracy."""

import json

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhq_sim import training
from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.models import build_model
from fedhq_sim.profiled import AggregationProfiles, LocalProfiles
from fedhq_sim.quant.payload import encode_fp32
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.scenario import load_scenario
from fedhq_sim.server_work import Update, aggregate_updates
from fedhq_sim.tables import phases_frame, rounds_frame
from fedhq_sim.training import LocalConfig, local_work
from fedhq_sim.work import WORK_CACHE
from tests.conftest import tiny_scenario_dict

ACCURACY = ["train_loss", "fp32_accuracy", "deployed_accuracy"]


def _plant(data: dict) -> dict:
    """An aggregating site, a link outage, a maintenance window and a deadline that drops."""
    data["sites"][0] |= {"aggregator": "industrial_pc_i5"}
    data["sites"][1]["devices"].append({"device": "cortex_a53_gateway", "link": "lte", "count": 2})
    outage = {"link": "backhaul:yard", "start": "0.05 s", "duration": "0.2 s"}
    data["network"] = {"outages": [outage], "stall_timeout": "0.1 s"}
    data["availability"] = {"maintenance": [{"client": "hall/rpi4-1", "start": "0.4 s", "duration": "1 h"}]}
    data["training"] |= {"rounds": 3, "clients_per_round": 6, "round_deadline": "0.25 s"}
    return data


def _resnet_four_bits(data: dict) -> dict:
    data["model"] = "resnet8"
    data["policy"] = {"name": "hybrid", "qat_fraction": 0.5}
    data["deployment"] = {"bits": 4}
    return data


def _sensors_fixed_steps(data: dict) -> dict:
    data["model"], data["data"] = "mlp", {"dataset": "plant_sensors", "dirichlet_alpha": 0.5}
    data["training"] = {k: v for k, v in data["training"].items() if k != "local_epochs"} | {"local_steps": 7}
    data["policy"] = {"name": "coarse-init"}
    return data


@pytest.mark.parametrize("variant", [_plant, _resnet_four_bits, _sensors_fixed_steps])
def test_timing_only_gives_the_timings_bytes_and_energy_of_a_full_run(variant, write_scenario):
    scenario = load_scenario(write_scenario(variant(tiny_scenario_dict())))
    full = Simulation(scenario).run()
    timed = Simulation(scenario, timing_only=True).run()
    assert phases_frame(timed.phases).equals(phases_frame(full.phases))
    full_rounds, timed_rounds = rounds_frame(full.rounds), rounds_frame(timed.rounds)
    assert timed_rounds.drop(columns=ACCURACY).equals(full_rounds.drop(columns=ACCURACY))
    assert timed_rounds[ACCURACY].isna().all().all() and full_rounds[ACCURACY].iloc[1:].notna().all().all()
    statuses = set(phases_frame(full.phases)["status"])
    if variant is _plant:  # the law covers every kind of phase, not just the easy ones
        assert {"completed", "dropped", "failed"} <= statuses


def test_timing_only_runs_no_training_per_round(write_scenario, monkeypatch):
    steps = []
    real_step = training.sgd_step
    monkeypatch.setattr(training, "sgd_step", lambda *args: steps.append(1) or real_step(*args))
    counts = []
    for rounds in (1, 4):
        data = tiny_scenario_dict()
        data["training"] |= {"rounds": rounds, "clients_per_round": 4}  # everyone, every round
        WORK_CACHE.clear()
        Simulation(load_scenario(write_scenario(data)), timing_only=True).run()
        counts.append(len(steps))
        steps.clear()
    assert 0 < counts[0] == counts[1]  # a step traced per batch size and strategy, whatever the rounds


CFG = LocalConfig("small_cnn", 10, 2, 16, 0.1, 24, (1, 8, 8), measure_deployment_gap=True)
LABELS = ["fp32", "ptq8", "qat8", "ptq4", "qat4"]


@pytest.fixture(scope="module")
def profiles(digits_federation):
    sample = max(digits_federation.clients, key=len)
    state = build_model("small_cnn", 10, seed=3).state_dict()
    local = LocalProfiles(CFG, encode_fp32(state), sample)
    return local, AggregationProfiles(CFG.arch, state, local), sample


@settings(max_examples=12, deadline=None)
@given(label=st.sampled_from(LABELS), n=st.integers(1, 90))
def test_a_local_profile_is_what_the_real_local_work_traces(profiles, label, n):
    local, _, sample = profiles
    strategy = Strategy.from_label(label)
    data = sample.subset(list(range(n)))
    real = local_work(local.global_payload, data, strategy, CFG, seed=n)
    assert local.profile(strategy, n) == real.work
    assert len(local.payload(strategy)) == len(real.payload)


@settings(max_examples=8, deadline=None)
@given(labels=st.lists(st.sampled_from(LABELS), min_size=1, max_size=9))
def test_aggregating_any_mix_of_formats_costs_what_its_profile_says(profiles, labels):
    """FedAvg's work is extrapolated beyond three updates: this checks it against real ones."""
    local, aggregation, _ = profiles
    updates = []
    for label in labels:
        payload = local.payload(Strategy.from_label(label))
        updates.append(Update(payload, 5, label, len(payload)))
    real = aggregate_updates(updates, aggregation.global_state, CFG.arch).work
    assert aggregation.aggregate(labels).counts == real.counts


def test_a_timing_only_run_says_it_reports_no_accuracy(tiny_scenario, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(tiny_scenario), "--timing-only", "--out", str(out)]) == 0
    assert "timing-only" in capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    assert info["mode"] == "timing-only" and "not reported" in info["accuracy"]
    assert not (out / "accuracy_vs_time.png").exists() and (out / "client_timeline.png").is_file()
    assert pd.read_csv(out / "rounds.csv")[ACCURACY].isna().all().all()
    report = (out / "report.html").read_text()
    assert "Timing-only" in report and "not reported" in report


def test_timing_only_refuses_a_policy_that_learns_from_training(write_scenario, tmp_path, capsys):
    data = tiny_scenario_dict() | {"policy": {"name": "fedhq"}}
    assert main(["run", str(write_scenario(data)), "--timing-only", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "policy.name" in err and "coarse-init" in err


def test_timing_only_has_no_workers_to_spread_work_over(tiny_scenario, tmp_path, capsys):
    assert main(["run", str(tiny_scenario), "--timing-only", "--workers", "2", "--out", str(tmp_path / "o")]) == 2
    assert "--workers" in capsys.readouterr().err


def test_a_timing_only_sweep_reports_latency_and_no_accuracy(tiny_scenario, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", str(tiny_scenario), "--set", "training.clients_per_round=2,4", "--seeds", "1"]
    assert main([*argv, "--timing-only", "--jobs", "1", "--out", str(out), "--quiet"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary["final_deployed_accuracy"].isna().all() and (summary["mean_round_latency_s"] > 0).all()
    assert json.loads((out / "sweep.json").read_text())["mode"] == "timing-only"
    assert "not reported" in (out / "table.md").read_text()
