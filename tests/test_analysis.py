"""Hardware and data analysis, the coarse initialization and ``fedhq-sim analyze``."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhq_sim.analysis import label_skew
from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.policies.hardware_aware import coarse_assignment, ptq_critical_path
from fedhq_sim.scenario import load_scenario
from tests.conftest import tiny_scenario_dict


@pytest.fixture(scope="module")
def infos(tmp_path_factory):
    import yaml

    from tests.conftest import PROFILES

    data = tiny_scenario_dict() | {"profiles_dir": str(PROFILES)}
    data["sites"][0]["devices"].append({"device": "cortex_a53_gateway", "link": "wifi_industrial_lossy", "count": 2})
    data["sites"][1]["devices"].append({"device": "ipc_n100", "link": "ethernet_1g", "count": 2})
    path = tmp_path_factory.mktemp("analysis") / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return list(Simulation(load_scenario(path)).policy.clients.values())


def test_label_skew_is_zero_for_the_same_distribution_and_one_for_disjoint_labels():
    assert label_skew(np.array([5, 5, 0, 0]), np.array([10, 10, 0, 0])) == pytest.approx(0.0)
    assert label_skew(np.array([5, 0]), np.array([0, 5])) == pytest.approx(1.0)
    assert 0 < label_skew(np.array([9, 1]), np.array([5, 5])) < 1


def test_qat_costs_more_than_ptq_in_every_predicted_round(infos):
    for info in infos:
        assert info.analysis.compute_s["qat8"] > info.analysis.compute_s["ptq8"] > 0
        assert info.analysis.upload_s["qat8"] == info.analysis.upload_s["ptq8"] < info.analysis.upload_s["fp32"]


def test_clients_with_qat_for_free_get_qat(infos):
    path = ptq_critical_path(infos, 8)
    choices = coarse_assignment(infos, 8, latency_budget=0.0, max_qat_fraction=0.0)
    for info in infos:
        free = info.analysis.round_s("qat8") <= path
        assert (choices[info.client_id].strategy.kind == "qat") == free, info
    assert any(c.strategy.kind == "qat" for c in choices.values())
    assert any(c.strategy.kind == "ptq" for c in choices.values())  # the straggler keeps PTQ


@settings(max_examples=30, deadline=None)
@given(budget=st.floats(0.0, 3.0), fraction=st.floats(0.0, 1.0))
def test_the_initialization_never_exceeds_its_latency_budget_on_predicted_times(infos, budget, fraction):
    path = ptq_critical_path(infos, 8)
    choices = coarse_assignment(infos, 8, budget, fraction)
    predicted = max(i.analysis.round_s(choices[i.client_id].strategy.label) for i in infos)
    assert predicted <= (1 + budget) * path * (1 + 1e-12)
    skew_picked = [c for c in choices.values() if c.reason.startswith("skew") and c.strategy.kind == "qat"]
    assert len(skew_picked) <= int(fraction * len(infos))


def test_analyze_prints_each_client_with_its_assignment_and_why(tiny_scenario, capsys, tmp_path):
    import pandas as pd

    assert main(["analyze", str(tiny_scenario), "--out", str(tmp_path / "analysis.csv")]) == 0
    table = pd.read_csv(tmp_path / "analysis.csv")
    assert len(table) == 4 and (table["qat8_round_s"] > table["ptq8_round_s"]).all()
    out = capsys.readouterr().out
    for column in ("client", "download_s", "ptq8_compute_s", "qat8_compute_s", "upload_s", "qat8_round_s", "why"):
        assert column in out
    assert out.count("hall/rpi4-") == 2 and "all-PTQ critical path" in out
