"""Where a round's work comes from: executed for real (full mode) or priced from work
profiles without running it (timing-only mode).

The engine asks both modes the same questions: how large the global model is, what each
selected client's local work costs and sends, what a site gateway's and the server's
aggregation cost, and charges the answers on the simulated clock. :class:`ExecutedWork`
answers by running the real PyTorch work (client work on an executor) and reports the
accuracy it reaches. :class:`ProfiledWork` answers from work profiles assembled from traced
pieces (:mod:`fedhq_sim.profiled`): nothing runs per round, so a fleet of thousands costs
event-loop time only, and no accuracy is reported. Both give the same work profiles and
byte counts, so both modes' simulated timings are equal (``tests/test_timing_only.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedhq_sim.data import FederatedData, as_tensor
from fedhq_sim.deployment import DeploymentSpec
from fedhq_sim.executors import Pending, SerialExecutor, WorkExecutor, WorkTask, completed
from fedhq_sim.faults import FOUND, Corruption, corrupted, rejection
from fedhq_sim.models import build_model
from fedhq_sim.profiled import AggregationProfiles, LocalProfiles
from fedhq_sim.quant.payload import decode_to_fp32, encode_fp32
from fedhq_sim.quant.ranges import LayerRanges, empty_ranges, unset_ranges
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.server_work import (
    DeploySource,
    Mixing,
    Update,
    aggregate_updates,
    evaluate_global,
    evaluate_payload,
    evaluation_work,
    gateway_round,
    mix_updates,
)
from fedhq_sim.training import LocalConfig
from fedhq_sim.work import WorkProfile


@dataclass(frozen=True)
class ClientResult:
    """What the engine charges and forwards of one client's local work in a round; the
    training observations are ``None`` in timing-only mode."""

    work: WorkProfile
    update: Update
    train_loss: float | None
    divergence: float | None
    deployment_gap: float | None = None


@dataclass(frozen=True)
class ServerOutcome:
    """The server's round: its work now, the new model's accuracy when evaluated."""

    work: WorkProfile
    accuracy: Pending
    """``(fp32, deployed)`` accuracy, computed beside the next round's client work."""


class RoundWork(Protocol):
    """The work of a run's rounds, as the engine sees it."""

    def begin_round(self, r: int, assignment: Mapping[int, Strategy]) -> int:
        """Get the round's local work ready for the clients in ``assignment`` (those able to
        run their strategy); return the global model's size in bytes."""

    def dispatch(self, assignment: Mapping[int, Strategy], seeds: Mapping[int, int]) -> int:
        """Get ready the local work of the clients in ``assignment``, which start now from
        the current model, each training with its seed (the asynchronous modes' turns);
        return the model's size."""

    def client(self, client_id: int) -> ClientResult:
        """A client's local work for its turn (after :meth:`begin_round` or :meth:`dispatch`);
        asked once per turn."""

    def forget(self, client_id: int) -> None:
        """Drop what is kept of the client's turn, which has ended (perhaps before its work)."""

    def gateway(self, updates: Sequence[Update]) -> tuple[Update, WorkProfile]:
        """A site gateway's aggregate of its members' updates, and its work."""

    def gateway_estimate(self, n_updates: int) -> WorkProfile:
        """The work of aggregating ``n_updates`` fp32 updates (a gateway's cut-off estimate)."""

    def rejection(self, update: Update, corruption: Corruption) -> str | None:
        """What the receiver's check finds in ``update`` once corrupted by ``corruption``."""

    def server(self, updates: Sequence[Update], mixing: Mixing | None = None) -> ServerOutcome:
        """Aggregate the updates into the global model (FedAvg; an asynchronous mode's
        step with ``mixing``), and evaluate it."""

    def initial_accuracy(self) -> tuple[float, float]:
        """fp32 and deployed accuracy of the initial global model."""

    def state_dict(self) -> dict[str, Any]:
        """What changes from round to round (for a checkpoint: tensors and plain values)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved."""


def _ranges_in_form(cfg: LocalConfig) -> LayerRanges:
    """Ranges of the model's form (their values do not matter): for work priced by shape."""
    return empty_ranges(build_model(cfg.model_ref, cfg.num_classes, seed=0, input_shape=cfg.input_shape))


def client_seed(seed: int, round_index: int, client_id: int) -> int:
    """A client's training seed for a round, independent of the order clients run in."""
    return int(np.random.SeedSequence([seed, round_index, client_id]).generate_state(1)[0])


TURN_STREAM = 0x7475726E  # "turn": the asynchronous modes' seeds are a stream apart from rounds'


def turn_seed(seed: int, client_id: int, turn: int) -> int:
    """A client's training seed for its ``turn``-th turn (asynchronous modes)."""
    return int(np.random.SeedSequence([seed, TURN_STREAM, client_id, turn]).generate_state(1)[0])


