"""What a run records: each client phase as it ends, and a round's record made from its phases.

The components (:mod:`fedhq_sim.components`) hand every phase to a :class:`Recorder`,
which prices its energy on the cost model and keeps it; when a round is over,
:func:`round_record` turns the round's phases and outcomes into its
:class:`~fedhq_sim.records.RoundRecord`. That function is pure: the counts, bytes and
energies of a round follow from its phases alone, so they can be checked without a clock.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import simpy

from fedhq_sim.charge import idle_joules, phase_joules
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.records import PhaseRecord, RoundRecord
from fedhq_sim.scenario import ClientSpec

ARRIVED = ("completed", "rejected")  # uploads whose bytes reached the receiver


class Recorder:
    """The run's phase rows, appended as phases end on ``env``'s clock."""

    def __init__(self, env: simpy.Environment, phases: list[PhaseRecord]) -> None:
        self.env = env
        self.phases = phases
        self.computed_s: Counter[int] = Counter()
        """Each client's compute seconds so far (an asynchronous turn's idle time is its
        length less what it computed)."""

    def record(
        self,
        r: int,
        client: ClientSpec,
        phase: str,
        strategy: Strategy,
        nbytes: int,
        start: float,
        status: str,
        reason: str = "",
        *,
        staleness: int = 0,
    ) -> None:
        """A phase of ``client`` in round ``r`` that began at ``start`` and ends now
        (``staleness``: of the update an upload delivered)."""
        energy = phase_joules(phase, status, self.env.now - start, client.device, client.link)
        if phase == "compute":
            self.computed_s[client.client_id] += self.env.now - start
        self.phases.append(
            PhaseRecord(
                r,
                client.client_id,
                client.name,
                client.site,
                client.device.name,
                client.link.name,
                phase,
                strategy.label,
                strategy.bits,
                nbytes,
                float(start),  # SimPy's clock starts at int 0: a row holds floats only
                float(self.env.now),
                status,
                energy,
                reason,
                staleness,
            )
        )


@dataclass(frozen=True)
class RoundTimes:
    """When a round started, when its collection ended, when it ended, and its server's seconds."""

    start_s: float
    collect_end_s: float
    end_s: float
    server_s: float


def round_record(
    r: int,
    times: RoundTimes,
    clients: Sequence[ClientSpec],
    selected: Sequence[int],
    assigned: Sequence[tuple[int, Strategy]],
    reported_losses: Sequence[float | None],
    gateway_lost: set[int],
    phases: Sequence[PhaseRecord],
    status: str,
) -> RoundRecord:
    """The record of round ``r`` from its ``phases``: ``assigned`` holds each selected
    client's strategy, ``reported_losses`` the training loss of each client whose update
    reached the server (``None`` where it reported none), ``gateway_lost`` the members of
    sites whose gateway failed (they count as failed, whatever they had done). The
    accuracies are left NaN: they are known once the server's evaluation is done."""
    ended = _ended(phases, gateway_lost)
    unable, failed, rejected, cancelled = (ended[s] for s in ("unable", "failed", "rejected", "cancelled"))
    counts = {status: len(clients) for status, clients in ended.items()}
    latency = times.end_s - times.start_s
    computing: Counter[int] = Counter()  # one pass: a round of thousands stays linear
    for p in phases:
        if p.phase == "compute":
            computing[p.client_id] += p.end_s - p.start_s
    idle_j = sum(idle_joules(latency - computing[cid], clients[cid].device) for cid in selected)
    dropped = len(selected) - len(reported_losses) - len(unable) - len(failed) - len(rejected) - len(cancelled)
    kinds = [strategy.kind for cid, strategy in assigned if cid not in unable]
    counts["dropped"] = dropped
    return _record(r, times, len(selected), reported_losses, counts, kinds, phases, idle_j, status)


