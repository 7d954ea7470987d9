"""The Python API, for notebooks: load a scenario, change it in code, simulate, get DataFrames.

    from fedhq_sim import api

    plant = api.load("scenarios/quickstart.yaml")
    lte = plant.with_values({"sites[0].backhaul": "lte", "training.rounds": 5})
    result = api.simulate(lte)
    result.rounds[["round", "latency_s", "deployed_accuracy"]]
    result.plot_latency()
    api.simulate(lte, out="results/lte-what-if")   # also writes the folder `fedhq-sim run` writes
    summary = api.compare(plant, ["all-ptq", "fedhq"], seeds=[1, 2])

Everything here is the library the command line uses; values set in code are validated
exactly like the file (a bad one raises :class:`~fedhq_sim.errors.InputError` naming it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes

from fedhq_sim import plots
from fedhq_sim.batch import Engine, Variant
from fedhq_sim.batch_runner import BatchSettings, checked_variants, run_batch_into_folder, run_variants
from fedhq_sim.compare import policy_variants
from fedhq_sim.engine import Simulation
from fedhq_sim.executor_choice import open_executor
from fedhq_sim.files import prepare_output_dir
from fedhq_sim.policies.choice import choose_policy
from fedhq_sim.runner import run_into_folder
from fedhq_sim.scenario import LoadedScenario, load_scenario
from fedhq_sim.sweep import grid_variants
from fedhq_sim.tables import latency_breakdown, links_frame, phases_frame, rounds_frame

API = "fedhq_sim.api"  # the command a folder written from code names


@dataclass(frozen=True)
class Scenario:
    """A scenario file plus values changed in code; immutable, so variants can be kept side by side."""

    path: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def with_values(self, values: Mapping[str, Any]) -> Scenario:
        """A copy with ``{"key.path": value}`` set (key paths as in ``--set``: ``sites[0].backhaul``)."""
        return Scenario(self.path, {**self.overrides, **values})

    def load(self) -> LoadedScenario:
        """Validate and resolve it (raises :class:`~fedhq_sim.errors.InputError` if wrong)."""
        return load_scenario(self.path, self.overrides)


def load(path: str | Path) -> Scenario:
    """A scenario file, validated now (its policy section too) so a mistake shows at once."""
    scenario = Scenario(Path(path))
    choose_policy(scenario.load())
    return scenario


@dataclass
class Result:
    """One run's results as DataFrames, with the figures of ``fedhq-sim run``."""

    scenario: LoadedScenario
    rounds: pd.DataFrame
    events: pd.DataFrame
    links: pd.DataFrame
    policy_log: pd.DataFrame
    host_seconds: float
    timing_only: bool = False
    """Priced from work profiles, not executed: accuracy columns are NaN."""
    folder: Path | None = None
    """The results folder the run wrote (``simulate(..., out=...)``), else ``None``."""

    def latency_breakdown(self) -> pd.DataFrame:
        """Each round's latency split into download, compute, upload, waiting and server."""
        return latency_breakdown(self.rounds, self.events)

    def plot_accuracy(self) -> Axes:
        return plots.plot_accuracy_vs_time(self.rounds)

    def plot_latency(self) -> Axes:
        return plots.plot_latency_breakdown(self.latency_breakdown())

    def plot_timeline(self, round_index: int | None = None) -> Axes:
        """The per-client timeline of a round (default: the slowest)."""
        trained = self.rounds[self.rounds["round"] > 0]
        chosen = round_index if round_index is not None else int(trained.loc[trained["latency_s"].idxmax(), "round"])
        return plots.plot_client_timeline(self.events, chosen)

    def plot_strategies(self) -> Axes:
        return plots.plot_strategy_assignment(self.events)

    def plot_energy(self) -> Axes:
        return plots.plot_energy_per_round(self.rounds)

    def plot_links(self) -> Axes:
        return plots.plot_link_utilisation(self.links)


