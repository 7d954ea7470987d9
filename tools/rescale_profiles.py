"""Re-derive the library device profiles' host-scaled numbers from a new reference-host profile.

Most numbers of the library's device profiles are derived, and each says how in its
``sources`` entry. The per-call and per-step framework costs (kernel intercepts and the
overheads) are the reference host's measured value times a stated single-thread speed
factor: ``"[I] reference host 4.5016 us [M] x 4.5 (why) = 20.3 us: ..."``. After
``fedhq-sim profile-device`` re-measures the reference host (a new PyTorch, a new
quantization backend), this script rewrites every such value and its source from the new
measurement, keeping each device's factor and reasoning, and adds an overhead the profile
lacks (scaled by the factor of the closest one: ``qat_op``, ``warmup_op``, ``warmup_model`` and
``round_fixed`` by ``train_op``'s). Numbers derived any other way are left as they are:
throughputs (anchored on published figures, some through the reference host's ratio between
two kernel classes, which each source quotes with the measurement it used), GPU-side
intercepts, memory and power. Run it from the repository root:

    .venv/bin/python tools/rescale_profiles.py device_profiles/devices/reference_host.yaml
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

NUMBER = r"[\d.]+(?:e[+-]?\d+)?"
SCALED = re.compile(
    rf'^  (?P<key>[\w.]+): "\[I\] reference host (?P<ref>{NUMBER}) us \[M\] x (?P<factor>[\d.]+) '
    rf"(?P<why>\(.*?\)) = (?P<value>{NUMBER}) us(?P<rest>.*)\"$"
)
LOOKS_SCALED = re.compile(r'^  [\w.]+: "\[I\] reference host [^"]* \[M\] x [\d.]+ \(')
"""A source line of the scaled form: one that :data:`SCALED` does not parse is an error."""
NEW_OVERHEADS = dict.fromkeys(("qat_op", "warmup_op", "warmup_model", "round_fixed"), "train_op")
"""Overheads a profile may lack, each scaled like the named one, in the order they follow it."""


def microseconds(quantity: str) -> float:
    number, unit = quantity.split()
    return float(number) * {"us": 1.0, "ms": 1e3, "s": 1e6}[unit]


def reference_values(path: Path) -> dict[str, float]:
    """The reference host's kernel intercepts and overheads, in microseconds, by key path."""
    profile = yaml.safe_load(path.read_text(encoding="utf-8"))
    values = {f"overheads.{k}": microseconds(v) for k, v in profile["overheads"].items()}
    values |= {f"kernels.{k}.overhead": microseconds(v["overhead"]) for k, v in profile["kernels"].items()}
    return values


def _number(value: float) -> str:
    """Three significant digits, never in e-notation (which the next run must parse back)."""
    text = f"{value:.3g}"
    return f"{float(text):.0f}" if "e" in text else text


def _set_value(lines: list[str], key: str, value: str) -> None:
    """Replace the value of ``key`` (``overheads.name`` or ``kernels.name.overhead``)."""
    section, name = key.split(".")[:2]
    if section == "overheads":
        pattern = re.compile(rf"^(  {name}: )[\d.e+-]+( us)$")
    else:
        pattern = re.compile(rf"^(  {name}: \{{overhead: )[\d.e+-]+( us,.*)$")
    for i, line in enumerate(lines):
        if pattern.match(line):
            lines[i] = pattern.sub(rf"\g<1>{value}\g<2>", line)
            return
    raise LookupError(f"no line holds {key}")


def rescale(text: str, reference: dict[str, float]) -> str:
    lines = text.split("\n")
    templates: dict[str, re.Match] = {}
    for i, line in enumerate(lines):
        match = SCALED.match(line)
        if match is None:
            if LOOKS_SCALED.match(line):
                raise ValueError(f"a scaled source line that this tool cannot parse: {line[:120]}")
            continue
        key, factor = match["key"], float(match["factor"])
        templates[key] = match
        value = _number(reference[key] * factor)
        lines[i] = (
            f'  {key}: "[I] reference host {reference[key]:.6g} us [M] x {match["factor"]} {match["why"]} '
            f'= {value} us{match["rest"]}"'
        )
        _set_value(lines, key, value)
    if not templates:  # a measured profile (the reference host itself): nothing is derived
        return text
    for new, like in NEW_OVERHEADS.items():
        key = f"overheads.{new}"
        if any(line.startswith(f"  {key}:") for line in lines):
            continue
        template = templates[f"overheads.{like}"]
        value = _number(reference[key] * float(template["factor"]))
        names = list(NEW_OVERHEADS)
        before = [like, *names[: names.index(new)]]  # the new line goes after the last of these
        at = max(i for i, line in enumerate(lines) if any(line.startswith(f"  {name}: ") for name in before))
        lines.insert(at + 1, f"  {new}: {value} us")
        at = max(i for i, line in enumerate(lines) if any(line.startswith(f"  overheads.{name}: ") for name in before))
        lines.insert(
            at + 1,
            f'  {key}: "[I] reference host {reference[key]:.6g} us [M] x {template["factor"]} {template["why"]} '
            f'= {value} us{template["rest"]}"',
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the re-measured reference-host profile")
    parser.add_argument("--devices", type=Path, default=Path("device_profiles/devices"))
    args = parser.parse_args()
    reference = reference_values(args.reference)
    for path in sorted(args.devices.glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        new = rescale(text, reference)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rescaled {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
