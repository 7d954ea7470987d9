"""Aggregation rules as pure functions over fp32 state dicts (as Flower's aggregate.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fedavg(updates: Sequence[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    """FedAvg: the average of the updates weighted by their clients' sample counts."""
    if not updates:
        raise ValueError("fedavg needs at least one update")
    total = sum(n for _, n in updates)
    if total <= 0:
        raise ValueError("fedavg needs a positive total sample count")
    keys = updates[0][0].keys()
    first = updates[0][0]
    # Counters such as batch norm's num_batches_tracked are not weights: keep the first.
    return {
        key: sum(state[key] * (n / total) for state, n in updates) if first[key].is_floating_point() else first[key]
        for key in keys
    }


def mix(
    current: dict[str, torch.Tensor], terms: Sequence[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float]]
) -> dict[str, torch.Tensor]:
    """``current + sum_i c_i (state_i - ref_i)`` over ``(state_i, ref_i, c_i)``: the step of
    the asynchronous modes (FedBuff with ``ref_i`` the version update ``i`` was trained
    from; FedAsync with ``ref_i = current``). Counters keep ``current``'s values."""
    if not terms:
        raise ValueError("mix needs at least one update")
    mixed = {}
    for key, value in current.items():
        if not value.is_floating_point():
            mixed[key] = value
            continue
        step = torch.zeros_like(value)
        for state, ref, coefficient in terms:
            step = step + coefficient * (state[key] - ref[key])
        mixed[key] = value + step
    return mixed
