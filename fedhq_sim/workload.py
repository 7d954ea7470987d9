"""The model and the data a scenario names: their schema, and their resolution.

``model`` is a registered name, or a mapping naming a factory in the user's file or module;
``data.dataset`` is a registered name, or a mapping naming a file of the plant's (NPZ, CSV,
an image folder). Resolving both yields plain values (:class:`~fedhq_sim.models.ModelRef`,
:class:`DataSource`) that any process can rebuild the model and reload the data from, and
checks up front that the model takes the data: one batch through it, before any round.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator

from fedhq_sim.datasets import Dataset, load_registered, read_csv, read_image_folder, read_npz
from fedhq_sim.errors import InputError, one_line
from fedhq_sim.models import (
    STAND_IN_MODELS,
    ModelRef,
    UserCode,
    build_model,
    load_user_code,
    model_ref,
    read_user_code,
)
from fedhq_sim.models.registry import model_factory, registering_code
from fedhq_sim.quant.backend import calibrate, convert, prepare_ptq, prepare_qat, quantized_layers
from fedhq_sim.schema import StrictModel

GENERATED_DATASETS = ("plant_sensors",)


def _named(value: Any) -> Any:
    """A plain name stands for ``{name: <it>}``: ``model: resnet8``."""
    return {"name": value} if isinstance(value, str) else value


class ModelSpec(StrictModel):
    """A model: a registered ``name`` (the plain string form), or a ``factory`` in ``module``
    (a ``.py`` file relative to the scenario, or an importable module name), with ``args``."""

    name: str | None = None
    module: str | None = None
    factory: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)

    _as_mapping = model_validator(mode="before")(_named)

    @model_validator(mode="after")
    def _name_or_factory(self) -> ModelSpec:
        if (self.name is None) == (self.factory is None):
            raise ValueError("give a registered name, or a factory in a module (module and factory)")
        if self.factory is not None and self.module is None:
            raise ValueError("a factory needs the module that defines it (module: models/mine.py)")
        return self


_FILE_OPTIONS = {
    "npz": ("x", "y", "kind"),
    "csv": ("label", "features", "standardize"),
    "image_folder": ("size", "channels"),
}


class DatasetSpec(StrictModel):
    """A dataset: a registered ``name`` (the plain string form), or a plant's file: ``format``
    ``npz`` (arrays ``x`` (N, ...) and ``y`` (N,)), ``csv`` (a header, feature columns and a
    ``label`` column) or ``image_folder`` (one sub-folder of PNG/JPEG images per class) at
    ``path`` (relative to the scenario), with that format's options."""

    name: str | None = None
    format: Literal["npz", "csv", "image_folder"] | None = None
    path: str | None = None
    x: str | None = None  # npz: the inputs' array (default x)
    y: str | None = None  # npz: the labels' array (default y)
    kind: Literal["image", "sequence", "tabular"] | None = None  # npz: default from the inputs' shape
    label: str | None = None  # csv: the label column (class names or integers)
    features: list[str] | None = Field(default=None, min_length=1)  # csv: default every other column
    standardize: bool | None = None  # csv: scale each feature to mean 0, sd 1 (default true)
    size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]] | None = None
    channels: Literal[1, 3] | None = None  # image_folder: 1 grey or 3 RGB (default 3)

    _as_mapping = model_validator(mode="before")(_named)

    @model_validator(mode="after")
    def _name_or_file(self) -> DatasetSpec:
        if (self.name is None) == (self.format is None):
            raise ValueError("give a registered dataset name, or a file's format and path")
        if self.format is not None and self.path is None:
            raise ValueError(f"a {self.format} dataset needs the path of its file")
        allowed = _FILE_OPTIONS.get(self.format, ())
        options = [k for keys in _FILE_OPTIONS.values() for k in keys]
        stray = [k for k in options if k in self.model_fields_set and k not in allowed]
        if stray:
            owner = next(f for f, keys in _FILE_OPTIONS.items() if stray[0] in keys)
            this = f"{self.format} files" if self.format else "a registered dataset"
            raise ValueError(f"'{stray[0]}' is an option of {owner} files, not of {this}")
        if self.format == "csv" and self.label is None:
            raise ValueError("a csv dataset needs its label column (label: <column>)")
        return self

    def options(self) -> dict[str, Any]:
        """The reader's keyword arguments (for a file)."""
        given = {k: getattr(self, k) for k in _FILE_OPTIONS[self.format] if getattr(self, k) is not None}
        if self.format == "npz":
            given = {{"x": "x_key", "y": "y_key"}.get(k, k): v for k, v in given.items()}
        return given


