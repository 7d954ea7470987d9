"""Ray as the engine: a round's client work, or a sweep's runs, as Ray tasks.

Ray is an optional extra (``pip install 'fedhq-sim[ray]'``), imported only here and only
when asked for (``--engine ray``). Without ``--address`` a local Ray instance is started
with ``workers`` CPUs and stopped afterwards; with one, the driver joins that existing
cluster and leaves it running. Every task takes one CPU and runs one torch thread, as the
process pool's workers do, so results are bit-identical to a serial run (tested).

What a task needs travels with it: a client's work is self-contained (model bytes, its
data, strategy, settings, seed), and a run of a sweep carries its validated scenario with
every profile resolved, so a cluster's nodes need fedhq-sim installed, not the scenario
files. The model bytes of a round go into Ray's object store once, not once per client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from fedhq_sim.errors import InputError
from fedhq_sim.executors import TaskResult, WorkTask, on_one_thread, run_task

INSTALL_HINT = "the Ray engine needs Ray: pip install 'fedhq-sim[ray]' (or pip install ray)"


def import_ray() -> ModuleType:
    """The ``ray`` module, or an input error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError("command line", "--engine", INSTALL_HINT) from None
    return ray


class RaySession:
    """A connection to Ray for the length of a run, a compare or a sweep (a context manager).

    Parameters
    ----------
    workers
        CPUs of the local instance to start (ignored with ``address``).
    address
        An existing cluster (``auto``, ``host:6379`` or ``ray://host:10001``); ``None``
        starts a local instance.
    """

    def __init__(self, workers: int, address: str | None = None) -> None:
        self.ray = import_ray()
        self._started_here = not self.ray.is_initialized()
        if self._started_here:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "logging_level": "warning"}
            try:
                if address is None:
                    self.ray.init(address="local", num_cpus=workers, **options)
                else:
                    self.ray.init(address=address, **options)
            except ConnectionError as error:
                raise InputError(
                    "command line", "--address", f"cannot reach a Ray cluster at {address}: {error}"
                ) from None

    def close(self) -> None:
        if self._started_here:
            self.ray.shutdown()

    def __enter__(self) -> RaySession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class RayExecutor:
    """A round's client work as Ray tasks, one CPU each (a :class:`~fedhq_sim.executors.WorkExecutor`)."""

    def __init__(self, session: RaySession) -> None:
        self.ray = session.ray
        self._work = self.ray.remote(num_cpus=1)(_client_work)
        self._call = self.ray.remote(num_cpus=1)(on_one_thread)

    def submit(self, fn: Callable[..., Any], *args: Any) -> _RayPending:
        return _RayPending(self.ray, self._call.remote(fn, *args))

    def map(self, tasks: Sequence[Any]) -> list[TaskResult]:
        refs = {payload: self.ray.put(payload) for payload in {t.payload for t in tasks}}  # one copy a model
        futures = [self._work.remote(refs[t.payload], t.data, t.strategy, t.cfg, t.seed) for t in tasks]
        return self.ray.get(futures)


class _RayPending:
    """A Ray task's result as the engine waits for it (an :class:`~fedhq_sim.executors.Pending`)."""

    def __init__(self, ray: ModuleType, ref: Any) -> None:
        self.ray, self.ref = ray, ref

    def done(self) -> bool:
        ready, _ = self.ray.wait([self.ref], timeout=0)
        return bool(ready)

    def result(self) -> Any:
        return self.ray.get(self.ref)


def _client_work(payload: bytes, data: Any, strategy: Any, cfg: Any, seed: int) -> TaskResult:
    """A task's model travels as its own argument, so Ray resolves the one shared copy."""
    return on_one_thread(run_task, WorkTask(payload, data, strategy, cfg, seed))


def run_on_ray(
    session: RaySession, function: Callable[..., Any], arguments: Sequence[tuple], on_done: Callable[[int, Any], None]
) -> list[Any]:
    """``function(*args)`` for every tuple of ``arguments`` as one-CPU tasks; ``on_done(index,
    result)`` as each finishes; the results in input order. The first failure, and a stop
    raised by ``on_done`` or while waiting (Ctrl-C, SIGTERM), cancels the rest and is raised."""
    ray = session.ray
    remote = ray.remote(num_cpus=1)(function)
    futures = [remote.remote(*args) for args in arguments]
    index = {future: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    pending = list(futures)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            result = ray.get(done[0])
            results[index[done[0]]] = result
            on_done(index[done[0]], result)
    except BaseException as error:
        for future in pending:
            ray.cancel(future, force=True)
        raise _unwrapped(error) from None
    return results


def _unwrapped(error: BaseException) -> BaseException:
    """The task's own exception (an input error stays an input error), not Ray's wrapper."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error
