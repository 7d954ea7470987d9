"""The scenario's policy resolved: its registered class (a user's module imported first) and
its options validated against that class.

Kept out of :mod:`fedhq_sim.scenario`, which only reads and checks the file: resolving a
policy runs code (the built-in policies, a user's module), and the policies themselves read
the hardware analysis, which reads the scenario. Bad input still costs no run: every front
door chooses the policy before it starts any work.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from fedhq_sim.errors import InputError
from fedhq_sim.policies.base import POLICIES, Policy, PolicyOptions
from fedhq_sim.schema import validate

if TYPE_CHECKING:
    from fedhq_sim.scenario import LoadedScenario

_USER_MODULES: dict[str, ModuleType] = {}


@dataclass(frozen=True)
class PolicyChoice:
    """The class a run instantiates and the options it passes."""

    policy_class: type[Policy]
    options: PolicyOptions


def import_user_policies(module: str, path: Path) -> None:
    """Run a user's module once, so that its ``@register_policy`` classes join ``POLICIES``."""
    is_file = module.endswith(".py")
    key = str((path.parent / module).resolve()) if is_file else module
    if key in _USER_MODULES:
        return
    try:
        if is_file:
            if not Path(key).is_file():
                raise InputError(path, "policy.module", f"no such file: {key}")
            spec = importlib.util.spec_from_file_location(f"fedhq_sim_user_{Path(key).stem}", key)
            loaded = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded)
        else:
            loaded = importlib.import_module(module)
    except InputError:
        raise
    except Exception as error:  # the user's code: report it in one line, whatever it raised
        raise InputError(
            path, "policy.module", f"importing '{module}' failed: {type(error).__name__}: {error}"
        ) from None
    _USER_MODULES[key] = loaded


def choose_policy(scenario: LoadedScenario) -> PolicyChoice:
    """The scenario's policy class and validated options; an unknown name or a bad option is
    an :class:`InputError` naming the key."""
    spec, path = scenario.spec, scenario.path
    if spec.policy.module is not None:
        import_user_policies(spec.policy.module, path)
    policy_class = POLICIES.get(spec.policy.name)
    if policy_class is None:
        names = ", ".join(sorted(POLICIES))
        raise InputError(path, "policy.name", f"unknown policy '{spec.policy.name}' (available: {names})")
    given = dict(spec.policy.model_extra or {})
    if "bits" in given:
        raise InputError(path, "policy.bits", "has moved: the deployed bit width is the run's, set deployment.bits")
    given["bits"] = spec.deployment.bits  # every policy quantizes at the deployment's width
    options = validate(policy_class.Options, given, path, prefix=("policy",))
    return PolicyChoice(policy_class, options)


def check_timing_only(scenario: LoadedScenario, choice: PolicyChoice) -> None:
    """Refuse a policy whose assignments depend on what real training produces: timing-only
    mode produces none of it, so its timings would not be those of a full run."""
    if choice.policy_class.observes_training:
        raise InputError(
            scenario.path,
            "policy.name",
            f"policy '{scenario.spec.policy.name}' learns from real training (losses, divergence, quantization "
            "error), which timing-only mode does not produce; use coarse-init (FedHQ's initialization, kept "
            "fixed) or run in full mode",
        )
