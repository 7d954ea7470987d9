"""The learned part of FedHQ: an online model of what each client's strategy costs the deployment.

The label is the **deployment gap** of a client's update (:func:`fedhq_sim.training.deployment_gap`):
the loss the update has as the server deploys it (its weights quantized, its activations on the
deployed grid) minus the loss it has run in float, both on the client's calibration samples.
Every PTQ and QAT client measures it, so the model learns from both: the strategy of the
labelled round is a feature, and so is its product with the client's data skew. What QAT buys
a client, its **benefit**, is then the predicted gap under PTQ minus that under QAT for its
features now: ``-(b_qat + b_qat_skew * skew)``. A QAT client keeps being labelled, so a benefit
that has shrunk shows, and the prediction rests on the fleet's labels rather than on a
client's own last one.

Divergence and training loss explain how large a client's gap is, whichever strategy it runs,
but are not multiplied with the strategy: they drift with every round, and where one strategy
is labelled by a few clients only (two of 24 on PTQ on the PLAID fleet), their QAT slopes are
fitted to those few and extrapolate. On PLAID seed 1 they predicted a benefit of -0.24 for a
client whose own labels were a QAT gap of about 0 and a PTQ gap of about 0.13, and sent it
back to PTQ. Skew is static, known for every client and set before the first round.

The model is exponentially weighted ridge regression, solved exactly each update: the
sufficient statistics ``A = sum w phi phi^T`` and ``b = sum w phi y`` decay by ``forgetting``
per round, so it follows a federation whose weights, and so whose losses, drift. It has eight
coefficients, is explainable (``coefficients``), and costs microseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhq_sim.policies.base import ClientInfo, ClientReport

FEATURES = (
    "bias",
    "skew",
    "divergence",
    "train_loss",
    "log10_samples",
    "log_slowness",
    "qat",
    "qat_skew",
)


FALLBACK_FIELDS = ("divergence", "train_loss")
"""Observations a client may not have yet; it takes the fleet's mean of them."""


ARRAYS = ("_a", "_b", "coefficients")  # the model's learned arrays, in its state


@dataclass
class _Observed:
    """Exponentially smoothed observations of one client (``None`` until first seen)."""

    divergence: float | None = None
    train_loss: float | None = None


def _smooth(old: float | None, new: float | None, weight: float) -> float | None:
    if new is None or not math.isfinite(new):
        return old
    return new if old is None else (1.0 - weight) * old + weight * new