def version_record(
    v: int,
    times: RoundTimes,
    clients: Sequence[ClientSpec],
    dispatched: Sequence[tuple[int, Strategy]],
    applied: Sequence[tuple[float | None, int]],
    turns_idle_s: Sequence[tuple[int, float]],
    phases: Sequence[PhaseRecord],
    status: str,
) -> RoundRecord:
    """The record of version ``v`` of an asynchronous mode, from what happened in its window
    (the ``phases`` that ended since the version before): ``dispatched`` the turns begun in
    it with their strategies, ``applied`` the training loss and staleness of each update
    the version applied, ``turns_idle_s`` each turn that ended in it and its seconds not
    computing (its client's idle energy). Turns are counted by how they ended (a client may
    have had several), and the strategy counts leave out the turns whose client could not
    run its strategy."""
    counts = Counter(p.status for p in phases if p.status != "completed" and p.client_id >= 0)
    unable = Counter(Strategy.from_label(p.strategy).kind for p in phases if p.status == "unable")
    kinds = list((Counter(strategy.kind for _, strategy in dispatched) - unable).elements())
    idle_j = sum(idle_joules(seconds, clients[cid].device) for cid, seconds in turns_idle_s)
    losses = [loss for loss, _ in applied]
    record = _record(v, times, len(dispatched), losses, dict(counts), kinds, phases, idle_j, status)
    staleness = [tau for _, tau in applied]
    return replace(
        record,
        staleness_mean=float(np.mean(staleness)) if staleness else 0.0,
        staleness_max=max(staleness, default=0),
    )


def _ended(phases: Sequence[PhaseRecord], gateway_lost: set[int]) -> dict[str, set[int]]:
    """The clients whose part ended ``unable``, ``failed``, ``rejected`` or ``cancelled``
    (gateways, whose ids are negative, are not clients)."""
    by = {s: {p.client_id for p in phases if p.status == s and p.client_id >= 0} for s in ("rejected", "cancelled")}
    by["unable"] = {p.client_id for p in phases if p.status == "unable"}
    by["failed"] = {p.client_id for p in phases if p.status == "failed" and p.client_id >= 0}
    by["failed"] |= gateway_lost - by["unable"] - by["rejected"]
    return by


def _record(
    r: int,
    times: RoundTimes,
    selected: int,
    reported_losses: Sequence[float | None],
    ended: dict[str, int],
    kinds: list[str],
    phases: Sequence[PhaseRecord],
    idle_j: float,
    status: str,
) -> RoundRecord:
    losses = [loss for loss in reported_losses if loss is not None]
    compute_j = sum(p.energy_j for p in phases if p.phase == "compute")
    radio_j = sum(p.energy_j for p in phases if p.phase != "compute")
    return RoundRecord(
        round=r,
        start_s=times.start_s,
        collect_end_s=times.collect_end_s,
        end_s=times.end_s,
        latency_s=times.end_s - times.start_s,
        server_s=times.server_s,
        selected=selected,
        reported=len(reported_losses),
        dropped=ended.get("dropped", 0),
        failed=ended.get("failed", 0),
        unable=ended.get("unable", 0),
        rejected=ended.get("rejected", 0),
        cancelled=ended.get("cancelled", 0),
        n_fp32=kinds.count("fp32"),
        n_ptq=kinds.count("ptq"),
        n_qat=kinds.count("qat"),
        bytes_down=sum(p.nbytes for p in phases if p.phase == "download" and p.status == "completed"),
        bytes_up=sum(p.nbytes for p in phases if p.phase == "upload" and p.status in ARRIVED),
        energy_compute_j=compute_j,
        energy_radio_j=radio_j,
        energy_idle_j=idle_j,
        energy_j=compute_j + radio_j + idle_j,
        train_loss=float(np.mean(losses)) if losses else float("nan"),
        fp32_accuracy=math.nan,  # filled in once the evaluation is done
        deployed_accuracy=math.nan,
        status=status,
    )
