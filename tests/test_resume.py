"""Checkpoints and resume: a run stopped at any moment goes on to the files of a run never stopped."""

import io
import pickle
import signal
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fedhq_sim.checkpoint import FILE, FORMAT, read_checkpoint
from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.errors import InputError, SimulationError
from fedhq_sim.policies.fedhq import FedHQ, FedHQOptions
from fedhq_sim.scenario import load_scenario
from fedhq_sim.tables import links_frame, phases_frame, rounds_frame
from tests.conftest import PROFILES, tiny_scenario_dict
from tests.test_fedhq import TEN, qat_gains, reports
from tests.test_timing_only import _plant

COMPARED = ("rounds.csv", "events.csv", "link_utilisation.csv", "trace.json", "feasibility.csv", "policy_log.csv")


def _eight_rounds_with_every_kind_of_event() -> dict:
    """An aggregating site, two outages with stalls, maintenance, deadline drops and injected
    faults (one scheduled after the rounds a test stops at), over 8 rounds."""
    data = _plant(tiny_scenario_dict()) | {"profiles_dir": str(PROFILES)}
    data["training"]["rounds"] = 8
    data["network"]["outages"].append({"link": "backhaul:hall", "start": "1.0 s", "duration": "1.0 s"})
    data["faults"] = {
        "crashes": [
            {"during": "compute", "probability": 0.1},
            {"during": "upload", "client": "yard/rpi5-1", "round": 5},
        ],
        "corrupt_updates": [{"kind": "nan", "probability": 0.1}],
    }
    return data


def _same_records(a: Simulation, b: Simulation) -> bool:
    return (
        rounds_frame(a.rounds).equals(rounds_frame(b.rounds))
        and phases_frame(a.phases).equals(phases_frame(b.phases))
        and links_frame(a.network.samples, a.network.links).equals(links_frame(b.network.samples, b.network.links))
    )


@pytest.mark.parametrize("timing_only", [False, True])
def test_a_simulation_restored_after_any_round_ends_as_one_never_stopped(write_scenario, timing_only):
    scenario = load_scenario(write_scenario(_eight_rounds_with_every_kind_of_event()))
    whole = Simulation(scenario, timing_only=timing_only)
    whole.checkpointing = True
    states = {}
    whole.run(lambda record, _host_s: states.update({record.round: whole.checkpoint(record.round)}))
    down = [r for r, state in sorted(states.items()) if "down" in state["outages"]]
    assert down, "the test needs a checkpoint taken while a link is down"
    for r in (1, down[0], 6):
        buffer = io.BytesIO()
        torch.save(states[r], buffer)  # through the file format, loaded safely
        state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        again = Simulation(scenario, timing_only=timing_only)
        counts = state["rounds"], state["phases"], state["samples"]
        again.restore(state, whole.rounds[: counts[0]], whole.phases[: counts[1]], whole.network.samples[: counts[2]])
        again.run()
        assert _same_records(again, whole), r


def test_fedhq_restored_from_its_state_decides_as_the_original_goes_on_deciding():
    skews = {cid: info.analysis.skew for cid, info in enumerate(TEN)}

    def loss(r: int):  # QAT pays most for the skewed clients, then, from round 14, for the others
        return qat_gains({cid: 0.1 + 0.4 * skew if r < 14 else 0.5 - 0.4 * skew for cid, skew in skews.items()})

    original = FedHQ(FedHQOptions(bits=4, max_qat_fraction=0.5, adjust_every=1), TEN, np.random.default_rng(0))
    for r in range(1, 31):
        original.observe(reports(original, r, loss(r)))
        if r == 15:
            buffer = io.BytesIO()
            torch.save(original.state_dict(), buffer)
    assert [m for m in original.moves if m.round > 15], "the test needs moves after the checkpoint"
    restored = FedHQ(FedHQOptions(bits=4, max_qat_fraction=0.5, adjust_every=1), TEN, np.random.default_rng(0))
    restored.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for r in range(16, 31):
        restored.observe(reports(restored, r, loss(r)))
    assert restored.decision_log() == original.decision_log()
    assert restored.current == original.current


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedhq_sim", *args], capture_output=True, text=True, **kwargs)


