"""The charge predicted for this host against the time the same work really takes here.

A cheap version of ``bench/fidelity.py`` (docs/fidelity.md): profile the host (3 passes,
alternated with the timed runs), then predict and measure the three models under fp32, PTQ
and QAT at one batch size. Shared CI machines are noisy, so the bound is loose (median error
at most 50 %); the bench holds the strict figures.
"""

import torch

from fedhq_sim.fidelity import summary
from fedhq_sim.probe import ProbeSettings, parse_measured, probe_interleaved
from fedhq_sim.quant.strategy import FP32, Strategy


def test_predicted_time_is_within_50_percent_of_measured_time_on_this_host():
    from fedhq_sim.fidelity import builtin_workloads, fidelity_rows, time_workloads, workloads

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        specs = builtin_workloads(["small_cnn", "resnet8", "mlp"], 128)
        strategies = (FP32, Strategy("ptq", 8), Strategy("qat", 8))
        cases = workloads(specs, strategies=strategies, batch_sizes=[32], epochs=1)
        times = [[] for _ in cases]
        # Profile passes alternate with the timed runs, as in bench/fidelity.py: a shared
        # host's speed can shift between a profile taken first and measurements taken after.
        settings = ProbeSettings("this_host", 1, 3, None, None, passes=3)
        device = parse_measured(probe_interleaved(settings, lambda _pass: time_workloads(cases, 1, times)))
        rows = fidelity_rows(cases, device, times)
    finally:
        torch.set_num_threads(threads)
    median, _ = summary(rows)
    assert median <= 0.5, rows


def test_a_user_models_rows_are_predicted_from_its_traced_work_and_timed():
    """The rows bench/fidelity.py adds for models the profile never saw (here the shipped 1D CNN)."""
    from fedhq_sim.data import Samples
    from fedhq_sim.fidelity import fidelity_rows, time_workloads, workloads
    from fedhq_sim.models import model_ref, read_user_code
    from fedhq_sim.profiles import ProfileLibrary
    from tests.conftest import PROFILES, REPO

    code = read_user_code("models/vibration_cnn.py", REPO / "scenarios" / "s.yaml")
    ref = model_ref(factory="build", code=code, args={"width": 8, "blocks": 1})
    generator = torch.Generator().manual_seed(0)
    data = Samples(torch.randn(24, 3, 64, generator=generator), torch.arange(24) % 3)
    cases = workloads([("vibration", ref, data)], strategies=(FP32, Strategy("qat", 8)), batch_sizes=[8], epochs=1)
    times = [[] for _ in cases]
    time_workloads(cases, 2, times)
    host = ProfileLibrary(PROFILES).device("reference_host", referenced_from=REPO, key="test")
    rows = fidelity_rows(cases, host, times)
    assert [(r.model, r.strategy, r.batch_size) for r in rows] == [("vibration", "fp32", 8), ("vibration", "qat8", 8)]
    assert all(r.predicted_s > 0 and r.measured_s > 0 and len(t) == 2 for r, t in zip(rows, times, strict=True))
    assert rows[1].predicted_s > rows[0].predicted_s  # QAT's fake quantization is charged
