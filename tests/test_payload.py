"""The wire format: real serialized sizes and an exact dequantization."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_a_quantized_resnet_update_unfolds_to_the_clients_unfused_model():
    from fedhq_sim.quant.folding import unfold_batch_norm

    client = build_model("resnet8", 10, seed=1)
    with torch.no_grad():  # batch-norm statistics and scales far from their initial values
        for module in client.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    client.eval()
    batch_norm = eager.batch_norm_state(client)
    assert len(batch_norm) == 4 * 9  # nine batch norms, four tensors each
    prepared = eager.prepare_ptq(client)
    x = torch.rand(64, 1, 8, 8)
    eager.calibrate(prepared, [x])
    folded = decode_to_fp32(encode_quantized(eager.convert(prepared), 8, batch_norm))
    global_model = build_model("resnet8", 10, seed=2)  # the server's model: other weights, other statistics
    unfolded = unfold_batch_norm(global_model, folded)
    for key, value in batch_norm.items():
        if not key.endswith(".bias"):
            assert torch.equal(unfolded[key], value), key
    restored = build_model("resnet8", 10, seed=3)
    restored.load_state_dict(unfolded)
    restored.eval()
    with torch.no_grad():
        gap = (restored(x) - client(x)).abs().max() / client(x).abs().max()
    assert gap < 0.05  # int8 weight rounding only


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
