"""Scenario values set from the command line or from code: ``sites[1].backhaul=lte``.

A key path walks the scenario mapping with dots for mapping keys and ``[i]`` for list items;
``[*]`` sets the value in every item (``sites[*].devices[0].count=8``: eight of the first
device class on every site). Missing mapping keys are created; a list index must exist; the
value ``null`` removes a mapping key, so its default applies again.
The overridden mapping is validated afterwards exactly like the file, so an override is
checked like a value written in the scenario.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedhq_sim.errors import InputError

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+|\*)\]")
Step = str | int  # a mapping key, an index, or "*" for every item


def parse_key_path(key: str) -> list[Step]:
    """``"sites[1].devices[*].count"`` -> ``["sites", 1, "devices", "*", "count"]``."""
    steps: list[Step] = []
    for part in key.split("."):
        position = 0
        matched = False
        for match in _STEP.finditer(part):
            is_name = match.group(1) is not None
            if match.start() != position or is_name == matched:  # a name first, then indices
                break
            name, index = match.groups()
            steps.append(name if name else ("*" if index == "*" else int(index)))
            position, matched = match.end(), True
        if not matched or position != len(part):
            raise ValueError(f"'{key}' is not a key path (expected e.g. training.rounds or sites[0].backhaul)")
    return steps


def _set(node: Any, steps: list[Step], value: Any, done: str, source: Path | str, key: str) -> None:
    step, rest = steps[0], steps[1:]
    if isinstance(step, str) and step != "*":
        if not isinstance(node, dict):
            raise InputError(source, key, f"'{done}' is not a mapping, so it has no key '{step}'")
        if not rest:
            if value is None:  # KEY=null: back to the default (e.g. local_epochs for local_steps)
                node.pop(step, None)
            else:
                node[step] = copy.deepcopy(value)
            return
        if step not in node:
            node[step] = {}
        _set(node[step], rest, value, f"{done}.{step}".lstrip("."), source, key)
        return
    if not isinstance(node, list):
        raise InputError(source, key, f"'{done}' is not a list, so it cannot be indexed")
    indices = range(len(node)) if step == "*" else [step]
    for index in indices:
        if index >= len(node):
            raise InputError(source, key, f"'{done}' has {len(node)} items, so [{index}] does not exist")
        if rest:
            _set(node[index], rest, value, f"{done}[{index}]", source, key)
        else:
            node[index] = copy.deepcopy(value)


def with_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], source: Path | str = "overrides") -> dict:
    """A copy of a scenario mapping with each ``key path -> value`` of ``overrides`` set."""
    result = copy.deepcopy(raw)
    for key, value in overrides.items():
        try:
            steps = parse_key_path(key)
        except ValueError as error:
            raise InputError(source, key, str(error)) from None
        _set(result, steps, value, "", source, key)
    return result


def parse_assignment(text: str) -> tuple[str, list[Any]]:
    """``"training.rounds=5,10"`` -> ``("training.rounds", [5, 10])``; each value is read as a
    YAML scalar (numbers become numbers, ``20 ms`` stays a string)."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise InputError("command line", "--set", f"expected KEY=VALUE[,VALUE...], got '{text}'")
    key = key.strip()
    try:
        parse_key_path(key)
    except ValueError as error:
        raise InputError("command line", "--set", str(error)) from None
    parsed = []
    for item in values.split(","):
        try:
            value = yaml.safe_load(item.strip())
        except yaml.YAMLError:
            raise InputError("command line", "--set", f"'{item}' is not a value") from None
        if isinstance(value, dict | list):
            raise InputError("command line", "--set", f"'{item.strip()}' is not a single value")
        parsed.append(value)
    return key, parsed
