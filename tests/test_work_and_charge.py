"""Charging simulated time and energy from the real computation's work profile."""

import dataclasses
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.functional import cross_entropy

from fedhq_sim.charge import charge_seconds, compute_joules
from fedhq_sim.models import build_model
from fedhq_sim.models.builtin import MLP
from fedhq_sim.profiles import ProfileLibrary
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import encode_fp32
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.training import LocalConfig, local_work, step_key, step_plan
from fedhq_sim.work import WORK_CACHE, WorkCache, step_markers, traced
from tests.conftest import PROFILES

CFG = LocalConfig(
    "small_cnn", 10, local_epochs=1, batch_size=32, learning_rate=0.1, calibration_samples=32, input_shape=(1, 8, 8)
)
LIBRARY = ProfileLibrary(PROFILES)
DEVICES = {name: LIBRARY.device(name, referenced_from=Path("test"), key="k") for name in LIBRARY.available("devices")}


@pytest.fixture(scope="module")
def client_data(digits_federation):
    return digits_federation.clients[0]


@pytest.fixture(scope="module")
def global_payload():
    return encode_fp32(build_model("small_cnn", 10, seed=1).state_dict())


@pytest.fixture(scope="module")
def results(client_data, global_payload):
    return {
        s.kind: local_work(global_payload, client_data, s, CFG, seed=5)
        for s in (FP32, Strategy("ptq", 8), Strategy("qat", 8))
    }


