"""Shared pieces of the strict input schema: quantity types and error translation.

Scenarios and profiles are pydantic models with ``extra="forbid"`` and strict types, so an
unknown key, a missing key or a wrong type is caught in one place. :func:`validate` turns
pydantic's error into one :class:`InputError` line with the file and the dotted key path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from fedhq_sim import units
from fedhq_sim.errors import InputError


class StrictModel(BaseModel):
    """Base for every input model: frozen, no unknown keys, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _positive(parse):
    def check(value: object) -> float:
        parsed = parse(value)
        if parsed <= 0:
            raise ValueError(f"must be greater than zero, got {value!r}")
        return parsed

    return check


def _non_negative(parse):
    def check(value: object) -> float:
        parsed = parse(value)
        if parsed < 0:
            raise ValueError(f"must not be negative, got {value!r}")
        return parsed

    return check


Seconds = Annotated[float, BeforeValidator(_positive(units.parse_duration_s))]
NonNegativeSeconds = Annotated[float, BeforeValidator(_non_negative(units.parse_duration_s))]
BitRate = Annotated[float, BeforeValidator(_positive(units.parse_bit_rate_bps))]
ByteRate = Annotated[float, BeforeValidator(_positive(units.parse_byte_rate_Bps))]
ByteSize = Annotated[float, BeforeValidator(_positive(units.parse_size_bytes))]
NonNegativeByteSize = Annotated[float, BeforeValidator(_non_negative(units.parse_size_bytes))]
Watts = Annotated[float, BeforeValidator(_positive(units.parse_power_w))]
OpsRate = Annotated[float, BeforeValidator(_positive(units.parse_throughput_ops))]
Fraction = Annotated[float, BeforeValidator(units.parse_fraction)]


def _duty_cycle(value: object) -> float:
    if not isinstance(value, bool) and value in (1, "100 %"):
        return 1.0
    parsed = units.parse_fraction(value)
    if parsed <= 0:
        raise ValueError(f"a duty cycle must be greater than zero, got {value!r}")
    return parsed


DutyCycle = Annotated[float, BeforeValidator(_duty_cycle)]

M = TypeVar("M", bound=BaseModel)


def key_path(location: tuple[Any, ...]) -> str:
    """``("sites", 0, "devices")`` -> ``"sites[0].devices"``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _model_at(model: type[BaseModel], location: tuple[Any, ...]) -> type[BaseModel] | None:
    """The nested model that holds the key at ``location`` (for listing its allowed keys)."""
    current: type[BaseModel] | None = model
    for part in location[:-1]:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        candidates = [field.annotation, *get_args(field.annotation)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return current


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        holder = _model_at(model, tuple(error["loc"]))
        allowed = f"; allowed: {', '.join(holder.model_fields)}" if holder else ""
        return f"unknown key{allowed}"
    if kind == "string_pattern_mismatch":
        return f"{error['input']!r} is not a plain name: use 1-64 letters, digits, '_', '.' or '-', no path separators"
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    got = error.get("input")
    if kind.endswith("_type") and not isinstance(got, dict):
        message = f"{message}, got {got!r}"
    return message


def validate(model: type[M], data: Any, file: Path | str, *, prefix: tuple[Any, ...] = ()) -> M:
    """Validate ``data`` against ``model``; the first problem becomes an :class:`InputError`.

    ``prefix`` is the key path of ``data`` inside its file, for models validated piecewise.
    """
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise InputError(file, key_path(prefix + tuple(first["loc"])), _describe(first, model)) from None
