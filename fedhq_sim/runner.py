"""One run of a scenario into its results folder, with a checkpoint after every round: the
front door that ``fedhq-sim run`` and :func:`fedhq_sim.api.simulate` both go through, so
the folder a notebook saves is the one the command line writes, checkpoint included.

A stopped run (a kill, Ctrl-C, a full disk) leaves every completed round and a checkpoint;
:func:`resumable` reads that back and checks that the scenario, its model file and its data
are what the run began with, and :func:`run_into_folder` goes on from it to the files of a
run that was never stopped (``tests/test_resume.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from fedhq_sim import checkpoint as checkpoints
from fedhq_sim.engine import Simulation
from fedhq_sim.errors import InputError
from fedhq_sim.executors import WorkExecutor
from fedhq_sim.interrupts import raise_if_stopped
from fedhq_sim.records import RoundRecord
from fedhq_sim.results import ResultsWriter
from fedhq_sim.scenario import LoadedScenario, load_scenario
from fedhq_sim.tables import links_frame, phases_frame, rounds_frame
from fedhq_sim.workload import inputs_digest

Say = Callable[[str], None]
TIMING_ONLY_NOTE = (
    "timing-only: client, gateway and server work is priced from traced work profiles and not executed; "
    "timings equal a full run's, accuracy is not reported"
)


def resumable(folder: Path, *, timing_only: bool) -> tuple[LoadedScenario, dict[str, Any]]:
    """The scenario and checkpoint of the stopped run in ``folder``; a run that cannot go on
    (its scenario, model or data changed, or it finished) is an :class:`InputError`."""
    checkpoint = checkpoints.read_checkpoint(folder)
    ran = checkpoint["scenario"]
    scenario = load_scenario(ran["path"], ran["overrides"])
    if checkpoints.text_hash(scenario.text()) != ran["sha256"]:
        raise InputError(ran["path"], "", "changed since the run began; a resumed run must be the same scenario")
    if ran.get("inputs", "") != inputs_digest(scenario.model, scenario.data_source):
        raise InputError(
            ran["path"], "", "its model file or data changed since the run began; a resumed run reads the same"
        )
    ended = checkpoint.get("last", checkpoint["round"] >= scenario.spec.training.rounds)
    if ended and checkpoint.get("finished", True):
        raise InputError(folder, "--resume", f"the run finished all {checkpoint['round']} rounds")
    if timing_only and not checkpoint["timing_only"]:
        raise InputError("command line", "--timing-only", "the run being resumed runs in full mode; it goes on so")
    return scenario, checkpoint


def progress_line(total: int, record: RoundRecord, host_s: float, eta_s: float, *, asynchronous: bool = False) -> str:
    """One round's (an asynchronous mode's version's) line of progress, as ``fedhq-sim run`` prints it."""
    accuracy = (
        ""
        if math.isnan(record.deployed_accuracy)  # timing-only
        else f"deployed acc {record.deployed_accuracy:.3f}  fp32 acc {record.fp32_accuracy:.3f}  "
    )
    if asynchronous:  # a version: the updates it applied, and how stale they were
        counts = f"applied {record.reported} (staleness <= {record.staleness_max})"
        head = f"version {record.round:>3}/{total}"
    else:
        counts, head = f"reported {record.reported}/{record.selected}", f"round {record.round:>3}/{total}"
    return (
        f"{head}  sim {record.end_s:9.3f} s  latency {record.latency_s:8.3f} s  "
        f"{counts}  energy {record.energy_j:8.1f} J  "
        f"{accuracy}[host {host_s:.1f} s, eta {eta_s:.0f} s]"
    )


def feasibility_lines(simulation: Simulation) -> list[str]:
    """Warnings for clients that cannot run some strategy, with the reason; one line for a
    client that is never selected."""
    lines = []
    policy = simulation.scenario.spec.policy.name
    by_client: dict[int, list] = {}
    for row in simulation.world.feasibility:
        by_client.setdefault(row.client_id, []).append(row)
    for client in simulation.scenario.clients:
        rows = by_client[client.client_id]
        unable = [row for row in rows if not row.able]
        if client.client_id in simulation.eligible:
            lines += [f"warning: {client.name} cannot run {row.strategy}: {row.reason}" for row in unable]
        elif len(unable) == len(rows):
            best = min(unable, key=lambda row: (row.transfer_s, row.memory_needed_bytes))
            lines.append(
                f"warning: {client.name} can run no strategy and is never selected; {best.strategy}: {best.reason}"
            )
        else:
            wanted = sorted(s.label for s in simulation.policy.strategies_for(client.client_id))
            reason = next(row.reason for row in unable if row.strategy in wanted)
            lines.append(
                f"warning: {client.name} is never selected: policy {policy} gives it {', '.join(wanted)}, "
                f"which it cannot run; {reason}"
            )
    return lines


