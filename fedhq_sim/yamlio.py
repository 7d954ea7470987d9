"""Safe, strict YAML reading for scenarios and profiles.

Only ``yaml.SafeLoader`` is used, so no value in a file is ever executed. A key repeated
in one mapping is an error (PyYAML would silently keep the last one, which hides typos).
Every failure becomes an :class:`~fedhq_sim.errors.InputError` naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fedhq_sim.errors import InputError

MAX_NODES = 1_000_000
"""A document that expands to more nodes than this is an alias bomb (each ``*alias`` repeats a
whole subtree), not a scenario: the largest shipped scenario has a few hundred."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys."""


def _expanded_nodes(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias expanded (shared subtrees counted
    once each time they are referenced, computed once)."""
    known = sizes.get(id(node))
    if known is not None:
        if known < 0:
            raise yaml.composer.ComposerError(None, None, "an alias refers to its own ancestor", node.start_mark)
        return known
    sizes[id(node)] = -1  # in progress: meeting it again below is a cycle
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_nodes(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_nodes(k, sizes) + _expanded_nodes(v, sizes) for k, v in node.value)
    else:
        total = 1
    sizes[id(node)] = total
    if total > MAX_NODES:
        raise yaml.composer.ComposerError(
            None, None, f"expands to more than {MAX_NODES:,} nodes (an alias bomb?)", node.start_mark
        )
    return total


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {line})", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# YAML 1.1 reads 1e-3 (no dot) as a string; accept it as a float, as YAML 1.2 and people do.
_StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    """Read ``path`` as a YAML mapping, or raise :class:`InputError` saying why not."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "", "file not found") from None
    except OSError as error:
        raise InputError(path, "", f"cannot read file ({error.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(path, "", f"not valid UTF-8 text (byte {error.start})") from None
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _expanded_nodes(node, {})
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise InputError(path, "", f"invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise InputError(path, "", "invalid YAML: nested too deeply") from None
    if data is None:
        raise InputError(path, "", "the file is empty; expected a mapping of keys")
    if not isinstance(data, dict):
        raise InputError(path, "", f"expected a mapping of keys at the top level, got {type(data).__name__}")
    return data