class DataSpec(StrictModel):
    """Which dataset, how it is split, and how skewed the clients' shares are."""

    dataset: DatasetSpec
    module: str | None = None  # a user's @register_dataset module: a .py file (relative) or a module name
    args: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of a registered dataset
    dirichlet_alpha: float = Field(gt=0.0, le=1e6)
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    min_client_samples: int = Field(default=8, ge=1)
    samples_per_class: int | None = Field(default=None, ge=10, le=200_000)
    """How many readings of each condition ``plant_sensors`` generates (default 600): a fleet
    of thousands needs more than the default 3,600. The digits are a fixed set of 1,797."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, given: Any) -> Any:
        if isinstance(given, dict) and "server_calibration_samples" in given:
            raise ValueError("server_calibration_samples has moved to deployment.server_samples")
        return given

    @model_validator(mode="after")
    def _generated_only(self) -> DataSpec:
        if self.samples_per_class is not None and self.dataset.name not in GENERATED_DATASETS:
            raise ValueError(f"samples_per_class sizes a generated dataset ({', '.join(GENERATED_DATASETS)})")
        if self.args and self.dataset.name is None:
            raise ValueError("args are for a registered dataset; a file's options go beside its path")
        return self


@dataclass(frozen=True)
class DataSource:
    """Where a scenario's data comes from, as plain values: a registered ``name`` with its
    arguments (and the user's module that registers it), or a file ``format`` at ``path``."""

    name: str | None
    format: str | None
    path: str | None
    options_json: str
    code: UserCode | None = None
    where: str = ""
    """The scenario file, for errors about a registered dataset."""
    stamp: tuple[int, int] = (0, 0)
    """A file's modification time and size: a file changed since is read again."""

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"{self.format}:{self.path}"


_READERS = {"npz": read_npz, "csv": read_csv, "image_folder": read_image_folder}


def data_source(spec: DataSpec, path: Path) -> DataSource:
    """The :class:`DataSource` of a scenario's ``data`` section (file paths made absolute)."""
    code = _user_code(spec.module, path, "data.module") if spec.module is not None else None
    dataset = spec.dataset
    if dataset.name is not None:
        args = dict(spec.args)
        if spec.samples_per_class is not None:
            args["samples_per_class"] = spec.samples_per_class
        return DataSource(dataset.name, None, None, json.dumps(args, sort_keys=True), code, str(path))
    resolved = (path.parent / dataset.path).resolve()
    if not resolved.exists():
        raise InputError(path, "data.dataset.path", f"no such file or folder: {dataset.path}")
    options = json.dumps(dataset.options(), sort_keys=True)
    return DataSource(None, dataset.format, str(resolved), options, code, str(path), _stamp(resolved))


def _stamp(path: Path) -> tuple[int, int]:
    """The latest modification time and the total size of a file, or of every file in a folder
    (an image replaced inside a class folder changes neither the folder's time nor its size)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [f.stat() for f in files]
    return max((s.st_mtime_ns for s in stats), default=0), sum(s.st_size for s in stats)


def inputs_digest(model: ModelRef, source: DataSource) -> str:
    """What a run read besides its scenario file: the model's and the data's code, and the
    data file's time and size. A resumed run must read the same."""
    parts = [model.code.digest if model.code else "", source.code.digest if source.code else "", *source.stamp]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def load_data(source: DataSource) -> Dataset:
    """The dataset a source names, read once per process (errors are :class:`InputError`)."""
    if source.code is not None:
        load_user_code(source.code)
    options = json.loads(source.options_json)
    if source.name is not None:
        return load_registered(source.name, options, source.where)
    if options.get("size") is not None:
        options["size"] = tuple(options["size"])
    return _READERS[source.format](Path(source.path), **options)


def _user_code(module: str, path: Path, key: str) -> UserCode:
    try:
        code = read_user_code(module, path)
        load_user_code(code)
    except FileNotFoundError:
        raise InputError(path, key, f"no such file: {module}") from None
    except Exception as error:  # the user's code: report it in one line, whatever it raised
        raise InputError(path, key, f"importing '{module}' failed: {type(error).__name__}: {error}") from None
    return code


def resolve_model(spec: ModelSpec, path: Path) -> ModelRef:
    """The :class:`ModelRef` of a scenario's ``model`` (its user code read and run once)."""
    code = _user_code(spec.module, path, "model.module") if spec.module is not None else None
    try:
        ref = model_ref(spec.name, factory=spec.factory, code=code, args=spec.args)
    except TypeError as error:  # a YAML value with no JSON form (a date, binary data)
        raise InputError(path, "model.args", f"expected plain numbers, strings, lists and mappings ({error})") from None
    try:
        factory = model_factory(ref)
    except LookupError as error:
        raise InputError(path, "model", str(error.args[0])) from None
    registered_by = registering_code(factory)
    if ref.code is None and registered_by is not None:  # a name that data.module or policy.module registered
        ref = model_ref(ref.name, code=registered_by, args=spec.args)  # so every worker loads it too
    return ref


def check_model(ref: ModelRef, data: Dataset, path: Path, *, quantizes: bool) -> None:
    """Build the model for the data and run two samples through everything a round does with
    it: an eval forward, and (for a quantizing policy) a QAT training step and PTQ's prepare,
    calibrate and convert. A model that cannot take the data, gives the wrong number of
    outputs, or breaks under quantization fails here with the reason, not in round 1."""
    classes = len(data.classes)
    x, y = data.samples.x[:2], data.samples.y[:2]
    stage = "build"
    try:
        model = build_model(ref, classes, seed=0, input_shape=data.input_shape)
        stage = "run"
        model.eval()
        with torch.no_grad():
            out = model(x)
        if quantizes and isinstance(out, torch.Tensor) and tuple(out.shape) == (len(x), classes):
            stage = "train under QAT"
            qat = prepare_qat(model)
            torch.nn.functional.cross_entropy(qat(x), y).backward()
            stage = "quantize (PTQ)"
            prepared = prepare_ptq(model)
            calibrate(prepared, [x])
            with torch.no_grad():
                convert(prepared)(x)
    except Exception as error:  # the user's model: report it in one line, whatever it raised
        inputs = f"{data.kind} inputs of shape {data.input_shape}"
        what = {"build": f"cannot be built for {inputs}", "run": f"cannot take {inputs}"}.get(stage, f"cannot {stage}")
        message = one_line(f"{ref.label} {what}: {type(error).__name__}: {error}")
        raise InputError(path, "model", message) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(path, "model", f"{ref.label} gives outputs {shape}; the data has {classes} classes")
    if quantizes and not quantized_layers(model):
        message = f"{ref.label} has no nn.Conv1d/2d/3d or nn.Linear layer (of exactly those classes) to quantize"
        raise InputError(path, "model", message)


STAND_IN_NOTE = (
    "The model is one of fedhq-sim's small built-in stand-ins ({parameters:,} parameters), not a plant's "
    "model: its rounds cost a small fraction of what a deployed model's would. Name your own model "
    "and data in the scenario (docs/tutorial.md, section 9)."
)


def workload_summary(model: ModelRef, source: DataSource) -> dict[str, Any]:
    """What ``run.json`` and the report say about the model and the data a run used."""
    data = load_data(source)
    built = build_model(model, len(data.classes), seed=0, input_shape=data.input_shape)
    parameters = sum(p.numel() for p in built.parameters())
    stand_in = model.code is None and model.name in STAND_IN_MODELS
    return {
        "model": model.label,
        "parameters": parameters,
        "quantized_layers": len(quantized_layers(built)),
        "data": source.label if source.name is not None else f"{source.format}: {Path(source.path).name}",
        "data_kind": data.kind,
        "input_shape": list(data.input_shape),
        "samples": len(data.samples),
        "classes": list(data.classes),
        **({"note": STAND_IN_NOTE.format(parameters=parameters)} if stand_in else {}),
    }
