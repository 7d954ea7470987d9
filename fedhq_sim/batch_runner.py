"""A batch of runs (a comparison or a sweep) into its results folder: the front door that
``fedhq-sim compare``/``sweep`` and :func:`fedhq_sim.api.compare`/``sweep`` go through.

Every variant is loaded, and its policy chosen, before any runs, so bad input costs no run
and no folder. Each run's rounds, resolved inputs and policy log are written as it ends
(a stopped batch keeps the runs it finished); the summary, the median table, the figure
and the report follow when all have ended.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import pandas as pd

from fedhq_sim.batch import Engine, Variant, VariantResult, median_table, run_batch, run_summary, table_markdown
from fedhq_sim.files import atomic_write_text, prepare_output_dir
from fedhq_sim.interrupts import raise_if_stopped
from fedhq_sim.plots import plot_capacity_curves, plot_comparison, save
from fedhq_sim.policies.choice import check_timing_only, choose_policy
from fedhq_sim.report import write_batch_report
from fedhq_sim.results import package_versions
from fedhq_sim.runner import TIMING_ONLY_NOTE
from fedhq_sim.scenario import load_scenario

Kind = Literal["compare", "sweep"]


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs and what it reports against."""

    kind: Kind
    by: list[str]
    """The label keys its table is grouped by (``policy``, or the swept keys)."""
    target: float = 0.8
    jobs: int = 1
    timing_only: bool = False
    engine: Engine = "process"
    address: str | None = None
    set_values: Sequence[str] = ()
    """The ``--set`` values it was asked with, as given (``compare.json`` records them)."""
    command: str | None = None
    """What ``compare.json``/``sweep.json`` names as the command (default: this process's)."""


def checked_variants(variants: Sequence[Variant], settings: BatchSettings) -> tuple[list[Variant], list[str]]:
    """The variants as they will run (in timing-only mode, if asked), each distinct one
    loaded and its policy chosen first, and their scenarios' names in order. Any problem is
    an :class:`~fedhq_sim.errors.InputError`, before any run."""
    if settings.timing_only:
        variants = [dataclasses.replace(v, timing_only=True) for v in variants]
    names = []
    for variant in {v.name: v for v in variants}.values():
        loaded = load_scenario(variant.scenario, {**variant.overrides, "seed": variant.seed})
        choice = choose_policy(loaded)
        if settings.timing_only:
            check_timing_only(loaded, choice)
        names.append(loaded.spec.name)
    return list(variants), names


def default_folder(name: str, kind: Kind) -> Path:
    return Path("results") / f"{name}-{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_variants(
    variants: Sequence[Variant], settings: BatchSettings, on_done: Callable[[VariantResult], None] | None = None
) -> tuple[list[VariantResult], pd.DataFrame, pd.DataFrame]:
    """Run ``variants`` (from :func:`checked_variants`; ``on_done`` called as each ends):
    the results, the summary (a row per run) and the median table."""
    jobs = min(settings.jobs, len(variants))
    results = run_batch(variants, jobs, on_done, engine=settings.engine, address=settings.address)
    summary = pd.DataFrame([run_summary(r, settings.target) for r in results])
    return results, summary, median_table(summary, settings.by)


def _write_run(out: Path, result: VariantResult) -> None:
    folder = out / "runs" / result.variant.folder_name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "rounds.csv", result.rounds.to_csv(index=False))
    atomic_write_text(folder / "resolved.json", json.dumps(result.resolved, indent=2) + "\n")
    if result.decision_log:
        atomic_write_text(folder / "policy_log.csv", pd.DataFrame(result.decision_log).to_csv(index=False))


def run_batch_into_folder(
    variants: Sequence[Variant],
    settings: BatchSettings,
    out: Path | None,
    *,
    overwrite: bool = False,
    say: Callable[[str], None] = lambda _text: None,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """Run ``variants`` and write the batch's folder (``out``, default
    ``results/<name>-<kind>-<date-time>``); returns the summary (a row per run), the median
    table and the folder."""
    variants, names = checked_variants(variants, settings)
    out = prepare_output_dir(out or default_folder(names[0], settings.kind), overwrite=overwrite)
    for scenario in dict.fromkeys(v.scenario for v in variants):  # the report reads them from here
        atomic_write_text(out / f"scenario-{scenario.stem}.yaml", scenario.read_text(encoding="utf-8"))
    n_runs, n_seeds = len(variants), len({v.seed for v in variants})
    jobs = min(settings.jobs, n_runs)
    say(f"{settings.kind}: {n_runs} runs ({n_runs // n_seeds} variants x {n_seeds} seeds), {jobs} at a time")
    if settings.timing_only:
        say(TIMING_ONLY_NOTE)
    started, done = time.perf_counter(), []

    def on_done(result: VariantResult) -> None:
        done.append(result)
        _write_run(out, result)
        elapsed = time.perf_counter() - started
        eta = elapsed / len(done) * (len(variants) - len(done))
        last = result.rounds.iloc[-1]
        reached = "" if settings.timing_only else f"deployed acc {last['deployed_accuracy']:.3f} "
        say(
            f"[{len(done)}/{len(variants)}] {result.variant.name} seed {result.variant.seed}: {reached}"
            f"{last['end_s']:.2f} s simulated  (elapsed {elapsed:.0f} s, eta {eta:.0f} s)"
        )
        raise_if_stopped()

    results, summary, table = run_variants(variants, settings, on_done)
    runs = pd.concat([r.rounds.assign(variant=r.variant.name, seed=r.variant.seed) for r in results])
    by, target, timing_only = settings.by, settings.target, settings.timing_only
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(out / "rounds.csv", runs.to_csv(index=False))
    atomic_write_text(out / "table.csv", table.to_csv(index=False))
    markdown = table_markdown(table, by, target, accuracy_reported=not timing_only)
    atomic_write_text(out / "table.md", markdown)
    if settings.kind == "compare":
        save(plot_comparison(runs, summary, target, timing_only=timing_only), out / "comparison.png")
    else:
        save(plot_capacity_curves(summary, by, target, timing_only=timing_only), out / "capacity.png")
    info = {
        "kind": settings.kind,
        "mode": "timing-only" if timing_only else "full",
        "scenarios": sorted({str(v.scenario) for v in variants}),
        "variants": list(dict.fromkeys(v.name for v in variants)),
        "by": by,
        "seeds": list(dict.fromkeys(v.seed for v in variants)),
        "target": target,
        "set": list(settings.set_values),
        "command": settings.command if settings.command is not None else " ".join(sys.argv),
        "versions": package_versions(),
        "host_seconds": round(time.perf_counter() - started, 1),
        "engine": settings.engine,
    }
    atomic_write_text(out / f"{settings.kind}.json", json.dumps(info, indent=2) + "\n")
    write_batch_report(out)
    say(markdown)
    say(f"results written to {out}")
    return summary, table, out
