import dataclasses

import numpy as np
import pytest

from fedhq_sim.policies import POLICIES, ClientInfo, Policy, RoundContext, register_policy
from fedhq_sim.policies.fixed import FixedHybrid, HybridOptions
from fedhq_sim.quant.strategy import Strategy
from tests.test_fedhq import fleet

CLIENTS = [ClientInfo(i, "site", "rpi4", "wifi6", 100) for i in range(20)]


def test_fixed_hybrid_runs_qat_on_its_share_of_the_fleet_every_round():
    policy = FixedHybrid(HybridOptions(qat_fraction=0.25), CLIENTS, np.random.default_rng(0))
    everyone = policy.assign(RoundContext(1, tuple(range(20))))
    assert sum(s.kind == "qat" for s in everyone.values()) == 5
    assert set(everyone.values()) == {Strategy("qat", 8), Strategy("ptq", 8)}
    later = policy.assign(RoundContext(2, (0, 1, 2)))
    assert later == {c: everyone[c] for c in (0, 1, 2)}


@pytest.mark.parametrize(
    ("choose", "expected"),
    [("skew", {2, 5}), ("hardware", {1, 4})],
)
def test_a_ranked_hybrid_gives_its_share_to_the_most_skewed_or_the_fastest_qat_rounds(choose, expected):
    """Six clients, a share of two; made unable to run QAT, the most skewed (2) gives its
    place to the next one."""
    infos = fleet([1.3, 1.1, 1.4, 1.5, 1.2, 1.6], [0.1, 0.2, 0.8, 0.3, 0.4, 0.6])
    policy = FixedHybrid(HybridOptions(bits=4, qat_fraction=0.34, choose=choose), infos, np.random.default_rng(0))
    assert policy.qat_clients == expected
    unable = [*infos[:2], dataclasses.replace(infos[2], able=frozenset({"ptq4"})), *infos[3:]]
    policy = FixedHybrid(HybridOptions(bits=4, qat_fraction=0.34, choose=choose), unable, np.random.default_rng(0))
    assert 2 not in policy.qat_clients and len(policy.qat_clients) == 2


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
        Strategy("ptq", 2)


USER_POLICY = """
from fedhq_sim.policies import Policy, register_policy
from fedhq_sim.quant.strategy import Strategy


@register_policy("every-other-qat")
class EveryOtherQAT(Policy):
    def assign(self, ctx):
        return {cid: Strategy("qat" if cid % 2 else "ptq", self.options.bits) for cid in ctx.selected}
"""


def test_a_user_defined_policy_loads_by_name_from_the_users_own_file(write_scenario, tmp_path):
    from fedhq_sim.engine import Simulation
    from fedhq_sim.policies.choice import choose_policy
    from fedhq_sim.scenario import load_scenario
    from tests.conftest import tiny_scenario_dict

    (tmp_path / "my_policies.py").write_text(USER_POLICY)
    data = tiny_scenario_dict()
    data["training"].update(rounds=1, clients_per_round=4)
    data["policy"] = {"name": "every-other-qat", "module": "my_policies.py"}
    path = write_scenario(data)
    result = Simulation(load_scenario(path)).run()
    strategies = {p.client_id: p.strategy for p in result.phases if p.phase == "compute"}
    assert strategies == {0: "ptq8", 1: "qat8", 2: "ptq8", 3: "qat8"}
    choose_policy(load_scenario(path))  # choosing again does not register the policy twice


def test_a_broken_user_policy_module_is_one_line_naming_its_key(write_scenario, tmp_path, capsys):
    from fedhq_sim.cli import main
    from tests.conftest import tiny_scenario_dict

    (tmp_path / "broken.py").write_text("raise RuntimeError('half-written policy')\n")
    data = tiny_scenario_dict()
    data["policy"] = {"name": "nope", "module": "broken.py"}
    assert main(["validate", str(write_scenario(data))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("policy.module: importing 'broken.py' failed: RuntimeError: half-written policy")
    data["policy"]["module"] = "missing.py"
    assert main(["validate", str(write_scenario(data, "m.yaml"))]) == 2
    assert "policy.module: no such file:" in capsys.readouterr().err
