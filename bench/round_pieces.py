"""A client round's pieces, timed apart against their charge: the figures behind the in-situ
warm-up and round lines (docs/fidelity.md, "Fifth set"; ``fedhq_sim.in_situ``).

1. For the built-in models under fp32, PTQ and QAT at batch 16 and 64 (256 samples, 2 epochs,
   one thread): the head (read, build, load), the training and the tail (quantize, write) of
   ``local_work``, each timed untraced (median of ``--repeats``, each after an untimed round
   of the same case) and charged on ``--profile`` (default: profile this host now, 3 passes);
2. for the in-situ probe clients: the fresh half's excess over the steady half (the warm-up)
   against operations per step, and the line the profile fits through it.

    .venv/bin/python bench/round_pieces.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from fedhq_sim import in_situ
from fedhq_sim import training as local
from fedhq_sim.charge import charge_seconds
from fedhq_sim.errors import InputError
from fedhq_sim.fidelity import Case, builtin_workloads, workloads
from fedhq_sim.probe import ProbeSettings, parse_measured, probe_device
from fedhq_sim.profiles import DeviceProfile
from fedhq_sim.quant.payload import encode_fp32
from fedhq_sim.quant.strategy import FP32, Strategy
from fedhq_sim.schema import validate
from fedhq_sim.work import WORK_CACHE, WorkProfile, untraced
from fedhq_sim.yamlio import load_yaml_mapping


def _pieces(case: Case) -> tuple[tuple[float, float, float], tuple[WorkProfile, WorkProfile, WorkProfile]]:
    """Seconds and work of the head, the training and the tail of one local round."""
    cfg, strategy = case.cfg, case.strategy
    t0 = time.perf_counter()
    started, head = WORK_CACHE.once(local.head_key(cfg, strategy), lambda: local._head(case.payload, strategy, cfg))
    t1 = time.perf_counter()
    _, train = local._train(started.model, case.data, cfg, strategy, 1)
    t2 = time.perf_counter()
    tail_key = local.tail_key(cfg, strategy, len(case.data))
    _, tail = WORK_CACHE.once(tail_key, lambda: local._tail(started, case.data, strategy, cfg))
    return (t1 - t0, t2 - t1, time.perf_counter() - t2), (head, train, tail)


def _device(path: Path | None) -> DeviceProfile:
    if path is None:
        return parse_measured(probe_device(ProbeSettings("this_host", 1, 7, None, None, passes=3)))
    return validate(DeviceProfile, load_yaml_mapping(path), path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, help="device profile YAML (default: profile this host now)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        device = _device(args.profile)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    specs = builtin_workloads(["mlp", "small_cnn", "resnet8"], 256)
    cases = workloads(specs, strategies=(FP32, Strategy("ptq", 8), Strategy("qat", 8)), batch_sizes=[16, 64], epochs=2)
    works = [_pieces(case)[1] for case in cases]
    times: list[list[tuple[float, float, float]]] = [[] for _ in cases]
    with untraced():
        for _ in range(args.repeats):
            for case, case_times in zip(cases, times, strict=True):
                _pieces(case)
                case_times.append(_pieces(case)[0])
    print("| model | strategy | batch | head ms (measured / charged) | training ms | tail ms |")
    print("|---|---|---|---|---|---|")
    for case, work, case_times in zip(cases, works, times, strict=True):
        cells = []
        for i, piece in enumerate(work):
            measured, charged = statistics.median(t[i] for t in case_times), charge_seconds(piece, device)
            cells.append(f"{measured * 1e3:.2f} / {charged * 1e3:.2f} (x{measured / charged:.2f})")
        print(f"| {case.model} | {case.strategy.label} | {case.cfg.batch_size} | " + " | ".join(cells) + " |")

    clients = [(c, torch.randn(c.batch), encode_fp32(c.network().state_dict())) for c in in_situ.PROBE_CLIENTS]
    traced = [in_situ._trace(c, x, p) for c, x, p in clients]
    rounds: list[list[tuple[float, float, float]]] = [[] for _ in clients]
    with untraced():
        for _ in range(args.repeats):
            for (client, x, payload), client_rounds in zip(clients, rounds, strict=True):
                in_situ._timed_round(client, x, payload)
                client_rounds.append(in_situ._timed_round(client, x, payload))
    ops = [t.step_ops for t in traced]
    excess = [statistics.median(fresh - steady for _, fresh, steady in r) for r in rounds]
    print("\n| probe client | batch | QAT | ops per step | warm-up excess ms |")
    print("|---|---|---|---|---|")
    for (client, _, _), n, e in zip(clients, ops, excess, strict=True):
        print(f"| {type(client.network()).__name__} | {client.batch} | {client.qat} | {n} | {e * 1e3:.3f} |")
    per_model, per_op = in_situ.warmup_line(ops, excess)
    print(f"\nWarm-up line: {per_model * 1e3:.3f} ms per model + {per_op * 1e6:.2f} us per operation.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
