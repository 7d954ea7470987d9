"""Figures (seaborn, one theme): drawn from tables, returned as Axes, saved by the caller."""

from __future__ import annotations

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


def plot_policy_comparison(runs: pd.DataFrame, summary: pd.DataFrame, target: float) -> Axes:
    """Three panels per policy, over seeds: deployed accuracy against simulated time (median
    curve, band from the worst to the best seed), time to the target accuracy, and the final
    deployed accuracy (one dot per seed, a bar at the median)."""
    sns.set_theme(style="whitegrid", context="notebook")
    _, (curve, reach, final) = plt.subplots(
        1, 3, figsize=(15, 4.6), layout="constrained", gridspec_kw={"width_ratios": [2.2, 1, 1]}
    )
    policies = list(dict.fromkeys(summary["policy"]))
    colours = dict(zip(policies, sns.color_palette("colorblind", len(policies)), strict=True))
    for policy in policies:
        per_round = runs[runs["policy"] == policy].groupby("round")
        time_s = per_round["end_s"].median()
        accuracy = per_round["deployed_accuracy"]
        width = 2.6 if policy == "fedhq" else 1.4  # the policy under study stands out
        curve.plot(time_s, accuracy.median(), label=policy, color=colours[policy], linewidth=width)
        curve.fill_between(time_s, accuracy.min(), accuracy.max(), color=colours[policy], alpha=0.15, linewidth=0)
    curve.axhline(target, color="grey", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    curve.set(
        xlabel="simulated time [s] (median over seeds)",
        ylabel="deployed accuracy [fraction]",
        title="Deployed accuracy against time",
    )
    curve.legend(fontsize="small", loc="lower right")
    for ax, column, label, title in (
        (reach, "time_to_target_s", "simulated time [s]", f"Time to {target:.0%} (unreached: absent)"),
        (final, "final_deployed_accuracy", "deployed accuracy [fraction]", "Final deployed accuracy"),
    ):
        shared = {"data": summary, "y": "policy", "x": column, "hue": "policy", "order": policies}
        shared |= {"palette": colours, "ax": ax, "legend": False}
        sns.barplot(**shared, estimator="median", errorbar=None, alpha=0.5)
        sns.stripplot(**shared, size=6)
        ax.set(xlabel=label, ylabel="", title=title)
    final.set_xlim(max(0.0, summary["final_deployed_accuracy"].min() - 0.1), 1.0)
    return curve


def save(ax: Axes, path) -> None:
    """Write the figure of ``ax`` as PNG and release it."""
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
