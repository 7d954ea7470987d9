"""Assignment policies, registered by name (importing this package registers the built-ins)."""

from fedhq_sim.policies import fedhq as _fedhq  # noqa: F401 - same
from fedhq_sim.policies import fixed as _fixed  # noqa: F401 - registers the built-in policies
from fedhq_sim.policies import hardware_aware as _hardware_aware  # noqa: F401 - same
from fedhq_sim.policies.base import (
    POLICIES,
    ClientInfo,
    ClientReport,
    Policy,
    PolicyOptions,
    RoundContext,
    register_policy,
)

__all__ = ["POLICIES", "ClientInfo", "ClientReport", "Policy", "PolicyOptions", "RoundContext", "register_policy"]
