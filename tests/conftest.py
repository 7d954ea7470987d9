"""Shared fixtures: the repository's profile library and a tiny scenario writer."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "device_profiles"

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "server": {"device": "x86_server", "link": "ethernet_10g"},
    "sites": [
        {"name": "hall", "backhaul": "fibre_1g", "devices": [{"device": "rpi4", "link": "wifi6", "count": 2}]},
        {"name": "yard", "backhaul": "lte", "devices": [{"device": "rpi5", "link": "ethernet_1g", "count": 2}]},
    ],
    "data": {"dataset": "digits", "dirichlet_alpha": 1.0, "min_client_samples": 16},
    "model": "small_cnn",
    "training": {
        "rounds": 2,
        "clients_per_round": 3,
        "local_epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.05,
        "round_deadline": "10 min",
    },
    "policy": {"name": "hybrid", "qat_fraction": 0.5},
}


def tiny_scenario_dict() -> dict[str, Any]:
    """A fresh deep copy of the tiny scenario (2 sites, 4 clients, 2 rounds)."""
    return copy.deepcopy(TINY)


@pytest.fixture(scope="session")
def digits_federation():
    """The digits split over 4 clients (alpha 1.0, 20 % test, 64 server calibration samples)."""
    import numpy as np

    from fedhq_sim.data import federate
    from fedhq_sim.datasets import load_digits

    return federate(
        load_digits(),
        n_clients=4,
        alpha=1.0,
        test_fraction=0.2,
        server_calibration=64,
        min_client_samples=16,
        rng=np.random.default_rng(0),
    )


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Write a scenario mapping to a YAML file in ``tmp_path`` that uses the repo's profiles."""

    def write(data: dict[str, Any], name: str = "scenario.yaml") -> Path:
        data = {**data, "profiles_dir": str(PROFILES)}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def tiny_scenario(write_scenario) -> Path:
    return write_scenario(tiny_scenario_dict())


def render_in_chromium(page: Path) -> str:
    """The DOM of ``page`` after it loaded in headless Chromium (Debian's package, which
    ``make test`` installs). Set FEDHQ_NO_BROWSER=1 to skip browser tests on a machine
    without it; otherwise a missing browser fails the test rather than hiding it."""
    import os
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("FEDHQ_NO_BROWSER") == "1":
            pytest.skip("FEDHQ_NO_BROWSER=1 and no chromium installed")
        pytest.fail(
            "chromium is not installed: run `make test` (it installs Debian's chromium) or set FEDHQ_NO_BROWSER=1"
        )
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom"]
    done = subprocess.run([browser, *flags, page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def scenario_file(folder: Path, data: dict[str, Any], name: str = "s.yaml") -> Path:
    """Write ``data`` as a scenario in ``folder`` using the repo's profiles (for module-scoped
    fixtures, which cannot use ``write_scenario``)."""
    path = folder / name
    path.write_text(yaml.safe_dump({**data, "profiles_dir": str(PROFILES)}, sort_keys=False))
    return path


WIRE_LATENCY_S = 0.010  # the closed-form "wire" link of the engine-clock tests


@pytest.fixture(scope="session")
def profiles(tmp_path_factory):
    """The repository's profiles plus two links whose transfer times are closed-form."""
    root = tmp_path_factory.mktemp("profiles")
    for kind in ("devices", "links"):
        (root / kind).mkdir()
        for path in (PROFILES / kind).glob("*.yaml"):
            (root / kind / path.name).write_text(path.read_text())
    for name, rate, latency in (("wire", "8 Mbit/s", f"{WIRE_LATENCY_S * 1e3:g} ms"), ("trunk", "80 Gbit/s", "0 s")):
        link = {
            "kind": "link",
            "name": name,
            "description": "a test link: no jitter, no loss",
            "downlink": rate,
            "uplink": rate,
            "latency": latency,
            "jitter": "0 s",
            "loss": "0 %",
            "radio_power": {"transmit": "1 W", "receive": "1 W"},
            "sources": {k: "[I] test" for k in ("downlink", "uplink", "latency", "jitter", "loss")}
            | {"radio_power.transmit": "[I] test", "radio_power.receive": "[I] test"},
        }
        (root / "links" / f"{name}.yaml").write_text(yaml.safe_dump(link))
    return root