class ExecutedWork:
    """Full mode: every computation runs for real; client work on ``executor``."""

    def __init__(
        self,
        data: FederatedData,
        cfg: LocalConfig,
        seed: int,
        deployment: DeploymentSpec,
        executor: WorkExecutor | None = None,
    ) -> None:
        self.data, self.cfg, self.seed, self.deployment = data, cfg, seed, deployment
        self.executor: WorkExecutor = executor if executor is not None else SerialExecutor()
        model = build_model(cfg.model_ref, cfg.num_classes, seed=seed, input_shape=cfg.input_shape)
        self.global_state = model.state_dict()
        self.ranges: LayerRanges | None = None
        """The deployed activation ranges (``deployment.calibration: clients``): the mean of the
        last round's updates' ranges; none before the first round."""
        self._unset = unset_ranges(model)
        self._payload = self._download()
        self._results: dict[int, ClientResult] = {}

    def _download(self) -> bytes:
        """The global model as clients download it: with the deployed ranges (NaN before any
        were deployed) when the clients set them, for QAT clients to start from."""
        if not self.deployment.from_clients:
            return encode_fp32(self.global_state)
        return encode_fp32(self.global_state, self.ranges if self.ranges is not None else self._unset)

    @property
    def _source(self) -> DeploySource:
        return self.ranges if self.deployment.from_clients else self.data.server_calibration

    def begin_round(self, r: int, assignment: Mapping[int, Strategy]) -> int:
        """Run every client's local work now (longest first). It depends on nothing that
        happens during the round, so computing it up front gives the same results as
        computing it when each client's download ends; a client that never gets that far
        (deadline, outage, shift end) just wasted host time."""
        self._results = {}
        return self._run_local(assignment, {cid: client_seed(self.seed, r, cid) for cid in assignment})

    def dispatch(self, assignment: Mapping[int, Strategy], seeds: Mapping[int, int]) -> int:
        """Run the clients' local work now, from the current model."""
        return self._run_local(assignment, seeds)

    def _run_local(self, assignment: Mapping[int, Strategy], seeds: Mapping[int, int]) -> int:
        ids = sorted(assignment, key=lambda cid: -self._expected_cost(cid, assignment[cid]))
        tasks = [WorkTask(self._payload, self.data.clients[cid], assignment[cid], self.cfg, seeds[cid]) for cid in ids]
        for cid, done in zip(ids, self.executor.map(tasks), strict=True):
            result, decoded = done.local, {k: as_tensor(v) for k, v in done.decoded.items()}
            ranges = {k: as_tensor(v) for k, v in done.ranges.items()} if done.ranges is not None else None
            label = assignment[cid].label
            nbytes = len(result.payload)
            update = Update(result.payload, result.num_samples, label, nbytes, decoded, ranges, self.global_state)
            self._results[cid] = ClientResult(
                result.work, update, result.train_loss, result.divergence, result.deployment_gap
            )
        return len(self._payload)

    def _expected_cost(self, client_id: int, strategy: Strategy) -> float:
        """A rough relative cost, to hand a pool the longest tasks first (then the last ones
        to finish are short, and the workers finish together); results do not depend on it."""
        return self.cfg.steps(len(self.data.clients[client_id])) * (1.5 if strategy.kind == "qat" else 1.0)

    def client(self, client_id: int) -> ClientResult:
        return self._results.pop(client_id)  # once per turn

    def forget(self, client_id: int) -> None:
        self._results.pop(client_id, None)  # its payload and the model it began from

    def gateway(self, updates: Sequence[Update]) -> tuple[Update, WorkProfile]:
        with_ranges = self.deployment.from_clients
        payload, ranges, work = gateway_round(updates, self.global_state, self.cfg.arch, with_ranges=with_ranges)
        n_samples = sum(u.num_samples for u in updates)
        return Update(payload, n_samples, "fp32", len(payload), ranges=ranges), work

    def gateway_estimate(self, n_updates: int) -> WorkProfile:
        with_ranges = self.deployment.from_clients
        payload = encode_fp32(self.global_state, _ranges_in_form(self.cfg) if with_ranges else None)
        model = Update(payload, 1, "fp32", len(payload))
        return gateway_round([model] * n_updates, self.global_state, self.cfg.arch, with_ranges=with_ranges)[2]

    def rejection(self, update: Update, corruption: Corruption) -> str | None:
        """Corrupt the real update's values and run the server's real check on them."""
        assert update.payload is not None
        values = update.decoded if update.decoded is not None else decode_to_fp32(update.payload)
        return rejection(corrupted(values, corruption), self.global_state)

    def server(self, updates: Sequence[Update], mixing: Mixing | None = None) -> ServerOutcome:
        """Aggregate now (the next round starts from the new model); evaluate on the executor,
        beside the next round's client work, since only the reported accuracy depends on it.
        Its work is the same every round, so it is charged from its profile now."""
        d = self.data
        with_ranges = self.deployment.from_clients
        if mixing is None:
            combined = aggregate_updates(updates, self.global_state, self.cfg.arch, with_ranges=with_ranges)
        else:
            combined = mix_updates(
                updates,
                mixing.coefficients,
                self.global_state,
                self.cfg.arch,
                against_base=mixing.against_base,
                current_ranges=self.ranges,
                with_ranges=with_ranges,
            )
        self.global_state, self.ranges = combined.state, combined.ranges
        model = (self.cfg.model_ref, d.num_classes, self._source, d.test, self.deployment.bits)
        self._payload = self._download()  # what the next round downloads
        source = self._source  # ranges travel to a worker as arrays, as the model does as bytes
        sent = {k: v.numpy() for k, v in source.items()} if isinstance(source, dict) else source
        accuracy = self.executor.submit(evaluate_payload, self._payload, *model[:2], sent, *model[3:])
        return ServerOutcome(combined.work + evaluation_work(self.global_state, *model), accuracy)

    def initial_accuracy(self) -> tuple[float, float]:
        """Deployed from the server's samples, or, from the clients, not yet (NaN: no ranges)."""
        d = self.data
        fp32, deployed, _ = evaluate_global(
            self.global_state, self.cfg.model_ref, d.num_classes, self._source, d.test, self.deployment.bits
        )
        return fp32, deployed

    def state_dict(self) -> dict[str, Any]:
        # Never changed in place: each round makes new ones.
        return {"global_state": self.global_state, "ranges": self.ranges}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_state = dict(state["global_state"])
        self.ranges = dict(state["ranges"]) if state["ranges"] is not None else None
        self._payload = self._download()


