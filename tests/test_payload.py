"""The wire format: real serialized sizes and an exact dequantization."""

import torch

from fedhq_sim.aggregate import fedavg
from fedhq_sim.models import build_model
from fedhq_sim.quant import eager
from fedhq_sim.quant.payload import decode_to_fp32, encode_fp32, encode_quantized


def quantized_model(name="small_cnn"):
    model = build_model(name, 10, seed=0)
    prepared = eager.prepare_ptq(model)
    eager.calibrate(prepared, [torch.rand(32, 1, 8, 8)])
    return model, eager.convert(prepared)


def test_int8_payloads_are_smaller_than_fp32_ones():
    for name in ("small_cnn", "mlp"):
        model, quantized = quantized_model(name)
        assert len(encode_quantized(quantized, 8)) < len(encode_fp32(model.state_dict()))


def test_decoding_an_int8_update_gives_the_dequantized_weights():
    model, quantized = quantized_model()
    state = decode_to_fp32(encode_quantized(quantized, 8))
    assert set(state) == set(model.state_dict())
    assert torch.equal(state["conv1.weight"], quantized.conv1.weight().dequantize())
    assert torch.equal(state["fc.bias"], quantized.fc.bias())
    # The dequantized weights are close to the fp32 ones: within half a quantization step.
    step = quantized.conv1.weight().q_per_channel_scales().max()
    assert (state["conv1.weight"] - model.conv1.weight).abs().max() <= step / 2 + 1e-6


def test_fp32_updates_round_trip_exactly():
    model = build_model("small_cnn", 10, seed=4)
    state = decode_to_fp32(encode_fp32(model.state_dict()))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_fedavg_weights_by_sample_count():
    a = {"w": torch.tensor([0.0, 4.0])}
    b = {"w": torch.tensor([4.0, 0.0])}
    assert torch.allclose(fedavg([(a, 1), (b, 3)])["w"], torch.tensor([3.0, 1.0]))
