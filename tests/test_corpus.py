"""Hostile and broken input: a corpus of files, and random mutations of valid scenarios.

Every file under ``tests/corpus/`` is broken in one way its header names (``# expect: KEY |
FRAGMENT``; ``-`` for a problem of the whole file). ``fedhq-sim validate`` must refuse each
with exit code 2 and one line naming the file, the key path and the problem, never a
traceback. Broken profiles are validated through a scenario that uses them where their
header says (``# use-as: KEY``), in a copy of the shipped library.
"""

import copy
import math
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedhq_sim.cli import main
from tests.conftest import PROFILES, tiny_scenario_dict

CORPUS = Path(__file__).parent / "corpus"
SCENARIOS = sorted((CORPUS / "scenarios").glob("*.yaml"))
PROFILE_FILES = sorted((CORPUS / "profiles").rglob("*.yaml"))


def _header(path: Path, field: str) -> str:
    """A ``# field: value`` line of the file's header (read as bytes: some files are not UTF-8)."""
    for line in path.read_bytes().splitlines():
        text = line.decode("ascii", errors="replace")
        if text.startswith(f"# {field}: "):
            return text.removeprefix(f"# {field}: ")
    raise AssertionError(f"{path.name} has no '# {field}:' line")


def _refused_in_one_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    return lines[0]


def test_the_corpus_holds_at_least_thirty_broken_files():
    assert len(SCENARIOS) + len(PROFILE_FILES) >= 30


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_a_broken_scenario_is_refused_in_one_line_naming_file_key_and_problem(path, capsys):
    key, fragment = (part.strip() for part in _header(path, "expect").split("|"))
    line = _refused_in_one_line(["validate", str(path)], capsys)
    assert line.startswith(f"error: {path}: " + ("" if key == "-" else f"{key}: ")), line
    assert fragment in line, line


def _set(data: dict, key_path: str, value: object) -> None:
    node = data
    *parents, last = [int(k) if k.isdigit() else k for k in key_path.replace("[", ".").replace("]", "").split(".")]
    for part in parents:
        node = node[part]
    node[last] = value


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_a_broken_profile_is_refused_in_one_line_naming_the_profile(path, tmp_path, capsys):
    library = tmp_path / "profiles"
    shutil.copytree(PROFILES, library)
    kind = path.parent.name
    shutil.copy(path, library / kind / path.name)
    data = tiny_scenario_dict() | {"profiles_dir": str(library)}
    _set(data, _header(path, "use-as"), path.stem)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(data, sort_keys=False))
    key, fragment = (part.strip() for part in _header(path, "expect").split("|"))
    line = _refused_in_one_line(["validate", str(scenario)], capsys)
    broken = library / kind / path.name
    assert line.startswith(f"error: {broken}: " + ("" if key == "-" else f"{key}: ")), line
    assert fragment in line, line


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a scenario mapping, inner nodes included."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -1, 0, 10**12, "", "0 s", "-1 h", "1e400 s", "../../x", "x" * 300]),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_mutation_of_a_valid_scenario_raises_a_traceback(data, tmp_path_factory, capsys):
    """Replace, delete or add one value anywhere in a valid scenario: the result is valid (exit 0)
    or refused in one line (exit 2), never a crash."""
    scenario = tiny_scenario_dict() | {"profiles_dir": str(PROFILES)}
    paths = _paths(scenario)
    path = data.draw(st.sampled_from(paths))
    mutated = copy.deepcopy(scenario)
    parent = mutated
    for part in path[:-1]:
        parent = parent[part]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = data.draw(HOSTILE_VALUES)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(min_size=1, max_size=8))] = data.draw(HOSTILE_VALUES)
    else:
        parent.append(data.draw(HOSTILE_VALUES))
    file = tmp_path_factory.mktemp("mutated") / "s.yaml"
    file.write_text(yaml.safe_dump(mutated, sort_keys=False, allow_unicode=True))
    code = main(["validate", str(file)])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert code in (0, 2), out.err
    if code == 2:
        assert len(out.err.strip().splitlines()) == 1, out.err
