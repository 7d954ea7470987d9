"""End-to-end runs: output files, determinism, deadlines and learning."""

import json

import pandas as pd
import pytest
import torch

from fedhq_sim.cli import main
from fedhq_sim.engine import Simulation
from fedhq_sim.models import build_model
from fedhq_sim.scenario import load_scenario
from fedhq_sim.tables import latency_breakdown, phases_frame, rounds_frame
from tests.conftest import REPO, tiny_scenario_dict

EXPECTED_FILES = {
    "scenario.yaml",
    "resolved.json",
    "run.json",
    "rounds.csv",
    "events.csv",
    "feasibility.csv",
    "link_utilisation.csv",
    "accuracy_vs_time.png",
    "round_latency.png",
    "link_utilisation.png",
    "energy_per_round.png",
    "client_timeline.png",
    "strategy_assignment.png",
    "trace.json",
    "report.html",
}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The tiny scenario run twice with one seed and once with another, through the CLI."""
    import yaml

    from tests.conftest import PROFILES

    folder = tmp_path_factory.mktemp("runs")
    outs = {}
    for label, seed in (("a", 3), ("b", 3), ("other", 4)):
        data = tiny_scenario_dict() | {"seed": seed, "profiles_dir": str(PROFILES)}
        path = folder / f"{label}.yaml"
        path.write_text(yaml.safe_dump(data))
        outs[label] = folder / f"out-{label}"
        assert main(["run", str(path), "--out", str(outs[label]), "--quiet"]) == 0
    return outs


def test_a_run_writes_every_result_file(two_runs):
    out = two_runs["a"]
    assert {p.name for p in out.iterdir()} >= EXPECTED_FILES
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 3 and info["versions"]["torch"].startswith("2.")
    assert len(info["policy_host_seconds_per_round"]) == 2  # host timings live here, not in rounds.csv
    assert 0 <= info["policy_share_of_round_host_time_max"] < 1
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds["round"]) == [0, 1, 2]
    events = pd.read_csv(out / "events.csv")
    assert set(events["phase"]) == {"download", "compute", "upload"}
    assert (events["end_s"] >= events["start_s"]).all()
    assert set(events["strategy"]) <= {"ptq8", "qat8"}
    assert (events.loc[events["phase"] == "upload", "nbytes"] > 0).all()
    links = pd.read_csv(out / "link_utilisation.csv")
    # Shared links only: each site's backhaul and the server's link, both directions.
    assert set(links["link"]) == {
        "site:hall->core",
        "core->site:hall",
        "site:yard->core",
        "core->site:yard",
        "core->server",
        "server->core",
    }
    assert (links["utilisation"] <= 1 + 1e-9).all() and (links["flows"] >= 0).all()
    assert links.groupby("link")["flows"].last().eq(0).all()  # every transfer ended


def test_the_trace_is_valid_trace_event_json_with_a_track_per_device_and_link(two_runs):
    trace = json.loads((two_runs["a"] / "trace.json").read_text())
    events = trace["traceEvents"]
    assert all({"ph", "pid", "tid"} <= e.keys() for e in events)
    assert all(e["dur"] >= 0 and "ts" in e for e in events if e["ph"] == "X")
    names = {(e["pid"], e["args"]["name"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    clients = pd.read_csv(two_runs["a"] / "events.csv").drop_duplicates("client")
    for c in clients.itertuples():
        assert (1, f"{c.client} ({c.device})") in names
        assert (2, f"access:{c.client} ({c.link})") in names
    phases = [e for e in events if e["ph"] == "X" and e["pid"] == 1]
    assert len(phases) == len(pd.read_csv(two_runs["a"] / "events.csv"))
    counters = {e["name"] for e in events if e["ph"] == "C"}
    assert counters == set(pd.read_csv(two_runs["a"] / "link_utilisation.csv")["link"])
    rounds = [e for e in events if e["ph"] == "X" and e["cat"] == "round"]
    assert [e["name"] for e in rounds] == ["round 1", "round 2"]


def test_the_run_report_renders_in_a_headless_browser_with_every_figure(two_runs):
    import re

    from tests.conftest import render_in_chromium

    dom = render_in_chromium(two_runs["a"] / "report.html")
    body = re.search(r'<body data-figures-loaded="(\d+)" data-figures="(\d+)"', dom)
    assert body is not None, dom[:500]
    assert body.group(1) == body.group(2) == "6"
    for text in ("Summary", "final deployed accuracy", "Scenario", "Versions", "seed"):
        assert text in dom


def test_report_rebuilds_the_report_of_a_results_folder(two_runs, tmp_path, capsys):
    report = two_runs["a"] / "report.html"
    before = report.read_text()
    report.unlink()
    assert main(["report", str(two_runs["a"])]) == 0
    assert report.read_text() == before
    assert main(["report", str(tmp_path)]) == 2
    assert "not a results folder" in capsys.readouterr().err


def test_client_work_on_a_process_pool_gives_the_files_of_a_serial_run(two_runs, tmp_path):
    scenario = two_runs["a"].parent / "a.yaml"
    assert main(["run", str(scenario), "--out", str(tmp_path / "serial"), "--quiet", "--workers", "1"]) == 0
    assert main(["run", str(scenario), "--out", str(tmp_path / "pool"), "--quiet", "--workers", "2"]) == 0
    for name in ("rounds.csv", "events.csv", "link_utilisation.csv", "trace.json"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes(), name


def test_same_seed_gives_identical_files_and_another_seed_does_not(two_runs):
    for name in ("rounds.csv", "events.csv", "feasibility.csv", "link_utilisation.csv", "trace.json"):
        assert (two_runs["a"] / name).read_bytes() == (two_runs["b"] / name).read_bytes()
    assert (two_runs["a"] / "events.csv").read_bytes() != (two_runs["other"] / "events.csv").read_bytes()


def test_an_existing_results_folder_is_not_overwritten_silently(two_runs, capsys):
    scenario = two_runs["a"].parent / "a.yaml"
    assert main(["run", str(scenario), "--out", str(two_runs["a"]), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_the_deadline_drops_late_clients_and_logs_them(write_scenario):
    data = tiny_scenario_dict()
    data["training"]["rounds"] = 1
    # A deadline just above every client's feasibility floor (transfers and training steps
    # alone) lets all take part, but model handling and quantization make them late.
    floors = Simulation(load_scenario(write_scenario(data))).world.feasibility
    deadline = max(row.transfer_s + row.compute_s for row in floors) * 1.01
    data["training"]["round_deadline"] = f"{deadline * 1e3:.6f} ms"
    sim = Simulation(load_scenario(write_scenario(data)))
    assert len(sim.eligible) == 4
    result = sim.run()
    phases = phases_frame(result.phases)
    record = result.rounds[-1]
    dropped = phases[phases["status"] == "dropped"]
    assert record.dropped == len(dropped) > 0
    assert record.reported + record.dropped == record.selected
    assert record.collect_end_s == pytest.approx(deadline)
    assert dropped["end_s"].tolist() == pytest.approx([deadline] * len(dropped))
    assert sim.network.active_flows == 0


def test_latency_breakdown_adds_up_to_each_round(two_runs):
    rounds = pd.read_csv(two_runs["a"] / "rounds.csv")
    parts = latency_breakdown(rounds, pd.read_csv(two_runs["a"] / "events.csv"))
    totals = parts.groupby("round")["seconds"].sum()
    latency = rounds.set_index("round")["latency_s"].loc[totals.index]
    assert (parts["seconds"] >= -1e-12).all()
    assert totals.to_numpy() == pytest.approx(latency.to_numpy())


@pytest.mark.slow
def test_quickstart_learns_and_runs_in_minutes():
    scenario = load_scenario(REPO / "scenarios" / "quickstart.yaml")
    spec = scenario.spec
    assert len(scenario.clients) >= 12 and spec.training.rounds >= 5 and len(spec.sites) >= 2
    assert len({c.device.name for c in scenario.clients}) >= 3
    rounds = rounds_frame(Simulation(scenario).run().rounds)
    accuracy = rounds["deployed_accuracy"].to_numpy()
    assert accuracy[-1] > rounds["fp32_accuracy"].iloc[0] + 0.4  # the initial model is not deployed yet
    assert accuracy[-1] > 0.8
    assert (rounds["end_s"].diff().dropna() > 0).all()


def test_the_deadline_is_inclusive_for_an_upload_ending_exactly_then(write_scenario):
    data = tiny_scenario_dict()
    data["training"]["rounds"] = 1
    first = Simulation(load_scenario(write_scenario(data, "first.yaml"))).run().rounds[-1]
    data["training"]["round_deadline"] = f"{first.collect_end_s!r} s"
    again = Simulation(load_scenario(write_scenario(data, "again.yaml"))).run().rounds[-1]
    assert again.collect_end_s == first.collect_end_s
    assert again.reported == again.selected


def test_an_mlp_learns_the_plant_sensor_conditions(write_scenario):
    from fedhq_sim.engine import simulate

    data = tiny_scenario_dict()
    data["data"] = {"dataset": "plant_sensors", "dirichlet_alpha": 1.0}
    data["model"] = "mlp"
    data["training"].update(rounds=4, clients_per_round=4, local_epochs=2, learning_rate=0.1)
    result = simulate(load_scenario(write_scenario(data)))
    assert result.rounds[0].fp32_accuracy < 0.3  # six conditions: chance is 1/6
    assert result.rounds[-1].deployed_accuracy > 0.5


def test_an_image_model_on_tabular_data_is_refused(write_scenario, capsys):
    data = tiny_scenario_dict()
    data["data"] = {"dataset": "plant_sensors", "dirichlet_alpha": 1.0}
    path = write_scenario(data)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    expected = (
        "model: small_cnn cannot be built for tabular inputs of shape (16,): "
        "ValueError: small_cnn takes (1, 8, 8) images, got inputs of shape (16,)"
    )
    assert err == f"error: {path}: {expected}"


def test_resnet8_learns_with_quantized_updates(write_scenario):
    from fedhq_sim.engine import simulate

    data = tiny_scenario_dict()
    data["model"] = "resnet8"
    data["training"].update(rounds=3, clients_per_round=4, local_epochs=2)
    result = simulate(load_scenario(write_scenario(data)))  # hybrid: PTQ and QAT updates
    assert result.rounds[0].fp32_accuracy < 0.2
    assert result.rounds[-1].deployed_accuracy > 0.5


def test_a_four_bit_run_sends_packed_updates(write_scenario):
    from fedhq_sim.engine import simulate

    def final(bits):
        data = tiny_scenario_dict()
        data["training"].update(rounds=1, clients_per_round=4)
        data["policy"] = {"name": "all-qat"}
        data["deployment"] = {"bits": bits}
        return simulate(load_scenario(write_scenario(data, f"b{bits}.yaml"))).rounds[-1]

    eight, four = final(8), final(4)
    assert four.reported == eight.reported == 4
    assert four.bytes_up < 0.85 * eight.bytes_up


def test_deploying_at_four_bits_costs_accuracy_that_eight_bits_does_not(digits_federation):
    from fedhq_sim.server_work import evaluate_global

    model = build_model("small_cnn", 10, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    x = torch.cat([c.x for c in digits_federation.clients])
    y = torch.cat([c.y for c in digits_federation.clients])
    for _ in range(3):
        for i in range(0, len(x), 32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).backward()
            optimizer.step()
    fed = digits_federation
    fp32, eight, _ = evaluate_global(model.state_dict(), "small_cnn", 10, fed.server_calibration, fed.test, 8)
    _, four, _ = evaluate_global(model.state_dict(), "small_cnn", 10, fed.server_calibration, fed.test, 4)
    assert abs(fp32 - eight) < 0.01 and four < fp32
    # What the deployed model computes moves far more at 4 bits than at 8.
    from fedhq_sim.quant.backend import run_deployed
    from fedhq_sim.server_work import deploy_int8

    model.eval()
    with torch.no_grad():
        reference = model(fed.test.x)
    gaps = {}
    for bits in (8, 4):
        deployed, _ = deploy_int8(model, fed.server_calibration, bits)
        gaps[bits] = float((run_deployed(deployed, fed.test.x) - reference).norm() / reference.norm())
    assert gaps[8] < 0.02 and gaps[4] > 4 * gaps[8], gaps


def test_events_written_a_round_at_a_time_are_what_the_frame_would_write():
    """The results writer appends rows with the csv module: the text must be pandas' own."""
    from fedhq_sim.records import PhaseRecord, column_names
    from fedhq_sim.tables import csv_text

    rows = [
        PhaseRecord(
            1, 0, "hall/rpi4-0", "hall", "rpi4", "wifi6", "download", "ptq8", 8, 12900, 0.0, 1e-05, "completed", 0.5
        ),
        PhaseRecord(
            1,
            1,
            "yard/a-1",
            "yard",
            "a",
            "lte",
            "upload",
            "qat4",
            4,
            0,
            0.1,
            2.5e16,
            "failed",
            3.0,
            'link ("a", "b"), down',
        ),
    ]
    assert csv_text(rows, column_names(PhaseRecord)) == phases_frame(rows).to_csv(index=False)


