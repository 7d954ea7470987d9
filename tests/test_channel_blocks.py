"""Convolutions priced on their channels rounded up to the device's channel block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F  # noqa: N812 - the conventional alias

from fedhq_sim.charge import charge_seconds, padded_flops
from fedhq_sim.errors import InputError
from fedhq_sim.probe_profile import FP32_LANES, host_channel_block
from fedhq_sim.profiles import DeviceProfile, ProfileLibrary
from fedhq_sim.schema import validate
from fedhq_sim.work import OpCost, traced
from fedhq_sim.yamlio import load_yaml_mapping
from tests.conftest import PROFILES


def _conv_ops(fn) -> dict[str, list[OpCost]]:
    _, work = traced(fn)
    ops: dict[str, list[OpCost]] = {}
    for op in work.counts:
        if op.kind in ("conv", "conv_backward"):
            ops.setdefault(op.kind, []).append(op)
    return ops


def test_the_trace_records_each_convolutions_channels_groups_and_input_gradient():
    x = torch.randn(4, 24, 10, 10, requires_grad=True)
    w = torch.randn(40, 24, 3, 3, requires_grad=True)
    ops = _conv_ops(lambda: F.conv2d(x, w, padding=1).sum().backward())
    assert [op.channels for op in ops["conv"]] == [(24, 40, 1, 0)]
    assert [op.channels for op in ops["conv_backward"]] == [(24, 40, 1, 1)]
    depthwise = _conv_ops(lambda: F.conv1d(torch.randn(2, 12, 32), torch.randn(12, 1, 5), groups=12))
    assert [op.channels for op in depthwise["conv"]] == [(12, 12, 12, 0)]
    first_layer = torch.randn(16, 3, 5, 5, requires_grad=True)
    grads = _conv_ops(lambda: F.conv2d(torch.randn(2, 3, 8, 8), first_layer).sum().backward())
    assert [op.channels for op in grads["conv_backward"]] == [(3, 16, 1, 0)]  # no input gradient wanted


def test_matmuls_and_elementwise_ops_carry_no_channels():
    _, work = traced(lambda: torch.relu(torch.randn(8, 24) @ torch.randn(24, 24)))
    assert all(op.channels == () for op in work.counts)


def _op(cin: int, cout: int, groups: int = 1, grad_input: int = 0, precision: str = "fp32") -> OpCost:
    return OpCost("aten.convolution.default", "conv", precision, 1000.0, 0.0, (cin, cout, groups, grad_input))


def test_channels_round_up_to_the_block_as_vectorized_kernels_compute_them():
    assert padded_flops(_op(24, 24), 16) == pytest.approx(1000.0 * (32 / 24) ** 2)
    assert padded_flops(_op(32, 48), 16) == 1000.0
    assert padded_flops(_op(3, 24), 16) == pytest.approx(1000.0 * 32 / 24)  # a first layer's 3 inputs stay
    assert padded_flops(_op(8, 8, grad_input=1), 16) == pytest.approx(4000.0)  # the input gradient is an output
    assert padded_flops(_op(72, 72, groups=72), 16) == pytest.approx(1000.0 * 80 / 72)  # depthwise: once
    assert padded_flops(_op(24, 24, groups=2), 16) == 1000.0  # other grouped convolutions as they are
    assert padded_flops(_op(24, 24), 1) == 1000.0
    assert padded_flops(_op(24, 24, precision="int8"), 16) == 1000.0
    assert padded_flops(OpCost("aten.mm.default", "matmul", "fp32", 1000.0, 0.0), 16) == 1000.0


@given(
    cin=st.integers(1, 300),
    cout=st.integers(1, 300),
    grad_input=st.integers(0, 1),
    block=st.sampled_from([1, 4, 8, 16]),
)
def test_padding_never_lowers_the_flops_and_whole_blocks_are_not_padded(cin, cout, grad_input, block):
    op = _op(cin, cout, grad_input=grad_input)
    padded = padded_flops(op, block)
    assert op.flops <= padded <= op.flops * (cin + block - 1) / cin * (cout + block - 1) / cout + 1e-9
    whole = _op(cin * block, cout * block, grad_input=grad_input)
    assert padded_flops(whole, block) == whole.flops


def test_a_device_with_a_channel_block_charges_24_channels_what_it_charges_32():
    device = ProfileLibrary(PROFILES).device("reference_host", referenced_from=Path("t"), key="k")
    blocked = device.model_copy(update={"conv_channel_block": 16})

    def conv_work(channels: int):
        x, w = torch.randn(16, channels, 16, 16), torch.randn(channels, channels, 3, 3)
        return traced(lambda: F.conv2d(x, w, padding=1))[1]

    assert charge_seconds(conv_work(24), blocked) == pytest.approx(charge_seconds(conv_work(32), blocked))
    unblocked = device.model_copy(update={"conv_channel_block": 1})
    assert charge_seconds(conv_work(24), unblocked) < charge_seconds(conv_work(32), unblocked)


def test_the_probe_reads_the_block_from_the_vector_isa_and_states_how(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    block, source = host_channel_block()
    assert block == FP32_LANES["AVX2"] == 8 and source.startswith("[M]") and "AVX2" in source
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert host_channel_block()[0] == 4


def test_a_stated_channel_block_needs_a_source_and_must_be_a_positive_integer(tmp_path):
    mapping = load_yaml_mapping(PROFILES / "devices" / "reference_host.yaml")
    mapping.pop("conv_channel_block", None)
    mapping["sources"].pop("conv_channel_block", None)
    assert validate(DeviceProfile, mapping, tmp_path / "p.yaml").conv_channel_block == 1
    with pytest.raises(InputError, match="conv_channel_block"):
        validate(DeviceProfile, mapping | {"conv_channel_block": 16}, tmp_path / "p.yaml")
    sourced = {**mapping, "sources": mapping["sources"] | {"conv_channel_block": "[M] the ISA"}}
    for bad in (0, 2.5, "sixteen"):
        with pytest.raises(InputError, match="conv_channel_block"):
            validate(DeviceProfile, sourced | {"conv_channel_block": bad}, tmp_path / "p.yaml")
