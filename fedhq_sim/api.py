"""The Python API, for notebooks: load a scenario, change it in code, simulate, get DataFrames.

    from fedhq_sim import api

    plant = api.load("scenarios/quickstart.yaml")
    lte = plant.with_values({"sites[0].backhaul": "lte", "training.rounds": 5})
    result = api.simulate(lte)
    result.rounds[["round", "latency_s", "deployed_accuracy"]]
    result.plot_latency()
    result.save("results/lte-what-if")         # the same folder `fedhq-sim run` writes
    summary = api.compare(plant, ["all-ptq", "fedhq"], seeds=[1, 2])

Everything here is the library the command line uses; values set in code are validated
exactly like the file (a bad one raises :class:`~fedhq_sim.errors.InputError` naming it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes

from fedhq_sim import plots
from fedhq_sim.batch import Engine, Variant, median_table, run_batch, run_summary
from fedhq_sim.compare import policy_variants
from fedhq_sim.engine import Simulation
from fedhq_sim.executor_choice import open_executor
from fedhq_sim.files import prepare_output_dir
from fedhq_sim.policies.choice import choose_policy
from fedhq_sim.results import ResultsWriter
from fedhq_sim.scenario import LoadedScenario, load_scenario
from fedhq_sim.sweep import grid_variants
from fedhq_sim.tables import latency_breakdown, links_frame, phases_frame, rounds_frame


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
    policy_options: Mapping[str, Any]
    """The policy's options as validated (``resolved.json`` records them)."""
    timing_only: bool = False
    """Priced from work profiles, not executed: accuracy columns are NaN."""

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

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write the folder ``fedhq-sim run`` writes (CSVs, figures, trace, report)."""
        folder = prepare_output_dir(Path(out), overwrite=overwrite)
        writer = ResultsWriter(folder, self.scenario, timing_only=self.timing_only)
        writer.write_inputs(self.policy_options)
        for name, frame in (
            ("rounds.csv", self.rounds),
            ("events.csv", self.events),
            ("link_utilisation.csv", self.links),
        ):
            writer.write_frame(name, frame)
        run_info = {"host_seconds": round(self.host_seconds, 3), "command": "fedhq_sim.api"}
        writer.write_final(self.rounds, self.events, self.links, self.policy_log.to_dict("records"), run_info)
        return folder


def simulate(
    scenario: Scenario | str | Path,
    *,
    workers: int = 1,
    timing_only: bool = False,
    engine: Engine = "process",
    address: str | None = None,
) -> Result:
    """Run a scenario and return its results; ``workers > 1`` runs each round's client work
    on that many processes, ``engine="ray"`` as Ray tasks (on a local instance of ``workers``
    CPUs, or the cluster at ``address``): same results, less wall time. ``timing_only``
    prices the work from its traced profiles instead of running it (the same timings, no
    accuracy)."""
    if not isinstance(scenario, Scenario):
        scenario = Scenario(Path(scenario))
    started = time.perf_counter()
    with ExitStack() as stack:
        executor = None if timing_only else open_executor(stack, engine, workers, address)
        simulation = Simulation(scenario.load(), executor, timing_only=timing_only)
        run = simulation.run()
    return Result(
        simulation.scenario,
        rounds_frame(run.rounds),
        phases_frame(run.phases),
        links_frame(simulation.network.samples, simulation.network.links),
        pd.DataFrame(simulation.policy.decision_log()),
        time.perf_counter() - started,
        simulation.world.policy_choice.options.model_dump(mode="json"),
        timing_only,
    )


def _summaries(
    variants: list[Variant], target: float, jobs: int, timing_only: bool, engine: Engine, address: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    variants = [dataclasses.replace(v, timing_only=timing_only) for v in variants]
    results = run_batch(variants, jobs, engine=engine, address=address)
    summary = pd.DataFrame([run_summary(r, target) for r in results])
    return summary, median_table(summary, list(variants[0].label))


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
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every policy over every seed: ``(summary per run, median table per policy)``; the runs
    go ``jobs`` at a time to a process pool, or to Ray (``engine``, ``address``)."""
    scenario = scenario if isinstance(scenario, Scenario) else Scenario(Path(scenario))
    variants = policy_variants(scenario.path, policies, seeds, scenario.overrides)
    return _summaries(variants, target, jobs, timing_only, engine, address)


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
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every combination of ``grid``'s values over every seed: ``(summary, median table)``;
    the runs go where :func:`compare`'s do."""
    scenario = scenario if isinstance(scenario, Scenario) else Scenario(Path(scenario))
    variants = [
        Variant(v.scenario, v.label, v.seed, {**scenario.overrides, **v.overrides})
        for v in grid_variants(scenario.path, list(grid.items()), seeds)
    ]
    return _summaries(variants, target, jobs, timing_only, engine, address)
