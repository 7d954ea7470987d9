"""A plant's own model file and NPZ data through whole runs, under every quantizing policy."""

import numpy as np
import pytest

from fedhq_sim.engine import simulate
from fedhq_sim.scenario import load_scenario
from tests.conftest import REPO, tiny_scenario_dict

VIBRATION_CNN = REPO / "scenarios" / "models" / "vibration_cnn.py"


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """Three-channel windows whose class is the frequency of a sine: a 1D CNN learns it."""
    rng = np.random.default_rng(4)
    labels = np.arange(400) % 4
    t = np.arange(64) / 64
    x = np.sin(2 * np.pi * (2 + 3 * labels)[:, None, None] * t + rng.uniform(0, 6, (400, 3, 1)))
    x = (x + rng.normal(0, 0.3, x.shape)).astype(np.float32)
    path = tmp_path_factory.mktemp("npz") / "windows.npz"
    np.savez(path, x=x, y=labels)
    return path


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("policy", ["all-ptq", "all-qat", "fedhq"])
def test_a_user_model_on_npz_data_runs_under_every_policy_and_bit_width(write_scenario, windows, policy, bits):
    data = tiny_scenario_dict()
    data["model"] = {"module": str(VIBRATION_CNN), "factory": "build", "args": {"width": 8, "blocks": 1}}
    data["data"] = {"dataset": {"format": "npz", "path": str(windows)}, "dirichlet_alpha": 2.0}
    data["training"] |= {"rounds": 4, "clients_per_round": 4, "local_epochs": 3, "batch_size": 16, "learning_rate": 0.1}
    data["policy"] = {"name": policy}
    data["deployment"] = {"bits": bits}
    result = simulate(load_scenario(write_scenario(data)))
    last = result.rounds[-1]
    assert last.reported == 4
    strategies = {p.strategy for p in result.phases if p.phase == "compute"}
    assert strategies <= {f"ptq{bits}", f"qat{bits}"} and strategies
    if policy == "all-qat":
        assert strategies == {f"qat{bits}"}
    assert result.rounds[0].fp32_accuracy < 0.45  # four classes
    assert last.deployed_accuracy > 0.6, [r.deployed_accuracy for r in result.rounds]
