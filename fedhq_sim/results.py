"""The results folder, written so that a crash or a kill loses as little as possible.

Every file is written to a temporary name in the same folder and renamed into place, except
the two that grow with the run: after every round the rounds table is rewritten that way,
and the round's events and link samples are appended to ``events.csv`` and
``link_utilisation.csv`` as one block in one ``write`` call, flushed to disk (rewriting them
would make a long run quadratic). A run killed at any moment keeps every completed round
whole and readable; a block of a round that completed after the last checkpoint is cut off
by ``run --resume`` (the checkpoint records each file's length, see
:mod:`fedhq_sim.checkpoint`) and written again. Host-dependent facts
(timings, versions, date) go only in ``run.json``; ``rounds.csv`` and ``events.csv``
depend on the scenario and seed alone.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from fedhq_sim import plots
from fedhq_sim.feasibility import Feasibility
from fedhq_sim.files import append_block, atomic_write_chunks, atomic_write_text, truncate
from fedhq_sim.network import DirectedLink, LinkSample
from fedhq_sim.quant.backend import BACKEND
from fedhq_sim.records import PhaseRecord, RoundRecord, column_names
from fedhq_sim.scenario import LoadedScenario
from fedhq_sim.tables import LINK_COLUMNS, csv_text, latency_breakdown, link_rows, rounds_frame
from fedhq_sim.trace import trace_json_chunks
from fedhq_sim.workload import workload_summary

PACKAGES = (
    "fedhq-sim",
    "torch",
    "simpy",
    "numpy",
    "networkx",
    "pandas",
    "seaborn",
    "scikit-learn",
    "pydantic",
    "pyyaml",
    "ray",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class ResultsWriter:
    """Writes one run's results folder."""

    def __init__(self, out: Path, scenario: LoadedScenario, *, timing_only: bool = False) -> None:
        self.out = out
        self.scenario = scenario
        self.timing_only = timing_only
        self._appended: dict[str, int] = {}  # rows of each appended file written so far

    def write_inputs(self, policy_options: Mapping[str, Any]) -> None:
        """The scenario as run, and everything it resolved to (with the policy's options)."""
        atomic_write_text(self.out / "scenario.yaml", self.scenario.text())
        resolved = self.scenario.resolved(policy_options)
        atomic_write_text(self.out / "resolved.json", json.dumps(resolved, indent=2) + "\n")

    def write_feasibility(self, rows: Sequence[Feasibility]) -> None:
        """Which client can run which strategy, and why not (one row per client and strategy)."""
        frame = pd.DataFrame([asdict(row) for row in rows], columns=[f.name for f in fields(Feasibility)])
        atomic_write_text(self.out / "feasibility.csv", frame.to_csv(index=False))

    def write_progress(
        self,
        rounds: Sequence[RoundRecord],
        phases: Sequence[PhaseRecord],
        samples: Sequence[LinkSample],
        links: Mapping[object, DirectedLink],
    ) -> None:
        """After a round: rewrite the (short) rounds table, append the new events and link samples."""
        atomic_write_text(self.out / "rounds.csv", rounds_frame(rounds).to_csv(index=False))
        self._append("events.csv", column_names(PhaseRecord), phases, lambda new: new)
        self._append("link_utilisation.csv", LINK_COLUMNS, samples, lambda new: link_rows(new, links))

    def _append(
        self, name: str, header: list[str], records: Sequence[Any], rows_of: Callable[[Sequence[Any]], Sequence]
    ) -> None:
        """Write the rows of ``records`` not written yet: the first time a whole file (atomically),
        then an appended block per round, flushed to disk. Rewriting the whole file every round
        would make a long run quadratic; the text is what ``to_csv`` of the frame would write."""
        done = self._appended.get(name)
        path = self.out / name
        if done is None:
            atomic_write_text(path, csv_text(rows_of(records), header))
        elif len(records) > done:
            append_block(path, csv_text(rows_of(records[done:])).encode("utf-8"))
        self._appended[name] = len(records)

    def appended_sizes(self) -> dict[str, int]:
        """The bytes of each appended file now (a checkpoint records them)."""
        return {name: (self.out / name).stat().st_size for name in self._appended}

    def resume(self, sizes: Mapping[str, int], rows: Mapping[str, int]) -> None:
        """Go on with a folder from a checkpoint: cut each appended file back to ``sizes`` (a
        kill may have left part of a later round) and append after its ``rows``."""
        for name, nbytes in sizes.items():
            truncate(self.out / name, nbytes)
            self._appended[name] = rows[name]

    def write_frame(self, name: str, frame: pd.DataFrame) -> None:
        atomic_write_text(self.out / name, frame.to_csv(index=False))

    def write_figures(self, rounds: pd.DataFrame, phases: pd.DataFrame, links: pd.DataFrame) -> None:
        """The run's figures; the timeline shows the slowest round, where stragglers are.
        A timing-only run has no accuracy, so no accuracy figure."""
        trained = rounds[rounds["round"] > 0]
        if not self.timing_only:
            plots.save(plots.plot_accuracy_vs_time(rounds), self.out / "accuracy_vs_time.png")
        plots.save(plots.plot_latency_breakdown(latency_breakdown(rounds, phases)), self.out / "round_latency.png")
        plots.save(plots.plot_link_utilisation(links), self.out / "link_utilisation.png")
        plots.save(plots.plot_energy_per_round(rounds), self.out / "energy_per_round.png")
        if len(trained) and len(phases):
            slowest = int(trained.loc[trained["latency_s"].idxmax(), "round"])
            plots.save(plots.plot_client_timeline(phases, slowest), self.out / "client_timeline.png")
            plots.save(plots.plot_strategy_assignment(phases), self.out / "strategy_assignment.png")

    def write_trace(self, rounds: pd.DataFrame, phases: pd.DataFrame, links: pd.DataFrame) -> None:
        """``trace.json``: the events in Chrome trace-event format (open it in Perfetto)."""
        chunks = (text.encode("utf-8") for text in trace_json_chunks(rounds, phases, links))
        atomic_write_chunks(self.out / "trace.json", chunks)

    def write_policy_log(self, log: Sequence[dict[str, object]]) -> None:
        """An adaptive policy's changes of assignment, with why (nothing for fixed policies)."""
        if log:
            atomic_write_text(self.out / "policy_log.csv", pd.DataFrame(log).to_csv(index=False))

    def write_final(
        self,
        rounds: pd.DataFrame,
        phases: pd.DataFrame,
        links: pd.DataFrame,
        policy_log: Sequence[dict[str, object]],
        run_info: dict[str, Any],
    ) -> None:
        """Everything a finished run adds to its folder: figures, trace, policy log, run.json
        (``run_info`` plus the simulated time and energy totals) and the report."""
        from fedhq_sim.report import write_run_report  # the report reads the folder back

        self.write_figures(rounds, phases, links)
        self.write_trace(rounds, phases, links)
        self.write_policy_log(policy_log)
        energy = {part: float(rounds[f"energy_{part}_j"].sum()) for part in ("compute", "radio", "idle")}
        self.write_run_info(
            run_info
            | {
                "simulated_seconds": float(rounds["end_s"].iloc[-1]),
                "energy_j": energy | {"total": float(rounds["energy_j"].sum())},
            }
        )
        write_run_report(self.out)

    def write_run_info(self, extra: dict[str, Any]) -> None:
        info = {
            "scenario": self.scenario.spec.name,
            "seed": self.scenario.spec.seed,
            "command": " ".join(sys.argv),
            "versions": package_versions(),
            "platform": platform.platform(),
            "quantization_backend": BACKEND,
            "workload": workload_summary(self.scenario.model, self.scenario.data_source),
            "mode": "timing-only" if self.timing_only else "full",
            **({"accuracy": "not reported: timing-only mode executes no training"} if self.timing_only else {}),
            **extra,
        }
        atomic_write_text(self.out / "run.json", json.dumps(info, indent=2) + "\n")
