"""Which executor a run's client work goes to, from the command line's or the API's settings.

Apart from :mod:`fedhq_sim.executors` so that the executors never import the Ray engine,
which imports them (and Ray is an optional extra, imported only when asked for).
"""

from __future__ import annotations

from contextlib import ExitStack

from fedhq_sim.executors import ProcessExecutor, WorkExecutor


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