def _train_step_work(model: torch.nn.Module, batch: int):
    x, y = torch.rand(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()

    def step():
        optimizer.zero_grad()
        cross_entropy(model(x), y).backward()
        optimizer.step()

    _, work = traced(step)
    return work + step_markers(work)


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_time_grows_with_model_size(device):
    charges = [charge_seconds(_train_step_work(MLP(hidden=h), 64), DEVICES[device]) for h in (32, 128, 512)]
    assert charges[0] < charges[1] < charges[2]


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_a_qat_step_costs_more_than_an_fp32_step_on_every_profile(device):
    fp32 = _train_step_work(build_model("small_cnn", 10, seed=0), 32)
    qat = _train_step_work(backend.prepare_qat(build_model("small_cnn", 10, seed=0)), 32)
    assert charge_seconds(qat, DEVICES[device]) > charge_seconds(fp32, DEVICES[device])


def test_a_fake_quantized_step_carries_qat_op_per_operation_and_a_float_step_none():
    def qat_ops(model):
        work = _train_step_work(model, 8)
        return sum(c for op, c in work.counts.items() if op.op == "sim.qat_op"), work

    float_ops, _ = qat_ops(build_model("small_cnn", 10, seed=0))
    fake_quantized, work = qat_ops(backend.prepare_qat(build_model("small_cnn", 10, seed=0)))
    assert float_ops == 0
    assert fake_quantized == work.num_ops - work.count("view") - work.count("marker") > 0


def test_time_grows_with_batch_count_and_epochs(client_data, global_payload):
    device = DEVICES["rpi4"]
    small = dataclasses.replace(client_data, x=client_data.x[:64], y=client_data.y[:64])

    def charge(data, epochs):
        cfg = dataclasses.replace(CFG, local_epochs=epochs)
        return charge_seconds(local_work(global_payload, data, FP32, cfg, seed=5).work, device)

    assert charge(small, 1) < charge(client_data, 1)  # 2 batches < all of them
    assert charge(client_data, 1) < charge(client_data, 2) < charge(client_data, 3)


INT8_DEVICES = sorted(n for n in DEVICES if n != "jetson_nano")  # the Nano's Maxwell GPU has no int8 units


@pytest.mark.parametrize("device", INT8_DEVICES)
def test_int8_inference_costs_less_than_fp32_on_a_profile_with_int8_units(device, client_data):
    model = build_model("resnet8", 10, seed=1).eval()
    prepared = backend.prepare_ptq(model)
    backend.calibrate(prepared, [client_data.x[:64]])
    quantized = backend.convert(prepared)
    x = client_data.x[:256]
    _, int8_work = traced(lambda: backend.run_deployed(quantized, x))
    with torch.no_grad():
        _, fp32_work = traced(lambda: model(x))
    assert charge_seconds(int8_work, DEVICES[device]) < charge_seconds(fp32_work, DEVICES[device])


def test_doubling_every_throughput_and_bandwidth_halves_the_time_beyond_the_overheads(results):
    device = DEVICES["rpi4"]
    tiny = 1e-15

    def scaled(factor: float):
        kernels = {
            name: kernel.model_copy(update={"overhead": tiny, "throughput": factor * kernel.throughput})
            for name, kernel in device.kernels
            if kernel is not None
        }
        overheads = device.overheads.model_copy(update=dict.fromkeys(type(device.overheads).model_fields, tiny))
        return device.model_copy(
            update={
                "kernels": device.kernels.model_copy(update=kernels),
                "overheads": overheads,
                "memory_bandwidth": factor * device.memory_bandwidth,
            }
        )

    work = results["ptq"].work
    assert charge_seconds(work, scaled(2.0)) == pytest.approx(charge_seconds(work, scaled(1.0)) / 2, rel=1e-6)


def test_compute_energy_is_active_power_times_time_and_grows_with_the_work(results):
    for device in DEVICES.values():
        seconds = {kind: charge_seconds(results[kind].work, device) for kind in ("fp32", "qat")}
        joules = {kind: compute_joules(s, device) for kind, s in seconds.items()}
        assert joules["qat"] == pytest.approx(device.power.active * seconds["qat"])
        assert joules["qat"] > joules["fp32"] > 0


def test_smallcnn_forward_flops_match_the_analytic_count():
    batch = 16
    model = build_model("small_cnn", 10, seed=0).eval()
    with torch.no_grad():
        _, work = traced(lambda: model(torch.rand(batch, 1, 8, 8)))
    conv1 = 2 * batch * 16 * 8 * 8 * (1 * 3 * 3)  # multiply-adds of each output value, times two
    conv2 = 2 * batch * 32 * 4 * 4 * (16 * 3 * 3)
    fc = 2 * batch * 10 * (32 * 2 * 2)
    dense = sum(c * op.flops for op, c in work.counts.items() if op.kind in ("conv", "matmul"))
    assert dense == conv1 + conv2 + fc


def test_local_work_with_a_warm_cache_charges_what_a_cold_one_does(client_data, global_payload):
    strategy = Strategy("qat", 8)
    WORK_CACHE.clear()
    cold = local_work(global_payload, client_data, strategy, CFG, seed=5)
    warm = local_work(global_payload, client_data, strategy, CFG, seed=5)  # every piece a cache hit
    sizes = {size for sizes in step_plan(len(client_data), CFG) for size in sizes}
    assert len(sizes) == 2  # full batches and the last, partial one: a step traced for each
    assert all(WORK_CACHE.get(step_key(CFG, strategy, size)) is not None for size in sizes)
    assert warm.work == cold.work and warm.payload == cold.payload


@pytest.mark.parametrize("model_ref", ["small_cnn", "resnet8", "mlp"])
@pytest.mark.parametrize("label", ["fp32", "ptq8", "qat4"])
def test_a_piece_cached_from_one_client_costs_what_a_fresh_trace_on_another_client_does(
    model_ref, label, digits_federation
):
    """The law behind the cache: which operations run, on which shapes, does not depend on
    the values, so a profile traced on one client's data holds for every client's."""
    strategy = Strategy.from_label(label)
    cfg = dataclasses.replace(CFG, model_ref=model_ref, measure_deployment_gap=True)
    first, other = digits_federation.clients[0], digits_federation.clients[1]
    other = other.subset(np.arange(len(first)))  # the same number of samples, other values
    payload = encode_fp32(build_model(model_ref, 10, seed=1).state_dict())
    WORK_CACHE.clear()
    local_work(payload, first, strategy, cfg, seed=5)
    warm = local_work(payload, other, strategy, cfg, seed=6)
    WORK_CACHE.clear()
    cold = local_work(payload, other, strategy, cfg, seed=6)
    assert warm.work == cold.work


def test_work_profiles_see_each_precision_and_kernel_class(results):
    assert results["fp32"].work.flops("fake_quant") == 0
    assert results["qat"].work.flops("fake_quant") > 0
    assert results["qat"].work.count("fake_quant") > 0
    ptq_ops = {op.op for op in results["ptq"].work.counts}
    assert "aten.round.default" in ptq_ops  # convert rounds the weights to integers
    for kind in ("conv", "conv_backward", "matmul", "elementwise", "view", "marker"):
        assert results["fp32"].work.count(kind) > 0, kind
    markers = {op.op for op in results["qat"].work.counts if op.kind == "marker"}
    assert markers == {
        "sim.deserialize",
        "sim.deserialize_payload",
        "sim.build_module",
        "sim.load_tensor",
        "sim.prepare_qat",
        "sim.train_step",
        "sim.train_op",
        "sim.qat_op",
        "sim.warmup_op",
        "sim.warmup_model",
        "sim.round_fixed",
        "sim.convert",
        "sim.serialize",
        "sim.serialize_payload",
    }


def test_normalization_and_max_pooling_are_priced_as_their_own_classes():
    resnet = _train_step_work(build_model("resnet8", 10, seed=0), 16)
    assert resnet.count("norm") == resnet.count("norm_backward") == 9  # nine batch-norm layers
    cnn = _train_step_work(build_model("small_cnn", 10, seed=0), 16)
    assert cnn.count("max_pool") == 2


def test_int8_inference_is_traced_as_int8_with_real_flops(client_data):
    model = build_model("small_cnn", 10, seed=1)
    prepared = backend.prepare_ptq(model)
    backend.calibrate(prepared, [client_data.x[:32]])
    quantized = backend.convert(prepared)
    _, work = traced(lambda: backend.run_deployed(quantized, client_data.x[:16]))
    _, fp32_work = traced(lambda: model.eval()(client_data.x[:16]))
    # The int8 kernels do the same multiply-adds as the fp32 convolutions and linear layer.
    assert work.flops("int8") == pytest.approx(fp32_work.flops("fp32"), rel=0.05)


def test_a_cache_hit_does_not_change_the_profile(client_data):
    model = build_model("small_cnn", 10, seed=1)
    cache = WorkCache()
    x = client_data.x[:8]
    _, first = cache.run(("k",), lambda: model(x))
    _, again = cache.run(("k",), lambda: model(x))
    _, fresh = traced(lambda: model(x))
    assert first == again == fresh
    assert len(cache) == 1


def test_peak_memory_counts_what_the_work_allocates():
    _, work = traced(lambda: torch.ones(1024, 1024).sum())
    assert work.peak_bytes == 4 * 1024 * 1024 + 4  # the matrix, then its 4-byte sum while it lives
    larger = _train_step_work(MLP(hidden=512), 64)
    smaller = _train_step_work(MLP(hidden=32), 64)
    assert larger.peak_bytes > smaller.peak_bytes > 0


def _burn_cpu(seconds: float) -> None:
    import time

    end = time.perf_counter() + seconds
    a = torch.rand(256, 256)
    while time.perf_counter() < end:
        a = (a @ a).clamp(-1, 1)


def test_the_charge_does_not_depend_on_host_load(client_data, global_payload):
    device = DEVICES["rpi4"]
    strategy = Strategy("qat", 8)
    WORK_CACHE.clear()
    quiet = local_work(global_payload, client_data, strategy, CFG, seed=5)
    WORK_CACHE.clear()  # trace everything again, under load
    burners = [multiprocessing.get_context("spawn").Process(target=_burn_cpu, args=(3.0,)) for _ in range(2)]
    for burner in burners:
        burner.start()
    try:
        loaded = local_work(global_payload, client_data, strategy, CFG, seed=5)
    finally:
        for burner in burners:
            burner.join()
    assert quiet.payload == loaded.payload
    assert quiet.work == loaded.work
    assert charge_seconds(quiet.work, device) == charge_seconds(loaded.work, device)


def test_local_training_lowers_the_loss(client_data, global_payload):
    cfg = dataclasses.replace(CFG, local_epochs=5, learning_rate=0.2)
    model = build_model("small_cnn", 10, seed=1)
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(model(client_data.x), client_data.y))
    after = local_work(global_payload, client_data, FP32, cfg, seed=5).train_loss
    assert after < before


