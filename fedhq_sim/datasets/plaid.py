"""PLAID: plug-load current signatures of 11 appliance types, as a plant's energy monitor sees them.

The Plug Load Appliance Identification Dataset (Gao et al., BuildSys 2014; the UEA/UCR
archive's version, edited by Schäfer and Leser, CIKM 2017) holds 1,074 current measurements
(30 kHz, a few seconds around a switch-on, 100-1,344 steps after the archive's
downsampling) of air conditioners, compact fluorescent lamps, fans, fridges, hair dryers,
heaters, incandescent bulbs, laptops, microwaves, vacuum cleaners and washing machines in 56
households. Load identification from current signatures is what a plant's submetering does to
tell its machines apart, and it is a task where 4-bit activations cost accuracy: transients
and steady currents differ by orders of magnitude.

It ships inside the sktime wheel (``sktime/datasets/data/PLAID/``, the archive's ``.ts`` text
files, BSD-3 with sktime), so nothing is downloaded at run time: ``pip install
'fedhq-sim[plaid]'`` (which ``make setup`` does) puts it on disk. Only the two files are read;
sktime itself is never imported (it is heavy, and its import would slow every worker).

Each series is resampled to ``length`` steps by linear interpolation over its own duration
(the archive's series have unequal lengths) and z-normalized on its own, as the archive's
classifiers take it: with one mean and deviation for the whole set, the largest currents
dwarf the rest, and the built-in ``cnn1d`` reached 0.20 accuracy against 0.80 trained
centrally for 30 epochs (one-off check). The shape of a switch-on, its transient peaks over
the steady current, is what is left to tell appliances apart, and what a coarse activation
grid clips.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fedhq_sim.datasets.registry import register_dataset
from fedhq_sim.errors import InputError

PLAID_CLASSES = (
    "air conditioner",
    "compact fluorescent lamp",
    "fan",
    "fridge",
    "hair dryer",
    "heater",
    "incandescent light bulb",
    "laptop",
    "microwave",
    "vacuum cleaner",
    "washing machine",
)
"""The appliance types, in the order of the archive's labels 0-10."""

PLAID_FILES = ("PLAID_TRAIN.ts", "PLAID_TEST.ts")


def plaid_folder() -> Path:
    """Where the installed sktime wheel keeps PLAID (without importing sktime)."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or spec.origin is None:
        raise InputError(
            "dataset 'plaid'", "data.dataset", "PLAID ships inside the sktime wheel: pip install 'fedhq-sim[plaid]'"
        )
    return Path(spec.origin).parent / "datasets" / "data" / "PLAID"


def read_ts(path: Path) -> tuple[list[np.ndarray], list[int]]:
    """The series and integer labels of a univariate ``.ts`` file (the UEA/UCR archive's text
    format: ``#`` comments, ``@`` header lines, then one ``v1,v2,...:label`` line a series)."""
    series, labels = [], []
    in_data = False
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(str(path), "data.dataset", f"cannot read the PLAID file: {error}") from None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            in_data = in_data or line.lower() == "@data"
            continue
        if not in_data:
            raise InputError(str(path), f"line {number}", "a data line before @data")
        values, _, label = line.rpartition(":")
        try:
            series.append(np.array([float(v) for v in values.split(",")], dtype=np.float64))
            labels.append(int(label))
        except ValueError:
            raise InputError(str(path), f"line {number}", "expected 'v1,v2,...:label' with numbers") from None
    if not series:
        raise InputError(str(path), "@data", "no series")
    return series, labels


def resample(values: np.ndarray, length: int) -> np.ndarray:
    """``values`` linearly interpolated at ``length`` evenly spaced points of its duration."""
    return np.interp(np.linspace(0.0, len(values) - 1.0, length), np.arange(len(values)), values)


@register_dataset("plaid", kind="sequence")
def load_plaid(length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """All 1,074 PLAID series (the archive's train and test halves together: the run makes its
    own split), each resampled to ``length`` steps and z-normalized, as (N, 1, length)."""
    if not 8 <= length <= 4096:
        raise ValueError(f"length must be within 8..4096 steps, got {length}")
    folder = plaid_folder()
    series, labels = [], []
    for name in PLAID_FILES:
        path = folder / name
        if not path.is_file():
            message = "missing from the installed sktime: reinstall 'fedhq-sim[plaid]'"
            raise InputError(str(path), "data.dataset", message)
        more, more_labels = read_ts(path)
        series += more
        labels += more_labels
    x = np.stack([resample(s, length) for s in series])
    spread = x.std(axis=1, keepdims=True)
    x = (x - x.mean(axis=1, keepdims=True)) / np.where(spread > 0, spread, 1.0)  # a flat series stays flat
    return x[:, None, :].astype(np.float32), np.array(labels, dtype=np.int64)
