"""Samples and their non-IID split over clients.

Whatever dataset a scenario names (:mod:`fedhq_sim.datasets`), clients get skewed label
distributions from a Dirichlet draw per class (the usual FL benchmark recipe): small
``alpha`` gives each client few classes, large ``alpha`` approaches an IID split.
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
