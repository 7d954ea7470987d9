"""Deployment from what clients send: their activation ranges, combined by the server."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhq_sim.data import Samples
from fedhq_sim.engine import Simulation, simulate
from fedhq_sim.models import build_model
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import decode_update, encode_fp32
from fedhq_sim.quant.ranges import grid_range, layer_ranges, mean_ranges, set_ranges, start_from, unset_ranges
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.scenario import load_scenario
from fedhq_sim.server_work import Update, aggregate_updates, deploy_int8, server_round
from fedhq_sim.training import LocalConfig, local_work
from tests.conftest import tiny_scenario_dict

SHAPE = (1, 8, 8)
ARCH = ("small_cnn", 10, SHAPE)


def _cfg(calibration_samples: int, range_bits: int | None = 8) -> LocalConfig:
    return LocalConfig("small_cnn", 10, 1, 16, 0.05, calibration_samples, SHAPE, range_bits=range_bits)


def _update(client, strategy: Strategy, cfg: LocalConfig, payload: bytes) -> Update:
    result = local_work(payload, client, strategy, cfg, seed=1)
    return Update(result.payload, result.num_samples, strategy.label, len(result.payload))


def _deployed_outputs(source, state, test: Samples) -> torch.Tensor:
    model = build_model("small_cnn", 10, seed=0)
    model.load_state_dict(state)
    deployed, _ = deploy_int8(model, source, 8)
    return backend.run_deployed(deployed, test.x)


def test_a_ptq_clients_calibration_changes_the_deployed_model(digits_federation):
    client, test = digits_federation.clients[0], digits_federation.test
    payload = encode_fp32(build_model("small_cnn", 10, seed=0).state_dict())
    few, many = (_update(client, Strategy("ptq", 8), _cfg(n), payload) for n in (4, 32))
    results = [
        server_round([u], build_model("small_cnn", 10, seed=0).state_dict(), *ARCH[:2], None, test) for u in (few, many)
    ]
    # The same trained weights (calibration is after training), deployed on different ranges:
    assert all(torch.equal(results[0].state[k], results[1].state[k]) for k in results[0].state)
    outputs = [
        _deployed_outputs(decode_update(u.payload)[1], r.state, test) for u, r in zip((few, many), results, strict=True)
    ]
    assert not torch.equal(outputs[0], outputs[1])
    # With server calibration (the earlier deployment), the client's calibration is lost.
    server = [_deployed_outputs(digits_federation.server_calibration, r.state, test) for r in results]
    assert torch.equal(server[0], server[1])


def test_the_deployed_ranges_are_the_sample_weighted_mean_of_the_uploaded_ones(digits_federation):
    clients = digits_federation.clients
    payload = encode_fp32(build_model("small_cnn", 10, seed=0).state_dict())
    strategies = (Strategy("ptq", 8), Strategy("qat", 8), FP32)
    updates = [_update(c, s, _cfg(32), payload) for c, s in zip(clients[:3], strategies, strict=True)]
    combined = aggregate_updates(updates, build_model("small_cnn", 10, seed=0).state_dict(), ARCH, with_ranges=True)
    sent = [(decode_update(u.payload)[1], u.num_samples) for u in updates]
    total = sum(n for _, n in sent)
    for name, deployed in combined.ranges.items():
        expected = sum(n * ranges[name].double() for ranges, n in sent) / total
        torch.testing.assert_close(deployed, expected.float())
    # and the deployed model's input grids are those ranges' grids
    model = build_model("small_cnn", 10, seed=0)
    model.load_state_dict(combined.state)
    deployed, _ = deploy_int8(model, combined.ranges, 8)
    for name, layer in backend.quantized_layers(deployed).items():
        q = layer.input_quantizer
        reference = backend.ActivationQuantizer(backend.Ranges.at(8), "frozen")
        reference.set_range(*combined.ranges[name])
        assert torch.equal(q.scale, reference.scale) and torch.equal(q.zero_point, reference.zero_point)


def test_every_update_carries_the_grid_its_client_runs(digits_federation):
    payload = encode_fp32(build_model("small_cnn", 10, seed=0).state_dict())
    client = digits_federation.clients[1]
    ptq = decode_update(_update(client, Strategy("ptq", 4), _cfg(32, 4), payload).payload)[1]
    fp32 = decode_update(_update(client, FP32, _cfg(32, 4), payload).payload)[1]
    without = decode_update(_update(client, FP32, _cfg(32, None), payload).payload)[1]
    assert without is None  # the server calibrates: an fp32 update is only its state
    # fp32 and PTQ clients observe the same inputs (the same trained model, the same samples)
    # except where a PTQ model's earlier layers already run quantized; the first layer agrees.
    first = next(iter(ptq))
    torch.testing.assert_close(fp32[first], ptq[first])
    for low, high in ptq.values():
        assert low <= 0.0 <= high


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-100, 0, allow_nan=False), st.floats(0, 100, allow_nan=False), st.integers(1, 10_000)),
        min_size=1,
        max_size=8,
    )
)
def test_the_mean_of_ranges_lies_within_them_and_does_not_depend_on_their_order(clients):
    sent = [({"a": torch.tensor([low, high])}, n) for low, high, n in clients]
    mean = mean_ranges(sent)["a"]
    lows, highs = [low for low, _, _ in clients], [high for _, high, _ in clients]
    assert min(lows) - 1e-3 <= float(mean[0]) <= max(lows) + 1e-3
    assert min(highs) - 1e-3 <= float(mean[1]) <= max(highs) + 1e-3
    assert torch.equal(mean_ranges(list(reversed(sent)))["a"], mean)


def test_a_grid_range_gives_back_the_grid_it_came_from():
    quantizer = backend.ActivationQuantizer(backend.Ranges.at(8), "frozen")
    quantizer.set_range(torch.tensor(-1.3), torch.tensor(2.9))
    low, high = grid_range(quantizer.scale, quantizer.zero_point, quantizer.qmin, quantizer.qmax)
    again = backend.ActivationQuantizer(backend.Ranges.at(8), "frozen")
    again.set_range(low, high)
    assert torch.equal(again.scale, quantizer.scale) and torch.equal(again.zero_point, quantizer.zero_point)


def test_the_server_holds_no_data_unless_server_calibration_is_asked_for(write_scenario):
    data = tiny_scenario_dict()
    clients = Simulation(load_scenario(write_scenario(data)), timing_only=True)
    assert len(clients.world.data.server_calibration) == 0
    data["deployment"] = {"calibration": "server", "server_samples": 40}
    server = Simulation(load_scenario(write_scenario(data)), timing_only=True)
    assert len(server.world.data.server_calibration) == 40
    # the same samples are held out either way: both deployments train on the same client data
    data["deployment"] = {"calibration": "clients", "server_samples": 40}
    same = Simulation(load_scenario(write_scenario(data)), timing_only=True)
    assert len(same.world.data.server_calibration) == 0
    assert all(torch.equal(a.x, b.x) for a, b in zip(same.world.data.clients, server.world.data.clients, strict=True))


def test_a_run_deploys_from_client_ranges_and_reports_no_deployed_accuracy_before_any_arrived(write_scenario):
    rounds = simulate(load_scenario(write_scenario(tiny_scenario_dict()))).rounds
    assert math.isnan(rounds[0].deployed_accuracy) and not math.isnan(rounds[0].fp32_accuracy)
    assert all(0.0 <= r.deployed_accuracy <= 1.0 for r in rounds[1:])


def test_set_ranges_refuses_ranges_of_another_model():
    prepared = backend.prepare_ptq(build_model("small_cnn", 10, seed=0), 8)
    ranges = layer_ranges(prepared)
    ranges.pop(next(iter(ranges)))
    try:
        set_ranges(prepared, ranges)
    except ValueError as error:
        assert "do not match the model" in str(error)
    else:
        raise AssertionError("ranges of another model were accepted")


def test_a_qat_client_starts_from_the_broadcast_ranges_and_without_them_from_its_first_batch(digits_federation):
    client = digits_federation.clients[2]
    model = build_model("small_cnn", 10, seed=0)
    state = model.state_dict()
    wide = {name: torch.tensor([-40.0, 60.0]) for name in backend.quantized_layers(model)}
    cfg = _cfg(32)
    steps = cfg.steps(len(client))
    sent = decode_update(_update(client, Strategy("qat", 8), cfg, encode_fp32(state, wide)).payload)[1]
    unset = decode_update(_update(client, Strategy("qat", 8), cfg, encode_fp32(state, unset_ranges(model))).payload)[1]
    kept = (1 - 0.01) ** steps  # each batch moves the range 1 % towards its own
    for name, (low, high) in sent.items():
        assert float(high) >= 60.0 * kept - 1.0 and float(low) <= -40.0 * kept + 1.0, (name, low, high)
    first = next(iter(backend.quantized_layers(model)))  # the network's input: digits in [0, 1]
    low, high = unset[first]
    assert float(low) == 0.0 and 0.5 < float(high) < 1.1


def test_a_download_before_any_deployment_carries_nan_ranges_and_qat_ignores_them():
    model = build_model("small_cnn", 10, seed=0)
    prepared = backend.prepare_qat(model, 8)
    start_from(prepared, unset_ranges(model))
    x = torch.rand(4, *SHAPE)
    prepared(x)
    first = next(iter(backend.quantized_layers(prepared).values())).input_quantizer
    assert float(first.min_val) == 0.0 and float(first.max_val) == pytest.approx(float(x.max()))
