"""The clients not in a turn, for the asynchronous modes to draw from (:mod:`fedhq_sim.async_loop`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


class IdlePool:
    """The clients not in a turn, drawn from uniformly at random in constant time: a fleet of
    thousands refills a slot at every arrival, and a scan of the fleet each time would make
    a run quadratic in its size."""

    TRIES = 8  # random picks before a scan for the available ones (most are, in most plants)

    def __init__(self, client_ids: Iterable[int]) -> None:
        self.items = list(client_ids)
        self._where = {c: i for i, c in enumerate(self.items)}

    def add(self, client_id: int) -> None:
        self._where[client_id] = len(self.items)
        self.items.append(client_id)

    def remove(self, client_id: int) -> None:
        """Take ``client_id`` out, moving the last client into its place."""
        i, last = self._where.pop(client_id), self.items.pop()
        if last != client_id:
            self.items[i], self._where[last] = last, i

    def draw(self, rng: np.random.Generator, n: int, available: Callable[[int], bool]) -> list[int]:
        """Up to ``n`` clients for which ``available`` holds, each uniform over those left
        (picks that are not available are drawn again), taken out of the pool; sorted."""
        chosen: list[int] = []
        while len(chosen) < n and self.items:
            for _ in range(self.TRIES):
                pick = self.items[int(rng.integers(len(self.items)))]
                if available(pick):
                    break
            else:
                ready = [c for c in self.items if available(c)]
                if not ready:
                    break
                pick = ready[int(rng.integers(len(ready)))]
            self.remove(pick)
            chosen.append(pick)
        return sorted(chosen)
