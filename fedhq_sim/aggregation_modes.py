"""How the server turns arrivals into model versions: the scenario's ``training.mode``.

``sync``
    Rounds (design.md, "Semantics"): select, wait for every report or the deadline, aggregate.
``buffered``
    FedBuff (Nguyen et al., AISTATS 2022): ``concurrency`` clients train at once; the server
    keeps their updates in a buffer and, at every ``buffer_size``-th arrival, applies the
    buffer as one version: ``w <- w + server_learning_rate * sum_i p_i s(tau_i) (w_i - base_i)``
    with ``p_i`` the sample shares of the buffer, ``base_i`` the version update ``i`` was
    trained from and ``s`` the staleness weight. A finished client's slot goes at once to
    a client drawn from those idle and available, which starts from the current version.
``async``
    FedAsync (Xie et al., 2019): every arrival is a version,
    ``w <- w + mixing * s(tau) (w_i - w)``; the turn's slot is refilled once its update
    is applied, as in ``buffered``.
``semi-sync``
    Rounds of ``period`` (plus the server's step): at each round's start
    ``clients_per_round`` idle clients are drawn; at its end every update that arrived in
    it is applied as in ``buffered``. A late client is not dropped: its update joins the
    round it arrives in, with the staleness weight of the versions it missed.

The staleness ``tau`` of an update is the number of versions that changed the model
between its client's download and the update's application. In every mode other than ``sync`` a turn (download,
local work, upload) longer than ``round_deadline`` is dropped, and ``rounds`` counts
versions: a run ends with its ``rounds``-th version, and the turns still in flight then
are cancelled.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedhq_sim.schema import Seconds, StrictModel

Mode = Literal["sync", "async", "buffered", "semi-sync"]


class StalenessSpec(StrictModel):
    """The weight ``s(tau)`` of an update ``tau`` versions stale (FedAsync's families).

    ``polynomial``: ``(1 + tau) ** -exponent`` (FedBuff's default is ``exponent: 0.5``);
    ``hinge``: 1 up to ``hinge_at`` versions, then ``1 / (slope * (tau - hinge_at) + 1)``;
    ``constant``: 1 (no discount).
    """

    kind: Literal["polynomial", "hinge", "constant"] = "polynomial"
    exponent: float = Field(default=0.5, ge=0.0, le=10.0)
    hinge_at: int = Field(default=4, ge=0)
    slope: float = Field(default=1.0, gt=0.0, le=100.0)

    @model_validator(mode="after")
    def _options_of_kind(self) -> StalenessSpec:
        given = self.model_fields_set - {"kind"}
        belongs = {"polynomial": {"exponent"}, "hinge": {"hinge_at", "slope"}, "constant": set()}[self.kind]
        if given - belongs:
            raise ValueError(f"{', '.join(sorted(given - belongs))} does not apply to kind {self.kind}")
        return self

    def weight(self, staleness: int) -> float:
        """The factor an update ``staleness`` versions behind is applied with."""
        if staleness < 0:
            raise ValueError(f"staleness must not be negative, got {staleness}")
        if self.kind == "polynomial":
            return float((1.0 + staleness) ** -self.exponent)
        if self.kind == "hinge":
            return 1.0 if staleness <= self.hinge_at else 1.0 / (self.slope * (staleness - self.hinge_at) + 1.0)
        return 1.0


class AggregationSpec(StrictModel):
    """The options of the asynchronous modes (see the module's docstring); each applies to
    the modes named beside it, and the others ignore it (so that one scenario can be swept
    across modes)."""

    concurrency: int | None = Field(default=None, ge=1)
    """``async``, ``buffered``: clients training at once (default: ``clients_per_round``)."""
    buffer_size: int | None = Field(default=None, ge=1)
    """``buffered``: arrivals per version (default: half of ``concurrency``, at least 1)."""
    server_learning_rate: float = Field(default=1.0, gt=0.0, le=10.0)
    """``buffered``, ``semi-sync``: the server's step on the weighted mean update."""
    mixing: float = Field(default=0.6, gt=0.0, le=1.0)
    """``async``: how far one fresh update moves the model (FedAsync's alpha)."""
    period: Seconds | None = None
    """``semi-sync`` (required): a round's fixed length; shorter than the slowest turns, or
    the rounds are synchronous ones that never close early."""
    staleness: StalenessSpec = Field(default_factory=StalenessSpec)
    """``async``, ``buffered``, ``semi-sync``: the staleness weight."""


def concurrency(spec: AggregationSpec, clients_per_round: int) -> int:
    return spec.concurrency if spec.concurrency is not None else clients_per_round


def buffer_size(spec: AggregationSpec, clients_per_round: int) -> int:
    return spec.buffer_size if spec.buffer_size is not None else max(1, concurrency(spec, clients_per_round) // 2)