class BenefitModel:
    """Predicts each client's deployment gap under PTQ and QAT from its features (module docstring).

    Parameters
    ----------
    clients
        The fleet; static features (skew, size, device slowness) come from its analysis.
    ptq_label
        The strategy label whose predicted compute time measures a device's slowness.
    forgetting
        Per-round decay of past evidence (1: never forget).
    ridge
        L2 penalty, which keeps the solution defined before the features vary.
    smoothing
        Weight of a new observation in a client's smoothed features.
    """

    def __init__(
        self,
        clients: Sequence[ClientInfo],
        ptq_label: str,
        *,
        forgetting: float = 0.9,
        ridge: float = 1e-3,
        smoothing: float = 0.5,
    ) -> None:
        self.forgetting, self.ridge, self.smoothing = forgetting, ridge, smoothing
        compute = {c.client_id: c.analysis.compute_s[ptq_label] for c in clients if c.analysis is not None}
        median = float(np.median(list(compute.values()))) if compute else 1.0
        self._static = {
            c.client_id: (
                c.analysis.skew if c.analysis is not None else 0.0,
                math.log10(max(c.num_samples, 1)),
                math.log(compute[c.client_id] / median) if compute.get(c.client_id, 0) > 0 and median > 0 else 0.0,
            )
            for c in clients
        }
        self._observed = {cid: _Observed() for cid in self._static}
        d = len(FEATURES)
        self._a = np.zeros((d, d))
        self._b = np.zeros(d)
        self.coefficients = np.zeros(d)
        self.labels_seen = 0

    def _fleet_mean(self, field: str) -> float:
        values = [getattr(o, field) for o in self._observed.values() if getattr(o, field) is not None]
        return float(np.mean(values)) if values else 0.0

    def features(self, client_id: int, qat: bool, fallback: Mapping[str, float] | None = None) -> np.ndarray:
        """The feature vector of a client now, on QAT or not (unobserved values take the
        fleet's mean, so a client not yet reported is predicted like the average client)."""
        fallback = fallback or {f: self._fleet_mean(f) for f in FALLBACK_FIELDS}
        skew, log_samples, log_slowness = self._static[client_id]
        seen = self._observed[client_id]
        divergence = seen.divergence if seen.divergence is not None else fallback["divergence"]
        train_loss = seen.train_loss if seen.train_loss is not None else fallback["train_loss"]
        on_qat = 1.0 if qat else 0.0
        return np.array(
            [
                1.0,
                skew,
                divergence,
                train_loss,
                log_samples,
                log_slowness,
                on_qat,
                on_qat * skew,
            ]
        )

    def update(self, reports: Sequence[ClientReport]) -> None:
        """Learn from one round's reports: labels from PTQ and QAT clients, features from everyone.

        Each label is paired with the features the client had *before* this round, which is
        what a prediction for the next round can use too.
        """
        reported = [r for r in reports if r.reported]
        fallback = {f: self._fleet_mean(f) for f in FALLBACK_FIELDS}
        labelled = [
            (self.features(r.client_id, r.strategy.kind == "qat", fallback), r.deployment_gap)
            for r in reported
            if r.strategy.kind in ("ptq", "qat") and r.deployment_gap is not None and math.isfinite(r.deployment_gap)
        ]
        self._a *= self.forgetting
        self._b *= self.forgetting
        for phi, y in labelled:
            self._a += np.outer(phi, phi)
            self._b += phi * y
        self.labels_seen += len(labelled)
        if labelled:
            d = len(FEATURES)
            self.coefficients = np.linalg.solve(self._a + self.ridge * np.eye(d), self._b)
        for r in reported:
            seen = self._observed[r.client_id]
            seen.divergence = _smooth(seen.divergence, r.divergence, self.smoothing)
            seen.train_loss = _smooth(seen.train_loss, r.train_loss, self.smoothing)

    def state_dict(self) -> dict[str, Any]:
        """The learned state, as plain values (Python floats hold float64 exactly)."""
        observed = {cid: [o.divergence, o.train_loss] for cid, o in self._observed.items()}
        arrays = {name: getattr(self, name).tolist() for name in ARRAYS}
        return {"observed": observed, "labels_seen": self.labels_seen} | arrays

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for cid, (divergence, train_loss) in state["observed"].items():
            self._observed[cid] = _Observed(divergence, train_loss)
        for name in ARRAYS:
            setattr(self, name, np.array(state[name], dtype=np.float64))
        self.labels_seen = state["labels_seen"]

    @property
    def ptq_mean_label(self) -> float:
        """The weighted mean of the PTQ labels seen (of all labels while there is none; 0
        before any): what the deployment costs a PTQ update, the scale of a benefit. (QAT
        gaps centre on zero, so the mean of every label shrinks with the QAT share.)"""
        qat = FEATURES.index("qat")
        total, on_qat = self._a[0, 0], self._a[qat, qat]  # the bias is 1 and qat 0 or 1: weights
        if total - on_qat > 1e-12 * total:
            return float((self._b[0] - self._b[qat]) / (total - on_qat))
        return float(self._b[0] / total) if total > 0 else 0.0

    def predict(self, client_ids: Sequence[int]) -> dict[int, float]:
        """Each client's benefit of QAT: its predicted deployment gap on PTQ minus on QAT (may
        be negative: QAT predicted to lose more to the deployment)."""
        fallback = {f: self._fleet_mean(f) for f in FALLBACK_FIELDS}
        return {
            cid: float((self.features(cid, False, fallback) - self.features(cid, True, fallback)) @ self.coefficients)
            for cid in client_ids
        }
