"""The two QAT measurements the docs cite (docs/policies.md, docs/results.md).

Usage: .venv/bin/python bench/qat_checks.py

1. Fake-quant range averaging: one digits client of the comparison scenario trains 2 local
   epochs of 4-bit QAT from a fresh model with PyTorch's default moving average (0.01) and
   with the range following each batch (1.0, the recipe in fedhq_sim/quant/backend.py); fp32
   beside them. Prints each mean training loss of the last epoch.
2. Does QAT survive the server's deployment? A model trained centrally in fp32 (5 epochs)
   gets one more local epoch of fp32, PTQ or 4-bit QAT; the server then aggregates that
   single update and deploys it at 4 bits on its calibration samples, as in a round.
   Prints the deployed accuracy per strategy, for small_cnn and ResNet-8 on digits and the MLP on the
   plant sensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.functional import cross_entropy

from fedhq_sim.datasets import load_digits, load_plant_sensors
from fedhq_sim.engine import Simulation
from fedhq_sim.models import build_model
from fedhq_sim.quant import backend
from fedhq_sim.quant.payload import encode_fp32
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.scenario import load_scenario
from fedhq_sim.server_work import Update, server_round
from fedhq_sim.training import LocalConfig, local_work

SCENARIO = "scenarios/fedhq_comparison.yaml"


def range_averaging() -> None:
    simulation = Simulation(load_scenario(SCENARIO, {"training.local_epochs": 2, "training.local_steps": None}))
    payload = encode_fp32(simulation.work.global_state)
    data = max(simulation.world.data.clients, key=len)
    fp32 = local_work(payload, data, FP32, simulation.world.local, seed=1).train_loss
    print(f"1. client of {len(data)} samples, 2 epochs from a fresh model: fp32 loss {fp32:.2f}")
    recipe = backend.QAT_RANGE_AVERAGING
    try:
        for constant in (0.01, 1.0):
            backend.QAT_RANGE_AVERAGING = constant
            qat = local_work(payload, data, Strategy("qat", 4), simulation.world.local, seed=1).train_loss
            print(f"   4-bit QAT, range averaging {constant}: loss {qat:.2f}")
    finally:
        backend.QAT_RANGE_AVERAGING = recipe


def deployment(model_ref: str) -> None:
    samples = load_digits() if model_ref != "mlp" else load_plant_sensors()
    order = np.random.default_rng(0).permutation(len(samples))
    cut = int(0.7 * len(samples))
    train, test, calibration = (samples.subset(order[:cut]), samples.subset(order[cut:]), samples.subset(order[:64]))
    shape, classes = tuple(samples.x.shape[1:]), int(samples.y.max()) + 1
    model = build_model(model_ref, classes, seed=0, input_shape=shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(5):
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(train), 32):
            index = perm[start : start + 32]
            optimizer.zero_grad()
            cross_entropy(model(train.x[index]), train.y[index]).backward()
            optimizer.step()
    state = model.state_dict()
    cfg = LocalConfig(model_ref, classes, 1, 32, 0.05, 32, shape)
    accuracies = []
    for strategy in (FP32, Strategy("ptq", 4), Strategy("qat", 4)):
        update = local_work(encode_fp32(state), train, strategy, cfg, seed=1)
        sent = Update(update.payload, len(train), strategy.label, len(update.payload))
        result = server_round([sent], state, model_ref, classes, calibration, test, 4)
        accuracies.append(f"{strategy.label} {result.deployed_accuracy:.3f}")
    print(f"2. {model_ref}: deployed 4-bit accuracy after one more epoch of " + ", ".join(accuracies))


def main() -> None:
    torch.set_num_threads(1)
    range_averaging()
    for model_ref in ("small_cnn", "resnet8", "mlp"):
        deployment(model_ref)


if __name__ == "__main__":
    main()