def test_fake_quantization_counts_five_operations_per_value():
    model = backend.prepare_qat(build_model("mlp", 10, seed=0))
    x = torch.rand(16, 1, 8, 8)
    _, work = traced(lambda: model(x))
    fake_quant = [op for op in work.counts if op.precision == "fake_quant"]
    # Three linear layers: each quantizes its input and its weight.
    assert sum(work.counts[op] for op in fake_quant) == 6
    # The first fake-quant in the forward pass quantizes the input: 16 x 64 values.
    assert [op for op in fake_quant if op.flops == 5 * 16 * 64]


def test_a_deployed_model_is_traced_as_int8_kernels_on_one_byte_values(client_data):
    model = build_model("small_cnn", 10, seed=1).eval()
    prepared = backend.prepare_ptq(model)
    backend.calibrate(prepared, [client_data.x[:32]])
    deployed = backend.convert(prepared)
    _, work = traced(lambda: backend.run_deployed(deployed, client_data.x[:16]))
    kinds = {op.kind for op in work.counts}
    assert {"int8_conv", "int8_matmul"} <= kinds and not kinds & {"conv", "matmul", "fake_quant", "norm"}
    _, fp32_work = traced(lambda: model(client_data.x[:16]))
    assert work.nbytes < 0.3 * fp32_work.nbytes  # one byte a value instead of four


