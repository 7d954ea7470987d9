"""Fidelity check: profile this host, then predict and measure the same client work here.

Runs ``fedhq-sim profile-device``'s measurement in-process (or loads ``--profile``) and, for
the built-in models and two models the profile was never fitted on (a MobileNetV2 at width
0.5 on 32 px generated inspection images and the 1D vibration CNN, both user files from
``scenarios/``), x fp32/PTQ/QAT x the batch sizes, compares the predicted charge with the
measured wall time (median of ``--repeats``). The profile's passes and the timed runs
alternate (``--passes`` passes, each followed by its share of the repeats), so both see the
host at the same speeds; a last line also gives the error with each pass's own profile paired
with the timings right after it. Prints a Markdown table; ``--out`` also writes it.
Reproduce docs/fidelity.md with:

    mkdir -p results && .venv/bin/python bench/fidelity.py --out results/fidelity.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

from fedhq_sim.data import Samples
from fedhq_sim.errors import InputError
from fedhq_sim.fidelity import (
    builtin_workloads,
    fidelity_rows,
    markdown_table,
    paired_errors,
    time_workloads,
    workloads,
)
from fedhq_sim.models import STAND_IN_MODELS, model_ref, read_user_code
from fedhq_sim.models.registry import load_user_code
from fedhq_sim.probe import ProbeSettings, parse_measured, probe_interleaved
from fedhq_sim.profiles import DeviceProfile
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.schema import validate
from fedhq_sim.yamlio import load_yaml_mapping

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
PROBE_REPEATS = 7
"""Timed loops per probe measurement, as ``fedhq-sim profile-device`` takes by default."""


def unseen_workloads(n_samples: int) -> list:
    """Two user models from ``scenarios/`` on their generated data (never seen by the probe)."""
    anchor = SCENARIOS / "scenario.yaml"  # user files are named relative to a scenario file
    generators = {}
    for name, function in (("data/inspection.py", "inspection_images"), ("data/vibration.py", "vibration_windows")):
        generators[function] = getattr(load_user_code(read_user_code(name, anchor)), function)
    images = generators["inspection_images"](images_per_class=-(-n_samples // 4), size=32)
    windows = generators["vibration_windows"](windows_per_condition=-(-n_samples // 5))
    mobilenet = model_ref(
        factory="MobileNetV2", code=read_user_code("models/mobilenet_v2.py", anchor), args={"width": 0.5}
    )
    vibration = model_ref(factory="build", code=read_user_code("models/vibration_cnn.py", anchor), args={"width": 24})

    def samples(arrays):
        x, y = arrays
        return Samples(torch.as_tensor(x[:n_samples]), torch.as_tensor(y[:n_samples]))

    return [("mobilenet_v2_w0.5_32px", mobilenet, samples(images)), ("vibration_cnn", vibration, samples(windows))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="device profile YAML (default: profile this host now)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--passes", type=int, default=5, help="profile passes, each followed by repeats/passes timings")
    parser.add_argument("--unseen-samples", type=int, default=64, help="samples of the two unseen models' clients")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = builtin_workloads(sorted(STAND_IN_MODELS), args.samples) + unseen_workloads(args.unseen_samples)
    strategies = (FP32, Strategy("ptq", 8), Strategy("qat", 8))
    cases = workloads(specs, strategies=strategies, batch_sizes=args.batch_sizes, epochs=args.epochs)
    times: list[list[float]] = [[] for _ in cases]
    passes: list[tuple[DeviceProfile, list[list[float]]]] = []  # each pass's profile and the timings after it
    if args.profile:
        try:
            mapping = load_yaml_mapping(args.profile)
            device = validate(DeviceProfile, mapping, args.profile)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        time_workloads(cases, args.repeats, times)
    else:
        per_pass = -(-args.repeats // args.passes)

        def between(pass_profile: DeviceProfile) -> None:
            pass_times: list[list[float]] = [[] for _ in cases]
            time_workloads(cases, per_pass, pass_times)
            for all_times, new in zip(times, pass_times, strict=True):
                all_times.extend(new)
            passes.append((pass_profile, pass_times))

        settings = ProbeSettings("this_host", args.threads, PROBE_REPEATS, None, None, passes=args.passes)
        device = parse_measured(probe_interleaved(settings, between))
    rows = fidelity_rows(cases, device, times)
    header = (
        f"Host: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, {args.threads} "
        f"thread(s); {args.samples} samples ({args.unseen_samples} for the unseen models) x {args.epochs} epochs, "
        f"median of {len(times[0])} runs alternated with {args.passes if not args.profile else 0} profile passes; "
        f"{date.today()}\n\n"
    )
    text = header + markdown_table(rows)
    if passes:
        paired = [abs(e) for e in paired_errors(cases, passes)]
        text += (
            f"\nPaired with each pass (each pass's profile against the timings right after it, median over "
            f"passes): median absolute error {statistics.median(paired):.1%}, worst {max(paired):.1%}."
        )
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
