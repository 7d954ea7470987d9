"""One self-contained HTML report per results folder (a run, a compare or a sweep).

The report is built only from the files in the folder (a compare or sweep keeps a copy of
each scenario it ran as ``scenario-<name>.yaml``), so ``fedhq-sim report DIR`` can
rebuild it later; every figure is embedded as a base64 PNG, so the file can be mailed or
attached to a rollout decision on its own. A tiny inline script marks ``<body>`` with how
many figures decoded (``data-figures-loaded``), which the headless-browser test reads.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from fedhq_sim.errors import InputError
from fedhq_sim.files import atomic_write_text

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f4f4f4; } img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 1rem; overflow-x: auto; font-size: 0.8rem; }
.meta td:first-child { font-weight: bold; }
"""

SCRIPT = """
window.addEventListener("load", () => {
  const figures = Array.from(document.querySelectorAll("img.figure"));
  const loaded = figures.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.figuresLoaded = String(loaded);
  document.body.dataset.figures = String(figures.length);
});
"""

TIMING_ONLY_BANNER = (
    "Timing-only: every computation was priced from its traced work profile and not executed; "
    "the timings are those of a full run, and no accuracy is reported."
)

RUN_FIGURES = (
    ("accuracy_vs_time.png", "Accuracy against simulated time"),
    ("round_latency.png", "Round latency breakdown"),
    ("client_timeline.png", "Per-client timeline of the slowest round"),
    ("strategy_assignment.png", "Strategy assignment over rounds"),
    ("energy_per_round.png", "Energy per round"),
    ("link_utilisation.png", "Shared link utilisation"),
)


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    image = f'<img class="figure" alt="{alt}" src="data:image/png;base64,{data}">'
    return f"<figure>{image}<figcaption>{alt}</figcaption></figure>"


def _meta(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
    return f'<table class="meta">{cells}</table>'


def _page(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style><script>{SCRIPT}</script></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(body)}</body></html>\n"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(path, "", f"cannot read the results file ({error})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise InputError(path, "", f"cannot read the results file ({error.strerror})") from None


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise InputError(path, "", f"cannot read the results file ({error})") from None


def write_run_report(out: Path) -> Path:
    """``report.html`` of one run's folder: summary, figures, scenario, versions and seed."""
    info = _read_json(out / "run.json")
    rounds = _read_csv(out / "rounds.csv")
    last = rounds.iloc[-1]
    timing_only = info.get("mode") == "timing-only"
    unreported = "not reported (timing-only run: no training was executed)"
    summary = {
        "mode": "timing-only: work priced from traced profiles, not executed" if timing_only else "full",
        "rounds": int(last["round"]),
        "simulated time [s]": f"{last['end_s']:.3f}",
        "final deployed accuracy": unreported if timing_only else f"{last['deployed_accuracy']:.3f}",
        "final fp32 accuracy": unreported if timing_only else f"{last['fp32_accuracy']:.3f}",
        "mean round latency [s]": f"{rounds.loc[rounds['round'] > 0, 'latency_s'].mean():.3f}",
        "clients reported / selected": f"{int(rounds['reported'].sum())} / {int(rounds['selected'].sum())}",
        "energy [J]": f"{rounds['energy_j'].sum():.1f}",
    }
    workload = info.get("workload", {})
    body = [
        *([f"<p><strong>{html.escape(TIMING_ONLY_BANNER)}</strong></p>"] if timing_only else []),
        *([f"<p><strong>{html.escape(workload['note'])}</strong></p>"] if "note" in workload else []),
        "<h2>Summary</h2>",
        _meta(summary),
        "<h2>Model and data</h2>",
        _meta({k: v for k, v in workload.items() if k != "note"}),
        "<h2>Figures</h2>",
        *(_figure(out / name, caption) for name, caption in RUN_FIGURES if (out / name).is_file()),
        "<h2>Rounds</h2>",
        rounds.round(4).to_html(index=False, border=0),
        "<h2>Scenario</h2>",
        f"<pre>{html.escape(_read_text(out / 'scenario.yaml'))}</pre>",
        "<h2>Run</h2>",
        _meta({k: info[k] for k in ("scenario", "seed", "command", "platform", "quantization_backend") if k in info}),
        "<h2>Versions</h2>",
        _meta(info.get("versions", {})),
    ]
    path = out / "report.html"
    atomic_write_text(path, _page(f"fedhq-sim run: {info.get('scenario', out.name)}", body))
    return path


def write_batch_report(out: Path) -> Path:
    """``report.html`` of a compare or sweep folder: the median table, figures, scenarios."""
    kind = "compare" if (out / "compare.json").is_file() else "sweep"
    info = _read_json(out / f"{kind}.json")
    table = _read_csv(out / "table.csv")
    figures = [("comparison.png", "Policies compared")] if kind == "compare" else [("capacity.png", "Capacity curves")]
    scenarios = sorted(out.glob("scenario-*.yaml"))
    timing_only = info.get("mode") == "timing-only"
    mode = [f"<p><strong>{html.escape(TIMING_ONLY_BANNER)}</strong></p>"] if timing_only else []
    body = [
        *mode,
        "<h2>Summary (median and range over seeds)</h2>",
        table.round(4).to_html(index=False, border=0),
        "<h2>Figures</h2>",
        *(_figure(out / name, caption) for name, caption in figures if (out / name).is_file()),
        "<h2>Setup</h2>",
        _meta(
            {k: info[k] for k in ("variants", "by", "set", "seeds", "target", "command", "host_seconds") if k in info}
        ),
    ]
    for scenario in scenarios:
        title = f"Scenario {scenario.stem.removeprefix('scenario-')} (as given; --set values above)"
        body += [f"<h2>{html.escape(title)}</h2>", f"<pre>{html.escape(scenario.read_text(encoding='utf-8'))}</pre>"]
    body += ["<h2>Versions</h2>", _meta(info.get("versions", {}))]
    path = out / "report.html"
    names = ", ".join(s.stem.removeprefix("scenario-") for s in scenarios)
    atomic_write_text(path, _page(f"fedhq-sim {kind}: {names}", body))
    return path


def write_report(out: Path) -> Path:
    """The report of whatever results folder ``out`` is."""
    if (out / "run.json").is_file():
        return write_run_report(out)
    if (out / "compare.json").is_file() or (out / "sweep.json").is_file():
        return write_batch_report(out)
    raise InputError(out, "", "not a results folder of fedhq-sim run, compare or sweep (no run.json/compare.json)")
