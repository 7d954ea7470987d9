"""Compare policies on one scenario over several seeds: the evidence of which policy wins.

Each (policy, seed) pair is one full simulation of the scenario with ``policy.name`` and
``seed`` overridden; the policy keeps whichever options of the scenario's ``policy`` section
it accepts (so ``random-hybrid`` and ``fedhq`` share one latency budget, and ``bits`` is the
same for all). Runs are independent, so they go to a process pool; each returns its rounds,
and the summaries are pure functions of them (:func:`run_summary`, :func:`policy_table`).
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fedhq_sim.errors import InputError
from fedhq_sim.policies import POLICIES
from fedhq_sim.yamlio import load_yaml_mapping

DEFAULT_POLICIES = ("all-fp32", "all-ptq", "all-qat", "random-hybrid", "deadline-greedy", "fedhq")


@dataclass(frozen=True)
class Variant:
    """One run of a comparison."""

    policy: str
    seed: int


@dataclass(frozen=True)
class VariantResult:
    variant: Variant
    rounds: pd.DataFrame
    policy_share_max: float
    """Largest share of a round's host time spent in the policy's decisions."""
    resolved: dict[str, Any]
    decision_log: list[dict[str, object]]


def policy_overrides(scenario: Path, policy: str) -> dict[str, Any]:
    """The ``policy`` section for ``policy``: the scenario's options that its class accepts."""
    section = load_yaml_mapping(scenario).get("policy")
    section = section if isinstance(section, dict) else {}
    cls = POLICIES.get(policy)
    if cls is None:
        names = ", ".join(sorted(POLICIES))
        raise InputError(scenario, "policy.name", f"unknown policy '{policy}' (available: {names})")
    kept = {k: v for k, v in section.items() if k in cls.Options.model_fields}
    if "module" in section:
        kept["module"] = section["module"]
    return {"policy": {"name": policy, **kept}}


def run_variant(scenario: Path, variant: Variant) -> VariantResult:
    """Simulate one (policy, seed) of the comparison (a process-pool task)."""
    from fedhq_sim.engine import Simulation  # the workers import torch once, here
    from fedhq_sim.scenario import load_scenario
    from fedhq_sim.tables import rounds_frame

    overrides = policy_overrides(scenario, variant.policy) | {"seed": variant.seed}
    loaded = load_scenario(scenario, overrides)
    simulation = Simulation(loaded)
    result = simulation.run()
    share = max((t.policy_s / t.host_s for t in simulation.host_timing if t.host_s > 0), default=0.0)
    log = simulation.policy.decision_log()
    return VariantResult(variant, rounds_frame(result.rounds), share, loaded.resolved(), log)


def run_comparison(
    scenario: Path,
    variants: Sequence[Variant],
    jobs: int,
    on_done: Callable[[VariantResult], None] | None = None,
) -> list[VariantResult]:
    """Run every variant, ``jobs`` at a time, in fresh worker processes; results in input order."""
    results: dict[Variant, VariantResult] = {}
    if jobs <= 1:
        for variant in variants:
            results[variant] = run_variant(scenario, variant)
            if on_done is not None:
                on_done(results[variant])
    else:
        context = multiprocessing.get_context("spawn")  # no inherited torch state or threads
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(run_variant, scenario, v): v for v in variants}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_done is not None:
                    on_done(results[futures[future]])
    return [results[v] for v in variants]


def time_to_target(rounds: pd.DataFrame, target: float) -> float:
    """Simulated seconds until the deployed accuracy first reaches ``target`` (NaN if never)."""
    reached = rounds[rounds["deployed_accuracy"] >= target]
    return float(reached["end_s"].iloc[0]) if len(reached) else math.nan


def run_summary(result: VariantResult, target: float) -> dict[str, Any]:
    """One row of ``summary.csv``: what a (policy, seed) run achieved."""
    rounds = result.rounds
    trained = rounds[rounds["round"] > 0]
    quantizing = trained["n_ptq"] + trained["n_qat"]
    return {
        **asdict(result.variant),
        "rounds": int(trained["round"].max()) if len(trained) else 0,
        "time_to_target_s": time_to_target(rounds, target),
        "final_deployed_accuracy": float(rounds["deployed_accuracy"].iloc[-1]),
        "best_deployed_accuracy": float(rounds["deployed_accuracy"].max()),
        "final_fp32_accuracy": float(rounds["fp32_accuracy"].iloc[-1]),
        "mean_round_latency_s": float(trained["latency_s"].mean()),
        "simulated_s": float(rounds["end_s"].iloc[-1]),
        "qat_share": float(trained["n_qat"].sum() / quantizing.sum()) if quantizing.sum() else 0.0,
        "energy_j": float(trained["energy_j"].sum()),
        "policy_share_of_host_time_max": result.policy_share_max,
        "policy_moves": len(result.decision_log),
    }


def policy_table(summary: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Per policy: median and range over seeds of each headline figure.

    Time to target counts the seeds that reached it (``reached``); its median is over them.
    """
    rows = []
    for policy in order:
        runs = summary[summary["policy"] == policy]
        row: dict[str, Any] = {
            "policy": policy,
            "seeds": len(runs),
            "reached": int(runs["time_to_target_s"].notna().sum()),
        }
        for column in ("time_to_target_s", "final_deployed_accuracy", "mean_round_latency_s", "qat_share"):
            values = runs[column].dropna()
            row[f"{column}_median"] = float(values.median()) if len(values) else math.nan
            row[f"{column}_min"] = float(values.min()) if len(values) else math.nan
            row[f"{column}_max"] = float(values.max()) if len(values) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _range(row: pd.Series, column: str, fmt: str) -> str:
    median, low, high = (row[f"{column}_{k}"] for k in ("median", "min", "max"))
    if math.isnan(median):
        return "not reached"
    return f"{median:{fmt}} ({low:{fmt}}-{high:{fmt}})"


def table_markdown(table: pd.DataFrame, target: float) -> str:
    """The policy table as Markdown: median (min-max over seeds)."""
    lines = [
        f"| policy | time to {target:.0%} deployed accuracy [s] | reached | final deployed accuracy "
        "| mean round latency [s] | QAT share |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        lines.append(
            f"| {row['policy']} | {_range(row, 'time_to_target_s', '.2f')} | {row['reached']}/{row['seeds']} "
            f"| {_range(row, 'final_deployed_accuracy', '.3f')} | {_range(row, 'mean_round_latency_s', '.3f')} "
            f"| {_range(row, 'qat_share', '.2f')} |"
        )
    return "\n".join(lines) + "\n"
