"""Models by name: the built-ins and a plant's own ``nn.Module``, through one registry.

A scenario names a model as a registered name (``model: resnet8``), with keyword arguments
(``model: {name: resnet8, args: {...}}``), or as a factory in a Python file or module of the
user's (``model: {module: models/vibration.py, factory: build, args: {channels: 3}}``). The
factory (a function or a class) is called with ``args`` plus ``num_classes`` and
``input_shape`` where its signature takes them, and returns an ordinary ``nn.Module``.

A :class:`ModelRef` carries everything a process needs to build the model: for a file, its
text, so a worker process or a Ray node builds exactly the model the scenario was loaded
with, whether or not the file is there. It is also part of every work-cache key.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedhq_sim.rng import seeded_cpu_generator
from fedhq_sim.work import WorkProfile, marker, traced

ModelFactory = Callable[..., nn.Module]
IMAGE_INPUT = (1, 8, 8)
"""The default input shape: the built-in digits, which the built-in image models are sized for."""
MODELS: dict[str, ModelFactory] = {}
"""Every registered model factory, by name."""


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make a model factory (function or class) available as ``model: <name>``."""

    def add(factory: ModelFactory) -> ModelFactory:
        replaces_user_code = registering_code(MODELS[name]) is not None if name in MODELS else False
        if name in MODELS and MODELS[name] is not factory and not replaces_user_code:
            raise ValueError(f"a model named {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return add


@dataclass(frozen=True)
class UserCode:
    """A user's model code: a file's text (``path`` is where it was read) or a module's name."""

    origin: str
    """The file as the scenario names it, or the module name."""
    text: str | None = None
    path: str | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256((self.text if self.text is not None else self.origin).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelRef:
    """A model as a scenario names it: registered ``name`` or ``factory`` of ``code``, and its
    keyword arguments as canonical JSON (hashable, and the same on every host)."""

    name: str | None = None
    factory: str | None = None
    code: UserCode | None = None
    args_json: str = "{}"

    @property
    def args(self) -> dict[str, Any]:
        return json.loads(self.args_json)

    @property
    def label(self) -> str:
        """How tables and messages name it: ``resnet8``, ``models/vibration.py:build``."""
        base = self.name if self.name is not None else f"{self.code.origin}:{self.factory}"
        return base if self.args_json == "{}" else f"{base}{self.args_json}"


def model_ref(
    name: str | None = None, *, factory: str | None = None, code: UserCode | None = None, args: dict | None = None
) -> ModelRef:
    """A :class:`ModelRef` with its arguments in canonical form."""
    return ModelRef(name, factory, code, json.dumps(args or {}, sort_keys=True))


def read_user_code(module: str, relative_to: Path) -> UserCode:
    """The code a scenario's ``model.module`` names: a ``.py`` file (relative to the scenario
    file) is read now; a module name is imported where the model is built."""
    if not module.endswith(".py"):
        return UserCode(module)
    path = (relative_to.parent / module).resolve()
    return UserCode(module, path.read_text(encoding="utf-8"), str(path))


_LOADED: dict[str, types.ModuleType] = {}
_CODE_OF_MODULE: dict[str, UserCode] = {}
"""The user code each loaded module ran from, by the module's name."""


def registering_code(factory: ModelFactory) -> UserCode | None:
    """The user code whose module defined ``factory`` (None for the package's and installed code)."""
    return _CODE_OF_MODULE.get(getattr(factory, "__module__", ""))


def load_user_code(code: UserCode) -> types.ModuleType:
    """Run a user's module once per process (keyed by its text), so its registrations happen."""
    key = code.digest
    if key in _LOADED:
        return _LOADED[key]
    if code.text is None:
        module = importlib.import_module(code.origin)
        _CODE_OF_MODULE[module.__name__] = code
    else:
        module = types.ModuleType(f"fedhq_sim_user_model_{key}")
        module.__file__ = code.path
        sys.modules[module.__name__] = module  # dataclasses and pickling look classes up here
        _CODE_OF_MODULE[module.__name__] = code
        directory = str(Path(code.path).parent)
        sys.path.insert(0, directory)  # so the file can import its neighbours
        try:
            exec(compile(code.text, code.path, "exec"), module.__dict__)  # noqa: S102 - the user's own model file
        finally:
            sys.path.remove(directory)
    _LOADED[key] = module
    return module


def model_factory(ref: ModelRef) -> ModelFactory:
    """The factory a reference names; ``LookupError`` with the choices when there is none."""
    module = load_user_code(ref.code) if ref.code is not None else None
    if ref.factory is not None:
        factory = getattr(module, ref.factory, None)
        if not callable(factory):
            raise LookupError(f"'{ref.code.origin}' defines no function or class '{ref.factory}'")
        return factory
    if ref.name not in MODELS:
        raise LookupError(f"unknown model '{ref.name}' (registered: {', '.join(sorted(MODELS))})")
    return MODELS[ref.name]


def _call(factory: ModelFactory, num_classes: int, input_shape: tuple[int, ...], args: dict) -> nn.Module:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: give it only the arguments
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    given = dict(args)
    for key, value in (("num_classes", num_classes), ("input_shape", tuple(input_shape))):
        if (key in parameters or takes_any) and key not in given:
            given[key] = value
    model = factory(**given)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


Arch = tuple[ModelRef | str, int, tuple[int, ...]]
"""A model as its operations see it: reference, number of classes, input shape (a cache-key part)."""


def as_ref(model: ModelRef | str) -> ModelRef:
    """A reference for a registered name, or the reference itself."""
    return model if isinstance(model, ModelRef) else model_ref(model)


def build_model(
    model: ModelRef | str, num_classes: int, seed: int, input_shape: tuple[int, ...] = IMAGE_INPUT
) -> nn.Module:
    """A freshly initialised model; the same ``seed`` gives the same weights on any host."""
    ref = as_ref(model)
    factory = model_factory(ref)
    with seeded_cpu_generator(seed):
        return _call(factory, num_classes, input_shape, ref.args)


def traced_build(
    model_ref: ModelRef | str, num_classes: int, seed: int, input_shape: tuple[int, ...] = IMAGE_INPUT
) -> tuple[nn.Module, WorkProfile]:
    """:func:`build_model` with its work: initialisation ops plus a marker per module built.

    The factory is looked up first, untraced: a worker's first build would otherwise run the
    user's module (and any tensor operation at its top level) inside the trace, and its
    profile would differ from the main process's.
    """
    model_factory(as_ref(model_ref))
    model, work = traced(lambda: build_model(model_ref, num_classes, seed, input_shape))
    return model, work + marker("build_module", sum(1 for _ in model.modules()))


def traced_load(model: nn.Module, state: dict[str, torch.Tensor]) -> WorkProfile:
    """``model.load_state_dict(state)`` with its work: copy ops plus a marker per tensor loaded."""
    _, work = traced(lambda: model.load_state_dict(state))
    return work + marker("load_tensor", len(state))