def _measured(seconds: float, digits: int) -> float | None:
    """A host time for run.json; ``None`` for a round measured before a resume (JSON has no NaN)."""
    return None if math.isnan(seconds) else round(seconds, digits)


def run_into_folder(
    scenario: LoadedScenario,
    out: Path,
    *,
    executor: WorkExecutor | None = None,
    timing_only: bool = False,
    checkpoint: dict[str, Any] | None = None,
    engine: str = "process",
    say: Say = lambda _text: None,
    command: str | None = None,
) -> Simulation:
    """Simulate ``scenario`` (client work on ``executor``; from ``checkpoint``, if resuming)
    and write its results folder ``out`` (made ready by the caller), with a checkpoint after
    every round; ``say`` gets the lines of progress; ``command`` is what ``run.json`` names
    as the run's command (default: this process's command line). Returns the finished
    simulation."""
    host_start = time.perf_counter()
    simulation = Simulation(scenario, executor, timing_only=timing_only)
    simulation.checkpointing = True
    writer = ResultsWriter(out, scenario, timing_only=timing_only)
    if checkpoint is None:
        writer.write_inputs(simulation.world.policy_choice.options.model_dump(mode="json"))
        writer.write_feasibility(simulation.world.feasibility)
    else:
        writer.resume(
            checkpoint["files"], {"events.csv": checkpoint["phases"], "link_utilisation.csv": checkpoint["samples"]}
        )
        simulation.restore(
            checkpoint,
            checkpoints.read_rounds(out / "rounds.csv", checkpoint["rounds"]),
            checkpoints.read_phases(out / "events.csv", checkpoint["phases"]),
            checkpoints.read_samples(out / "link_utilisation.csv", checkpoint["samples"], simulation.network.links),
        )
    ran = {
        "path": str(scenario.path.resolve()),
        "overrides": scenario.overrides,
        "sha256": checkpoints.text_hash(scenario.text()),
        "inputs": inputs_digest(scenario.model, scenario.data_source),
    }
    total = scenario.spec.training.rounds
    training = scenario.spec.training
    counted = f"{total} rounds" if training.mode == "sync" else f"{total} versions, mode {training.mode}"
    say(f"{scenario.spec.name}: {len(scenario.clients)} clients, {counted}, policy {scenario.spec.policy.name}")
    if checkpoint is not None and checkpoint.get("last", checkpoint["round"] >= total):
        say(f"all {checkpoint['round']} rounds ran; writing the results that a stop cut short")
    elif checkpoint is not None and checkpoint.get("replay"):
        say(f"resuming after version {checkpoint['round']}: replaying the run up to it (turns were in flight)")
    elif checkpoint is not None:
        say(f"resuming after round {checkpoint['round']} (simulated {checkpoint['clock_s']:.3f} s)")
    if timing_only:
        say(TIMING_ONLY_NOTE)
    for line in feasibility_lines(simulation):
        say(line)

    host_per_round: list[float] = []
    saved = dict(checkpoint) if checkpoint is not None else {}  # the last checkpoint written

    def on_round(record: RoundRecord, host_s: float) -> None:
        # What this round ended with (a later round may be done already, awaiting its evaluation).
        state = simulation.checkpoint(record.round)
        phases, samples = simulation.phases[: state["phases"]], simulation.network.samples[: state["samples"]]
        writer.write_progress(simulation.rounds[: record.round + 1], phases, samples, simulation.network.links)
        files = writer.appended_sizes()
        saved.clear()
        saved.update(state | {"scenario": ran, "timing_only": timing_only, "files": files, "finished": False})
        checkpoints.write_checkpoint(out, saved)
        host_per_round.append(host_s)
        eta_s = sum(host_per_round) / len(host_per_round) * (total - record.round)
        say(progress_line(total, record, host_s, eta_s, asynchronous=scenario.spec.training.mode != "sync"))
        raise_if_stopped()  # a stop swallowed during the round (in a finalizer, say) stops here

    result = simulation.run(on_round)
    links: pd.DataFrame = links_frame(simulation.network.samples, simulation.network.links)
    writer.write_final(
        rounds_frame(result.rounds),
        phases_frame(result.phases),
        links,
        simulation.policy.decision_log(),
        {
            "host_seconds": round(time.perf_counter() - host_start, 3),
            "round_host_seconds": [_measured(t.host_s, 4) for t in simulation.host_timing],
            "policy_host_seconds_per_round": [_measured(t.policy_s, 6) for t in simulation.host_timing],
            **({"resumed_after_round": checkpoint["round"]} if checkpoint is not None else {}),
            "policy_share_of_round_host_time_max": simulation.policy_share_max(),
            "engine": engine,
            **({"command": command} if command is not None else {}),
        },
    )
    # Only now is the run finished: one stopped while writing the files above resumes to write them.
    checkpoints.write_checkpoint(out, saved | {"finished": True})
    say(f"results written to {out} (open report.html)")
    return simulation
