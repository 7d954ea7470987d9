"""Seeding PyTorch's global CPU generator for one piece of work, and restoring it after.

Model initialisation and layers such as dropout draw from the global generator, so the work
that uses it is seeded for reproducibility. ``torch.manual_seed`` also seeds every
accelerator backend, and where none is initialised it queues that call with a formatted
Python stack (``torch.cuda._lazy_call``): 0.1-0.4 ms per call (``bench/small_work_costs.py``),
more than a small model's whole training step, and a cost no device pays. The simulator runs its work on the CPU,
so only the CPU generator is seeded and saved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded_cpu_generator(seed: int) -> Iterator[None]:
    """The global CPU generator seeded with ``seed`` inside, its previous state restored after."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(int(seed))  # as torch.manual_seed: numpy integers too
    try:
        yield
    finally:
        generator.set_state(state)
