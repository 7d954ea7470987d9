"""Offline data and its non-IID split over clients.

Two datasets, neither downloaded at run time: scikit-learn's bundled handwritten digits
(1,797 8x8 images, 10 classes) for the image models, and ``plant_sensors``, tabular
condition-monitoring readings of pumps generated from a fixed seed, for the MLP. Clients get
skewed label distributions from a Dirichlet draw per class (the usual FL benchmark recipe):
small ``alpha`` gives each client few classes, large ``alpha`` approaches an IID split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Samples:
    """Inputs ``x`` (N, ...) and integer labels ``y`` (N,): digits are (N, 1, 8, 8) in [0, 1]."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: np.ndarray) -> Samples:
        index = torch.as_tensor(indices, dtype=torch.long)
        return Samples(self.x[index], self.y[index])

    def __reduce__(self) -> tuple:
        # To a worker process as numpy arrays: torch's own reduction shares each tensor through
        # a shared-memory file, which costs milliseconds per tensor, for every task of a round.
        return (_samples_from_numpy, (self.x.numpy(), self.y.numpy()))


def _samples_from_numpy(x: np.ndarray, y: np.ndarray) -> Samples:
    return Samples(as_tensor(x), as_tensor(y))


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array``'s memory; a copy where the array is read-only (Ray's object
    store hands out read-only arrays, which torch must not write into)."""
    return torch.from_numpy(np.require(array, requirements="W"))


@dataclass(frozen=True)
class FederatedData:
    """The fleet's private shares, the server's calibration samples and the test set."""

    clients: tuple[Samples, ...]
    server_calibration: Samples
    test: Samples
    num_classes: int
    input_shape: tuple[int, ...]


class PartitionError(ValueError):
    """The Dirichlet draw cannot give every client enough samples."""


def load_digits() -> Samples:
    """scikit-learn's digits as tensors; pixel values 0..16 are scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits  # heavy import, only when needed

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return Samples(x, y)


SENSOR_FEATURES = (
    "vibration_1x",
    "vibration_2x",
    "vibration_3x",
    "vibration_high_band",
    "vibration_kurtosis",
    "crest_factor",
    "bearing_temperature",
    "winding_temperature",
    "motor_current",
    "current_imbalance",
    "suction_pressure",
    "discharge_pressure",
    "flow",
    "acoustic_level",
    "power_factor",
    "ambient_temperature",
)
SENSOR_CLASSES = ("normal", "imbalance", "misalignment", "bearing_wear", "cavitation", "overheating")