@pytest.mark.parametrize("model_ref", ["small_cnn", "resnet8", "mlp"])
@pytest.mark.parametrize("kind", ["fp32", "ptq", "qat"])
def test_every_model_works_under_every_strategy(model_ref, kind, client_data):
    strategy = FP32 if kind == "fp32" else Strategy(kind, 8)
    cfg = dataclasses.replace(CFG, model_ref=model_ref)
    payload = encode_fp32(build_model(model_ref, 10, seed=1).state_dict())
    result = local_work(payload, client_data, strategy, cfg, seed=5)
    assert result.train_loss == result.train_loss  # not NaN
    assert charge_seconds(result.work, DEVICES["rpi5"]) > 0
    if kind != "fp32":
        assert len(result.payload) < len(payload)  # int8 weights on the wire


def test_fp16_work_uses_fp16_units_where_the_device_has_them_and_fp32_units_elsewhere():
    from fedhq_sim.charge import kernel_for

    a, b = torch.rand(64, 256, dtype=torch.float16), torch.rand(256, 256, dtype=torch.float16)
    _, work = traced(lambda: a @ b)
    (matmul,) = [op for op in work.counts if op.kind == "matmul"]
    assert matmul.precision == "fp16"
    orin, host = DEVICES["jetson_orin_nano"], DEVICES["reference_host"]
    assert orin.kernels.fp16_matmul is not None and host.kernels.fp16_matmul is None
    assert kernel_for(matmul, orin) == orin.kernels.fp16_matmul
    assert kernel_for(matmul, host) == host.kernels.matmul


def test_a_gather_costs_the_rows_it_reads_whatever_the_size_of_its_source():
    """A minibatch drawn from a small or a large client costs the same, so a cached step is
    the same whichever client traced it first (and a worker process charges what this one does)."""
    index = torch.arange(16)
    small, large = torch.rand(20, 64), torch.rand(2000, 64)
    (_, one), (_, other) = traced(lambda: small[index]), traced(lambda: large[index])
    assert one == other
    assert one.nbytes == 2 * 16 * 64 * 4 + 16 * 8  # rows read and written, and the index
