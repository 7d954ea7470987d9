"""Charging simulated time from the real computation's work profile."""

import dataclasses
from pathlib import Path

import pytest
import torch

from fedhq_sim.charge import charge_seconds
from fedhq_sim.models import build_model
from fedhq_sim.profiles import ProfileLibrary
from fedhq_sim.quant import eager
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.training import LocalConfig, local_work
from fedhq_sim.work import StepCache, traced
from tests.conftest import PROFILES

CFG = LocalConfig("small_cnn", 10, local_epochs=1, batch_size=32, learning_rate=0.1, calibration_samples=32)


@pytest.fixture(scope="module")
def client_data(digits_federation):
    return digits_federation.clients[0]


@pytest.fixture(scope="module")
def results(client_data):
    state = build_model("small_cnn", 10, seed=1).state_dict()
    return {
        s.kind: local_work(state, client_data, s, CFG, seed=5) for s in (FP32, Strategy("ptq", 8), Strategy("qat", 8))
    }


@pytest.fixture(scope="module")
def devices():
    library = ProfileLibrary(PROFILES)
    return {n: library.device(n, referenced_from=Path("test"), key="k") for n in ("rpi4", "rpi5", "x86_server")}


@pytest.mark.parametrize("device", ["rpi4", "rpi5", "x86_server"])
def test_qat_takes_more_simulated_time_than_ptq_on_the_same_device(results, devices, device):
    ptq = charge_seconds(results["ptq"].work, devices[device])
    qat = charge_seconds(results["qat"].work, devices[device])
    assert qat > ptq > 0


def test_the_same_work_takes_less_time_on_a_faster_profile(results, devices):
    work = results["qat"].work
    assert charge_seconds(work, devices["x86_server"]) < charge_seconds(work, devices["rpi5"])
    assert charge_seconds(work, devices["rpi5"]) < charge_seconds(work, devices["rpi4"])


def test_doubling_every_throughput_and_removing_overhead_halves_the_time(results, devices):
    device = devices["rpi4"]
    no_overhead = device.model_copy(update={"op_overhead": 1e-30})
    twice = no_overhead.model_copy(
        update={
            "compute": no_overhead.compute.model_copy(
                update={"fp32": 2 * device.compute.fp32, "int8": 2 * device.compute.int8}
            ),
            "memory_bandwidth": 2 * device.memory_bandwidth,
        }
    )
    work = results["ptq"].work
    assert charge_seconds(work, twice) == pytest.approx(charge_seconds(work, no_overhead) / 2)


def test_work_profiles_see_each_precision(results):
    assert results["fp32"].work.flops("fake_quant") == 0
    assert results["qat"].work.flops("fake_quant") > 0
    ptq_ops = {op.op for op in results["ptq"].work.counts}
    assert "quantized.conv2d_prepack.default" in ptq_ops


def test_int8_inference_is_traced_as_int8_with_real_flops(client_data):
    model = build_model("small_cnn", 10, seed=1)
    prepared = eager.prepare_ptq(model)
    eager.calibrate(prepared, [client_data.x[:32]])
    quantized = eager.convert(prepared)
    _, work = traced(lambda: eager.run_int8(quantized, client_data.x[:16]))
    _, fp32_work = traced(lambda: model.eval()(client_data.x[:16]))
    # The int8 kernels do the same multiply-adds as the fp32 convolutions and linear layer.
    assert work.flops("int8") == pytest.approx(fp32_work.flops("fp32"), rel=0.05)


def test_a_cache_hit_does_not_change_the_profile(client_data):
    model = build_model("small_cnn", 10, seed=1)
    cache = StepCache()
    x = client_data.x[:8]
    _, first = cache.run(("k",), lambda: model(x))
    _, again = cache.run(("k",), lambda: model(x))
    _, fresh = traced(lambda: model(x))
    assert first == again == fresh
    assert len(cache) == 1


def test_charges_are_identical_when_the_work_is_redone(client_data, devices):
    state = build_model("small_cnn", 10, seed=1).state_dict()
    one = local_work(state, client_data, Strategy("qat", 8), CFG, seed=5)
    two = local_work(state, client_data, Strategy("qat", 8), dataclasses.replace(CFG), seed=5)
    assert one.payload == two.payload
    assert charge_seconds(one.work, devices["rpi4"]) == charge_seconds(two.work, devices["rpi4"])


def test_local_training_lowers_the_loss(client_data):
    state = build_model("small_cnn", 10, seed=1).state_dict()
    cfg = dataclasses.replace(CFG, local_epochs=5, learning_rate=0.2)
    model = build_model("small_cnn", 10, seed=1)
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(model(client_data.x), client_data.y))
    after = local_work(state, client_data, FP32, cfg, seed=5).train_loss
    assert after < before


def test_fake_quantization_counts_five_operations_per_value():
    model = eager.prepare_qat(build_model("mlp", 10, seed=0))
    x = torch.rand(16, 1, 8, 8)
    _, work = traced(lambda: model(x))
    fused = [(op, n) for op, n in work.counts.items() if op.precision == "fake_quant"]
    assert fused
    # The first fake-quant in the forward pass quantizes the input: 16 x 64 values.
    input_fq = [op for op, _ in fused if op.flops == 5 * 16 * 64]
    assert input_fq
