"""Flat result rows (as Ciw's ``DataRecord``): one per client phase and one per round.

Rows are appended to plain lists during a run and become DataFrames only at the edges.
Field names carry their units (``_s`` seconds, ``nbytes`` bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

Phase = Literal["download", "compute", "upload"]
Status = Literal["completed", "dropped"]


@dataclass(frozen=True)
class PhaseRecord:
    """One phase of one client in one round, on the simulated clock."""

    round: int
    client_id: int
    client: str
    site: str
    device: str
    link: str
    phase: Phase
    strategy: str
    bits: int
    nbytes: int
    start_s: float
    end_s: float
    status: Status


@dataclass(frozen=True)
class RoundRecord:
    """What one round did and what it reached. Round 0 is the initial model, before training."""

    round: int
    start_s: float
    collect_end_s: float
    end_s: float
    latency_s: float
    server_s: float
    selected: int
    reported: int
    dropped: int
    n_fp32: int
    n_ptq: int
    n_qat: int
    bytes_down: int
    bytes_up: int
    train_loss: float
    fp32_accuracy: float
    deployed_accuracy: float


def column_names(record_type: type) -> list[str]:
    """Column order of a record type, for CSV headers."""
    return [f.name for f in fields(record_type)]
