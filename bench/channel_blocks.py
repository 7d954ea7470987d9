"""Convolution time against channel count on this host: the steps that ``conv_channel_block`` prices.

A 3x3 convolution (16 x C x 16 x 16, C in and out) and a 1D convolution (16 x C x 128, kernel
5), forward only, for C from 8 to 64, medians of ``--repeats`` calls in turns over the channel
counts, one thread. Vectorized kernels that compute whole blocks of channels take the same
time for every C within a block (with AVX-512's 16 lanes: 20, 24 and 32; 40 and 48), which a
price in unpadded FLOPs misses. Also prints the charge of each layer on this host's block,
against the unpadded count, as GFLOP/s of useful work (docs/fidelity.md cites the table).

    .venv/bin/python bench/channel_blocks.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F  # noqa: N812 - the conventional alias

from fedhq_sim.charge import padded_flops
from fedhq_sim.probe_profile import host_channel_block
from fedhq_sim.work import traced

CHANNELS = (8, 12, 16, 20, 24, 32, 40, 48, 64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    block, source = host_channel_block()
    layers = {}
    for c in CHANNELS:
        x2, w2 = torch.randn(16, c, 16, 16), torch.randn(c, c, 3, 3)
        x1, w1 = torch.randn(16, c, 128), torch.randn(c, c, 5)
        layers[(c, "2d")] = lambda x=x2, w=w2: F.conv2d(x, w, padding=1)
        layers[(c, "1d")] = lambda x=x1, w=w1: F.conv1d(x, w, padding=2)
    times: dict[tuple[int, str], list[float]] = {key: [] for key in layers}
    for fn in layers.values():
        fn()
    for _ in range(args.repeats):
        for key, fn in layers.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    print(f"Host block: {block} ({source})\n")
    print("| channels | 3x3 conv us | useful GFLOP/s | padded GFLOP/s | 1D conv us | useful GFLOP/s | padded GFLOP/s |")
    print("|---|---|---|---|---|---|---|")
    for c in CHANNELS:
        cells = [str(c)]
        for kind in ("2d", "1d"):
            seconds = statistics.median(times[(c, kind)])
            (op,) = [op for op in traced(layers[(c, kind)])[1].counts if op.kind == "conv"]
            useful, padded = op.flops / seconds / 1e9, padded_flops(op, block) / seconds / 1e9
            cells += [f"{seconds * 1e6:.0f}", f"{useful:.1f}", f"{padded:.1f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
