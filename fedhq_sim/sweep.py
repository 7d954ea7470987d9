"""A grid over scenario values: every combination of the ``--set KEY=V1,V2`` values, per seed.

Each grid point is a :class:`~fedhq_sim.batch.Variant` whose label is its swept values, so
the summary has one column per swept key; :func:`fedhq_sim.batch.median_table` groups by
them and the capacity curves plot the figures against the first key.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedhq_sim.batch import Variant


def grid_variants(scenario: Path, axes: Sequence[tuple[str, Sequence[Any]]], seeds: Sequence[int]) -> list[Variant]:
    """The cartesian product of the axes' values, times the seeds, in grid order."""
    keys = [key for key, _ in axes]
    variants = []
    for values in itertools.product(*(values for _, values in axes)):
        point = dict(zip(keys, values, strict=True))
        variants.extend(Variant(scenario, point, seed, point) for seed in seeds)
    return variants
