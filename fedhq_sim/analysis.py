"""Before training: what each client's round would cost, and how skewed its data is.

The **hardware analysis** predicts, per client and strategy, the seconds of a round with no
other traffic: the model's download over its route, its local work charged on its device,
and its update's upload. Local work is traced for real once per strategy (one batch: the
fixed costs of reading, building, quantizing and writing, plus one training step) and
scaled by the client's number of steps. The **data analysis** measures how far a client's
label distribution is from the fleet's (Jensen-Shannon divergence, base 2: 0 for the same
distribution, 1 for disjoint labels) and how much it holds. Policies read both through
:class:`~fedhq_sim.policies.ClientInfo`; ``fedhq-sim analyze`` prints them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from fedhq_sim.charge import charge_seconds
from fedhq_sim.data import FederatedData, Samples
from fedhq_sim.feasibility import payload_bytes, training_step, transfer_floor_s
from fedhq_sim.models import build_model
from fedhq_sim.quant.payload import encode_fp32
from fedhq_sim.quant.ranges import unset_ranges
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.scenario import LoadedScenario
from fedhq_sim.topology import Topology
from fedhq_sim.training import LocalConfig, local_work
from fedhq_sim.work import WorkProfile


@dataclass(frozen=True)
class ClientAnalysis:
    """One client's predicted round per strategy label, and its data."""

    client_id: int
    samples: int
    skew: float
    download_s: float
    compute_s: dict[str, float]
    upload_s: dict[str, float]

    def round_s(self, label: str) -> float:
        """Predicted seconds of a round with this strategy and no other traffic."""
        return self.download_s + self.compute_s[label] + self.upload_s[label]


def label_skew(labels: np.ndarray, reference: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2) of a label histogram from the reference one."""
    p = labels / labels.sum()
    q = reference / reference.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def _one_batch_work(cfg: LocalConfig, data: Samples, strategy: Strategy, payload: bytes) -> WorkProfile:
    batch = Samples(data.x[: cfg.batch_size], data.y[: cfg.batch_size])
    return local_work(payload, batch, strategy, dataclasses.replace(cfg, local_epochs=1, local_steps=1), seed=0).work


def analyze(
    scenario: LoadedScenario,
    data: FederatedData,
    topology: Topology,
    cfg: LocalConfig,
    strategies: tuple[Strategy, ...],
) -> dict[int, ClientAnalysis]:
    """Hardware and data analysis of every client (see the module docstring)."""
    spec = scenario.spec
    shape = tuple(data.input_shape)
    global_model = build_model(scenario.model, data.num_classes, seed=spec.seed, input_shape=shape)
    broadcast = unset_ranges(global_model) if cfg.range_bits is not None else None  # as the clients download it
    model_payload = encode_fp32(global_model.state_dict(), broadcast)
    largest = max(data.clients, key=len)
    fixed = {s.label: _one_batch_work(cfg, largest, s, model_payload) for s in strategies}
    steps = {
        s.label: training_step(scenario.model, data.num_classes, s, (cfg.batch_size, *shape)).work for s in strategies
    }
    uploads = {s.label: payload_bytes(scenario.model, data.num_classes, s, shape, cfg.range_bits) for s in strategies}
    counts = [np.bincount(c.y.numpy(), minlength=data.num_classes) for c in data.clients]
    fleet = np.sum(counts, axis=0)
    result = {}
    for client in scenario.clients:
        cid = client.client_id
        n = len(data.clients[cid])
        n_steps = cfg.steps(n)
        compute = {
            label: charge_seconds(fixed[label], client.device)
            + (n_steps - 1) * charge_seconds(steps[label], client.device)
            for label in fixed
        }
        upload = {
            label: transfer_floor_s(topology.uplink_routes[cid], topology.links, nbytes)
            for label, nbytes in uploads.items()
        }
        download = transfer_floor_s(topology.downlink_routes[cid], topology.links, len(model_payload))
        result[cid] = ClientAnalysis(cid, n, label_skew(counts[cid], fleet), download, compute, upload)
    return result
