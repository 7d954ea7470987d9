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
from fedhq_sim.models import ModelRef, build_model
from fedhq_sim.profiles import DeviceProfile
from fedhq_sim.quant.payload import encode_fp32
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.training import LocalConfig, local_work
from fedhq_sim.work import WorkProfile, untraced


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


@dataclass(frozen=True)
class Case:
    """One client workload: its model, strategy, configuration, data and traced work."""

    model: str
    strategy: Strategy
    cfg: LocalConfig
    payload: bytes
    data: Samples
    work: WorkProfile


Workload = tuple[str, ModelRef | str, Samples]
"""A row group of the table: its label, the model and one client's samples."""


def builtin_workloads(models: Sequence[str], n_samples: int) -> list[Workload]:
    """The built-in models, each on ``n_samples`` of the data it is meant for."""
    return [(name, name, client_samples(n_samples, MODEL_DATASETS[name])) for name in models]


def workloads(
    specs: Sequence[Workload], *, strategies: Sequence[Strategy], batch_sizes: Sequence[int], epochs: int
) -> list[Case]:
    """Every (workload, strategy, batch size) case, run once traced for its work profile."""
    cases = []
    for label, model_ref, data in specs:
        shape, classes = tuple(data.x.shape[1:]), int(data.y.max()) + 1
        payload = encode_fp32(build_model(model_ref, classes, seed=0, input_shape=shape).state_dict())
        for strategy in strategies:
            for batch in batch_sizes:
                cfg = LocalConfig(model_ref, classes, epochs, batch, 0.05, 32, shape)
                work = local_work(payload, data, strategy, cfg, seed=1).work
                cases.append(Case(label, strategy, cfg, payload, data, work))
    return cases


def time_workloads(cases: Sequence[Case], repeats: int, times: list[list[float]]) -> None:
    """Run every workload ``repeats`` times, untraced, appending each wall time to ``times``.

    Interleaved (each repeat runs every workload once), so that a slow spell of a shared host
    spreads over all rows instead of spoiling one. Each timed run follows an untimed run of
    the same workload, as a device's round follows its previous round: without it a small
    model's row would be charged for the caches that the previous row's larger model
    evicted, an effect of the table's order, not of the work (``bench/small_work_costs.py``).
    """
    with untraced():
        for _ in range(repeats):
            for case, case_times in zip(cases, times, strict=True):
                local_work(case.payload, case.data, case.strategy, case.cfg, seed=1)
                start = time.perf_counter()
                local_work(case.payload, case.data, case.strategy, case.cfg, seed=1)
                case_times.append(time.perf_counter() - start)


def fidelity_rows(cases: Sequence[Case], device: DeviceProfile, times: Sequence[Sequence[float]]) -> list[FidelityRow]:
    """Each workload's charge on ``device`` against the median of its measured times."""
    return [
        FidelityRow(c.model, c.strategy.label, c.cfg.batch_size, charge_seconds(c.work, device), statistics.median(t))
        for c, t in zip(cases, times, strict=True)
    ]


def paired_errors(
    cases: Sequence[Case], passes: Sequence[tuple[DeviceProfile, Sequence[Sequence[float]]]]
) -> list[float]:
    """Each workload's error with every profile pass paired with the timings taken right after
    it: the median over passes of ``charge(pass profile) / median(its timings) - 1``.

    The table's error compares the median profile with the median of all timings; when the
    host's speed drifts over the minutes a run takes, pairing compares a prediction with
    measurements made under the same conditions, which is the model's error without the drift.
    """
    return [
        statistics.median(
            charge_seconds(case.work, device) / statistics.median(pass_times[i]) - 1.0 for device, pass_times in passes
        )
        for i, case in enumerate(cases)
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