class _NoTensorPickler:
    """Pickles like a process pool would, and fails on any torch tensor: a pool moves a
    tensor's storage into shared memory in place, from a background thread, while the
    engine may still be reading it."""

    @staticmethod
    def dumps(obj: object) -> bytes:
        import io
        import pickle

        class Refusing(pickle.Pickler):
            def reducer_override(self, value):
                if isinstance(value, torch.Tensor):
                    raise AssertionError(f"a tensor of shape {tuple(value.shape)} would go through the pool")
                return NotImplemented

        buffer = io.BytesIO()
        Refusing(buffer).dump(obj)
        return buffer.getvalue()


class _CheckingExecutor:
    """Runs the work here, after checking that what a pool would send holds no tensor."""

    def map(self, tasks):
        import pickle

        from fedhq_sim.executors import run_task

        results = [run_task(pickle.loads(_NoTensorPickler.dumps(task))) for task in tasks]
        for result in results:
            _NoTensorPickler.dumps(result)
        return results

    def submit(self, fn, *args):
        import pickle

        from fedhq_sim.executors import completed

        return completed(fn, *pickle.loads(_NoTensorPickler.dumps(args)))


def test_nothing_a_worker_is_sent_or_sends_back_is_a_tensor(write_scenario):
    data = tiny_scenario_dict()
    data["sites"][0] |= {"aggregator": "industrial_pc_i5"}
    scenario = load_scenario(write_scenario(data))
    checked = Simulation(scenario, _CheckingExecutor()).run()
    assert rounds_frame(checked.rounds).equals(rounds_frame(Simulation(scenario).run().rounds))


def test_a_run_whose_reader_goes_away_finishes_its_rounds_quietly(tiny_scenario, tmp_path):
    """``fedhq-sim run ... | head -1``: the progress lines stop, the run and its files do not."""
    import subprocess
    import sys

    out = tmp_path / "piped"
    command = [sys.executable, "-m", "fedhq_sim", "run", str(tiny_scenario), "--out", str(out), "--workers", "1"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child.stdout.readline()
    child.stdout.close()  # the reader is gone before the first round ends
    assert child.wait(timeout=120) == 0, child.stderr.read()
    assert "Traceback" not in child.stderr.read()
    assert pd.read_csv(out / "rounds.csv")["round"].max() == 2
