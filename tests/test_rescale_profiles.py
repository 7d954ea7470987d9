"""tools/rescale_profiles.py: re-deriving the library profiles from a re-measured reference host."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("rescale_profiles", ROOT / "tools" / "rescale_profiles.py")
rescale_profiles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rescale_profiles)

RPI4 = (ROOT / "device_profiles" / "devices" / "rpi4.yaml").read_text(encoding="utf-8")
REFERENCE = rescale_profiles.reference_values(ROOT / "device_profiles" / "devices" / "reference_host.yaml")


def test_the_shipped_profiles_are_derived_from_the_shipped_reference_host():
    for path in sorted((ROOT / "device_profiles" / "devices").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert rescale_profiles.rescale(text, REFERENCE) == text, path.name


def test_a_new_measurement_scales_every_value_by_its_factor_and_survives_a_second_run():
    doubled = {key: 2 * value for key, value in REFERENCE.items()}
    once = rescale_profiles.rescale(RPI4, doubled)
    # e.g. train_step: the reference host's value times the Pi 4's stated factor of 4.5
    expected = rescale_profiles._number(doubled["overheads.train_step"] * 4.5)
    assert f"  train_step: {expected} us" in once.split("\n")
    assert "e+" not in once.split("sources:")[0]  # values never in e-notation
    assert rescale_profiles.rescale(once, doubled) == once


@pytest.mark.parametrize("overhead", ["warmup_op", "qat_op", "warmup_model", "round_fixed"])
def test_a_profile_without_a_new_overhead_gains_it_scaled_like_train_op(overhead):
    lines = [line for line in RPI4.split("\n") if overhead not in line]
    text = rescale_profiles.rescale("\n".join(lines), REFERENCE)
    expected = rescale_profiles._number(REFERENCE[f"overheads.{overhead}"] * 4.5)
    assert f"  {overhead}: {expected} us" in text.split("\n")
    assert text == RPI4  # the same line, at the same place, with the same source


def test_a_scaled_source_line_it_cannot_parse_is_an_error_not_a_skip():
    broken = RPI4.replace("[M] x 4.5 (Cortex-A72", "[M] x 4.5 (Cortex-A72", 1).replace(" = ", " == ", 1)
    with pytest.raises(ValueError, match="cannot parse"):
        rescale_profiles.rescale(broken, REFERENCE)
