"""Derived tables, pure functions of the result records (tested without drawing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict

import pandas as pd

from fedhq_sim.network import DirectedLink, LinkSample
from fedhq_sim.records import PhaseRecord, RoundRecord, column_names

LATENCY_PARTS = ("download", "compute", "upload", "waiting", "server")


def rounds_frame(rounds: Sequence[RoundRecord]) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in rounds], columns=column_names(RoundRecord))


def phases_frame(phases: Sequence[PhaseRecord]) -> pd.DataFrame:
    return pd.DataFrame([asdict(p) for p in phases], columns=column_names(PhaseRecord))


LINK_COLUMNS = ["time_s", "link", "capacity_bps", "rate_bps", "utilisation", "flows"]


def link_name(link: object) -> str:
    """``("site:hall", "core")`` -> ``"site:hall->core"``: a directed link, readable in a CSV."""
    return "->".join(map(str, link)) if isinstance(link, tuple) else str(link)


def links_frame(samples: Sequence[LinkSample], links: Mapping[object, DirectedLink]) -> pd.DataFrame:
    """Each monitored link's load from each sample's time until the next: bit/s, share, flows."""
    rows = [
        {
            "time_s": s.time_s,
            "link": link_name(s.link),
            "capacity_bps": links[s.link].capacity_bps,
            "rate_bps": s.rate_bps,
            "utilisation": s.rate_bps / links[s.link].capacity_bps,
            "flows": s.flows,
        }
        for s in samples
    ]
    return pd.DataFrame(rows, columns=LINK_COLUMNS)


def latency_breakdown(rounds: pd.DataFrame, phases: pd.DataFrame) -> pd.DataFrame:
    """Round latency split into the mean client's download, compute, upload and waiting, plus server.

    For each selected client, download + compute + upload + waiting spans the round's
    collection (from round start until collection ends; a dropped client's unfinished phase
    counts up to the deadline). Averaging over the selected clients, the five parts add up
    to the round's latency. Returns one row per (round, part) with ``seconds``.
    """
    trained = rounds[rounds["round"] > 0].set_index("round")
    rows = []
    for r, info in trained.iterrows():
        mine = phases[(phases["round"] == r) & (phases["client_id"] >= 0)]  # clients, not aggregators
        collect_s = info["collect_end_s"] - info["start_s"]
        n = max(int(info["selected"]), 1)
        spent = {
            p: float((mine.loc[mine["phase"] == p, "end_s"] - mine.loc[mine["phase"] == p, "start_s"]).sum()) / n
            for p in ("download", "compute", "upload")
        }
        parts = {**spent, "waiting": collect_s - sum(spent.values()), "server": float(info["server_s"])}
        rows.extend({"round": int(r), "part": part, "seconds": parts[part]} for part in LATENCY_PARTS)
    return pd.DataFrame(rows, columns=["round", "part", "seconds"])
