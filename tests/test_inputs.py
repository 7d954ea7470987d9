"""Bad input: one clear line naming the file, the key path and what was expected; exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedhq_sim.cli import main
from fedhq_sim.errors import InputError
from fedhq_sim.policies.choice import choose_policy
from fedhq_sim.profiles import ProfileLibrary, numeric_keys
from fedhq_sim.scenario import load_scenario
from tests.conftest import PROFILES, REPO, tiny_scenario_dict


def mutated(change):
    data = tiny_scenario_dict()
    change(data)
    return data


CASES = [
    ("unknown key", lambda d: d["training"].update(epochs=3), "training.epochs", "unknown key; allowed: rounds"),
    ("missing key", lambda d: d["training"].pop("rounds"), "training.rounds", "missing required key"),
    ("wrong type", lambda d: d["training"].update(rounds="five"), "training.rounds", "valid integer"),
    ("bool as int", lambda d: d["training"].update(rounds=True), "training.rounds", "valid integer"),
    ("zero deadline", lambda d: d["training"].update(round_deadline="0 s"), "training.round_deadline", "greater"),
    ("negative deadline", lambda d: d["training"].update(round_deadline="-5 s"), "training.round_deadline", "like"),
    ("unitless deadline", lambda d: d["training"].update(round_deadline=30), "training.round_deadline", "unit"),
    ("zero count", lambda d: d["sites"][0]["devices"][0].update(count=0), "sites[0].devices[0].count", "greater"),
    (
        "unknown device",
        lambda d: d["sites"][1]["devices"][0].update(device="pi9"),
        "sites[1].devices[0].device",
        "unknown device profile 'pi9'",
    ),
    ("unknown link", lambda d: d["sites"][0].update(backhaul="carrier_pigeon"), "sites[0].backhaul", "unknown link"),
    ("unknown policy", lambda d: d["policy"].update(name="fedmagic"), "policy.name", "unknown policy"),
    ("policy option", lambda d: d["policy"].update(qat_fraction=1.5), "policy.qat_fraction", "less than or equal"),
    (
        "sizing a fixed dataset",
        lambda d: d["data"].update(samples_per_class=5000),
        "data",
        "samples_per_class sizes a generated dataset (plant_sensors)",
    ),
    ("deployment bits", lambda d: d.update(deployment={"bits": 2}), "deployment.bits", "4 or 8"),
    ("bits under policy", lambda d: d["policy"].update(bits=8), "policy.bits", "has moved"),
    (
        "deployment calibration",
        lambda d: d.update(deployment={"calibration": "oracle"}),
        "deployment.calibration",
        "clients",
    ),
    (
        "server samples under data",
        lambda d: d["data"].update(server_calibration_samples=64),
        "data",
        "has moved to deployment.server_samples",
    ),
    ("too many per round", lambda d: d["training"].update(clients_per_round=9), "training.clients_per_round", "fleet"),
    ("escaping name", lambda d: d.update(name="../../etc"), "name", "no path separators"),
    ("unknown model", lambda d: d.update(model="gpt"), "model", "small_cnn"),
    ("negative alpha", lambda d: d["data"].update(dirichlet_alpha=-1.0), "data.dirichlet_alpha", "greater"),
    ("duplicate site", lambda d: d["sites"][1].update(name="hall"), "sites[1].name", "used twice"),
    ("unknown mode", lambda d: d["training"].update(mode="gossip"), "training.mode", "'semi-sync'"),
    ("semi-sync period", lambda d: d["training"].update(mode="semi-sync"), "training", "needs aggregation.period"),
    (
        "more turns at once than clients",
        lambda d: d["training"].update(mode="async", aggregation={"concurrency": 9}),
        "training.aggregation.concurrency",
        "asks for 9 turns at once but the fleet has 4 clients",
    ),
    (
        "buffer never fills",
        lambda d: d["training"].update(mode="buffered", aggregation={"concurrency": 2, "buffer_size": 3}),
        "training",
        "the buffer would never fill",
    ),
    (
        "staleness option of another kind",
        lambda d: d["training"].update(mode="async", aggregation={"staleness": {"kind": "hinge", "exponent": 1.0}}),
        "training.aggregation.staleness",
        "exponent does not apply to kind hinge",
    ),
]


@pytest.mark.parametrize(("label", "change", "key", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_scenarios_name_file_key_and_problem(write_scenario, label, change, key, fragment):
    path = write_scenario(mutated(change))
    with pytest.raises(InputError) as raised:
        choose_policy(load_scenario(path))  # the two input stages every front door runs first
    message = str(raised.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message
    assert "\n" not in message


def write_text(tmp_path: Path, text: bytes | str) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("name: a\nname: b\n", "duplicate key 'name'"),
        ("- just\n- a list\n", "expected a mapping"),
        (b"name: \xff\xfe\n", "not valid UTF-8"),
        ("name: [unclosed\n", "invalid YAML at line"),
        ("!!python/object/apply:os.system ['echo hacked']\n", "invalid YAML"),
    ],
)
def test_broken_yaml_is_reported_without_running_anything(tmp_path, content, fragment):
    with pytest.raises(InputError, match=fragment):
        load_scenario(write_text(tmp_path, content))


def test_a_missing_file_is_reported(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_scenario(tmp_path / "nope.yaml")


def test_a_zero_rate_in_a_profile_names_the_profile_file(tmp_path):
    (tmp_path / "links").mkdir()
    source = yaml.safe_load((PROFILES / "links" / "lte.yaml").read_text())
    source["uplink"] = "0 Mbit/s"
    (tmp_path / "links" / "lte.yaml").write_text(yaml.safe_dump(source))
    with pytest.raises(InputError) as raised:
        ProfileLibrary(tmp_path).link("lte", referenced_from=Path("s.yaml"), key="k")
    assert str(raised.value).startswith(f"{tmp_path / 'links' / 'lte.yaml'}: uplink: must be greater than zero")


def test_a_profile_number_without_a_source_is_rejected(tmp_path):
    (tmp_path / "devices").mkdir()
    source = yaml.safe_load((PROFILES / "devices" / "rpi4.yaml").read_text())
    del source["sources"]["memory"]
    (tmp_path / "devices" / "rpi4.yaml").write_text(yaml.safe_dump(source))
    with pytest.raises(InputError, match="missing a source for 'memory'"):
        ProfileLibrary(tmp_path).device("rpi4", referenced_from=Path("s.yaml"), key="k")


def test_every_shipped_profile_is_valid_and_sourced():
    library = ProfileLibrary(PROFILES)
    devices = library.available("devices")
    links = library.available("links")
    assert len(devices) >= 11 and len(links) >= 9
    assert {"ltem", "nbiot", "lorawan_eu868"} <= set(links)
    for name in devices:
        profile = library.device(name, referenced_from=Path("test"), key="k")
        assert set(profile.sources) == set(numeric_keys(profile))
    for name in links:
        profile = library.link(name, referenced_from=Path("test"), key="k")
        assert set(profile.sources) == set(numeric_keys(profile))


def test_a_device_active_power_below_idle_is_rejected(tmp_path):
    (tmp_path / "devices").mkdir()
    source = yaml.safe_load((PROFILES / "devices" / "rpi4.yaml").read_text())
    source["power"] = {"idle": "5 W", "active": "3 W"}
    (tmp_path / "devices" / "rpi4.yaml").write_text(yaml.safe_dump(source))
    with pytest.raises(InputError, match=r"power\.active .* must not be below power\.idle"):
        ProfileLibrary(tmp_path).device("rpi4", referenced_from=Path("s.yaml"), key="k")


def test_a_nested_kernel_number_needs_its_unit_and_names_its_key_path(tmp_path):
    (tmp_path / "devices").mkdir()
    source = yaml.safe_load((PROFILES / "devices" / "rpi4.yaml").read_text())
    source["kernels"]["conv"]["throughput"] = 12.5
    (tmp_path / "devices" / "rpi4.yaml").write_text(yaml.safe_dump(source))
    with pytest.raises(InputError) as raised:
        ProfileLibrary(tmp_path).device("rpi4", referenced_from=Path("s.yaml"), key="k")
    assert "kernels.conv.throughput: expected a throughput with a unit" in str(raised.value)


@pytest.mark.parametrize("scenario", sorted((REPO / "scenarios").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_validates(scenario, capsys):
    assert main(["validate", str(scenario)]) == 0
    assert "valid" in capsys.readouterr().out


def test_cli_exits_2_with_one_line_and_no_traceback(write_scenario):
    path = write_scenario(mutated(lambda d: d["training"].update(epochs=3)))
    done = subprocess.run(
        [sys.executable, "-m", "fedhq_sim", "run", str(path), "--out", str(path.parent / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    allowed = (
        "rounds, clients_per_round, local_epochs, local_steps, batch_size, learning_rate, calibration_samples, "
        "round_deadline, over_selection, time_limit, mode, aggregation"
    )
    assert done.stderr == f"error: {path}: training.epochs: unknown key; allowed: {allowed}\n"
    assert "Traceback" not in done.stdout + done.stderr
    assert not (path.parent / "out").exists()


HOSTILE = [
    ("huge seed", lambda d: d.update(seed=2**64), "seed", "less than or equal"),
    ("infinite rate", lambda d: d["training"].update(learning_rate=float("inf")), "training.learning_rate", "finite"),
    ("nan alpha", lambda d: d["data"].update(dirichlet_alpha=float("nan")), "data.dirichlet_alpha", "finite"),
    ("overflowing unit", lambda d: d["training"].update(round_deadline="1e400 s"), "training.round_deadline", "finite"),
    ("long profile name", lambda d: d["server"].update(device="x" * 300), "server.device", "plain name"),
    ("path as profile", lambda d: d["server"].update(link="../links/lte"), "server.link", "plain name"),
    ("nul in profiles_dir", lambda d: None, "profiles_dir", "not a usable path"),
]


@pytest.mark.parametrize(("label", "change", "key", "fragment"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_values_are_input_errors(write_scenario, label, change, key, fragment):
    data = mutated(change)
    path = write_scenario(data)
    if label == "nul in profiles_dir":
        path.write_text(path.read_text().replace(f"profiles_dir: {PROFILES}", 'profiles_dir: "a\\0b"'))
    with pytest.raises(InputError) as raised:
        load_scenario(path)
    assert str(raised.value).startswith(f"{path}: {key}: "), str(raised.value)
    assert fragment in str(raised.value)


def test_deeply_nested_yaml_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="nested too deeply"):
        load_scenario(write_text(tmp_path, "a: " + "[" * 5000))


def test_exponent_floats_without_a_dot_are_numbers(write_scenario):
    path = write_scenario(tiny_scenario_dict())
    path.write_text(path.read_text().replace("learning_rate: 0.05", "learning_rate: 5e-2"))
    assert load_scenario(path).spec.training.learning_rate == 0.05


def test_a_split_without_test_samples_fails_at_validate(write_scenario, capsys):
    path = write_scenario(mutated(lambda d: d["data"].update(test_fraction=0.0001)))
    assert main(["validate", str(path)]) == 2
    assert f"{path}: data: test_fraction" in capsys.readouterr().err


def test_an_output_folder_under_a_file_is_an_input_error(tiny_scenario, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["run", str(tiny_scenario), "--out", str(blocker / "sub"), "--quiet"]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_client_names_are_unique_across_groups_of_one_class(write_scenario):
    data = tiny_scenario_dict()
    data["sites"][0]["devices"].append({"device": "rpi4", "link": "ethernet_1g", "count": 2})
    names = [c.name for c in load_scenario(write_scenario(data)).clients]
    assert len(names) == len(set(names))
    assert "hall/rpi4-3" in names


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--passes", "0"], "command line: --passes: must be at least 1, got 0"),
        (["--repeats", "0"], "command line: --repeats: must be at least 1, got 0"),
        (["--power-idle", "8 W"], "command line: --power-idle/--power-active: give both or neither"),
        (["--power-idle", "0 W", "--power-active", "5 W"], "command line: --power-idle: must be greater than zero"),
        (["--power-idle", "8 W", "--power-active", "6.4 W"], "command line: --power-active: must not be below"),
        (["--power-idle", "8 V", "--power-active", "9 W"], "command line: --power-idle: unknown power unit"),
    ],
)
def test_profile_device_refuses_bad_arguments_before_measuring(arguments, message, capsys):
    assert main(["profile-device", *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")


def test_profile_device_refuses_a_folder_or_an_existing_file_as_out(tmp_path, capsys):
    assert main(["profile-device", "--out", str(tmp_path), "--overwrite"]) == 2
    assert "is a folder" in capsys.readouterr().err
    existing = tmp_path / "gw.yaml"
    existing.write_text("kind: device\n")
    assert main(["profile-device", "--out", str(existing)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_profile_device_writes_a_profile_that_loads_like_the_librarys(tmp_path, capsys):
    out = tmp_path / "devices" / "this_gateway.yaml"
    out.parent.mkdir()
    argv = ["profile-device", "--out", str(out), "--repeats", "1", "--passes", "1", "--threads", "1"]
    assert main([*argv, "--power-idle", "2 W", "--power-active", "5 W"]) == 0
    assert "written to" in capsys.readouterr().err
    profile = ProfileLibrary(tmp_path).device("this_gateway", referenced_from=out, key="device")
    assert profile.name == "this_gateway" and profile.power.idle == 2.0 and profile.power.active == 5.0


def test_options_of_other_modes_are_ignored_so_one_scenario_sweeps_across_modes(write_scenario):
    """A mode sweep sets every mode's options in one scenario; each mode reads its own."""
    options = {"buffer_size": 2, "concurrency": 4, "period": "1 s", "mixing": 0.5}
    for mode in ("sync", "async", "buffered", "semi-sync"):
        change = lambda d, m=mode: d["training"].update(mode=m, over_selection=1.5, aggregation=options)  # noqa: E731
        assert load_scenario(write_scenario(mutated(change))).spec.training.mode == mode
