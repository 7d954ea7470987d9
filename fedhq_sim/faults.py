"""Injected faults: devices that crash mid-round, and updates that arrive corrupted.

A scenario's ``faults`` section asks for them (see :class:`fedhq_sim.scenario.FaultSpec`).
Which client suffers what in a round is drawn when the round starts, from a random stream of
its own for each (seed, round, client), so one client's faults never shift another's, and a
run stays reproducible whatever else changes.

A crash ends the client's round during its local work or its upload, at a drawn fraction of
the way through; it is logged as that phase ``failed``. A corrupted update is the client's
real update with NaN or infinite values, or scaled far out of range; the server (or a site's
gateway) checks every update it receives (:func:`rejection`) and rejects it, logged as the
upload ``rejected`` with what the check found. Nothing of a faulty client reaches the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

CrashPhase = Literal["compute", "upload"]
Corruption = Literal["nan", "inf", "huge"]
HUGE_FACTOR = 1e6
"""How far a ``huge`` corruption scales an update's values."""
OUT_OF_RANGE = 1e3
"""An update with a value over this many times the global model's largest is rejected."""

CRASHED = {
    "compute": "the device crashed during its local work (fault injection)",
    "upload": "the device crashed during its upload (fault injection)",
}
FOUND = {
    "nan": "NaN values",
    "inf": "infinite values",
    "huge": f"values over {OUT_OF_RANGE:g}x the global model's largest",
}


@dataclass(frozen=True)
class ClientFaults:
    """What goes wrong for one client in one round."""

    crash: CrashPhase | None = None
    crash_at: float = 0.0
    """How far through the phase the crash comes, as a fraction in [0, 1)."""
    corrupt: Corruption | None = None


@dataclass(frozen=True)
class CrashRule:
    during: CrashPhase
    probability: float


@dataclass(frozen=True)
class ScheduledCrash:
    """A crash of one client in the first round from ``round`` on in which it takes part."""

    client_id: int
    round: int
    during: CrashPhase


FAULT_STREAM = 0xFA17  # tells the fault streams apart from the clients' training seeds


def draw(
    selected: Iterable[int],
    crashes: tuple[CrashRule, ...],
    scheduled: Mapping[int, ScheduledCrash],
    corruptions: tuple[tuple[Corruption, float], ...],
    r: int,
    seed: int,
    turn: int = 0,
) -> tuple[dict[int, ClientFaults], list[int]]:
    """Each selected client's faults this round, and which scheduled crashes (by index) fired.

    Per client, from its own stream: two draws per crash rule (does it fire, and when), one
    for a scheduled crash's timing, one per corruption rule; the first rule that fires wins.
    ``turn`` (asynchronous modes) is the client's turn number: a client with several turns
    toward one version draws anew for each.
    """
    faults: dict[int, ClientFaults] = {}
    fired = []
    for cid in sorted(selected):
        entropy = [seed, FAULT_STREAM, r, cid] + ([turn] if turn else [])
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        crash, crash_at = None, 0.0
        for rule in crashes:
            hit, when = rng.random(2)
            if crash is None and hit < rule.probability:
                crash, crash_at = rule.during, float(when)
        due = [i for i, s in scheduled.items() if s.client_id == cid and s.round <= r]
        when = float(rng.random())
        if crash is None and due:
            crash, crash_at = scheduled[due[0]].during, when
            fired.append(due[0])
        corrupt = None
        for kind, probability in corruptions:
            if rng.random() < probability and corrupt is None:
                corrupt = kind
        if crash is not None or corrupt is not None:
            faults[cid] = ClientFaults(crash, crash_at, corrupt)
    return faults, fired


def corrupted(state: Mapping[str, torch.Tensor], kind: Corruption) -> dict[str, torch.Tensor]:
    """A copy of an update's (decoded) values, corrupted: a NaN or an infinity in its first
    floating tensor, or every floating tensor scaled by :data:`HUGE_FACTOR`."""
    copy = {key: value.clone() for key, value in state.items()}
    floating = [key for key, value in copy.items() if value.is_floating_point() and value.numel()]
    if kind == "huge":
        for key in floating:
            copy[key] *= HUGE_FACTOR
    else:
        copy[floating[0]].view(-1)[0] = float("nan") if kind == "nan" else float("inf")
    return copy


def rejection(state: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor]) -> str | None:
    """Why the server rejects an update, or ``None``: NaN or infinite values, or values over
    :data:`OUT_OF_RANGE` times the largest of the global model (no honest local round moves
    weights that far)."""
    values = [v for v in state.values() if v.is_floating_point() and v.numel()]
    if any(bool(torch.isnan(v).any()) for v in values):
        return FOUND["nan"]
    if any(bool(torch.isinf(v).any()) for v in values):
        return FOUND["inf"]
    scale = max((float(v.abs().max()) for v in global_state.values() if v.is_floating_point() and v.numel()), default=0)
    if any(float(v.abs().max()) > OUT_OF_RANGE * max(scale, 1.0) for v in values):
        return FOUND["huge"]
    return None
