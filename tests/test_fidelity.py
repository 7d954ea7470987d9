"""The charge predicted for this host against the time the same work really takes here.

A cheap version of ``bench/fidelity.py`` (docs/fidelity.md): profile the host once, then
predict and measure the three models under fp32, PTQ and QAT at one batch size. Shared CI
machines are noisy, so the bound is loose (median error at most 50 %); the bench holds the
strict figures.
"""

import torch

from fedhq_sim.fidelity import compare, summary
from fedhq_sim.probe import ProbeSettings, parse_measured, probe_device
from fedhq_sim.quant.strategy import FP32, Strategy


def test_predicted_time_is_within_50_percent_of_measured_time_on_this_host():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        device = parse_measured(probe_device(ProbeSettings("this_host", 1, 3, None, None, passes=1)))
        rows = compare(
            device,
            models=["small_cnn", "resnet8", "mlp"],
            strategies=(FP32, Strategy("ptq", 8), Strategy("qat", 8)),
            batch_sizes=[32],
            epochs=1,
            n_samples=128,
            repeats=3,
        )
    finally:
        torch.set_num_threads(threads)
    median, _ = summary(rows)
    assert median <= 0.5, rows
