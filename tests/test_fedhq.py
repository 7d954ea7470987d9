"""FedHQ's learned adjustment, the random-hybrid baseline, and the benefit model."""

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhq_sim.analysis import ClientAnalysis
from fedhq_sim.policies import POLICIES, ClientInfo, ClientReport, RoundContext
from fedhq_sim.policies.benefit_model import BenefitModel
from fedhq_sim.policies.fedhq import FedHQ, FedHQOptions
from fedhq_sim.policies.hardware_aware import coarse_assignment
from fedhq_sim.quant.strategy import Strategy

PTQ, QAT = Strategy("ptq", 4), Strategy("qat", 4)
ABLE = frozenset({"fp32", "ptq4", "qat4"})


def fleet(qat_rounds: list[float], skews: list[float], ptq_round: float = 1.0) -> list[ClientInfo]:
    """Clients whose predicted PTQ round is ``ptq_round`` and QAT round as given."""
    infos = []
    for cid, (qat_s, skew) in enumerate(zip(qat_rounds, skews, strict=True)):
        analysis = ClientAnalysis(cid, 50, skew, 0.0, {"ptq4": ptq_round, "qat4": qat_s}, {"ptq4": 0.0, "qat4": 0.0})
        infos.append(ClientInfo(cid, "site", "rpi4", "wifi6", 50, ABLE, analysis))
    return infos


Loss = Callable[[int, Strategy], float]


def reports(policy: FedHQ, round_index: int, loss: Loss) -> list[ClientReport]:
    """Every client reports its update's deployment gap under the strategy it ran."""
    return [
        ClientReport(cid, round_index, s, True, 50, 1.0, 0.2, loss(cid, s)) for cid, s in sorted(policy.current.items())
    ]


def qat_gains(gain: dict[int, float], base: float = 0.05) -> Loss:
    """Deployment gaps where QAT narrows client ``cid``'s by ``gain[cid]``."""
    return lambda cid, s: base + (gain[cid] if s == PTQ else 0.0)


def make(infos, **options) -> FedHQ:
    return FedHQ(FedHQOptions(bits=4, **options), infos, np.random.default_rng(0))


# Ten clients; QAT lengthens each round by 5 %, within a 10 % budget, so none has it for free.
TEN = fleet([1.05] * 10, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])


def test_the_adjustment_moves_a_client_whose_observed_label_says_qat_pays():
    """QAT narrows the deployment gap most for the least skewed clients (9 most of all), which
    the skew-first start put on PTQ: the labels of both strategies move them to QAT, in place
    of the skewed ones, for which it pays least."""
    policy = make(TEN, max_qat_fraction=0.3, adjust_every=2)
    assert [cid for cid, s in policy.current.items() if s == QAT] == [0, 1, 2]  # by skew
    loss = qat_gains({cid: 0.08 + 0.08 * cid for cid in range(10)})
    for r in range(1, 9):
        policy.observe(reports(policy, r, loss))
    assert policy.current[9] == QAT and policy.current[0] == PTQ
    assert sum(s == QAT for s in policy.current.values()) <= 3  # swapped in, within the QAT share
    move = next(m for m in policy.moves if m.client_id == 9)
    assert move.strategy == QAT and "benefit" in move.reason
    logged = next(row for row in policy.decision_log() if row["client_id"] == 9)
    assert logged["strategy"] == "qat4" and logged["reason"] == move.reason


def test_qat_clients_are_sent_back_when_their_labels_say_qat_costs():
    """QAT widens every client's deployment gap: the skew-first QAT clients return to PTQ, and
    nobody is promoted."""
    policy = make(TEN, max_qat_fraction=0.3, adjust_every=1)
    loss = qat_gains(dict.fromkeys(range(10), -0.2))
    for r in range(1, 8):
        policy.observe(reports(policy, r, loss))
    assert all(s == PTQ for s in policy.current.values()), policy.moves


@settings(max_examples=20, deadline=None)
@given(offset=st.floats(-0.3, 0.6), slope=st.floats(-0.8, 0.8))
def test_no_client_flaps_when_qat_pays_linearly_in_skew(offset, slope):
    """The labels follow the model's own form (QAT's gain linear in skew): whatever the
    assignment, the fit is the same, so each client moves at most once."""
    policy = make(TEN, max_qat_fraction=0.5, adjust_every=1)
    loss = qat_gains({cid: offset + slope * info.analysis.skew for cid, info in enumerate(TEN)})
    for r in range(1, 41):
        policy.observe(reports(policy, r, loss))
    moved = [m.client_id for m in policy.moves]
    assert all(moved.count(cid) <= 1 for cid in set(moved)), policy.moves


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_assignment_settles_when_qat_pays_unevenly(seed):
    """Gains the model's form cannot express (drawn per client): the fit changes as clients
    move, and the assignment still settles."""
    policy = make(TEN, max_qat_fraction=0.5, adjust_every=1)
    gains = {cid: float(g) for cid, g in enumerate(np.random.default_rng(seed).uniform(0.0, 0.6, 10))}
    for r in range(1, 201):
        policy.observe(reports(policy, r, qat_gains(gains)))
    assert not [m for m in policy.moves if m.round > 100], policy.moves
    moved = [m.client_id for m in policy.moves]
    assert all(moved.count(cid) <= 3 for cid in set(moved)), policy.moves


