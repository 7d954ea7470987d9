"""Datasets by name, and the checks every dataset's arrays pass, whatever their source.

A dataset is a function that returns :class:`~fedhq_sim.data.Samples` (or ``(x, y)`` arrays),
registered with :func:`register_dataset` under a name and a *kind* (``image``, ``sequence``
or ``tabular``: how planners and reports describe it); its input shape is that of its
samples. The built-ins register here, as does a user's module named by ``data.module``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fedhq_sim.data import Samples
from fedhq_sim.errors import InputError

DataKind = Literal["image", "sequence", "tabular"]


@dataclass(frozen=True)
class Dataset:
    """A dataset's samples, what kind of input they are, and the names of their classes."""

    samples: Samples
    kind: DataKind
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.samples.x.shape[1:])


@dataclass(frozen=True)
class _Registered:
    loader: Callable[..., Any]
    kind: DataKind


DATASETS: dict[str, _Registered] = {}
"""Every registered dataset, by name."""


def register_dataset(name: str, *, kind: DataKind) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make a loader available as ``data.dataset: <name>``. It returns ``Samples``
    or ``(x, y)`` arrays (x: one row per sample; y: integer class labels 0..K-1)."""

    def add(loader: Callable[..., Any]) -> Callable[..., Any]:
        if name in DATASETS and DATASETS[name].loader is not loader:
            raise ValueError(f"a dataset named {name!r} is already registered")
        DATASETS[name] = _Registered(loader, kind)
        return loader

    return add


def kind_of(shape: tuple[int, ...]) -> DataKind:
    """The kind an array's sample shape suggests: (F,) tabular, (C, L) sequence, (C, H, W) image."""
    return {1: "tabular", 2: "sequence"}.get(len(shape), "image")


def checked_samples(x: Any, y: Any, file: str, *, x_key: str = "x", y_key: str = "y") -> Samples:
    """``Samples`` from a dataset's arrays, or an :class:`InputError` naming what is wrong.

    Inputs must be numbers, finite, one row per sample; labels integers 0..K-1 with every
    class present (a missing class would silently shrink the model's output).
    """
    try:
        x, y = np.asarray(x), np.asarray(y)
    except (ValueError, TypeError) as error:  # ragged lists, objects
        raise InputError(file, x_key, f"expected arrays of numbers ({error})") from None
    if x.ndim < 2 or x.shape[0] == 0:
        raise InputError(file, x_key, f"expected an array of samples (N, ...) with N >= 1, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise InputError(file, x_key, f"expected numbers, got {x.dtype} values")
    with np.errstate(over="ignore"):  # what training sees: a float64 beyond its range becomes infinite here
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError(file, x_key, f"{int((~np.isfinite(x)).sum())} values are NaN, infinite or beyond float32")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(file, y_key, f"expected one label per sample ({x.shape[0]}), got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise InputError(file, y_key, f"labels must be integers 0..K-1, got {y.dtype} values")
    if y.min() < 0:
        raise InputError(file, y_key, f"labels must be integers 0..K-1, got {int(y.min())}")
    if y.max() >= len(y):  # more classes than samples: some class is empty (and bincount would be huge)
        raise InputError(file, y_key, f"labels must be 0..K-1 with every class present; got a label {int(y.max())}")
    counts = np.bincount(y.astype(np.int64))
    if len(counts) < 2:
        raise InputError(file, y_key, "a classifier needs at least two classes; every label is 0")
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise InputError(
            file, y_key, f"class {int(empty[0])} has no samples (labels must be 0..{len(counts) - 1}, each present)"
        )
    return Samples(torch.as_tensor(x), torch.as_tensor(y.astype(np.int64)))


def load_registered(name: str, args: dict[str, Any], where: str) -> Dataset:
    """A registered dataset, loaded; ``where`` names the scenario file in errors."""
    if name not in DATASETS:
        raise InputError(where, "data.dataset", f"unknown dataset '{name}' (registered: {', '.join(sorted(DATASETS))})")
    registered = DATASETS[name]
    try:
        loaded = registered.loader(**args)
        x, y = (loaded.x.detach().numpy(), loaded.y.detach().numpy()) if isinstance(loaded, Samples) else loaded
    except InputError:
        raise
    except Exception as error:  # the user's loader: report it in one line, whatever it raised
        raise InputError(where, "data.dataset", f"loading '{name}' failed: {type(error).__name__}: {error}") from None
    samples = checked_samples(x, y, f"dataset '{name}'")
    classes = tuple(str(i) for i in range(int(samples.y.max()) + 1))
    return Dataset(samples, registered.kind, classes)
