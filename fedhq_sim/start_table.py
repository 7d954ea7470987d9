"""Who gets QAT at the start, and why: the table ``fedhq-sim analyze`` prints.

One row per client from the world's hardware and data analysis: its predicted download,
compute and upload seconds per strategy, its data skew, and the strategy FedHQ's coarse
start (:func:`fedhq_sim.policies.hardware_aware.coarse_assignment`) gives it, with the rule
that decided it. Nothing runs: the figures are the analysis's predictions.
"""

from __future__ import annotations

import pandas as pd

from fedhq_sim.policies.hardware_aware import coarse_assignment, ptq_critical_path
from fedhq_sim.world import World


def start_table(world: World, latency_budget: float, max_qat_fraction: float) -> tuple[pd.DataFrame, float]:
    """The table, and the predicted all-PTQ critical path in seconds."""
    bits = world.quantized_bits
    ptq, qat = f"ptq{bits}", f"qat{bits}"
    choices = coarse_assignment(world.infos, bits, latency_budget, max_qat_fraction)
    rows = []
    for client in world.scenario.clients:
        a = world.analysis[client.client_id]
        choice = choices[client.client_id]
        rows.append(
            {
                "client": client.name,
                "device": client.device.name,
                "link": client.link.name,
                "samples": a.samples,
                "skew_jsd": round(a.skew, 3),
                "download_s": round(a.download_s, 4),
                f"{ptq}_compute_s": round(a.compute_s[ptq], 4),
                f"{qat}_compute_s": round(a.compute_s[qat], 4),
                "upload_s": round(a.upload_s[ptq], 4),
                f"{ptq}_round_s": round(a.round_s(ptq), 4),
                f"{qat}_round_s": round(a.round_s(qat), 4),
                "initial": choice.strategy.label,
                "why": choice.reason,
            }
        )
    return pd.DataFrame(rows), ptq_critical_path(world.infos, bits)
