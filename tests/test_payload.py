"""The wire format: real serialized sizes and an exact dequantization."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhq_sim.aggregate import fedavg
from fedhq_sim.models import build_model
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import decode_to_fp32, encode_fp32, encode_quantized


def quantized_model(name="small_cnn", bits=8):
    model = build_model(name, 10, seed=0)
    prepared = backend.prepare_ptq(model, bits)
    backend.calibrate(prepared, [torch.rand(32, 1, 8, 8)])
    return model, backend.convert(prepared)


def test_int8_payloads_are_smaller_than_fp32_ones():
    for name in ("small_cnn", "mlp"):
        model, quantized = quantized_model(name)
        assert len(encode_quantized(quantized, 8)) < len(encode_fp32(model.state_dict()))


def test_decoding_an_int8_update_gives_the_deployed_weights_exactly():
    model, quantized = quantized_model()
    state = decode_to_fp32(encode_quantized(quantized, 8))
    assert set(state) == set(model.state_dict())
    assert torch.equal(state["conv1.weight"], quantized.conv1.weight)
    assert torch.equal(state["fc.bias"], quantized.fc.bias)
    # The dequantized weights are close to the fp32 ones: within half a quantization step.
    step = quantized.conv1.weight_scale.max()
    assert (state["conv1.weight"] - model.conv1.weight).abs().max() <= step / 2 + 1e-6


def test_fp32_updates_round_trip_exactly():
    model = build_model("small_cnn", 10, seed=4)
    state = decode_to_fp32(encode_fp32(model.state_dict()))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_fedavg_weights_by_sample_count():
    a = {"w": torch.tensor([0.0, 4.0])}
    b = {"w": torch.tensor([4.0, 0.0])}
    assert torch.allclose(fedavg([(a, 1), (b, 3)])["w"], torch.tensor([3.0, 1.0]))


def test_a_quantized_batch_norm_model_decodes_to_the_clients_model_up_to_weight_rounding():
    client = build_model("resnet8", 10, seed=1)
    with torch.no_grad():  # batch-norm statistics and scales far from their initial values
        for module in client.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    client.eval()
    prepared = backend.prepare_ptq(client)
    x = torch.rand(64, 1, 8, 8)
    backend.calibrate(prepared, [x])
    state = decode_to_fp32(encode_quantized(backend.convert(prepared), 8))
    for key, value in client.state_dict().items():
        if "bn" in key or "shortcut.1" in key:  # batch norm travels in fp32, exactly
            assert torch.equal(state[key], value), key
    restored = build_model("resnet8", 10, seed=3)
    restored.load_state_dict(state)
    restored.eval()
    with torch.no_grad():
        gap = (restored(x) - client(x)).abs().max() / client(x).abs().max()
    assert gap < 0.05  # int8 weight rounding only


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 12),
    st.sampled_from([4, 8]),
    st.floats(0.05, 20.0),
    st.integers(0, 2**31 - 1),
)
def test_folding_a_positive_per_channel_factor_leaves_the_integer_weights_unchanged(
    channels, fan_in, bits, spread, seed
):
    """Why updates need not fold batch norm: folding multiplies each output channel by one
    factor, and the per-channel symmetric grid scales with it (quant/backend.py)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, fan_in, generator=generator)
    factors = torch.rand(channels, 1, generator=generator) * spread + 0.01
    ranges = backend.Ranges.at(bits)

    def integers(w):
        scales = backend.weight_scales(w, ranges).reshape(-1, 1)
        return torch.clamp(torch.round(w / scales), ranges.weight_min, ranges.weight_max)

    folded, unfolded = integers(weight * factors), integers(weight)
    assert (folded - unfolded).abs().max() <= 1  # float rounding at a tie may go the other way
    assert (folded != unfolded).sum() <= max(1, folded.numel() // 1000)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=1, max_size=50))
def test_four_bit_values_pack_two_per_byte_and_unpack_exactly(values):
    from fedhq_sim.quant.payload import pack_nibbles, unpack_nibbles

    tensor = torch.tensor(values, dtype=torch.int8)
    packed = pack_nibbles(tensor)
    assert packed.dtype == torch.uint8 and packed.numel() == (len(values) + 1) // 2
    assert torch.equal(unpack_nibbles(packed, tensor.shape), tensor)


def test_a_four_bit_update_is_smaller_and_its_weights_use_sixteen_levels(digits_federation):
    from fedhq_sim.quant.strategy import Strategy
    from fedhq_sim.training import LocalConfig, local_work

    cfg = LocalConfig("resnet8", 10, 1, 32, 0.05, 32, (1, 8, 8))
    payload = encode_fp32(build_model("resnet8", 10, seed=0).state_dict())
    data = digits_federation.clients[0]
    eight = local_work(payload, data, Strategy("ptq", 8), cfg, seed=1).payload
    four = local_work(payload, data, Strategy("qat", 4), cfg, seed=1).payload
    assert len(four) < 0.75 * len(eight)
    state = decode_to_fp32(four)
    weight = state["block2.conv1.weight"]
    levels = {torch.unique(weight[c]).numel() for c in range(weight.shape[0])}
    assert max(levels) <= 16  # per output channel: at most 2**4 distinct values
