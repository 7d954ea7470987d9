"""Many runs of one scenario, each with some values overridden: what compare and sweep share.

A :class:`Variant` is the scenario with its overrides and a seed; :func:`run_batch` runs
variants in fresh worker processes (``spawn``: no torch state or threads inherited) or in
this one, and gives the results in input order whatever order they finished in. A run's
result depends only on its scenario and seed, so where it ran does not change it (tested).
The summaries are pure functions of the rounds.
"""

from __future__ import annotations

import math
import multiprocessing
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

if TYPE_CHECKING:
    from fedhq_sim.scenario import LoadedScenario


@dataclass(frozen=True)
class Variant:
    """One run: ``label`` names it in tables (``{"policy": "fedhq"}`` or the swept values)."""

    scenario: Path
    label: Mapping[str, Any]
    seed: int
    overrides: Mapping[str, Any] = field(default_factory=dict)
    timing_only: bool = False
    """Price the work from its profiles instead of running it (no accuracy)."""

    @property
    def name(self) -> str:
        """The label's values, e.g. ``fedhq`` or ``8 / lte``: one series in a figure."""
        return " / ".join(str(value) for value in self.label.values())

    @property
    def folder_name(self) -> str:
        """A file-system-safe name, e.g. ``policy=fedhq-seed1``."""
        parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in self.label.items()]
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", "-".join([*parts, f"seed{self.seed}"]))


@dataclass(frozen=True)
class VariantResult:
    variant: Variant
    rounds: pd.DataFrame
    policy_share_max: float
    """Largest share of a round's host time spent in the policy's decisions."""
    resolved: dict[str, Any]
    decision_log: list[dict[str, object]]


def run_variant(variant: Variant, loaded: LoadedScenario | None = None) -> VariantResult:
    """Simulate one variant (a task): from its scenario file, or from the scenario already
    loaded, with every profile resolved (what a Ray task on another machine carries)."""
    import torch

    from fedhq_sim.engine import Simulation  # the workers import torch once, here
    from fedhq_sim.scenario import load_scenario
    from fedhq_sim.tables import rounds_frame

    torch.set_num_threads(1)  # a worker may be shared (Ray): one thread, as everywhere
    if loaded is None:
        loaded = load_scenario(variant.scenario, {**variant.overrides, "seed": variant.seed})
    simulation = Simulation(loaded, timing_only=variant.timing_only)
    result = simulation.run()
    log = simulation.policy.decision_log()
    resolved = loaded.resolved(simulation.world.policy_choice.options.model_dump(mode="json"))
    return VariantResult(variant, rounds_frame(result.rounds), simulation.policy_share_max(), resolved, log)


Engine = Literal["process", "ray"]


