"""Injected faults: crashes and corrupted updates show up as faults, never as rosier numbers."""

import numpy as np
import pytest
import torch

from fedhq_sim.engine import Simulation
from fedhq_sim.faults import FOUND, corrupted, rejection
from fedhq_sim.models import build_model
from fedhq_sim.quant.payload import decode_to_fp32, encode_fp32
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.scenario import load_scenario
from fedhq_sim.tables import phases_frame, rounds_frame
from fedhq_sim.training import LocalConfig, local_work
from tests.conftest import tiny_scenario_dict

ACCURACY = ["train_loss", "fp32_accuracy", "deployed_accuracy"]


def _faulty(min_reports: int = 2) -> dict:
    data = tiny_scenario_dict()
    data["training"] |= {"rounds": 8, "clients_per_round": 4}
    data["sites"][0]["aggregator"] = "industrial_pc_i5"  # its gateway receives, and rejects, too
    data["faults"] = {
        "crashes": [
            {"during": "compute", "probability": 0.15},
            {"during": "upload", "probability": 0.15},
            {"during": "upload", "client": "yard/rpi5-0", "round": 2},
        ],
        "corrupt_updates": [{"kind": k, "probability": 0.1} for k in ("nan", "inf", "huge")],
        "min_reports": min_reports,
    }
    return data


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    import yaml

    from tests.conftest import PROFILES

    path = tmp_path_factory.mktemp("faults") / "s.yaml"
    path.write_text(yaml.safe_dump(_faulty() | {"profiles_dir": str(PROFILES)}))
    scenario = load_scenario(path)
    return scenario, Simulation(scenario).run()


def test_every_fault_is_an_event_with_its_reason(faulty_run):
    _, run = faulty_run
    events = phases_frame(run.phases)
    reasons = set(events.loc[events["status"] != "completed", "reason"])
    assert "the device crashed during its local work (fault injection)" in reasons
    assert "the device crashed during its upload (fault injection)" in reasons
    for found in FOUND.values():
        assert f"rejected on arrival: {found} (fault injection: a corrupted update)" in reasons
    assert set(events.loc[events["status"] == "rejected", "phase"]) == {"upload"}
    scheduled = events[(events["client"] == "yard/rpi5-0") & (events["round"] >= 2) & (events["status"] == "failed")]
    assert len(scheduled) >= 1  # its scheduled crash came, in the first round from 2 on that it took part in


def test_a_round_accounts_for_every_client_and_too_few_reports_leave_the_model_alone(faulty_run):
    _, run = faulty_run
    rounds = rounds_frame(run.rounds).iloc[1:]
    accounted = rounds[["reported", "dropped", "failed", "unable", "rejected", "cancelled"]].sum(axis=1)
    assert (accounted == rounds["selected"]).all()
    events = phases_frame(run.phases)
    rejected = events[events["status"] == "rejected"].groupby("round").size()
    assert rounds.set_index("round")["rejected"].loc[rejected.index].equals(rejected)
    short = rounds[rounds["reported"] < 2]
    assert len(short) and short["status"].str.startswith("too few reports").all()
    assert (rounds.loc[rounds["reported"] >= 2, "status"] == "ok").all()
    everything = rounds_frame(run.rounds)
    for r in short["round"]:
        before, after = everything.iloc[r - 1], everything.iloc[r]
        assert after["deployed_accuracy"] == before["deployed_accuracy"], r  # the model was not updated


def test_faults_time_the_same_in_timing_only_mode(faulty_run):
    scenario, run = faulty_run
    timed = Simulation(scenario, timing_only=True).run()
    assert phases_frame(timed.phases).equals(phases_frame(run.phases))
    assert rounds_frame(timed.rounds).drop(columns=ACCURACY).equals(rounds_frame(run.rounds).drop(columns=ACCURACY))


@pytest.mark.parametrize("label", ["fp32", "ptq8", "qat4", "ptq4"])
def test_the_check_rejects_every_corruption_and_no_honest_update(label, digits_federation):
    cfg = LocalConfig("small_cnn", 10, 2, 16, 0.2, 32, (1, 8, 8))
    global_state = build_model("small_cnn", 10, seed=1).state_dict()
    honest = decode_to_fp32(
        local_work(encode_fp32(global_state), digits_federation.clients[2], Strategy.from_label(label), cfg, 3).payload
    )
    assert rejection(honest, global_state) is None
    for kind, found in FOUND.items():
        assert rejection(corrupted(honest, kind), global_state) == found
    assert all(torch.equal(honest[k], v) for k, v in decode_to_fp32(encode_fp32(honest)).items())  # left intact


def test_a_clients_faults_do_not_depend_on_the_other_clients_or_on_rules_added_after(write_scenario):
    from fedhq_sim.faults import CrashRule, draw

    rule = (CrashRule("compute", 0.5),)
    alone, _ = draw([3], rule, {}, (), 5, seed=9)
    together, _ = draw([1, 2, 3, 4], rule, {}, (), 5, seed=9)
    with_corruption, _ = draw([1, 2, 3, 4], rule, {}, (("nan", 0.5),), 5, seed=9)
    assert alone.get(3) == together.get(3)
    assert {c: f.crash for c, f in together.items()} == {
        c: f.crash for c, f in with_corruption.items() if f.crash is not None
    }
    other_seed, _ = draw(range(40), rule, {}, (), 5, seed=10)
    same_seed, _ = draw(range(40), rule, {}, (), 5, seed=9)
    assert other_seed != same_seed and np.isfinite([f.crash_at for f in same_seed.values()]).all()
