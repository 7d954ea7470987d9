"""Fidelity: does the charge predicted for a host match the time the work really takes there?

For every model, strategy and batch size, one client's real local work is run once traced,
to get its work profile and the charge predicted on a device profile, and several times
untraced, to measure its wall time (median). ``bench/fidelity.py`` runs this against a
fresh ``profile-device`` measurement of the host and writes ``docs/fidelity.md``'s table.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedhq_sim.charge import charge_seconds
from fedhq_sim.data import Samples, federate
from fedhq_sim.datasets import DATASETS
from fedhq_sim.models import build_model
from fedhq_sim.profiles import DeviceProfile
from fedhq_sim.quant.payload import encode_fp32
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.training import LocalConfig, local_work
from fedhq_sim.work import untraced


@dataclass(frozen=True)
class FidelityRow:
    """Predicted and measured seconds of one client workload on this host."""

    model: str
    strategy: str
    batch_size: int
    predicted_s: float
    measured_s: float

    @property
    def error(self) -> float:
        """Signed relative error of the prediction (+0.1: predicted 10 % too slow)."""
        return self.predicted_s / self.measured_s - 1.0


MODEL_DATASETS = {"small_cnn": "digits", "resnet8": "digits", "mlp": "plant_sensors"}
"""Each model on the data it is meant for: images for the CNNs, sensor readings for the MLP."""


def client_samples(n_samples: int, dataset: str = "digits") -> Samples:
    """An IID share of a dataset (fixed seed): the data one client would train on."""
    data = federate(
        DATASETS[dataset].loader(),
        n_clients=1,
        alpha=1e3,
        test_fraction=0.2,
        server_calibration=64,
        min_client_samples=8,
        rng=np.random.default_rng(0),
    )
    client = data.clients[0]
    return Samples(client.x[:n_samples], client.y[:n_samples])


def compare(
    device: DeviceProfile,
    *,
    models: Sequence[str],
    strategies: Sequence[Strategy],
    batch_sizes: Sequence[int],
    epochs: int,
    n_samples: int,
    repeats: int,
) -> list[FidelityRow]:
    """Predict and measure every (model, strategy, batch size) combination.

    The measurements are interleaved (each repeat runs every combination once) so that a
    slow spell of a shared host spreads over all rows instead of spoiling one; each row
    reports its median.
    """
    cases = []
    for model_ref in models:
        data = client_samples(n_samples, MODEL_DATASETS[model_ref])
        shape, classes = tuple(data.x.shape[1:]), int(data.y.max()) + 1
        payload = encode_fp32(build_model(model_ref, classes, seed=0, input_shape=shape).state_dict())
        for strategy in strategies:
            for batch in batch_sizes:
                cfg = LocalConfig(model_ref, classes, epochs, batch, 0.05, 32, shape)
                predicted = charge_seconds(local_work(payload, data, strategy, cfg, seed=1).work, device)
                cases.append((model_ref, strategy, batch, cfg, payload, data, predicted))
    times: list[list[float]] = [[] for _ in cases]
    with untraced():
        for _ in range(repeats):
            for case, case_times in zip(cases, times, strict=True):
                _, strategy, _, cfg, payload, data, _ = case
                start = time.perf_counter()
                local_work(payload, data, strategy, cfg, seed=1)
                case_times.append(time.perf_counter() - start)
    return [
        FidelityRow(model_ref, strategy.label, batch, predicted, statistics.median(case_times))
        for (model_ref, strategy, batch, _, _, _, predicted), case_times in zip(cases, times, strict=True)
    ]


def summary(rows: Sequence[FidelityRow]) -> tuple[float, float]:
    """Median and worst absolute relative error."""
    errors = [abs(row.error) for row in rows]
    return statistics.median(errors), max(errors)


def markdown_table(rows: Sequence[FidelityRow]) -> str:
    lines = [
        "| model | strategy | batch | predicted s | measured s | error |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r.model} | {r.strategy} | {r.batch_size} | {r.predicted_s:.4f} | {r.measured_s:.4f} | {r.error:+.1%} |"
            for r in rows
        ),
    ]
    median, worst = summary(rows)
    lines += ["", f"Median absolute error {median:.1%}, worst {worst:.1%} ({len(rows)} rows)."]
    return "\n".join(lines)
