"""torchao's PT2E flow against fedhq-sim's backend: prepare and convert of one small model.

Usage (torchao is no dependency of fedhq-sim: install it into the venv first):
    .venv/bin/pip install torchao==0.18.0 && .venv/bin/python bench/pt2e_cost.py [--repeats 3]

Why the backend does not use PT2E (docs/benchmarks.md, issue 14): every client's round would
pay PT2E's QAT prepare and convert. Both sides quantize the same conv+BN+residual model at
8 bits, alternated ``--repeats`` times in one run; the figures are medians of host seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fedhq_sim.quant import backend


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.b1(self.c1(x)))
        y = torch.relu(self.b2(self.c2(y)) + y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pt2e(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    times = {}
    start = time.perf_counter()
    ptq = prepare_pt2e(
        torch.export.export(model.eval(), (x,)).module(),
        X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()),
    )
    ptq(x)
    convert_pt2e(ptq)
    times["ptq"] = time.perf_counter() - start
    exported = torch.export.export(model.train(), (x,)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    holder = {}
    times["qat_prepare"] = _timed(lambda: holder.update(qat=prepare_qat_pt2e(exported, quantizer)))
    holder["qat"](x).sum().backward()
    move_exported_model_to_eval(holder["qat"])
    times["qat_convert"] = _timed(lambda: convert_pt2e(holder["qat"]))
    return times


def ours(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    times = {}
    start = time.perf_counter()
    prepared = backend.prepare_ptq(model.eval())
    backend.calibrate(prepared, [x])
    backend.convert(prepared)
    times["ptq"] = time.perf_counter() - start
    holder = {}
    times["qat_prepare"] = _timed(lambda: holder.update(qat=backend.prepare_qat(model)))
    holder["qat"](x).sum().backward()
    times["qat_convert"] = _timed(lambda: backend.convert(holder["qat"]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, x = Small(), torch.randn(8, 1, 8, 8)
    runs: dict[str, list[dict[str, float]]] = {"pt2e": [], "fedhq-sim": []}
    for _ in range(args.repeats):
        runs["pt2e"].append(pt2e(model, x))
        runs["fedhq-sim"].append(ours(model, x))
    for step in ("ptq", "qat_prepare", "qat_convert"):
        a, b = (statistics.median(r[step] for r in runs[side]) for side in ("pt2e", "fedhq-sim"))
        print(f"{step:12s} PT2E {a:8.3f} s   fedhq-sim {b:8.4f} s   ratio {a / b:8.0f}x")


if __name__ == "__main__":
    main()
