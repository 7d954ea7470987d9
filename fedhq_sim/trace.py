"""A run's events in the Chrome trace-event format, which Perfetto and chrome://tracing open.

Three processes: ``devices`` (a track per client and aggregating gateway: its download,
compute and upload of every round), ``links`` (a track per client access link with the
transfers on it, and a counter per shared link: its throughput and active flows) and
``server`` (each round, and the server's own work at its end). Times are simulated
microseconds. Shared links carry overlapping transfers, which one track cannot nest, so
they are counters rather than slices.

A fleet of thousands has a million events, so they are generated one by one and written as
JSON text in chunks (:func:`trace_json_chunks`), never held as one list or one string.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from itertools import islice
from typing import Any

import pandas as pd

DEVICES, LINKS, SERVER = 1, 2, 3
US = 1e6


def _meta(pid: int, tid: int | None, name: str, sort: int | None = None) -> list[dict[str, Any]]:
    kind = "process_name" if tid is None else "thread_name"
    events = [{"ph": "M", "name": kind, "pid": pid, "tid": tid or 0, "args": {"name": name}}]
    if sort is not None:
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid, "args": {"sort_index": sort}})
    return events


def _number(value: float) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"a trace event holds {number}, which JSON cannot")
    return repr(number)


def _slice(p: Any, pid: int, tid: int) -> str:
    """A phase as a JSON slice event, encoded directly (the bulk of a large trace)."""
    return (
        f'{{"ph":"X","name":"{p.phase} {p.strategy}","cat":"{p.phase}","ts":{_number(p.start_s * US)},'
        f'"dur":{_number((p.end_s - p.start_s) * US)},"args":{{"round":{int(p.round)},"bytes":{int(p.nbytes)},'
        f'"status":"{p.status}","energy_j":{_number(p.energy_j)},"reason":{json.dumps(p.reason)}}},'
        f'"pid":{pid},"tid":{tid}}}'
    )


def trace_events(rounds: pd.DataFrame, phases: pd.DataFrame, links: pd.DataFrame) -> Iterator[dict[str, Any] | str]:
    """The trace's events, one by one: as mappings, or (phases and link counters, which are
    most of them) already as JSON text."""
    yield from _meta(DEVICES, None, "devices") + _meta(LINKS, None, "links") + _meta(SERVER, None, "server")
    clients = phases.drop_duplicates("client_id").sort_values("client_id")
    device_tid = {cid: i + 1 for i, cid in enumerate(clients["client_id"])}
    for row in clients.itertuples():
        yield from _meta(DEVICES, device_tid[row.client_id], f"{row.client} ({row.device})", device_tid[row.client_id])
        yield from _meta(
            LINKS, device_tid[row.client_id], f"access:{row.client} ({row.link})", device_tid[row.client_id]
        )
    for p in phases.itertuples():
        yield _slice(p, DEVICES, device_tid[p.client_id])
        if p.phase in ("download", "upload"):
            yield _slice(p, LINKS, device_tid[p.client_id])
    names = {name: json.dumps(name) for name in links["link"].unique()}
    for link in links.itertuples():
        yield (
            f'{{"ph":"C","name":{names[link.link]},"pid":{LINKS},"tid":0,"ts":{_number(link.time_s * US)},'
            f'"args":{{"rate_Mbit_s":{_number(link.rate_bps / 1e6)},"flows":{int(link.flows)}}}}}'
        )
    yield from _meta(SERVER, 1, "rounds", 1) + _meta(SERVER, 2, "server work", 2)
    for r in rounds[rounds["round"] > 0].itertuples():
        yield (
            {
                "ph": "X",
                "name": f"round {r.round}",
                "cat": "round",
                "pid": SERVER,
                "tid": 1,
                "ts": r.start_s * US,
                "dur": r.latency_s * US,
                "args": {
                    "reported": r.reported,
                    "selected": r.selected,
                    # NaN (timing-only) is no JSON: null
                    "deployed_accuracy": None if r.deployed_accuracy != r.deployed_accuracy else r.deployed_accuracy,
                },
            }
        )
        if r.server_s > 0:
            yield (
                {
                    "ph": "X",
                    "name": "aggregate + evaluate",
                    "cat": "server",
                    "pid": SERVER,
                    "tid": 2,
                    "ts": (r.end_s - r.server_s) * US,
                    "dur": r.server_s * US,
                    "args": {"round": r.round},
                }
            )


def trace_json_chunks(
    rounds: pd.DataFrame, phases: pd.DataFrame, links: pd.DataFrame, per_chunk: int = 10_000
) -> Iterator[str]:
    """``{"traceEvents": [...], "displayTimeUnit": "ms"}`` as compact JSON, in pieces."""
    events = trace_events(rounds, phases, links)
    yield '{"traceEvents":['
    first = True
    while batch := list(islice(events, per_chunk)):
        text = ",".join(
            e if isinstance(e, str) else json.dumps(e, separators=(",", ":"), allow_nan=False) for e in batch
        )
        yield text if first else "," + text
        first = False
    yield '],"displayTimeUnit":"ms"}\n'
