"""A run's events in the Chrome trace-event format, which Perfetto and chrome://tracing open.

Three processes: ``devices`` (a track per client and aggregating gateway: its download,
compute and upload of every round), ``links`` (a track per client access link with the
transfers on it, and a counter per shared link: its throughput and active flows) and
``server`` (each round, and the server's own work at its end). Times are simulated
microseconds. Shared links carry overlapping transfers, which one track cannot nest, so
they are counters rather than slices.
"""

from __future__ import annotations

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


def chrome_trace(rounds: pd.DataFrame, phases: pd.DataFrame, links: pd.DataFrame) -> dict[str, Any]:
    """The trace as a JSON-ready mapping (``{"traceEvents": [...], "displayTimeUnit": "ms"}``)."""
    events = _meta(DEVICES, None, "devices") + _meta(LINKS, None, "links") + _meta(SERVER, None, "server")
    clients = phases.drop_duplicates("client_id").sort_values("client_id")
    device_tid = {cid: i + 1 for i, cid in enumerate(clients["client_id"])}
    for row in clients.itertuples():
        events += _meta(DEVICES, device_tid[row.client_id], f"{row.client} ({row.device})", device_tid[row.client_id])
        events += _meta(
            LINKS, device_tid[row.client_id], f"access:{row.client} ({row.link})", device_tid[row.client_id]
        )
    for p in phases.itertuples():
        slice_ = {
            "ph": "X",
            "name": f"{p.phase} {p.strategy}",
            "cat": p.phase,
            "ts": p.start_s * US,
            "dur": (p.end_s - p.start_s) * US,
            "args": {
                "round": p.round,
                "bytes": p.nbytes,
                "status": p.status,
                "energy_j": p.energy_j,
                "reason": p.reason,
            },
        }
        events.append(slice_ | {"pid": DEVICES, "tid": device_tid[p.client_id]})
        if p.phase in ("download", "upload"):
            events.append(slice_ | {"pid": LINKS, "tid": device_tid[p.client_id]})
    for link in links.itertuples():
        events.append(
            {
                "ph": "C",
                "name": link.link,
                "pid": LINKS,
                "tid": 0,
                "ts": link.time_s * US,
                "args": {"rate_Mbit_s": link.rate_bps / 1e6, "flows": link.flows},
            }
        )
    events += _meta(SERVER, 1, "rounds", 1) + _meta(SERVER, 2, "server work", 2)
    for r in rounds[rounds["round"] > 0].itertuples():
        events.append(
            {
                "ph": "X",
                "name": f"round {r.round}",
                "cat": "round",
                "pid": SERVER,
                "tid": 1,
                "ts": r.start_s * US,
                "dur": r.latency_s * US,
                "args": {"reported": r.reported, "selected": r.selected, "deployed_accuracy": r.deployed_accuracy},
            }
        )
        if r.server_s > 0:
            events.append(
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
    return {"traceEvents": events, "displayTimeUnit": "ms"}
