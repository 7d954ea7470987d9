"""Compare policies on one scenario over several seeds: the evidence of which policy wins.

Each (policy, seed) pair is one full simulation of the scenario with ``policy.name`` and
``seed`` overridden (see :mod:`fedhq_sim.batch`); the policy keeps whichever options of the
scenario's ``policy`` section it accepts, so ``random-hybrid`` and ``fedhq`` share one
latency budget, and ``bits`` is the same for all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedhq_sim.batch import Variant
from fedhq_sim.errors import InputError
from fedhq_sim.policies import POLICIES
from fedhq_sim.policies.choice import import_user_policies
from fedhq_sim.yamlio import load_yaml_mapping

DEFAULT_POLICIES = ("all-fp32", "all-ptq", "all-qat", "random-hybrid", "deadline-greedy", "fedhq")
TIMING_ONLY_POLICIES = ("all-fp32", "all-ptq", "all-qat", "random-hybrid", "deadline-greedy", "coarse-init")
"""The defaults of a timing-only comparison: fedhq learns from real training, so its
initialization (coarse-init) stands in for it."""


def policy_overrides(scenario: Path, policy: str) -> dict[str, Any]:
    """The ``policy`` section for ``policy``: the scenario's options that its class accepts."""
    section = load_yaml_mapping(scenario).get("policy")
    section = section if isinstance(section, dict) else {}
    if isinstance(section.get("module"), str):  # a user's policy registers on import
        import_user_policies(section["module"], scenario)
    cls = POLICIES.get(policy)
    if cls is None:
        names = ", ".join(sorted(POLICIES))
        raise InputError(scenario, "policy.name", f"unknown policy '{policy}' (available: {names})")
    kept = {k: v for k, v in section.items() if k in cls.Options.model_fields and k != "bits"}  # deployment.bits
    if "module" in section:
        kept["module"] = section["module"]
    return {"policy": {"name": policy, **kept}}


def policy_variants(
    scenario: Path, policies: Sequence[str], seeds: Sequence[int], common: Mapping[str, Any] | None = None
) -> list[Variant]:
    """Every (policy, seed), each with ``common`` overrides too (a what-if shared by all,
    applied after the policy section, so ``policy.latency_budget=0.1`` holds for every policy
    that has the option)."""
    return [
        Variant(scenario, {"policy": p}, s, {**policy_overrides(scenario, p), **(common or {})})
        for p in policies
        for s in seeds
    ]
