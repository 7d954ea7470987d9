"""The quantization backend on unmodified modules: residual adds, batch norm, 1D and 2D."""

import copy

import pytest
import torch
from torch import nn

from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import decode_to_fp32, encode_quantized


class Residual1d(nn.Module):
    """An ordinary 1D CNN with batch norm and a residual add: nothing in it is for quantization."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 8, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm1d(8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(y + self.bn2(self.conv(y)))
        return self.head(y.mean(dim=2))


class Residual2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.depthwise = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        y = y + torch.nn.functional.relu6(self.depthwise(y))
        return self.fc(y.mean(dim=(2, 3)))


MODELS = {"1d": (Residual1d, (3, 32)), "2d": (Residual2d, (1, 8, 8))}


def _data(shape, n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=generator)
    return x, (x.flatten(1).sum(dim=1) > 0).long()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_ptq_of_an_unmodified_module_keeps_its_state_dict_and_approximates_its_outputs(kind, bits):
    cls, shape = MODELS[kind]
    torch.manual_seed(0)
    model = cls().eval()
    original = copy.deepcopy(model.state_dict())
    x, _ = _data(shape)
    prepared = backend.prepare_ptq(model, bits)
    assert set(prepared.state_dict()) == set(model.state_dict())  # quantizers add no keys
    assert {type(m) for m in backend.quantized_layers(prepared).values()} <= set(backend.QUANTIZED_CLASSES)
    float_out = backend.calibrate(prepared, [x[:32], x[32:]])
    assert torch.allclose(float_out, model(x).detach())  # observing changes nothing
    deployed = backend.convert(prepared)
    out = backend.run_deployed(deployed, x)
    gap = float((out - float_out).norm() / float_out.norm())
    assert 0 < gap < (0.05 if bits == 8 else 0.5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())  # the original is untouched


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_qat_of_an_unmodified_module_trains_and_converts_to_its_grid(kind, bits):
    cls, shape = MODELS[kind]
    torch.manual_seed(1)
    model = cls()
    original = copy.deepcopy(model.state_dict())
    x, y = _data(shape, n=128)
    prepared = backend.prepare_qat(model, bits)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.1)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(prepared(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())  # the original is untouched
    deployed = backend.convert(prepared)
    state = decode_to_fp32(encode_quantized(deployed, bits))
    assert set(state) == set(model.state_dict())
    for name, layer in backend.quantized_layers(deployed).items():
        assert torch.equal(state[f"{name}.weight"], layer.weight)
        levels = max(torch.unique(layer.weight_int[c]).numel() for c in range(layer.weight.shape[0]))
        assert levels <= 2**bits - 1  # symmetric: the lowest level stays unused
    # The deployed model computes what the QAT model computed in eval mode, up to the ranges
    # frozen from the last batch.
    prepared.eval()
    with torch.no_grad():
        trained = prepared(x)
    deployed_out = backend.run_deployed(deployed, x)
    assert float((deployed_out - trained).norm() / trained.norm()) < (0.05 if bits == 8 else 0.3)


def test_a_layer_that_never_runs_is_converted_and_travels_in_the_update():
    model = Residual1d().eval()
    model.unused = nn.Linear(8, 2)  # an auxiliary head the forward pass never calls
    prepared = backend.prepare_ptq(model)
    backend.calibrate(prepared, [torch.randn(4, 3, 32)])
    state = decode_to_fp32(encode_quantized(backend.convert(prepared), 8))
    assert set(state) == set(model.state_dict())
    assert (state["unused.weight"] - model.unused.weight).abs().max() <= model.unused.weight.abs().max() / 254 + 1e-7


def test_only_the_quantized_layers_of_a_deployed_model_are_priced_as_int8():
    from fedhq_sim.work import traced

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.free = nn.Parameter(torch.randn(8, 4))  # used functionally: stays fp32

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x)) @ self.free

    prepared = backend.prepare_ptq(Mixed().eval())
    backend.calibrate(prepared, [torch.randn(16, 8)])
    deployed = backend.convert(prepared)
    _, work = traced(lambda: backend.run_deployed(deployed, torch.randn(16, 8)))
    kinds = {op.kind for op in work.counts}
    assert "int8_matmul" in kinds and "matmul" in kinds
    assert work.flops("int8") >= 2 * 16 * 8 * 8 and work.flops("fp32") >= 2 * 16 * 8 * 4


def test_only_exact_conv_and_linear_layers_are_quantized():
    class Custom(nn.Linear):  # a subclass may compute something else: left in fp32
        pass

    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), Custom(4, 2))
    assert set(backend.quantized_layers(model)) == {"0"}
    prepared = backend.prepare_ptq(model)
    assert type(prepared[2]) is Custom and type(prepared[0]) is backend.QuantizedLinear
