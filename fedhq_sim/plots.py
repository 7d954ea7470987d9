"""Figures (seaborn, one theme): drawn from tables, returned as Axes, saved by the caller."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display is ever needed

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from fedhq_sim.tables import LATENCY_PARTS

PART_COLOURS = dict(zip(LATENCY_PARTS, sns.color_palette("colorblind", len(LATENCY_PARTS)), strict=True))


def _axes(ax: Axes | None) -> Axes:
    if ax is None:
        sns.set_theme(style="whitegrid", context="notebook")
        _, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    return ax


def plot_accuracy_vs_time(rounds: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Deployed (int8) and fp32 test accuracy against simulated time."""
    ax = _axes(ax)
    long = rounds.melt(
        id_vars=["end_s"], value_vars=["deployed_accuracy", "fp32_accuracy"], var_name="model", value_name="accuracy"
    )
    long["model"] = long["model"].map({"deployed_accuracy": "deployed (int8)", "fp32_accuracy": "fp32"})
    sns.lineplot(data=long, x="end_s", y="accuracy", hue="model", style="model", markers=True, ax=ax)
    ax.set(xlabel="simulated time [s]", ylabel="test accuracy [fraction]", title="Accuracy against simulated time")
    return ax


def plot_latency_breakdown(breakdown: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Stacked bars: each round's latency split into download, compute, upload, waiting, server."""
    ax = _axes(ax)
    wide = breakdown.pivot(index="round", columns="part", values="seconds").reindex(columns=list(LATENCY_PARTS))
    bottom = pd.Series(0.0, index=wide.index)
    for part in LATENCY_PARTS:
        ax.bar(wide.index.astype(str), wide[part], bottom=bottom, label=part, color=PART_COLOURS[part])
        bottom += wide[part]
    ax.set(xlabel="round", ylabel="round latency [s] (mean client)", title="Round latency breakdown")
    ax.legend(title="phase", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_link_utilisation(links: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Utilisation of each monitored (shared) link over simulated time, as steps."""
    ax = _axes(ax)
    for (name, series), colour in zip(
        links.groupby("link", sort=True), sns.color_palette("colorblind", links["link"].nunique()), strict=True
    ):
        ax.step(series["time_s"], series["utilisation"], where="post", label=name, color=colour)
    ax.set(xlabel="simulated time [s]", ylabel="utilisation [fraction of capacity]", title="Shared link utilisation")
    ax.set_ylim(0, 1.05)
    if len(links):
        ax.legend(title="link", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return ax


PHASE_COLOURS = dict(zip(("download", "compute", "upload"), sns.color_palette("colorblind", 3), strict=True))
STRATEGY_HATCH = {"fp32": "", "ptq": "//", "qat": "xx"}


TIMELINE_ROWS = 40
"""A timeline of more clients than this shows the ones that finished last: the stragglers."""


def plot_client_timeline(phases: pd.DataFrame, round_index: int, *, ax: Axes | None = None) -> Axes:
    """One row per client of a round: its download, compute and upload as bars over simulated
    time, coloured by phase and hatched by strategy (none fp32, // PTQ, xx QAT); dropped or
    failed phases are outlined in red. Of a large round, the ``TIMELINE_ROWS`` clients that
    finished last."""
    mine = phases[phases["round"] == round_index]
    finished = mine.groupby("client")["end_s"].max()
    shown = finished.nlargest(TIMELINE_ROWS).index if len(finished) > TIMELINE_ROWS else finished.index
    mine = mine[mine["client"].isin(shown)].sort_values(["client_id", "start_s"])
    clients = list(dict.fromkeys(mine["client"]))
    if ax is None:
        sns.set_theme(style="whitegrid", context="notebook")
        _, ax = plt.subplots(figsize=(10, 1.2 + 0.28 * max(len(clients), 1)), layout="constrained")
    row = {client: i for i, client in enumerate(clients)}
    for p in mine.itertuples():
        kind = "".join(c for c in p.strategy if c.isalpha())
        failed = p.status != "completed"
        ax.barh(
            row[p.client],
            p.end_s - p.start_s,
            left=p.start_s,
            height=0.7,
            color=PHASE_COLOURS.get(p.phase, "grey"),
            hatch=STRATEGY_HATCH.get(kind, ""),
            edgecolor="red" if failed else "white",
            linewidth=1.5 if failed else 0.5,
        )
    ax.set_yticks(range(len(clients)), clients, fontsize="small")
    ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, label=p) for p, c in PHASE_COLOURS.items()]
    handles += [
        plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch=h, label=k)
        for k, h in STRATEGY_HATCH.items()
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    title = f"Round {round_index}: who did what, when"
    if len(finished) > TIMELINE_ROWS:
        title += f" (the {TIMELINE_ROWS} of {len(finished)} clients that finished last)"
    ax.set(xlabel="simulated time [s]", ylabel="client", title=title)
    return ax


HEATMAP_CLIENTS = 80
"""Above this many clients, the assignment is drawn as counts per round, not a row per client."""


def plot_strategy_assignment(phases: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Which strategy each client ran in each round (blank: not selected); for a fleet of
    more than ``HEATMAP_CLIENTS``, how many clients ran each strategy in each round."""
    compute = phases[(phases["phase"] == "compute") & (phases["client_id"] >= 0)]
    kinds = compute.assign(kind=compute["strategy"].str.extract(r"^([a-z]+)", expand=False))
    codes = {"fp32": 0, "ptq": 1, "qat": 2}
    palette = sns.color_palette("colorblind", 3)
    if compute["client_id"].nunique() > HEATMAP_CLIENTS:
        ax = _axes(ax)
        counts = (
            kinds.groupby(["round", "kind"]).size().unstack(fill_value=0).reindex(columns=list(codes), fill_value=0)
        )
        bottom = pd.Series(0, index=counts.index)
        for kind, colour in zip(codes, palette, strict=True):
            ax.bar(counts.index.astype(str), counts[kind], bottom=bottom, label=kind, color=colour)
            bottom += counts[kind]
        ax.set(xlabel="round", ylabel="clients", title="Strategy assignment over rounds (clients per strategy)")
        ax.legend(title="strategy", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return ax
    grid = kinds.pivot_table(index="client", columns="round", values="kind", aggfunc="first")
    order = compute.drop_duplicates("client").sort_values("client_id")["client"]
    grid = grid.reindex(order).apply(lambda column: column.map(codes))
    if ax is None:
        sns.set_theme(style="whitegrid", context="notebook")
        _, ax = plt.subplots(figsize=(10, 1.5 + 0.25 * max(len(grid), 1)), layout="constrained")
    sns.heatmap(grid, cmap=palette, vmin=-0.5, vmax=2.5, cbar=True, ax=ax, linewidths=0.3, linecolor="white")
    colorbar = ax.collections[0].colorbar
    colorbar.set_ticks([0, 1, 2], labels=list(codes))
    ax.set(xlabel="round", ylabel="client", title="Strategy assignment over rounds (blank: not selected)")
    return ax


def plot_energy_per_round(rounds: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Stacked bars: the fleet's compute, radio and idle energy in each round."""
    ax = _axes(ax)
    trained = rounds[rounds["round"] > 0]
    bottom = pd.Series(0.0, index=trained.index)
    for part, colour in zip(("compute", "radio", "idle"), sns.color_palette("colorblind", 3), strict=True):
        values = trained[f"energy_{part}_j"]
        ax.bar(trained["round"].astype(str), values, bottom=bottom, label=part, color=colour)
        bottom += values
    ax.set(xlabel="round", ylabel="energy [J] (selected clients)", title="Energy per round")
    ax.legend(title="part", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return ax


def plot_comparison(runs: pd.DataFrame, summary: pd.DataFrame, target: float, *, timing_only: bool = False) -> Axes:
    """Three panels per variant (policy or scenario), over seeds: deployed accuracy against
    simulated time (median curve, band from the worst to the best seed), time to the target
    accuracy, and the final deployed accuracy (one dot per seed, a bar at the median).
    Timing-only runs have no accuracy: their panels are each round's latency, the mean round
    latency and the run's energy."""
    sns.set_theme(style="whitegrid", context="notebook")
    _, (curve, left, right) = plt.subplots(
        1, 3, figsize=(15, 4.6), layout="constrained", gridspec_kw={"width_ratios": [2.2, 1, 1]}
    )
    variants = list(dict.fromkeys(summary["variant"]))
    colours = dict(zip(variants, sns.color_palette("colorblind", len(variants)), strict=True))
    y = "latency_s" if timing_only else "deployed_accuracy"
    for variant in variants:
        mine = runs[runs["variant"] == variant]
        per_round = (mine[mine["round"] > 0] if timing_only else mine).groupby("round")
        stats = per_round[y].agg(["median", "min", "max"])
        along = stats.index if timing_only else per_round["end_s"].median()
        width = 2.6 if variant in ("fedhq", "coarse-init") else 1.4  # the policy under study stands out
        curve.plot(along, stats["median"], label=variant, color=colours[variant], linewidth=width)
        curve.fill_between(along, stats["min"], stats["max"], color=colours[variant], alpha=0.15, linewidth=0)
    if timing_only:
        curve.set(xlabel="round", ylabel="round latency [s] (median over seeds)", title="Round latency (timing-only)")
        panels = (
            (left, "mean_round_latency_s", "mean round latency [s]", "Mean round latency"),
            (right, "energy_j", "fleet energy [J]", "Energy of the run"),
        )
    else:
        curve.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
        curve.set(
            xlabel="simulated time [s] (median over seeds)",
            ylabel="deployed accuracy [fraction]",
            title="Deployed accuracy against time",
        )
        panels = (
            (left, "time_to_target_s", "simulated time [s]", f"Time to {target:.0%} (unreached: absent)"),
            (right, "final_deployed_accuracy", "deployed accuracy [fraction]", "Final deployed accuracy"),
        )
    curve.legend(fontsize="small", loc="best")
    for ax, column, label, title in panels:
        shared = {"data": summary, "y": "variant", "x": column, "hue": "variant", "order": variants}
        shared |= {"palette": colours, "ax": ax, "legend": False}
        sns.barplot(**shared, estimator="median", errorbar=None, alpha=0.5)
        sns.stripplot(**shared, size=6)
        ax.set(xlabel=label, ylabel="", title=title)
    if not timing_only:
        right.set_xlim(max(0.0, summary["final_deployed_accuracy"].min() - 0.1), 1.0)
    return curve


def plot_capacity_curves(summary: pd.DataFrame, keys: list[str], target: float, *, timing_only: bool = False) -> Axes:
    """What a rollout is decided on: round latency, time to the target accuracy, late
    deployed accuracy (the last rounds' mean: the final round alone is noisy) and energy
    against the first swept key (a line per value of the others; median over seeds, band
    from the lowest to the highest seed). Timing-only runs have no accuracy: the time panel
    is then the simulated time of the whole run."""
    sns.set_theme(style="whitegrid", context="notebook")
    panels = 3 if timing_only else 4
    _, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.4), layout="constrained")
    x = keys[0]
    data = summary.copy()
    hue = None
    if len(keys) > 1:
        hue = " / ".join(k.rsplit(".", 1)[-1] for k in keys[1:])
        data[hue] = data[keys[1:]].astype(str).agg(" / ".join, axis=1)
    numeric = pd.api.types.is_numeric_dtype(data[x])
    middle = (
        ("simulated_s", "simulated time [s]", "Simulated time of the run (timing-only)")
        if timing_only
        else ("time_to_target_s", "simulated time [s]", f"Time to {target:.0%} deployed accuracy")
    )
    accuracy = [] if timing_only else [("late_deployed_accuracy", "deployed accuracy", "Late deployed accuracy")]
    for ax, (column, label, title) in zip(
        axes,
        [
            ("mean_round_latency_s", "mean round latency [s]", "Round latency"),
            middle,
            *accuracy,
            ("energy_j", "fleet energy [J]", "Energy of the run"),
        ],
        strict=True,
    ):
        common = {"data": data, "x": x, "y": column, "hue": hue, "ax": ax, "estimator": "median"}
        if numeric:
            sns.lineplot(**common, errorbar=("pi", 100), marker="o")
        else:
            sns.pointplot(**common, errorbar=("pi", 100))
        ax.set(xlabel=x, ylabel=label, title=title)
        if data[column].isna().all():
            ax.text(0.5, 0.5, "not reached in any run", transform=ax.transAxes, ha="center", color="grey")
    return axes[0]


def save(ax: Axes, path: Path) -> None:
    """Write the figure of ``ax`` as PNG (atomically: write, then rename) and release it."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        ax.figure.savefig(partial, dpi=120, format="png")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        plt.close(ax.figure)
