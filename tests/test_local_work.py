"""A client's local work: what it reports besides its update."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.nn.functional import cross_entropy

from fedhq_sim.models import build_model
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import encode_fp32, traced_decode_update
from fedhq_sim.quant.ranges import unset_ranges
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.server_work import deploy_int8
from fedhq_sim.training import LocalConfig, local_work


@pytest.fixture(scope="module")
def start(digits_federation):
    model = build_model("small_cnn", 10, seed=0, input_shape=(1, 8, 8))
    cfg = LocalConfig("small_cnn", 10, 2, 16, 0.2, 32, (1, 8, 8))
    return encode_fp32(model.state_dict()), digits_federation.clients[0].subset(np.arange(128)), cfg


@pytest.mark.parametrize("bits", [8, 4])
def test_qat_from_a_fresh_model_learns_about_as_fast_as_fp32(start, bits):
    """A local round is a few dozen steps: fake-quant ranges that lag behind the weights
    (PyTorch's default moving average) clamp the logits and QAT stops learning."""
    payload, data, cfg = start
    fp32 = local_work(payload, data, FP32, cfg, seed=1).train_loss
    qat = local_work(payload, data, Strategy("qat", bits), cfg, seed=1).train_loss
    assert qat < fp32 + 0.3, (qat, fp32)


def test_ptq_and_qat_report_their_updates_deployment_gap_when_asked_and_pay_for_it(start):
    payload, data, cfg = start
    asked = dataclasses.replace(cfg, measure_deployment_gap=True)
    assert local_work(payload, data, FP32, asked, seed=1).deployment_gap is None
    for strategy in (Strategy("ptq", 4), Strategy("qat", 4)):
        measured = local_work(payload, data, strategy, asked, seed=1)
        assert math.isfinite(measured.deployment_gap) and abs(measured.deployment_gap) < 10, measured.deployment_gap
        unasked = local_work(payload, data, strategy, cfg, seed=1)
        assert unasked.deployment_gap is None
        assert measured.work.flops("int8") > unasked.work.flops("int8")  # the deployed pass is charged
        assert measured.work.flops("fp32") > unasked.work.flops("fp32")  # and so is the float one


def test_the_gap_is_the_deployed_loss_minus_the_float_loss_of_the_decoded_update(start):
    """Recomputed here from the update alone: decode it, run it in float and as deployed on its
    own grid (nothing deployed yet), on the calibration samples."""
    payload, data, cfg = start
    asked = dataclasses.replace(cfg, measure_deployment_gap=True)
    result = local_work(payload, data, Strategy("ptq", 4), asked, seed=1)
    state, own, _ = traced_decode_update(result.payload)
    model = build_model("small_cnn", 10, seed=0, input_shape=(1, 8, 8))
    model.load_state_dict(state)
    model.eval()
    deployed, _ = deploy_int8(model, own, 4)
    x, y = data.x[: cfg.calibration_samples], data.y[: cfg.calibration_samples]
    with torch.no_grad():
        float_loss = float(cross_entropy(model(x), y))
    deployed_loss = float(cross_entropy(backend.run_deployed(deployed, x), y))
    assert result.deployment_gap == pytest.approx(deployed_loss - float_loss, abs=1e-5)
    assert deployed_loss > 0.5  # a model one round from random: its gap is a small part of it
    assert abs(result.deployment_gap) < deployed_loss / 2


def test_the_gap_is_measured_on_the_grid_the_download_carries(start):
    """Before any deployment (NaN ranges) the update's own grid; once a grid is deployed, that
    one: a grid far too narrow for the activations clips them and the gap widens."""
    _, data, cfg = start
    model = build_model("small_cnn", 10, seed=0, input_shape=(1, 8, 8))
    asked = dataclasses.replace(cfg, measure_deployment_gap=True, range_bits=4)
    unset = encode_fp32(model.state_dict(), unset_ranges(model))
    narrow = encode_fp32(model.state_dict(), {k: torch.tensor([-1e-3, 1e-3]) for k in unset_ranges(model)})
    own = local_work(unset, data, Strategy("ptq", 4), asked, seed=1)
    clipped = local_work(narrow, data, Strategy("ptq", 4), asked, seed=1)
    assert clipped.deployment_gap > own.deployment_gap + 0.1, (clipped.deployment_gap, own.deployment_gap)
    assert clipped.payload == own.payload  # PTQ calibrates its own grid: only the label changed


def test_divergence_measures_how_far_training_moved_from_the_global_model(start):
    payload, data, cfg = start
    one = local_work(payload, data, FP32, cfg, seed=1).divergence
    more = local_work(payload, data, FP32, dataclasses.replace(cfg, local_epochs=6), seed=1).divergence
    assert 0 < one < more


def test_local_steps_fix_the_work_whatever_the_data_held(start):
    payload, data, cfg = start
    fixed = dataclasses.replace(cfg, local_steps=5)
    small, large = data.subset(np.arange(48)), data
    works = [local_work(payload, d, Strategy("ptq", 8), fixed, seed=1).work for d in (small, large)]
    assert fixed.steps(48) == fixed.steps(128) == 5
    assert works[0].flops() == pytest.approx(works[1].flops(), rel=0.05)  # full batches of 16 either way
    epochs = [local_work(payload, d, Strategy("ptq", 8), cfg, seed=1).work for d in (small, large)]
    assert epochs[1].flops() > 2 * epochs[0].flops()


def test_local_epochs_and_local_steps_are_exclusive(write_scenario, capsys):
    from fedhq_sim.cli import main
    from tests.conftest import tiny_scenario_dict

    data = tiny_scenario_dict()
    data["training"]["local_steps"] = 4
    assert main(["validate", str(write_scenario(data))]) == 2
    assert "training" in capsys.readouterr().err
    del data["training"]["local_epochs"]
    assert main(["validate", str(write_scenario(data))]) == 0
