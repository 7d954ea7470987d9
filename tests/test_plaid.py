"""PLAID, read from the sktime wheel's data files, and the built-in 1D CNN for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedhq_sim.datasets import load_registered, plaid
from fedhq_sim.errors import InputError
from fedhq_sim.models import build_model

TS = """\ufeff# a comment, with a byte-order mark before it
#Train size: 3
@problemName tiny
@univariate true
@equalLength false
@classLabel true 0 1
@data
1.0,2.0,3.0:0
4.0,5.0:1
0.5,0.25,0.125,0.0:1
"""


def test_a_ts_file_gives_its_series_of_unequal_length_and_their_labels(tmp_path):
    path = tmp_path / "tiny.ts"
    path.write_text(TS, encoding="utf-8")
    series, labels = plaid.read_ts(path)
    assert [len(s) for s in series] == [3, 2, 4] and labels == [0, 1, 1]
    assert series[2].tolist() == [0.5, 0.25, 0.125, 0.0]


@pytest.mark.parametrize(
    ("line", "where"), [("1.0,x,3.0:0", "line 8"), ("1.0,2.0:zero", "line 8")], ids=["value", "label"]
)
def test_a_broken_line_is_one_error_naming_the_file_and_line(tmp_path, line, where):
    path = tmp_path / "broken.ts"
    path.write_text(TS.replace("1.0,2.0,3.0:0", line), encoding="utf-8")
    with pytest.raises(InputError, match=f"{path}: {where}: expected 'v1,v2,...:label'"):
        plaid.read_ts(path)


def test_resampling_keeps_the_ends_and_interpolates_between():
    assert plaid.resample(np.array([0.0, 10.0]), 5).tolist() == [0.0, 2.5, 5.0, 7.5, 10.0]


def test_plaid_loads_from_the_installed_wheel_as_z_normalized_sequences():
    dataset = load_registered("plaid", {"length": 64}, "test")
    x, y = dataset.samples.x, dataset.samples.y
    assert dataset.kind == "sequence" and tuple(x.shape) == (1074, 1, 64)
    assert np.bincount(y.numpy()).tolist() == [66, 175, 115, 38, 156, 35, 114, 172, 139, 38, 26]
    assert torch.allclose(x.mean(dim=2), torch.zeros(1074, 1), atol=1e-4)
    assert torch.allclose(x.std(dim=2, unbiased=False), torch.ones(1074, 1), atol=1e-3)


def test_without_sktime_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(plaid.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"pip install 'fedhq-sim\[plaid\]'"):
        load_registered("plaid", {}, "test")


def test_the_1d_cnn_takes_any_sequence_and_refuses_images():
    model = build_model("cnn1d", 11, seed=0, input_shape=(1, 128))
    assert sum(p.numel() for p in model.parameters()) == 14_579
    assert tuple(build_model("cnn1d", 5, seed=0, input_shape=(3, 40))(torch.rand(2, 3, 40)).shape) == (2, 5)
    with pytest.raises(ValueError, match="sequences"):
        build_model("cnn1d", 10, seed=0, input_shape=(1, 8, 8))


def test_a_tiny_plaid_fleet_trains_and_deploys_from_its_clients_ranges_at_four_bits(write_scenario):
    from fedhq_sim.engine import simulate
    from fedhq_sim.scenario import load_scenario
    from tests.conftest import tiny_scenario_dict

    data = tiny_scenario_dict()
    data["data"] = {"dataset": "plaid", "args": {"length": 64}, "dirichlet_alpha": 1.0}
    data["model"] = "cnn1d"
    data["training"].update(rounds=3, clients_per_round=4, local_epochs=2, learning_rate=0.1)
    data["deployment"] = {"bits": 4}
    rounds = simulate(load_scenario(write_scenario(data))).rounds
    assert rounds[0].fp32_accuracy < 0.35  # 11 appliance types, most of them rare
    assert all(0.0 <= r.deployed_accuracy <= 1.0 for r in rounds[1:])
    assert rounds[-1].fp32_accuracy > rounds[0].fp32_accuracy


def test_on_a_tiny_plaid_fleet_at_four_bits_qat_deploys_better_than_ptq(write_scenario):
    """The accuracy axis at test scale: the comparison scenario's fleet and data, cut to 20
    rounds of 2 epochs with 8 clients each, seed 4. Float trajectories differ between CPU
    instruction sets (PyTorch's kernels sum in other orders on AVX2 and AVX-512), so the
    pinned seed is one whose verdict held on both hosts measured (docs/results.md, "At test
    scale"): all-QAT's final deployed accuracy +7.9 and +4.7 points above all-PTQ's, its
    late (last 5 rounds) one +5.0 and +4.3; 4-bit PTQ loses 4-7 points of its float model."""
    import yaml

    from fedhq_sim.engine import simulate
    from fedhq_sim.executors import ProcessExecutor
    from fedhq_sim.scenario import load_scenario
    from tests.conftest import REPO

    data = yaml.safe_load((REPO / "scenarios" / "plaid_comparison.yaml").read_text())
    data["seed"] = 4
    data["training"].update(rounds=20, clients_per_round=8, local_epochs=2)
    runs = {}
    with ProcessExecutor(2) as pool:  # the same results as in this process (tests/test_run.py), sooner
        for policy in ("all-ptq", "all-qat"):
            data["policy"] = {"name": policy}
            runs[policy] = simulate(load_scenario(write_scenario(data, f"{policy}.yaml")), executor=pool).rounds
    (ptq, qat), late = (
        (runs[p][-1] for p in runs),
        {p: sum(r.deployed_accuracy for r in runs[p][-5:]) / 5 for p in runs},
    )
    assert qat.deployed_accuracy > ptq.deployed_accuracy + 0.03
    assert late["all-qat"] > late["all-ptq"] + 0.02
    assert ptq.deployed_accuracy < ptq.fp32_accuracy - 0.03  # 4-bit PTQ costs accuracy the float model has
