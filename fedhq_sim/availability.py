"""When each client can take part: shifts, maintenance windows and recorded traces.

A plant gateway is not always reachable for training: a line runs in shifts, a hall is shut
for maintenance, a device's own uptime log says when it was on. A client is available at
simulated time ``t`` when all of these allow it:

- **shifts** (daily, by time of day): if any shift names the client's site (or names no
  site), the client is available only inside one of those shifts;
- **maintenance** windows (by simulated time) on a site or a client: unavailable inside;
- a **trace** (CSV ``client,start_s,end_s``, one row per interval a client was on): a client
  that appears in it is available only inside its intervals.

Simulated time 0 is ``day_start`` o'clock on the first day. The server selects only
available clients, and a client whose availability ends in the middle of a round fails.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedhq_sim.errors import InputError

DAY_S = 86_400.0
RESOLUTION_S = 1e-6
"""Availability is read just after the asked time: at a shift's start a client counts as on,
at its end as off, whatever the float rounding of the day arithmetic."""


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float

    def contains(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class ClientAvailability:
    """One client's rules: daily shifts (time of day), maintenance, trace intervals."""

    shifts: tuple[Window, ...] = ()
    maintenance: tuple[Window, ...] = ()
    trace: tuple[Window, ...] | None = None

    def _in_shift(self, t: float, day_start_s: float) -> bool:
        if not self.shifts:
            return True
        clock = (day_start_s + t) % DAY_S
        for shift in self.shifts:
            if shift.start_s <= shift.end_s:
                if shift.contains(clock):
                    return True
            elif clock >= shift.start_s or clock < shift.end_s:  # a night shift across midnight
                return True
        return False

    def available(self, t: float, day_start_s: float) -> bool:
        if any(w.contains(t) for w in self.maintenance):
            return False
        if self.trace is not None and not any(w.contains(t) for w in self.trace):
            return False
        return self._in_shift(t, day_start_s)

    def boundaries_after(self, t: float, day_start_s: float, horizon_s: float) -> list[float]:
        """Every time in ``(t, t + horizon_s]`` at which the availability may change."""
        times = [b for w in (*self.maintenance, *(self.trace or ())) for b in (w.start_s, w.end_s)]
        if self.shifts:
            first_day = math.floor((day_start_s + t) / DAY_S)
            for day in range(first_day, first_day + int(horizon_s // DAY_S) + 2):
                for shift in self.shifts:
                    times += [day * DAY_S + shift.start_s - day_start_s, day * DAY_S + shift.end_s - day_start_s]
        return sorted(b for b in times if t < b <= t + horizon_s)


@dataclass(frozen=True)
class Availability:
    """Every client's availability; a client with no rules is always available."""

    clients: dict[int, ClientAvailability]
    day_start_s: float = 0.0
    horizon_s: float = 366 * DAY_S

    def available(self, client_id: int, t: float) -> bool:
        rules = self.clients.get(client_id)
        return rules is None or rules.available(t + RESOLUTION_S, self.day_start_s)

    def next_change(self, client_id: int, t: float) -> float:
        """The first time after ``t`` at which the client's availability differs (inf: never).

        Each stretch between two boundaries is judged at its middle, where no rounding of a
        boundary can decide the answer.
        """
        rules = self.clients.get(client_id)
        if rules is None:
            return math.inf
        now = self.available(client_id, t)
        boundaries = rules.boundaries_after(t + RESOLUTION_S, self.day_start_s, self.horizon_s)
        for b, following in zip(boundaries, [*boundaries[1:], boundaries[-1] + 1.0] if boundaries else [], strict=True):
            if following - b > 2 * RESOLUTION_S and rules.available((b + following) / 2, self.day_start_s) != now:
                return b
        return math.inf

    def next_available(self, client_ids: Sequence[int], t: float) -> float:
        """The first time at or after ``t`` at which one of ``client_ids`` is available."""
        best = math.inf
        for cid in client_ids:
            best = min(best, t if self.available(cid, t) else self.next_change(cid, t))
        return best


def read_trace(path: Path, client_names: dict[str, int], referenced_from: Path, key: str) -> dict[int, list[Window]]:
    """A trace CSV (header ``client,start_s,end_s``) as intervals per client id."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(referenced_from, key, f"cannot read the trace {path} ({error})") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip() for c in rows[0]] != ["client", "start_s", "end_s"]:
        raise InputError(path, "line 1", "expected the header 'client,start_s,end_s'")
    intervals: dict[int, list[Window]] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 3:
            raise InputError(path, f"line {number}", f"expected 3 fields (client,start_s,end_s), got {len(row)}")
        name, start, end = (field.strip() for field in row)
        if name not in client_names:
            raise InputError(
                path, f"line {number}.client", f"unknown client '{name}' (names look like 'site/device-0')"
            )
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise InputError(
                path, f"line {number}", f"start_s and end_s must be seconds, got {start!r}, {end!r}"
            ) from None
        if not (math.isfinite(start_s) and math.isfinite(end_s) and 0 <= start_s < end_s):
            raise InputError(path, f"line {number}", f"expected 0 <= start_s < end_s, got {start_s}, {end_s}")
        intervals.setdefault(client_names[name], []).append(Window(start_s, end_s))
    return intervals
