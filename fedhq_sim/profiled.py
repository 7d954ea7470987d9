"""Work profiles without the work: what a client's local round, and aggregating updates,
cost, assembled from the pieces that the real computations trace.

Timing-only mode, and a site gateway's cut-off estimate, need the work profile of a client's
round for a strategy and a number of samples, and of aggregating updates of given formats,
without running them. Each real computation is a sum of keyed pieces, traced once and
cached (:class:`fedhq_sim.work.WorkCache`):

- local work (:func:`fedhq_sim.training.local_work`): the head (read the global model, build,
  prepare for QAT), one shuffle per pass and one step per minibatch of the round's
  :func:`~fedhq_sim.training.step_plan`, and the tail (quantize, write the update);
- aggregation (:func:`fedhq_sim.server_work.aggregate_updates`): the aggregator's model, one
  read per update by its format, and FedAvg; the server adds its evaluation, a gateway the
  writing of its fp32 update.

A piece not cached yet is traced by running the real code once on representative inputs
(the first rows of the largest client's data; the initial global model), so the sum is the
profile that the real computation has. FedAvg of ``n`` updates is affine in ``n`` (each
update adds one multiply and one add per tensor): :class:`AggregationProfiles` checks that
on real traces of one, two and three updates, so that ten thousand updates need no trace of
ten thousand.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence

import torch

from fedhq_sim.data import Samples
from fedhq_sim.models import Arch, build_model
from fedhq_sim.quant.ranges import empty_ranges
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.server_work import (
    DeploySource,
    Mixing,
    Update,
    aggregate_updates,
    evaluate_global,
    evaluate_key,
    fedavg_key,
    gateway_round,
    gateway_write_key,
    mix_key,
    mix_updates,
    read_key,
)
from fedhq_sim.training import (
    LocalConfig,
    head_key,
    local_work,
    shuffled,
    step_key,
    step_plan,
    tail_key,
    training_work,
)
from fedhq_sim.work import WORK_CACHE, WorkProfile


def _cached(key: tuple) -> WorkProfile:
    profile = WORK_CACHE.get(key)
    if profile is None:  # the representative run did not trace the piece it was meant to
        raise RuntimeError(f"no work profile was traced for {key}")
    return profile


class LocalProfiles:
    """The work profile of a client's local round for ``(strategy, samples held)``.

    Parameters
    ----------
    cfg
        The run's local-training settings.
    global_payload
        A global model as the clients download it (its values do not matter).
    sample
        Real client data; its first rows are what representative runs train on, so it must
        hold at least as many samples as the largest client.
    """

    def __init__(self, cfg: LocalConfig, global_payload: bytes, sample: Samples) -> None:
        self.cfg = cfg
        self.global_payload = global_payload
        self.sample = sample
        self._profiles: dict[tuple[Strategy, int], WorkProfile] = {}
        self.payloads: dict[str, bytes] = {}
        """A real update of each strategy label traced so far (for :class:`AggregationProfiles`)."""

    def _trace(self, strategy: Strategy, rows: int) -> None:
        """Run the real local work once, one step on the sample's first ``rows``: that traces
        the head, a shuffle of ``rows``, a step of ``rows`` (at most a batch) and the tail of a
        client that holds ``rows`` samples."""
        one_step = dataclasses.replace(self.cfg, local_steps=1)
        data = Samples(self.sample.x[:rows], self.sample.y[:rows])
        result = local_work(self.global_payload, data, strategy, one_step, seed=0)
        self.payloads.setdefault(strategy.label, result.payload)

    def _piece(self, key: tuple, strategy: Strategy, rows: int) -> WorkProfile:
        if WORK_CACHE.get(key) is None:
            self._trace(strategy, rows)
        return _cached(key)

    def profile(self, strategy: Strategy, n_samples: int) -> WorkProfile:
        """What :func:`~fedhq_sim.training.local_work` of a client holding ``n_samples`` traces."""
        key = (strategy, n_samples)
        if key not in self._profiles:
            if n_samples > len(self.sample):
                raise ValueError(f"the sample holds {len(self.sample)} rows, fewer than a client's {n_samples}")
            cfg = self.cfg
            plan = step_plan(n_samples, cfg)
            work = self._piece(head_key(cfg, strategy), strategy, min(n_samples, cfg.batch_size))
            _, shuffle = shuffled(n_samples, torch.Generator())
            work = work + shuffle.times(len(plan))
            sizes = dict.fromkeys(size for pass_sizes in plan for size in pass_sizes)  # in the plan's order
            steps = {size: self._piece(step_key(cfg, strategy, size), strategy, size) for size in sizes}
            work = work + training_work(plan, steps)
            tail = tail_key(cfg, strategy, n_samples)
            work = work + self._piece(tail, strategy, min(n_samples, cfg.calibration_samples))
            self._profiles[key] = work
        return self._profiles[key]

    def payload(self, strategy: Strategy) -> bytes:
        """A real update written with ``strategy`` (traced on first use)."""
        if strategy.label not in self.payloads:
            self._trace(strategy, min(len(self.sample), self.cfg.batch_size))
        return self.payloads[strategy.label]


class AggregationProfiles:
    """The work profiles of aggregating updates, by their formats, and of what follows.

    Parameters
    ----------
    arch
        The model (name, classes, input shape).
    global_state
        A global model's state (its values do not matter).
    local
        Where real updates of each format come from, to trace reading them.
    """

    def __init__(
        self, arch: Arch, global_state: dict[str, torch.Tensor], local: LocalProfiles, *, with_ranges: bool = False
    ) -> None:
        self.arch = arch
        self.global_state = global_state
        self.local = local
        self.with_ranges = with_ranges
        """Whether the updates carry input ranges that the aggregation averages."""
        self._steps: dict[tuple, WorkProfile] = {}  # per kind of step: the work of one more update
        self._form_ranges = empty_ranges(build_model(arch[0], arch[1], seed=0, input_shape=arch[2]))
        self._gateway_nbytes: int | None = None

    def _update(self, label: str) -> Update:
        payload = self.local.payload(Strategy.from_label(label))
        return Update(payload, 1, label, len(payload))

    def _read(self, label: str) -> WorkProfile:
        key = read_key(self.arch, label, self.with_ranges)
        if WORK_CACHE.get(key) is None:
            aggregate_updates([self._update(label)], self.global_state, self.arch, with_ranges=self.with_ranges)
        return _cached(key)

    def _fedavg(self, n_updates: int) -> WorkProfile:
        """FedAvg of ``n_updates`` (see :meth:`_affine`)."""
        return self._affine(
            lambda n: fedavg_key(self.arch, n, self.with_ranges),
            lambda updates: aggregate_updates(updates, self.global_state, self.arch, with_ranges=self.with_ranges),
            n_updates,
        )

    def _mix(self, n_updates: int, against_base: bool, first_ranges: bool) -> WorkProfile:
        """An asynchronous mode's step over ``n_updates`` (see :meth:`_affine`);
        ``first_ranges``: no ranges were deployed yet."""

        def step(updates: list[Update]) -> None:
            base = [dataclasses.replace(u, base_state=self.global_state) for u in updates]
            ranges = None if first_ranges else self._form_ranges
            mix_updates(
                base,
                [0.5] * len(base),
                self.global_state,
                self.arch,
                against_base=against_base,
                current_ranges=ranges,
                with_ranges=self.with_ranges,
            )

        return self._affine(
            lambda n: mix_key(self.arch, n, against_base, self.with_ranges, first_ranges), step, n_updates
        )

    def _affine(self, key: Callable[[int], tuple], trace: Callable[[list[Update]], object], n: int) -> WorkProfile:
        """The work of a step over ``n`` updates: the trace of one, plus the difference
        between two and one for each further update (checked against the real trace of
        three). The peak memory of more than three is taken as that of three: aggregation
        memory is not checked."""
        if key(1) not in self._steps:
            update = self._update("fp32")
            traced = {}
            for count in (1, 2, 3):
                if WORK_CACHE.get(key(count)) is None:
                    trace([update] * count)
                traced[count] = _cached(key(count))
            step = WorkProfile(traced[2].counts - traced[1].counts, traced[3].peak_bytes)
            if any((traced[1] + step.times(count - 1)).counts != traced[count].counts for count in (2, 3)):
                raise RuntimeError(f"the work of {key(1)[0]} is not affine in the number of updates")
            self._steps[key(1)] = step
        if n <= 3:
            return _cached(key(n))
        return _cached(key(1)) + self._steps[key(1)].times(n - 1)

    def aggregate(self, labels: Sequence[str], mixing: Mixing | None = None) -> WorkProfile:
        """Reading updates written with these strategy labels and averaging them (or, with
        ``mixing``, an asynchronous mode's step over them)."""
        if not labels:
            raise ValueError("aggregating needs at least one update")
        work = WorkProfile()
        for label, count in Counter(labels).items():
            work = work + self._read(label).times(count)
        if mixing is not None:
            return work + self._mix(len(labels), mixing.against_base, mixing.first_ranges)
        return work + self._fedavg(len(labels))

    def gateway(self, labels: Sequence[str]) -> WorkProfile:
        """A site gateway's round: aggregate, then write one fp32 update."""
        key = gateway_write_key(self.arch, self.with_ranges)
        if WORK_CACHE.get(key) is None or self._gateway_nbytes is None:
            payload, _, _ = gateway_round(
                [self._update("fp32")], self.global_state, self.arch, with_ranges=self.with_ranges
            )
            self._gateway_nbytes = len(payload)
        return self.aggregate(labels) + _cached(key)

    def gateway_nbytes(self) -> int:
        """The size of the update a site gateway sends on (a real one, written on first use)."""
        if self._gateway_nbytes is None:
            self.gateway(["fp32"])
        assert self._gateway_nbytes is not None
        return self._gateway_nbytes

    def server(
        self, labels: Sequence[str], source: DeploySource, test: Samples, bits: int, mixing: Mixing | None = None
    ) -> WorkProfile:
        """The server's round: aggregate, then evaluate the new global model fp32 and deployed."""
        model_ref, num_classes, _ = self.arch
        key = evaluate_key(model_ref, num_classes, source, test, bits)
        if WORK_CACHE.get(key) is None:
            evaluate_global(self.global_state, model_ref, num_classes, source, test, bits, price_only=True)
        return self.aggregate(labels, mixing) + _cached(key)
