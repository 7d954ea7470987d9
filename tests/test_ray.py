"""Ray as the engine: a round's client work and a sweep's runs as Ray tasks, equal to serial.

Ray is an optional extra of the package, but a dependency of its tests: the Ray path runs
here on a local Ray instance (one for the module), and once on a separately started cluster
joined with ``--address``.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pandas as pd
import pytest
import ray  # noqa: F401 - the tests need Ray installed (make test installs the extra); no silent skip

from fedhq_sim.cli import main
from fedhq_sim.errors import InputError
from fedhq_sim.interrupts import Terminated
from fedhq_sim.ray_engine import RaySession, run_on_ray
from tests.conftest import tiny_scenario_dict

FILES = ("rounds.csv", "events.csv", "link_utilisation.csv", "trace.json")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance of two CPUs for the module; the CLI joins it instead of starting its own."""
    with RaySession(2) as session:
        yield session


def test_client_work_as_ray_tasks_gives_the_files_of_a_serial_run(local_ray, tiny_scenario, tmp_path):
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    assert main(["run", str(tiny_scenario), "--out", str(serial), "--quiet", "--workers", "1"]) == 0
    assert main(["run", str(tiny_scenario), "--out", str(on_ray), "--quiet", "--engine", "ray"]) == 0
    for name in FILES:
        assert (serial / name).read_bytes() == (on_ray / name).read_bytes(), name


def test_a_sweep_on_ray_merges_into_the_table_of_a_serial_sweep(local_ray, tiny_scenario, tmp_path):
    argv = ["sweep", str(tiny_scenario), "--set", "training.clients_per_round=2,4", "--seeds", "1", "2", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "serial"), "--jobs", "1"]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert (tmp_path / "serial" / "rounds.csv").read_bytes() == (tmp_path / "ray" / "rounds.csv").read_bytes()
    host_measured = ["policy_share_of_host_time_max"]
    serial = pd.read_csv(tmp_path / "serial" / "summary.csv").drop(columns=host_measured)
    assert serial.equals(pd.read_csv(tmp_path / "ray" / "summary.csv").drop(columns=host_measured))
    assert len(serial) == 4


USER_POLICY = """
from fedhq_sim.policies import Policy, register_policy
from fedhq_sim.quant.strategy import Strategy


@register_policy("ray-user-policy")
class EveryoneQAT(Policy):
    def assign(self, ctx):
        return {cid: Strategy("qat", self.options.bits) for cid in ctx.selected}
"""


def test_a_run_on_ray_carries_its_scenario_and_a_users_policy_with_it(local_ray, write_scenario, tmp_path):
    """The task holds the loaded scenario, so a node needs no files: not the scenario's, not
    the user's policy module (its class travels by value)."""
    (tmp_path / "mine.py").write_text(USER_POLICY)
    data = tiny_scenario_dict() | {"policy": {"name": "ray-user-policy", "module": "mine.py"}}
    path = write_scenario(data)
    out = tmp_path / "out"
    argv = ["compare", str(path), "--policies", "ray-user-policy", "--seeds", "1", "--engine", "ray"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    rounds = pd.read_csv(out / "rounds.csv")
    assert (rounds.loc[rounds["round"] > 0, "n_qat"] == rounds.loc[rounds["round"] > 0, "selected"]).all()


def _fails(path: str) -> None:
    raise InputError(path, "data", "no Dirichlet draw")


def test_a_failed_ray_task_raises_its_own_error_and_stops_the_rest(local_ray):
    finished = []
    with pytest.raises(InputError, match="no Dirichlet draw"):
        run_on_ray(local_ray, _fails, [("a.yaml",), ("b.yaml",)], lambda i, _r: finished.append(i))
    assert finished == []


def _waits(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


def test_a_stop_raised_while_results_arrive_cancels_the_tasks_still_running(local_ray, monkeypatch):
    """Ctrl-C or SIGTERM reaches ``on_done`` as a stop: the queued and running tasks go with it."""
    cancelled = []
    real_cancel = local_ray.ray.cancel
    monkeypatch.setattr(
        local_ray.ray, "cancel", lambda future, **kw: (cancelled.append(future), real_cancel(future, **kw))
    )

    def stop(_index, _result):
        raise Terminated

    with pytest.raises(Terminated):
        run_on_ray(local_ray, _waits, [(0.0,), (60.0,), (60.0,)], stop)
    assert len(cancelled) == 2


def test_address_needs_the_ray_engine(tiny_scenario, tmp_path, capsys):
    assert main(["run", str(tiny_scenario), "--address", "auto", "--out", str(tmp_path / "o")]) == 2
    assert "--engine ray" in capsys.readouterr().err


def test_without_ray_installed_the_engine_says_how_to_install_it(tiny_scenario, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert main(["run", str(tiny_scenario), "--engine", "ray", "--out", str(tmp_path / "o")]) == 2
    assert "pip install 'fedhq-sim[ray]'" in capsys.readouterr().err


def test_a_run_joins_an_existing_cluster_at_its_address(tiny_scenario, tmp_path):
    """A cluster started apart (``ray start --head``, token authentication as Ray now defaults
    to), joined by a separate ``fedhq-sim run --engine ray --address``; the files are those of
    a serial run."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    # Its own temporary folder (short: Ray's socket paths have a length limit), so the cluster
    # leaves no "current cluster" record behind for a later plain ray.init() to chase.
    temp = tempfile.mkdtemp(prefix="ray-")
    head = [ray_cli, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--temp-dir", temp]
    head += ["--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--disable-usage-stats"]
    cluster = subprocess.Popen(head, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in cluster.stdout:
            if "Ray runtime started" in line:
                break
        else:
            pytest.fail("ray start --head did not start")
        joined = tmp_path / "joined"
        command = [sys.executable, "-m", "fedhq_sim", "run", str(tiny_scenario), "--engine", "ray"]
        command += ["--address", f"127.0.0.1:{port}", "--out", str(joined), "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        cluster.send_signal(signal.SIGTERM)
        cluster.wait(timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    assert main(["run", str(tiny_scenario), "--out", str(tmp_path / "serial"), "--quiet", "--workers", "1"]) == 0
    for name in FILES:
        assert (joined / name).read_bytes() == (tmp_path / "serial" / name).read_bytes(), name
