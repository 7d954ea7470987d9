"""Checkpoints: what a run needs to go on from the end of a round, and where it lives.

A run writes ``checkpoint.pt`` into its results folder after every round (atomically:
write, then rename), so a run stopped at any moment, even by SIGKILL, can be resumed with
``fedhq-sim run --resume DIR`` from its last completed round, and ends with the files an
uninterrupted run writes. The checkpoint holds only plain values and tensors, written with
``torch.save`` and read with ``torch.load(weights_only=True)``: nothing in it is executed.
It holds the engine's state at the round's end (simulated clock, random streams, the
policy's learned state, the global model, the network's down links and the events still
pending on the clock), the scenario it ran (path, overrides and a hash of its text), the
lengths of the appended result files, and whether the run's final files (figures, trace,
report) are written: a run stopped while writing them resumes to write them. The rounds,
events and link samples themselves are read back from those files (floats written shortest
round-trip, so exactly).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

import torch

from fedhq_sim.errors import InputError
from fedhq_sim.files import atomic_write_bytes
from fedhq_sim.network import LinkSample
from fedhq_sim.records import PhaseRecord, RoundRecord
from fedhq_sim.tables import link_name

FILE = "checkpoint.pt"
FORMAT = 6
"""2: the round work's state holds the deployed activation ranges (deployment from the clients);
3: FedHQ's benefit model learns the deployed loss (its state holds other features);
4: it learns the deployment gap instead (the same arrays, a label of another scale);
5: a round's record counts its cancelled clients (over-selection), a column of rounds.csv;
6: the asynchronous modes: staleness columns in rounds.csv and events.csv, replayed resumes."""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_checkpoint(folder: Path, state: Mapping[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(folder / FILE, buffer.getvalue())


def read_checkpoint(folder: Path) -> dict[str, Any]:
    """The checkpoint of a results folder, loaded safely, or an input error saying why not."""
    path = folder / FILE
    if not path.is_file():
        raise InputError(folder, "--resume", f"no {FILE} here: not a folder of a run that can be resumed")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # a damaged or foreign file: refuse it in one line, whatever it is
        raise InputError(path, "", f"not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        if isinstance(found, int) and found < FORMAT:
            message = f"written by an earlier fedhq-sim (format {found}; this one reads {FORMAT}): start the run again"
            raise InputError(path, "format", message)
        raise InputError(path, "format", f"not a fedhq-sim checkpoint of format {FORMAT}")
    return state


# -- records read back from their files ----------------------------------------------------


def _rows(path: Path, count: int) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)  # the header
        rows = [row for _, row in zip(range(count), reader, strict=False)]
    if len(rows) != count:
        raise InputError(path, "", f"holds {len(rows)} rows, the checkpoint counts {count}: the folder was changed")
    return rows


def _convert(text: str, kind: type) -> Any:
    if kind is int:
        return int(text)
    if kind is float:
        return math.nan if text == "" else float(text)  # pandas writes NaN as nothing
    return text


def _records(record_type: type, path: Path, count: int) -> list[Any]:
    kinds = list(get_type_hints(record_type).values())
    return [record_type(*(_convert(v, k) for v, k in zip(row, kinds, strict=True))) for row in _rows(path, count)]


def read_phases(path: Path, count: int) -> list[PhaseRecord]:
    return _records(PhaseRecord, path, count)


def read_rounds(path: Path, count: int) -> list[RoundRecord]:
    return _records(RoundRecord, path, count)


def read_samples(path: Path, count: int, links: Mapping[Any, Any]) -> list[LinkSample]:
    by_name = {link_name(link): link for link in links}
    return [
        LinkSample(float(time_s), by_name[name], float(rate), int(flows))
        for time_s, name, _capacity, rate, _share, flows in _rows(path, count)
    ]
