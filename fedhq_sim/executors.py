"""Where the real client work of a round runs: in this process, or on a pool of processes.

A client's local work depends only on the global model it downloads, its data, its
strategy, the local settings and its seed, never on simulated time or on the other
clients. So the engine hands a round's work to an executor all at once, before the
round's events play out, and charges each result's traced work when its client gets to
it. Every worker runs one torch thread, as the engine does, so a result is bit-identical
wherever it was computed (tested), and the simulated results do not depend on the executor.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Protocol

import torch

from fedhq_sim.data import Samples
from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.training import LocalConfig, LocalResult, local_work


@dataclass(frozen=True)
class WorkTask:
    """One client's local work in a round."""

    payload: bytes
    data: Samples
    strategy: Strategy
    cfg: LocalConfig
    seed: int


def run_task(task: WorkTask) -> LocalResult:
    return local_work(task.payload, task.data, task.strategy, task.cfg, task.seed)


def run_task_on_one_thread(task: WorkTask) -> LocalResult:
    """:func:`run_task` in a worker shared with other work (a Ray worker): one torch thread,
    as the engine and the pool's workers use, so the floats are those of a serial run."""
    torch.set_num_threads(1)
    return run_task(task)


class WorkExecutor(Protocol):
    def map(self, tasks: Sequence[WorkTask]) -> list[LocalResult]:
        """Every task's result, in task order."""


class SerialExecutor:
    """In this process, one task after the other (the library's default)."""

    def map(self, tasks: Sequence[WorkTask]) -> list[LocalResult]:
        return [run_task(task) for task in tasks]


def _one_thread() -> None:
    torch.set_num_threads(1)


class ProcessExecutor:
    """A pool of ``workers`` fresh processes (``spawn``), kept for the whole run.

    Use it as a context manager so the workers end with the run.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_thread)

    def map(self, tasks: Sequence[WorkTask]) -> list[LocalResult]:
        return list(self._pool.map(run_task, tasks))

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_executor(stack: ExitStack, engine: str, workers: int, address: str | None = None) -> WorkExecutor | None:
    """Where a run's client work goes, closed with ``stack``: Ray tasks (``engine="ray"``, on
    a local instance of ``workers`` CPUs or the cluster at ``address``), a pool of ``workers``
    processes, or this process (``None``) for one worker."""
    if engine == "ray":
        from fedhq_sim.ray_engine import RayExecutor, RaySession  # Ray is an optional extra

        return RayExecutor(stack.enter_context(RaySession(workers, address)))
    if workers > 1:
        return stack.enter_context(ProcessExecutor(workers))
    return None