def simulate(
    scenario: Scenario | str | Path,
    *,
    workers: int = 1,
    timing_only: bool = False,
    engine: Engine = "process",
    address: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> Result:
    """Run a scenario and return its results; ``workers > 1`` runs each round's client work
    on that many processes, ``engine="ray"`` as Ray tasks (on a local instance of ``workers``
    CPUs, or the cluster at ``address``): same results, less wall time. ``timing_only``
    prices the work from its traced profiles instead of running it (the same timings, no
    accuracy). With ``out``, the run also writes the folder ``fedhq-sim run`` writes, with a
    checkpoint after every round (``fedhq-sim run --resume`` goes on from a stopped one), by
    the same code (:func:`fedhq_sim.runner.run_into_folder`)."""
    if not isinstance(scenario, Scenario):
        scenario = Scenario(Path(scenario))
    loaded = scenario.load()
    choose_policy(loaded)  # a bad policy section costs no folder
    started = time.perf_counter()
    folder = prepare_output_dir(Path(out), overwrite=overwrite) if out is not None else None
    with ExitStack() as stack:
        executor = None if timing_only else open_executor(stack, engine, workers, address)
        if folder is None:
            simulation = Simulation(loaded, executor, timing_only=timing_only)
            simulation.run()
        else:
            simulation = run_into_folder(
                loaded, folder, executor=executor, timing_only=timing_only, engine=engine, command=API
            )
    return Result(
        simulation.scenario,
        rounds_frame(simulation.rounds),
        phases_frame(simulation.phases),
        links_frame(simulation.network.samples, simulation.network.links),
        pd.DataFrame(simulation.policy.decision_log()),
        time.perf_counter() - started,
        timing_only,
        folder,
    )


def _summaries(
    variants: list[Variant], settings: BatchSettings, out: str | Path | None, overwrite: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The batch's summary and median table; with ``out``, also its folder, as the CLI writes it."""
    if out is not None:
        summary, table, _ = run_batch_into_folder(variants, settings, Path(out), overwrite=overwrite)
        return summary, table
    _, summary, table = run_variants(checked_variants(variants, settings)[0], settings)
    return summary, table


def compare(
    scenario: Scenario | str | Path,
    policies: Sequence[str],
    seeds: Sequence[int] = (1, 2, 3),
    *,
    target: float = 0.8,
    jobs: int = 1,
    timing_only: bool = False,
    engine: Engine = "process",
    address: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every policy over every seed: ``(summary per run, median table per policy)``; the runs
    go ``jobs`` at a time to a process pool, or to Ray (``engine``, ``address``). With
    ``out``, also the folder ``fedhq-sim compare`` writes (runs, tables, figure, report)."""
    scenario = scenario if isinstance(scenario, Scenario) else Scenario(Path(scenario))
    variants = policy_variants(scenario.path, policies, seeds, scenario.overrides)
    settings = BatchSettings("compare", ["policy"], target, jobs, timing_only, engine, address, command=API)
    return _summaries(variants, settings, out, overwrite)


def sweep(
    scenario: Scenario | str | Path,
    grid: Mapping[str, Sequence[Any]],
    seeds: Sequence[int] = (1,),
    *,
    target: float = 0.8,
    jobs: int = 1,
    timing_only: bool = False,
    engine: Engine = "process",
    address: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every combination of ``grid``'s values over every seed: ``(summary, median table)``;
    the runs go where :func:`compare`'s do, the folder (``out``) is ``fedhq-sim sweep``'s."""
    scenario = scenario if isinstance(scenario, Scenario) else Scenario(Path(scenario))
    variants = [
        Variant(v.scenario, v.label, v.seed, {**scenario.overrides, **v.overrides})
        for v in grid_variants(scenario.path, list(grid.items()), seeds)
    ]
    settings = BatchSettings("sweep", list(grid), target, jobs, timing_only, engine, address, command=API)
    return _summaries(variants, settings, out, overwrite)
