"""Derived tables, pure functions of the result records (tested without drawing)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter

import pandas as pd

from fedhq_sim.network import DirectedLink, LinkSample
from fedhq_sim.records import PhaseRecord, RoundRecord, column_names

LATENCY_PARTS = ("download", "compute", "upload", "waiting", "server")


def _records_frame(records: Sequence[object], record_type: type) -> pd.DataFrame:
    """Flat records as a frame, one column per field (attribute reads, no deep copies: a
    run of thousands of clients has hundreds of thousands of rows)."""
    columns = column_names(record_type)
    return pd.DataFrame.from_records(list(map(attrgetter(*columns), records)), columns=columns)


def rounds_frame(rounds: Sequence[RoundRecord]) -> pd.DataFrame:
    return _records_frame(rounds, RoundRecord)


def phases_frame(phases: Sequence[PhaseRecord]) -> pd.DataFrame:
    return _records_frame(phases, PhaseRecord)


LINK_COLUMNS = ["time_s", "link", "capacity_bps", "rate_bps", "utilisation", "flows"]


def link_name(link: object) -> str:
    """``("site:hall", "core")`` -> ``"site:hall->core"``: a directed link, readable in a CSV."""
    return "->".join(map(str, link)) if isinstance(link, tuple) else str(link)


def link_rows(samples: Sequence[LinkSample], links: Mapping[object, DirectedLink]) -> list[tuple]:
    """Each monitored link's load from each sample's time until the next: bit/s, share, flows
    (rows of :data:`LINK_COLUMNS`)."""
    capacity = {link: spec.capacity_bps for link, spec in links.items()}
    names = {link: link_name(link) for link in links}
    return [
        (s.time_s, names[s.link], capacity[s.link], s.rate_bps, s.rate_bps / capacity[s.link], s.flows) for s in samples
    ]


def links_frame(samples: Sequence[LinkSample], links: Mapping[object, DirectedLink]) -> pd.DataFrame:
    return pd.DataFrame.from_records(link_rows(samples, links), columns=LINK_COLUMNS)


def csv_text(rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """Rows as CSV text the way ``DataFrame.to_csv(index=False)`` writes them (shortest
    round-trip floats, minimal quoting, newline line ends), at the speed of the csv module.
    The rows must hold plain values, floats as floats, and no NaN (pandas writes it empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


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
