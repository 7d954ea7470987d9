"""Flat result rows (as Ciw's ``DataRecord``): one per client phase and one per round.

Rows are appended to plain lists during a run and become DataFrames only at the edges.
A phase row is a named tuple of plain values: a fleet of thousands writes hundreds of
thousands of them, and a tuple takes a quarter of the memory of an instance with a
``__dict__``. Field names carry their units (``_s`` seconds, ``nbytes`` bytes, ``_j`` joules).

Energy: a phase's ``energy_j`` is the device's active power times the compute time, or the
client interface's transmit/receive power times a transfer's time. A round adds, for each
selected client, its idle power over the rest of the round (``energy_idle_j``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, NamedTuple

Phase = Literal["download", "compute", "upload"]
Status = Literal["completed", "dropped", "failed", "unable", "rejected", "cancelled"]


class PhaseRecord(NamedTuple):
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
    energy_j: float
    reason: str = ""
    staleness: int = 0
    """On an arrived update's row: the model versions applied since its client downloaded
    the model (always 0 in synchronous rounds)."""


@dataclass(frozen=True)
class RoundRecord:
    """What one round did and what it reached. Round 0 is the initial model, before training.

    In the asynchronous modes a row is a model version: its updates' arrivals and what
    happened in the window since the version before (:mod:`fedhq_sim.aggregation_modes`)."""

    round: int
    start_s: float
    collect_end_s: float
    end_s: float
    latency_s: float
    server_s: float
    selected: int
    reported: int
    dropped: int
    failed: int
    unable: int
    rejected: int
    """Clients whose update arrived corrupted and was rejected (see :mod:`fedhq_sim.faults`)."""
    cancelled: int
    """Over-selected clients still at work when the round had its reports (``training.over_selection``)."""
    n_fp32: int
    n_ptq: int
    n_qat: int
    bytes_down: int
    bytes_up: int
    energy_compute_j: float
    energy_radio_j: float
    energy_idle_j: float
    energy_j: float
    train_loss: float
    fp32_accuracy: float
    deployed_accuracy: float
    status: str = "ok"
    """``ok``, or why the server did not update the model (too few clients reported)."""
    staleness_mean: float = 0.0
    """The mean staleness of the updates applied (asynchronous modes; 0 in synchronous rounds)."""
    staleness_max: int = 0


def column_names(record_type: type) -> list[str]:
    """Column order of a record type (a named tuple or a dataclass), for CSV headers."""
    named = getattr(record_type, "_fields", None)
    return list(named) if named is not None else [f.name for f in fields(record_type)]
