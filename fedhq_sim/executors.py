"""Where the real work of a round runs: in this process, on a pool of processes, or on Ray.

A client's local work depends only on the global model it downloads, its data, its
strategy, the local settings and its seed, never on simulated time or on the other
clients. So the engine hands a round's work to an executor all at once, before the
round's events play out, and charges each result's traced work when its client gets to
it. The server's evaluation of a new global model affects nothing but the accuracy it
reports, so it is submitted to run beside the next round's client work (:meth:`submit`).
Every worker runs one torch thread, as the engine does, so a result is bit-identical
wherever it was computed (tested), and the simulated results do not depend on the executor.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fedhq_sim.data import Samples
from fedhq_sim.quant.payload import decode_update
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


@dataclass(frozen=True)
class TaskResult:
    """A client's local work, and its update as the server will read it.

    ``decoded`` is the state :func:`~fedhq_sim.quant.payload.decode_update` reads from the payload, computed
    where the payload was written (numpy arrays, cheap to send back): reading the updates
    is most of the server's host time in a round, and a worker does it in parallel. The
    server still charges its own traced read of the format (see ``aggregate_updates``).
    """

    local: LocalResult
    decoded: dict[str, np.ndarray]
    ranges: dict[str, np.ndarray] | None = None
    """The input ranges the update carries (:func:`~fedhq_sim.quant.payload.decode_update`)."""


def run_task(task: WorkTask) -> TaskResult:
    local = local_work(task.payload, task.data, task.strategy, task.cfg, task.seed)
    state, ranges = decode_update(local.payload)
    numpy_ranges = {k: v.numpy() for k, v in ranges.items()} if ranges is not None else None
    return TaskResult(local, {k: v.numpy() for k, v in state.items()}, numpy_ranges)


def on_one_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a worker shared with other work (a Ray worker): one torch thread, as
    the engine and the pool's workers use, so the floats are those of a serial run."""
    torch.set_num_threads(1)
    return fn(*args)


class Pending(Protocol):
    """A computation submitted to an executor (``concurrent.futures.Future`` is one)."""

    def done(self) -> bool: ...

    def result(self) -> Any: ...


class WorkExecutor(Protocol):
    def map(self, tasks: Sequence[WorkTask]) -> list[TaskResult]:
        """Every task's result, in task order."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Pending:
        """Start ``fn(*args)`` (a module-level function) and return at once."""


def completed(fn: Callable[..., Any], *args: Any) -> Future:
    """``fn(*args)`` computed now, as a finished future."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as error:  # delivered by result(), where a pool's failure would be
        future.set_exception(error)
    return future


class SerialExecutor:
    """In this process, one task after the other (the library's default)."""

    def map(self, tasks: Sequence[WorkTask]) -> list[TaskResult]:
        return [run_task(task) for task in tasks]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Pending:
        return completed(fn, *args)


def _worker_start() -> None:
    """One torch thread; and Ctrl-C is the parent's to handle (it stops the pool), not each worker's."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ProcessExecutor:
    """A pool of ``workers`` fresh processes (``spawn``), kept for the whole run.

    Use it as a context manager so the workers end with the run.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_start)

    def map(self, tasks: Sequence[WorkTask]) -> list[TaskResult]:
        return list(self._pool.map(run_task, tasks))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Pending:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