STOPPING_CHILD = """
import os, signal, sys
from fedhq_sim import recorder, results
from fedhq_sim.cli import main

how, where = signal.Signals[sys.argv[1]], sys.argv[2]

class StopsInItsFinalizer:
    def __del__(self):
        os.kill(os.getpid(), how)  # Python drops the KeyboardInterrupt this raises here

fired = []
record, write_trace = recorder.Recorder.record, results.ResultsWriter.write_trace

def record_then_stop(self, r, *rest, **keywords):
    record(self, r, *rest, **keywords)
    if r == 4 and where == "mid-round":
        os.kill(os.getpid(), how)
    if r == 4 and where == "finalizer" and not fired:
        fired.append(StopsInItsFinalizer())
        fired[0] = None  # finalized here

def stop_then_write_trace(self, *args):
    if where == "final-files":
        os.kill(os.getpid(), how)
    write_trace(self, *args)

recorder.Recorder.record, results.ResultsWriter.write_trace = record_then_stop, stop_then_write_trace
sys.exit(main(sys.argv[3:]))
"""


def _stopped(scenario, out, how, where, workers, *flags):
    """Run ``scenario`` and stop it by the signal ``how``, sent from within the run ``where``:
    right after the first event of round 4 is recorded, from a finalizer at that moment (which
    swallows the exception it raises), or as the finished run starts its trace. Sent from
    within, the stop comes at a known moment: a signal from the test could come after a
    fast run had ended."""
    run = ["run", str(scenario), "--out", str(out), "--workers", workers, *flags]
    child = _run_code(STOPPING_CHILD, [how.name, where, *run], timeout=300)
    return child.returncode, child.stderr


