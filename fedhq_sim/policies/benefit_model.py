"""The learned part of FedHQ: an online model of how much PTQ distorts each client's update.

What QAT buys a client is the quantization error PTQ would have left in its update: QAT's
converted model is, up to rounding, the fake-quantized model it trained, so its residual
error is near zero by construction. The model therefore predicts, for every client, the
**PTQ quantization error** it would show this round (the label, observed whenever a client
runs PTQ), from what the server knows of it whichever strategy it ran. Clients that run QAT
are never labelled, but their features keep being observed, so the model still predicts
what PTQ would cost them now and can send them back when that has become small.

The model is exponentially weighted ridge regression, solved exactly each update: the
sufficient statistics ``A = sum w phi phi^T`` and ``b = sum w phi y`` decay by ``forgetting``
per round, so it follows a federation whose weights, and so whose errors, drift. It has a
handful of coefficients, is explainable (``coefficients``), and costs microseconds.
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
    "last_ptq_error",
    "ptq_error_seen",
)


FALLBACK_FIELDS = ("divergence", "train_loss", "ptq_error")
"""Observations a client may not have yet; it takes the fleet's mean of them."""


ARRAYS = ("_a", "_b", "coefficients")  # the model's learned arrays, in its state


@dataclass
class _Observed:
    """Exponentially smoothed observations of one client (``None`` until first seen)."""

    divergence: float | None = None
    train_loss: float | None = None
    ptq_error: float | None = None


def _smooth(old: float | None, new: float | None, weight: float) -> float | None:
    if new is None or not math.isfinite(new):
        return old
    return new if old is None else (1.0 - weight) * old + weight * new


class BenefitModel:
    """Predicts each client's PTQ quantization error from its features (module docstring).

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
        ridge: float = 0.1,
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

    def features(self, client_id: int, fallback: Mapping[str, float] | None = None) -> np.ndarray:
        """The feature vector of a client now (unobserved values take the fleet's mean, so a
        client never seen on PTQ is predicted like the average client, not like an error-free one)."""
        fallback = fallback or {f: self._fleet_mean(f) for f in FALLBACK_FIELDS}
        skew, log_samples, log_slowness = self._static[client_id]
        seen = self._observed[client_id]
        return np.array(
            [
                1.0,
                skew,
                seen.divergence if seen.divergence is not None else fallback["divergence"],
                seen.train_loss if seen.train_loss is not None else fallback["train_loss"],
                log_samples,
                log_slowness,
                seen.ptq_error if seen.ptq_error is not None else fallback["ptq_error"],
                0.0 if seen.ptq_error is None else 1.0,
            ]
        )

    def update(self, reports: Sequence[ClientReport]) -> None:
        """Learn from one round's reports: labels from PTQ clients, features from everyone.

        Each label is paired with the features the client had *before* this round, which is
        what a prediction for the next round can use too.
        """
        reported = [r for r in reports if r.reported]
        fallback = {f: self._fleet_mean(f) for f in FALLBACK_FIELDS}
        labelled = [
            (self.features(r.client_id, fallback), r.quantization_error)
            for r in reported
            if r.quantization_error is not None and math.isfinite(r.quantization_error)
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
            seen.ptq_error = _smooth(seen.ptq_error, r.quantization_error, self.smoothing)

    def state_dict(self) -> dict[str, Any]:
        """The learned state, as plain values (Python floats hold float64 exactly)."""
        observed = {cid: [o.divergence, o.train_loss, o.ptq_error] for cid, o in self._observed.items()}
        arrays = {name: getattr(self, name).tolist() for name in ARRAYS}
        return {"observed": observed, "labels_seen": self.labels_seen} | arrays

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for cid, (divergence, train_loss, ptq_error) in state["observed"].items():
            self._observed[cid] = _Observed(divergence, train_loss, ptq_error)
        for name in ARRAYS:
            setattr(self, name, np.array(state[name], dtype=np.float64))
        self.labels_seen = state["labels_seen"]

    def predict(self, client_ids: Sequence[int]) -> dict[int, float]:
        """Predicted PTQ quantization error (the benefit of QAT) per client, clipped at 0."""
        fallback = {f: self._fleet_mean(f) for f in FALLBACK_FIELDS}
        return {cid: max(0.0, float(self.features(cid, fallback) @ self.coefficients)) for cid in client_ids}