def test_equal_observations_move_nobody():
    policy = make(TEN, max_qat_fraction=0.3, adjust_every=1)
    before = dict(policy.current)
    for r in range(1, 10):
        policy.observe(reports(policy, r, qat_gains(dict.fromkeys(range(10), 0.0), base=0.2)))
    assert policy.current == before and not policy.moves


# Clients 0 and 1 run QAT within the all-PTQ critical path: for free in time.
FREE_TWO = fleet([0.9, 0.9, 1.05, 1.05, 1.05, 1.05], [0.1, 0.1, 0.2, 0.3, 0.4, 0.5])


def test_clients_with_qat_for_free_keep_it_while_it_does_not_hurt_however_little_it_gains():
    policy = make(FREE_TWO, max_qat_fraction=0.5, adjust_every=1)
    skews = [c.analysis.skew for c in FREE_TWO]
    gains = {cid: 2.0 * (skew - 0.09) for cid, skew in enumerate(skews)}  # 0.02 for 0 and 1, up to 0.82
    for r in range(1, 12):
        policy.observe(reports(policy, r, qat_gains(gains)))
    assert policy.current[0] == policy.current[1] == QAT
    assert not [m for m in policy.moves if m.client_id in (0, 1)], policy.moves


def test_clients_with_qat_for_free_are_sent_back_when_their_labels_say_qat_hurts():
    policy = make(FREE_TWO, max_qat_fraction=0.0, adjust_every=1)
    for r in range(1, 8):
        policy.observe(reports(policy, r, qat_gains(dict.fromkeys(range(6), -0.5))))
    assert policy.current[0] == policy.current[1] == PTQ
    assert all("QAT hurts" in m.reason for m in policy.moves if m.client_id in (0, 1)), policy.moves


@settings(max_examples=25, deadline=None)
@given(
    qat_rounds=st.lists(st.floats(0.5, 2.0), min_size=6, max_size=6),
    gains=st.lists(st.floats(-0.5, 1.0), min_size=6, max_size=6),
    budget=st.floats(0.0, 0.5),
)
def test_the_adjustment_never_exceeds_the_latency_budget_on_predicted_times(qat_rounds, gains, budget):
    infos = fleet(qat_rounds, [0.1 * i for i in range(6)])
    policy = make(infos, latency_budget=budget, max_qat_fraction=0.5, adjust_every=1)
    path = max(i.analysis.round_s("ptq4") for i in infos)
    free = sum(t <= path for t in qat_rounds)
    for r in range(1, 21):  # past the warm-up (30 labels), so the adjustment acts
        policy.observe(reports(policy, r, qat_gains(dict(enumerate(gains)))))
        assigned = policy.assign(RoundContext(r + 1, tuple(range(6))))
        predicted = max(infos[cid].analysis.round_s(s.label) for cid, s in assigned.items())
        assert predicted <= (1 + budget) * path * (1 + 1e-12)
        assert sum(s == QAT for s in assigned.values()) <= max(3, free)  # the QAT share


def test_the_benefit_model_learns_how_qats_gain_depends_on_skew():
    """Labels of both strategies, QAT's gain 0.5 - 0.4 skew: the benefit comes back per client,
    for QAT clients (labelled on QAT only) as for PTQ ones."""
    model = BenefitModel(TEN, "ptq4")
    gain = {cid: 0.5 - 0.4 * info.analysis.skew for cid, info in enumerate(TEN)}
    on_qat = {0, 1, 2}
    for r in range(1, 8):
        model.update(
            [
                ClientReport(
                    cid, r, QAT if cid in on_qat else PTQ, True, 50, 1.0, 0.2, 1.0 + (0 if cid in on_qat else g)
                )
                for cid, g in gain.items()
            ]
        )
    assert model.predict(range(10)) == pytest.approx(gain, abs=0.03)
    ptq_labels = [1.0 + g for c, g in gain.items() if c not in on_qat]
    assert model.ptq_mean_label == pytest.approx(sum(ptq_labels) / len(ptq_labels), rel=1e-9)


def test_random_hybrid_draws_as_many_qat_clients_as_fedhqs_initialization():
    infos = fleet([0.9, 1.05, 1.05, 1.05, 1.05, 1.05, 1.05, 1.05, 2.0, 2.0], [0.5] * 10)
    cls = POLICIES["random-hybrid"]
    options = cls.Options(bits=4, max_qat_fraction=0.3)
    coarse = coarse_assignment(infos, 4, options.latency_budget, options.max_qat_fraction)
    expected = sum(c.strategy == QAT for c in coarse.values())
    draws = []
    for seed in range(4):
        policy = cls(options, infos, np.random.default_rng(seed))
        assigned = policy.assign(RoundContext(1, tuple(range(10))))
        assert sum(s == QAT for s in assigned.values()) == expected
        draws.append(frozenset(cid for cid, s in assigned.items() if s == QAT))
    assert len(set(draws)) > 1  # drawn, not chosen


def test_the_coarse_start_says_whether_the_cap_or_the_free_clients_filled_the_qat_share():
    assert (
        coarse_assignment(TEN, 4, 0.1, 0.3)[9].reason
        == "skew 0.00: the QAT share is full (3 on QAT, 3 by max_qat_fraction)"
    )
    assert coarse_assignment(FREE_TWO, 4, 0.1, 0.0)[5].reason == "skew 0.50: the QAT share is full (2 on QAT, all free)"