def _run_code(code: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    scenario = folder / "s.yaml"
    scenario.write_text(yaml.safe_dump(_eight_rounds_with_every_kind_of_event(), sort_keys=False))
    out = folder / "whole"
    assert _run(["run", str(scenario), "--out", str(out), "--quiet", "--workers", "1"], check=True).returncode == 0
    return scenario, out


@pytest.mark.parametrize(
    ("how", "where", "code", "workers"),
    [
        (signal.SIGKILL, "mid-round", -signal.SIGKILL, "1"),
        (signal.SIGTERM, "mid-round", 143, "2"),
        (signal.SIGINT, "mid-round", 130, "1"),
        (signal.SIGINT, "finalizer", 130, "1"),
        (signal.SIGTERM, "final-files", 143, "1"),
    ],
    ids=["SIGKILL", "SIGTERM-on-a-pool", "SIGINT", "SIGINT-swallowed-by-a-finalizer", "SIGTERM-writing-the-report"],
)
def test_a_run_stopped_at_any_moment_and_resumed_writes_the_files_of_one_never_stopped(
    uninterrupted, tmp_path, how, where, code, workers
):
    scenario, whole = uninterrupted
    out = tmp_path / "stopped"
    returned, err = _stopped(scenario, out, how, where, workers)
    assert returned == code, err
    if how != signal.SIGKILL:
        ignored = 1 if where == "finalizer" else 0  # the swallowed exception's report has one
        assert err.count("Traceback") == ignored and f"fedhq-sim run --resume {out}" in err, err
    if where == "finalizer":
        assert "Exception ignored in" in err, "the test must have its first KeyboardInterrupt swallowed"
    rounds, events = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "events.csv")  # readable as they are
    # On a pool round 3's evaluation runs beside round 4's client work, so it is not saved yet.
    stopped_after = {"final-files": 8, "finalizer": 4, "mid-round": 3 if workers == "1" else 2}[where]
    assert rounds["round"].max() == stopped_after and set(events["round"]) >= set(range(1, stopped_after + 1))
    assert read_checkpoint(out)["round"] == stopped_after
    assert not (out / "report.html").exists()
    resumed = _run(["run", "--resume", str(out), "--workers", "1"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    said = "writing the results that a stop cut short" if where == "final-files" else "resuming after round"
    assert said in resumed.stdout
    for name in COMPARED:
        if (whole / name).exists():
            assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert (out / "report.html").exists()
    assert main(["run", "--resume", str(out)]) == 2  # finished now: nothing left to go on with


def test_a_checkpoint_is_loaded_safely_and_a_booby_trapped_one_is_refused(uninterrupted, tmp_path):
    _, whole = uninterrupted
    assert read_checkpoint(whole)["round"] == 8
    trap = tmp_path / "trap"
    trap.mkdir()

    class Boom:
        def __reduce__(self):
            return (eval, ("__import__('os').system('touch owned')",))

    (trap / FILE).write_bytes(pickle.dumps({"format": 1, "x": Boom()}, protocol=2))
    with pytest.raises(InputError, match="not a readable checkpoint"):
        read_checkpoint(trap)
    assert not (tmp_path / "owned").exists()


def test_resume_refuses_what_it_cannot_go_on_with(uninterrupted, tmp_path, capsys):
    scenario, whole = uninterrupted
    assert main(["run", "--resume", str(whole)]) == 2
    assert "finished all 8 rounds" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint.pt here" in capsys.readouterr().err
    assert main(["run", str(scenario), "--resume", str(whole)]) == 2
    assert "give neither" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "give a scenario file, or --resume DIR" in capsys.readouterr().err


def test_resume_refuses_a_scenario_changed_since_the_run_began(write_scenario, tmp_path, capsys):
    data = tiny_scenario_dict() | {"profiles_dir": str(PROFILES)}
    scenario = write_scenario(data)
    assert main(["run", str(scenario), "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"]) == 0
    scenario.write_text(scenario.read_text().replace("learning_rate: 0.05", "learning_rate: 0.5"))
    assert main(["run", "--resume", str(tmp_path / "out")]) == 2
    assert "changed since the run began" in capsys.readouterr().err


def test_a_checkpoint_of_an_earlier_format_is_refused_saying_so(tmp_path):
    older = tmp_path / "older"
    older.mkdir()
    torch.save({"format": FORMAT - 1, "round": 3}, older / FILE)
    with pytest.raises(InputError, match=f"written by an earlier fedhq-sim \\(format {FORMAT - 1}"):
        read_checkpoint(older)


@pytest.mark.parametrize(("mode", "timing_only"), [("buffered", False), ("async", True), ("semi-sync", True)])
def test_an_asynchronous_run_resumed_after_any_version_replays_to_one_never_stopped(write_scenario, mode, timing_only):
    data = _eight_rounds_with_every_kind_of_event()
    data["training"]["mode"] = mode
    if mode == "semi-sync":
        data["training"]["aggregation"] = {"period": "0.15 s"}  # shorter than some turns: updates carry over
    scenario = load_scenario(write_scenario(data))
    whole = Simulation(scenario, timing_only=timing_only)
    whole.checkpointing = True
    states = {}
    whole.run(lambda record, _host_s: states.update({record.round: whole.checkpoint(record.round)}))
    statuses = {p.status for p in whole.phases}
    assert max(r.staleness_max for r in whole.rounds) >= 1
    assert {"completed", "failed"} <= statuses, statuses
    for r in (1, 5):
        state = states[r]
        again = Simulation(scenario, timing_only=timing_only)
        counts = state["rounds"], state["phases"], state["samples"]
        again.restore(state, whole.rounds[: counts[0]], whole.phases[: counts[1]], whole.network.samples[: counts[2]])
        resumed = []
        again.run(lambda record, _host_s, seen=resumed: seen.append(record.round))
        assert _same_records(again, whole), r
        assert resumed == list(range(r + 1, 9))
    tampered = Simulation(scenario, timing_only=timing_only)
    rows = list(whole.rounds[: states[5]["rounds"]])
    rows[3] = replace(rows[3], reported=rows[3].reported + 1)
    tampered.restore(states[5], rows, whole.phases[: states[5]["phases"]], [])
    with pytest.raises(SimulationError, match="version 3 differs"):
        tampered.run()


def test_a_buffered_run_killed_mid_run_resumes_by_replay_to_the_files_of_one_never_stopped(tmp_path):
    data = _eight_rounds_with_every_kind_of_event()
    data["training"].update(mode="buffered", rounds=5)
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    whole = tmp_path / "whole"  # timing-only: the replay is the same in full mode (tested above), and quicker
    assert main(["run", str(scenario), "--out", str(whole), "--quiet", "--timing-only"]) == 0
    out = tmp_path / "stopped"
    returned, err = _stopped(scenario, out, signal.SIGKILL, "mid-round", "1", "--timing-only")
    assert returned == -signal.SIGKILL, err
    assert read_checkpoint(out)["replay"] and 1 <= read_checkpoint(out)["round"] < 5
    resumed = _run(["run", "--resume", str(out), "--timing-only"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "replaying the run up to it" in resumed.stdout
    for name in COMPARED:
        if (whole / name).exists():
            assert (out / name).read_bytes() == (whole / name).read_bytes(), name
