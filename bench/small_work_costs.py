"""What small client workloads pay beyond their operations: the figures docs/fidelity.md cites.

Measured side by side in one run, medians of ``--repeats``, one thread:

1. seeding: ``torch.manual_seed`` against seeding only the CPU generator (what the simulator
   now does), both called from a nested stack as inside a client's work;
2. a fresh model's warm-up: its first 8 training steps against 8 steady ones, in steady steps;
3. the fidelity table's row order: a small model's local work right after a MobileNetV2's
   against right after its own (the cache footprint of the previous row).

    .venv/bin/python bench/small_work_costs.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fidelity import unseen_workloads

from fedhq_sim.fidelity import builtin_workloads, workloads
from fedhq_sim.models import build_model
from fedhq_sim.quant import backend
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.rng import seeded_cpu_generator
from fedhq_sim.training import local_work, sgd_step
from fedhq_sim.work import untraced


def _nested(depth: int, fn: Callable[[], object]) -> object:
    return fn() if depth == 0 else _nested(depth - 1, fn)


def _median_us(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def seeding(repeats: int) -> str:
    def cpu_only() -> None:
        with seeded_cpu_generator(0):
            pass

    lines = []
    for depth in (0, 40):
        full = _median_us(lambda d=depth: _nested(d, lambda: torch.manual_seed(0)), repeats)
        cpu = _median_us(lambda d=depth: _nested(d, cpu_only), repeats)
        lines.append(f"| {depth} frames | {full:.1f} | {cpu:.1f} | {full / cpu:.0f}x |")
    return "\n".join(
        ["| stack depth | torch.manual_seed [us] | CPU generator only [us] | ratio |", "|---|---|---|---|", *lines]
    )


def warm_up(repeats: int, cases) -> str:
    lines = ["| model | strategy | steady step [us] | first 8 steps' excess [steady steps] |", "|---|---|---|---|"]
    for case in cases:
        excess, steady = [], []
        for _ in range(repeats):
            cfg = case.cfg  # a fresh model, as each round's client builds one
            model = build_model(cfg.model_ref, cfg.num_classes, seed=0, input_shape=cfg.input_shape)
            if case.strategy.kind == "qat":
                model = backend.prepare_qat(model, case.strategy.bits)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            index = torch.arange(16)
            times = []
            for _ in range(16):
                start = time.perf_counter()
                sgd_step(model, optimizer, case.data, index)
                times.append(time.perf_counter() - start)
            steady_step = statistics.median(times[8:])
            excess.append(sum(times[:8]) - 8 * steady_step)
            steady.append(steady_step)
        step = statistics.median(steady)
        lines.append(
            f"| {case.model} | {case.strategy.label} | {step * 1e6:.0f} | {statistics.median(excess) / step:.2f} |"
        )
    return "\n".join(lines)


def row_order(repeats: int, small, big) -> str:
    def run(case) -> float:
        start = time.perf_counter()
        local_work(case.payload, case.data, case.strategy, case.cfg, seed=1)
        return time.perf_counter() - start

    lines = ["| workload | after itself [ms] | after a MobileNetV2 [ms] | ratio |", "|---|---|---|---|"]
    for case in small:
        after_self, after_big = [], []
        for _ in range(repeats):  # alternated, so a slow spell of the host hits both
            run(case)
            after_self.append(run(case))
            run(big)
            after_big.append(run(case))
        a, b = statistics.median(after_self) * 1e3, statistics.median(after_big) * 1e3
        lines.append(f"| {case.model} {case.strategy.label} b{case.cfg.batch_size} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = builtin_workloads(["mlp", "small_cnn", "resnet8"], 256) + unseen_workloads(64)
    fp32_qat = workloads(specs, strategies=(FP32, Strategy("qat", 8)), batch_sizes=[16], epochs=1)
    small = workloads(specs[:2], strategies=(FP32,), batch_sizes=[16, 64], epochs=2)
    big = workloads(specs[3:4], strategies=(Strategy("qat", 8),), batch_sizes=[32], epochs=2)[0]
    with untraced():
        print("Seeding, per call:\n\n" + seeding(args.repeats * 20) + "\n")
        print("A fresh model's warm-up (batch 16):\n\n" + warm_up(max(3, args.repeats // 2), fp32_qat) + "\n")
        print("The previous row's footprint:\n\n" + row_order(args.repeats, small, big))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