# How each fault shifts each reading at full severity (rows: SENSOR_CLASSES[1:]), in the
# readings' own units; the patterns follow the textbook signatures (imbalance at 1x running
# speed, misalignment at 2x and 3x, bearing wear in the high band and kurtosis, cavitation
# in suction pressure, flow and noise, overheating in temperatures and current).
_FAULT_SHIFTS = np.array(
    [
        [1.2, 0.1, 0.0, 0.0, 0.0, 0.1, 2.0, 0.0, 0.02, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        [0.5, 1.0, 0.4, 0.0, 0.2, 0.1, 3.0, 0.0, 0.05, 0.01, 0.0, 0.0, 0.0, 1.5, -0.01, 0.0],
        [0.1, 0.0, 0.0, 1.0, 2.5, 0.8, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0],
        [0.2, 0.0, 0.0, 0.6, 0.8, 0.4, 0.0, 0.0, -0.04, 0.0, -0.35, -0.6, -0.15, 6.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 12.0, 18.0, 0.15, 0.02, 0.0, 0.0, 0.0, 0.0, -0.04, 0.0],
    ]
)
_NOISE_SD = np.array([0.12, 0.1, 0.06, 0.1, 0.5, 0.15, 3.0, 4.0, 0.05, 0.008, 0.05, 0.2, 0.05, 2.0, 0.015, 3.0])


def load_plant_sensors(samples_per_class: int = 600, seed: int = 2026) -> Samples:
    """Condition-monitoring readings of centrifugal pumps: 16 features, 6 conditions.

    Generated, not recorded: each sample draws an operating point (speed, load) that moves
    every reading, a fault severity in [0.2, 1] that scales its class's signature, and
    sensor noise; then every feature is standardized. The seed is fixed, so every run and
    host sees the same dataset; scenarios' seeds only change how it is split.
    """
    rng = np.random.default_rng(seed)
    n = samples_per_class * len(SENSOR_CLASSES)
    labels = np.repeat(np.arange(len(SENSOR_CLASSES)), samples_per_class)
    speed = rng.uniform(0.6, 1.0, n)
    load = rng.uniform(0.3, 1.0, n)
    ambient = rng.normal(25.0, 6.0, n)
    base = np.stack(
        [
            0.5 * speed,
            0.3 + 0.1 * speed,
            0.2 + 0.05 * speed,
            0.2 + 0.1 * load,
            3.0 + 0.0 * load,
            1.4 + 0.1 * load,
            35.0 + 15.0 * load + 0.4 * ambient,
            45.0 + 25.0 * load + 0.6 * ambient,
            0.8 * load * speed,
            0.02 + 0.0 * load,
            1.0 - 0.2 * load,
            3.0 + 2.0 * load * speed**2,
            0.9 * load * speed,
            70.0 + 10.0 * load,
            0.85 - 0.05 * (1.0 - load),
            ambient,
        ],
        axis=1,
    )
    severity = rng.uniform(0.2, 1.0, n)
    shifts = np.vstack([np.zeros(len(SENSOR_FEATURES)), _FAULT_SHIFTS])[labels] * severity[:, None]
    readings = base + shifts + rng.normal(0.0, 1.6, base.shape) * _NOISE_SD
    standardized = (readings - readings.mean(axis=0)) / readings.std(axis=0)
    order = rng.permutation(n)
    x = torch.as_tensor(standardized[order], dtype=torch.float32)
    return Samples(x, torch.as_tensor(labels[order], dtype=torch.long))


DATASETS = {"digits": load_digits, "plant_sensors": load_plant_sensors}
"""Every dataset a scenario can name, by name."""


def dirichlet_partition(
    labels: np.ndarray, n_clients: int, alpha: float, min_samples: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split sample indices over clients with per-class proportions drawn from Dir(alpha).

    Redraws (up to 100 times) until every client holds at least ``min_samples``; raises
    :class:`PartitionError` when that is out of reach, rather than handing out empty clients.
    """
    if n_clients * min_samples > len(labels):
        raise PartitionError(
            f"{n_clients} clients x {min_samples} samples need {n_clients * min_samples}, "
            f"but only {len(labels)} training samples exist"
        )
    classes = np.unique(labels)
    for _ in range(100):
        shares: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for client, part in enumerate(np.split(members, cuts)):
                shares[client].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shares]
        if min(len(p) for p in parts) >= min_samples:
            return parts
    raise PartitionError(
        f"no Dirichlet draw (alpha={alpha}) gave all {n_clients} clients at least {min_samples} samples "
        "in 100 tries; raise alpha, lower min_client_samples or use fewer clients"
    )


def federate(
    samples: Samples,
    *,
    n_clients: int,
    alpha: float,
    test_fraction: float,
    server_calibration: int,
    min_client_samples: int,
    rng: np.random.Generator,
) -> FederatedData:
    """Hold out a test set and the server's calibration samples, then split the rest."""
    order = rng.permutation(len(samples))
    n_test = round(test_fraction * len(samples))
    test_idx, calib_idx = order[:n_test], order[n_test : n_test + server_calibration]
    train_idx = order[n_test + server_calibration :]
    if n_test == 0:
        raise PartitionError(f"test_fraction {test_fraction} of {len(samples)} samples leaves no test samples")
    if len(train_idx) == 0:
        raise PartitionError("no training samples are left after the test and calibration sets")
    train = samples.subset(train_idx)
    parts = dirichlet_partition(train.y.numpy(), n_clients, alpha, min_client_samples, rng)
    return FederatedData(
        clients=tuple(train.subset(p) for p in parts),
        server_calibration=samples.subset(np.sort(calib_idx)),
        test=samples.subset(np.sort(test_idx)),
        num_classes=int(samples.y.max()) + 1,
        input_shape=tuple(samples.x.shape[1:]),
    )
