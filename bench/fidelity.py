"""Fidelity check: profile this host, then predict and measure the same client work here.

Runs ``fedhq-sim profile-device``'s measurement in-process (or loads ``--profile``), then
for the three models x fp32/PTQ/QAT x the batch sizes compares the predicted charge with
the measured wall time (median of ``--repeats``). Prints a Markdown table; ``--out`` also
writes it. Reproduce docs/fidelity.md with:

    mkdir -p results && .venv/bin/python bench/fidelity.py --out results/fidelity.md
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

import torch

from fedhq_sim.errors import InputError
from fedhq_sim.fidelity import compare, markdown_table
from fedhq_sim.models import MODELS
from fedhq_sim.probe import ProbeSettings, parse_measured, probe_device
from fedhq_sim.profiles import DeviceProfile
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.schema import validate
from fedhq_sim.yamlio import load_yaml_mapping


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="device profile YAML (default: profile this host now)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        try:
            mapping = load_yaml_mapping(args.profile)
            device = validate(DeviceProfile, mapping, args.profile)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    else:
        device = parse_measured(probe_device(ProbeSettings("this_host", args.threads, args.repeats, None, None)))
    rows = compare(
        device,
        models=list(MODELS),
        strategies=(FP32, Strategy("ptq", 8), Strategy("qat", 8)),
        batch_sizes=args.batch_sizes,
        epochs=args.epochs,
        n_samples=args.samples,
        repeats=args.repeats,
    )
    header = (
        f"Host: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, {args.threads} "
        f"thread(s); {args.samples} samples x {args.epochs} epochs, median of {args.repeats}; {date.today()}\n\n"
    )
    text = header + markdown_table(rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
