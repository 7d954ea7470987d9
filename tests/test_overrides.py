"""Key-path overrides (``--set``) of scenario values."""

import pytest

from fedhq_sim.errors import InputError
from fedhq_sim.overrides import parse_assignment, parse_key_path, with_overrides

RAW = {
    "seed": 1,
    "training": {"rounds": 3},
    "sites": [
        {"name": "a", "backhaul": "lte", "devices": [{"device": "rpi4", "count": 2}]},
        {"name": "b", "backhaul": "lte", "devices": [{"device": "rpi5", "count": 1}, {"device": "x", "count": 1}]},
    ],
}


def test_key_paths_walk_mappings_and_lists():
    assert parse_key_path("sites[1].devices[*].count") == ["sites", 1, "devices", "*", "count"]
    assert parse_key_path("training.rounds") == ["training", "rounds"]
    for bad in ("", "a..b", "sites[x]", "sites[0", "a-b", "[0]"):
        with pytest.raises(ValueError, match="not a key path"):
            parse_key_path(bad)


def test_overrides_set_nested_keys_and_list_items_without_touching_the_original():
    result = with_overrides(RAW, {"training.rounds": 5, "data.dirichlet_alpha": 0.1, "sites[1].backhaul": "fibre_1g"})
    assert result["training"] == {"rounds": 5}
    assert result["data"] == {"dirichlet_alpha": 0.1}
    assert [s["backhaul"] for s in result["sites"]] == ["lte", "fibre_1g"]
    assert RAW["training"] == {"rounds": 3} and RAW["sites"][1]["backhaul"] == "lte"


def test_null_removes_a_key_so_its_default_applies():
    result = with_overrides(RAW, {"training.rounds": None, "training.local_steps": 4})
    assert result["training"] == {"local_steps": 4}
    assert parse_assignment("training.local_epochs=null") == ("training.local_epochs", [None])


def test_a_star_sets_every_item():
    result = with_overrides(RAW, {"sites[*].devices[0].count": 8})
    assert [s["devices"][0]["count"] for s in result["sites"]] == [8, 8]
    assert result["sites"][1]["devices"][1]["count"] == 1


@pytest.mark.parametrize(
    ("key", "problem"),
    [("sites[5].backhaul", "has 2 items"), ("seed[0]", "not a list"), ("training.rounds.x", "not a mapping")],
)
def test_an_impossible_override_names_its_key(key, problem):
    with pytest.raises(InputError, match=problem) as caught:
        with_overrides(RAW, {key: 1}, "s.yaml")
    assert caught.value.key_path == key


def test_assignments_read_values_as_yaml_scalars():
    assert parse_assignment("training.clients_per_round=4,8, 16") == ("training.clients_per_round", [4, 8, 16])
    assert parse_assignment("sites[0].backhaul=lte,fibre_1g") == ("sites[0].backhaul", ["lte", "fibre_1g"])
    assert parse_assignment("training.round_deadline=30 s") == ("training.round_deadline", ["30 s"])
    for bad in ("rounds", "=3", "training.rounds=", "a..b=1", "x=[1, 2]", "x={a: 1}"):
        with pytest.raises(InputError):
            parse_assignment(bad)