def run_batch(
    variants: Sequence[Variant],
    jobs: int,
    on_done: Callable[[VariantResult], None] | None = None,
    *,
    engine: Engine = "process",
    address: str | None = None,
) -> list[VariantResult]:
    """Run every variant, ``jobs`` at a time (on a local process pool, or as Ray tasks on a
    local instance of ``jobs`` CPUs or the cluster at ``address``); results in input order."""
    if engine == "ray":
        return _run_on_ray(variants, jobs, address, on_done)
    results: list[VariantResult | None] = [None] * len(variants)
    if jobs <= 1:
        for index, variant in enumerate(variants):
            results[index] = run_variant(variant)
            if on_done is not None:
                on_done(results[index])
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_ignore_sigint) as pool:
            futures = {pool.submit(run_variant, v): i for i, v in enumerate(variants)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    if on_done is not None:
                        on_done(results[futures[future]])
            except BaseException:  # a failure or a stop: report it now, not after the queued runs
                pool.shutdown(cancel_futures=True)
                raise
    return [r for r in results if r is not None]


def _run_on_ray(
    variants: Sequence[Variant], jobs: int, address: str | None, on_done: Callable[[VariantResult], None] | None
) -> list[VariantResult]:
    from fedhq_sim.ray_engine import RaySession, run_on_ray
    from fedhq_sim.scenario import load_scenario

    # Each task carries its scenario loaded and resolved: a cluster's nodes need no files.
    arguments = [(v, load_scenario(v.scenario, {**v.overrides, "seed": v.seed})) for v in variants]

    def finished(_index: int, result: VariantResult) -> None:
        if on_done is not None:
            on_done(result)

    with RaySession(jobs, address) as session:
        return run_on_ray(session, run_variant, arguments, finished)


def _ignore_sigint() -> None:
    """In a worker: Ctrl-C is the parent's to handle (it stops the pool)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def time_to_target(rounds: pd.DataFrame, target: float) -> float:
    """Simulated seconds until the deployed accuracy first reaches ``target`` (NaN if never)."""
    reached = rounds[rounds["deployed_accuracy"] >= target]
    return float(reached["end_s"].iloc[0]) if len(reached) else math.nan


LATE_ROUNDS = 5
"""``late_deployed_accuracy`` is the mean over this many last rounds: the final round alone
moves by a point or more from one round to the next on a small non-IID task."""


def run_summary(result: VariantResult, target: float) -> dict[str, Any]:
    """One row of ``summary.csv``: what a run achieved."""
    rounds = result.rounds
    trained = rounds[rounds["round"] > 0]
    quantizing = trained["n_ptq"] + trained["n_qat"]
    return {
        **result.variant.label,
        "variant": result.variant.name,
        "seed": result.variant.seed,
        "rounds": int(trained["round"].max()) if len(trained) else 0,
        "time_to_target_s": time_to_target(rounds, target),
        "final_deployed_accuracy": float(rounds["deployed_accuracy"].iloc[-1]),
        "late_deployed_accuracy": float(trained["deployed_accuracy"].tail(LATE_ROUNDS).mean()),
        "best_deployed_accuracy": float(rounds["deployed_accuracy"].max()),
        "final_fp32_accuracy": float(rounds["fp32_accuracy"].iloc[-1]),
        "mean_round_latency_s": float(trained["latency_s"].mean()),
        "simulated_s": float(rounds["end_s"].iloc[-1]),
        "qat_share": float(trained["n_qat"].sum() / quantizing.sum()) if quantizing.sum() else 0.0,
        "energy_j": float(trained["energy_j"].sum()),
        "policy_share_of_host_time_max": result.policy_share_max,
        "policy_moves": len(result.decision_log),
    }


HEADLINE = (
    "time_to_target_s",
    "final_deployed_accuracy",
    "late_deployed_accuracy",
    "mean_round_latency_s",
    "qat_share",
    "energy_j",
)


def median_table(summary: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per group of ``by``: median, min and max over seeds of each headline figure, in the
    groups' first-seen order. Time to target counts the seeds that reached it (``reached``)
    and its median is over them."""
    rows = []
    for key, runs in summary.groupby(list(by), sort=False):
        row: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row |= {"seeds": len(runs), "reached": int(runs["time_to_target_s"].notna().sum())}
        for column in HEADLINE:
            values = runs[column].dropna()
            for stat in ("median", "min", "max"):
                row[f"{column}_{stat}"] = float(getattr(values, stat)()) if len(values) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _range(row: Mapping[str, Any], column: str, fmt: str, missing: str = "not reached") -> str:
    median, low, high = (row[f"{column}_{k}"] for k in ("median", "min", "max"))
    if math.isnan(median):
        return missing
    return f"{median:{fmt}} ({low:{fmt}}-{high:{fmt}})"


def table_markdown(table: pd.DataFrame, by: Sequence[str], target: float, *, accuracy_reported: bool = True) -> str:
    """A :func:`median_table` as Markdown: median (min-max over seeds) per group; without
    accuracy (timing-only runs) its columns say so."""
    unreached = "not reached" if accuracy_reported else "not reported (timing-only)"
    header = [
        *by,
        f"time to {target:.0%} deployed accuracy [s]",
        "reached",
        "final deployed accuracy",
        f"late deployed accuracy (last {LATE_ROUNDS} rounds)",
        "mean round latency [s]",
        "QAT share",
        "energy [J]",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):  # per-column types: an int key stays an int
        cells = [str(row[key]) for key in by]
        cells += [
            _range(row, "time_to_target_s", ".2f", unreached),
            f"{row['reached']}/{row['seeds']}" if accuracy_reported else "-",
            _range(row, "final_deployed_accuracy", ".3f", unreached),
            _range(row, "late_deployed_accuracy", ".3f", unreached),
            _range(row, "mean_round_latency_s", ".3f"),
            _range(row, "qat_share", ".2f"),
            _range(row, "energy_j", ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
