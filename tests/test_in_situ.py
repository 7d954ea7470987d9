"""The in-situ calibration's bookkeeping: which costs each factor scales, and the warm-up charge."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhq_sim.in_situ import (
    CONV_GROUP,
    IN_SITU_OVERHEADS,
    ROUND_OVERHEADS,
    STEP_OVERHEADS,
    InSitu,
    apply_in_situ,
    round_line,
    warmup_line,
)
from fedhq_sim.profiles import Kernel, Kernels, Overheads
from fedhq_sim.training import training_work
from fedhq_sim.work import WorkProfile, marker, step_markers


def test_every_overhead_is_scaled_by_exactly_one_factor_or_measured_in_situ():
    assert STEP_OVERHEADS.isdisjoint(ROUND_OVERHEADS)
    assert set(Overheads.model_fields) == STEP_OVERHEADS | ROUND_OVERHEADS | IN_SITU_OVERHEADS


def test_factors_scale_intercepts_and_overheads_and_only_the_convolutions_throughput():
    kernels = Kernels.model_construct(
        conv=Kernel.model_construct(overhead=1e-4, throughput=5e10),
        matmul=Kernel.model_construct(overhead=2e-6, throughput=8e10),
    )
    overheads = Overheads.model_construct(**dict.fromkeys(STEP_OVERHEADS | ROUND_OVERHEADS, 1e-6))
    factors = InSitu(
        conv_factor=3.0,
        conv_compute_factor=1.25,
        rest_factor=1.5,
        round_factor=2.0,
        round_fixed=3e-4,
        warmup_model=5e-4,
        warmup_op=7e-6,
    )
    scaled_kernels, scaled = apply_in_situ(kernels, overheads, factors)
    assert "conv" in CONV_GROUP and "matmul" not in CONV_GROUP
    assert scaled_kernels.conv.overhead == 1e-4 * 3.0 and scaled_kernels.conv.throughput == 5e10 / 1.25
    assert scaled_kernels.matmul.overhead == 2e-6 * 1.5 and scaled_kernels.matmul.throughput == 8e10
    assert scaled.train_step == 1e-6 * 1.5 and scaled.deserialize == 1e-6 * 2.0 and scaled.warmup_op == 7e-6
    assert scaled.warmup_model == 5e-4 and scaled.round_fixed == 3e-4


def _step(ops: int) -> WorkProfile:
    return marker("build_module", ops)  # any work with a known number of non-view operations


def test_the_warm_up_is_charged_once_per_round_for_the_first_step_only():
    steps = {32: _step(10), 8: _step(4)}
    plan = [[32, 32, 8], [32, 32, 8]]  # two passes, a partial last batch in each
    work = training_work(plan, steps)
    assert work.counts[next(iter(marker("warmup_op").counts))] == 10  # the first step's 10 operations
    assert work.counts[next(iter(marker("warmup_model").counts))] == 1
    expected = (steps[32] + step_markers(steps[32])).times(4) + (steps[8] + step_markers(steps[8])).times(2)
    assert work == expected + marker("warmup_model") + marker("warmup_op", 10)


def test_the_warm_up_line_is_a_cost_per_model_plus_one_per_operation():
    ops = [23, 39, 135, 31, 166, 126]
    assert warmup_line(ops, [5e-4 + 5e-6 * n for n in ops]) == pytest.approx((5e-4, 5e-6))


@given(st.lists(st.floats(-0.01, 0.01), min_size=3, max_size=3))
def test_the_warm_up_line_shrugs_off_a_minority_of_wild_points(noise):
    """Three of eleven clients' excesses anything at all (a negative difference of two noisy
    halves included): the line of the other eight comes back."""
    ops = [23, 39, 135, 31, 166, 126, 44, 56, 32, 171, 44]
    excess = [5e-4 + 5e-6 * n for n in ops]
    excess[7:10] = noise
    per_model, per_op = warmup_line(ops, excess)
    assert per_op == pytest.approx(5e-6, rel=0.5) and per_model == pytest.approx(5e-4, rel=0.5)
    assert per_model >= 0 and per_op >= 0


def test_the_round_line_splits_a_fixed_cost_from_a_factor_on_the_overheads():
    charged = [2e-4, 5e-4, 1.2e-3, 3e-3, 8e-4]
    assert round_line(charged, [3e-4 + 1.4 * c for c in charged]) == pytest.approx((3e-4, 1.4))


def test_a_line_through_or_below_the_origin_gives_a_cost_too_small_to_measure_not_zero():
    """A profile refuses a zero cost: a probe whose points fell so must still give a profile."""
    charged = [2e-4, 5e-4, 1.2e-3, 3e-3, 8e-4]
    per_round, factor = round_line(charged, [-1e-4 + 1.4 * c for c in charged])
    assert 0 < per_round <= 1e-9 and factor == pytest.approx(1.4)
    per_model, per_op = warmup_line([23, 39, 135], [0.0, 0.0, 0.0])
    assert 0 < per_model <= 1e-9 and 0 < per_op <= 1e-9
