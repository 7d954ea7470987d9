import numpy as np
import pytest

from fedhq_sim.policies import POLICIES, ClientInfo, Policy, RoundContext, register_policy
from fedhq_sim.policies.fixed import FixedHybrid, HybridOptions
from fedhq_sim.quant.strategy import Strategy

CLIENTS = [ClientInfo(i, "site", "rpi4", "wifi6", 100) for i in range(20)]


def test_fixed_hybrid_runs_qat_on_its_share_of_the_fleet_every_round():
    policy = FixedHybrid(HybridOptions(qat_fraction=0.25), CLIENTS, np.random.default_rng(0))
    everyone = policy.assign(RoundContext(1, tuple(range(20))))
    assert sum(s.kind == "qat" for s in everyone.values()) == 5
    assert set(everyone.values()) == {Strategy("qat", 8), Strategy("ptq", 8)}
    later = policy.assign(RoundContext(2, (0, 1, 2)))
    assert later == {c: everyone[c] for c in (0, 1, 2)}


@pytest.mark.parametrize(("name", "kind"), [("all-fp32", "fp32"), ("all-ptq", "ptq"), ("all-qat", "qat")])
def test_single_strategy_policies(name, kind):
    cls = POLICIES[name]
    policy = cls(cls.Options(), CLIENTS, np.random.default_rng(0))
    assert {s.kind for s in policy.assign(RoundContext(1, (3, 4))).values()} == {kind}


def test_a_policy_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="already registered"):

        @register_policy("all-ptq")
        class Again(Policy):
            def assign(self, ctx):
                return {}


def test_strategies_reject_unsupported_bit_widths():
    with pytest.raises(ValueError, match="supports bits"):
        Strategy("ptq", 4)