class ProfiledWork:
    """Timing-only mode: every computation is priced from its work profile, none runs per
    round; the global model never changes and no accuracy is reported (NaN)."""

    def __init__(self, data: FederatedData, cfg: LocalConfig, seed: int, deployment: DeploymentSpec) -> None:
        self.data, self.cfg, self.deployment = data, cfg, deployment
        model = build_model(cfg.model_ref, cfg.num_classes, seed=seed, input_shape=cfg.input_shape)
        state = model.state_dict()
        broadcast = unset_ranges(model) if deployment.from_clients else None  # its size is the real one's
        self._model_nbytes = len(payload := encode_fp32(state, broadcast))
        self.local = LocalProfiles(cfg, payload, max(data.clients, key=len))
        self.aggregation = AggregationProfiles(cfg.arch, state, self.local, with_ranges=deployment.from_clients)
        self._assignment: dict[int, Strategy] = {}

    def begin_round(self, r: int, assignment: Mapping[int, Strategy]) -> int:
        self._assignment = dict(assignment)
        return self._model_nbytes

    def dispatch(self, assignment: Mapping[int, Strategy], seeds: Mapping[int, int]) -> int:
        self._assignment.update(assignment)
        return self._model_nbytes

    def forget(self, client_id: int) -> None:
        self._assignment.pop(client_id, None)

    def client(self, client_id: int) -> ClientResult:
        strategy = self._assignment.pop(client_id)
        n = len(self.data.clients[client_id])
        nbytes = len(self.local.payload(strategy))
        return ClientResult(self.local.profile(strategy, n), Update(None, n, strategy.label, nbytes), None, None)

    def gateway(self, updates: Sequence[Update]) -> tuple[Update, WorkProfile]:
        work = self.aggregation.gateway([u.label for u in updates])
        return Update(None, sum(u.num_samples for u in updates), "fp32", self.aggregation.gateway_nbytes()), work

    def gateway_estimate(self, n_updates: int) -> WorkProfile:
        return self.aggregation.gateway(["fp32"] * n_updates)

    def rejection(self, update: Update, corruption: Corruption) -> str | None:
        return FOUND[corruption]  # what the real check finds in each kind (tested)

    def server(self, updates: Sequence[Update], mixing: Mixing | None = None) -> ServerOutcome:
        d = self.data
        source = _ranges_in_form(self.cfg) if self.deployment.from_clients else d.server_calibration
        labels = [u.label for u in updates]
        work = self.aggregation.server(labels, source, d.test, self.deployment.bits, mixing)
        return ServerOutcome(work, completed(lambda: (math.nan, math.nan)))

    def initial_accuracy(self) -> tuple[float, float]:
        return math.nan, math.nan

    def state_dict(self) -> dict[str, Any]:
        return {}  # priced work changes nothing

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError("a timing-only run keeps no round state")
