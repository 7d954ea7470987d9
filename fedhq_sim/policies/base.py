"""The policy contract: who runs which strategy this round.

A policy only answers; the engine owns the round loop (as Flower's ``Strategy`` does). It
is built once per run from its options in the scenario, sees every client's static facts,
and may learn from what the server observes through :meth:`Policy.observe`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import numpy as np

from fedhq_sim.quant.strategy import Strategy
from fedhq_sim.schema import StrictModel

if TYPE_CHECKING:  # the analysis imports the scenario, which imports the policies
    from fedhq_sim.analysis import ClientAnalysis


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows about a client before any round."""

    client_id: int
    site: str
    device: str
    link: str
    num_samples: int
    able: frozenset[str] = frozenset({"fp32", "ptq8", "qat8"})
    """Strategy labels the client's memory and link allow (see :mod:`fedhq_sim.feasibility`)."""
    analysis: ClientAnalysis | None = None
    """Predicted round seconds per strategy and data skew (see :mod:`fedhq_sim.analysis`)."""


@dataclass(frozen=True)
class RoundContext:
    """The question asked of a policy at the start of a round."""

    round: int
    selected: tuple[int, ...]


@dataclass(frozen=True)
class ClientReport:
    """What the server observed of one client in a round (reported or dropped)."""

    client_id: int
    round: int
    strategy: Strategy
    reported: bool
    num_samples: int
    train_loss: float | None
    divergence: float | None = None
    """Relative L2 distance of the client's trained weights from the global model it began with."""
    deployment_gap: float | None = None
    """PTQ and QAT, for policies that observe it: the loss the deployment adds to the client's
    update, on the client's calibration samples (see :func:`fedhq_sim.training.deployment_gap`)."""


class PolicyOptions(StrictModel):
    """Options every quantizing policy has; subclasses add their own.

    8 or 4 bits: a 4-bit model stores its integer values in int8 (as int8 runtimes run them,
    restricted to 16 levels); its updates travel packed two values per byte.
    The server deploys the global model at the same width.
    """

    bits: Literal[4, 8] = 8


class Policy(ABC):
    """Assigns a :class:`Strategy` to each selected client of a round.

    Parameters
    ----------
    options
        The policy's validated options from the scenario's ``policy`` section.
    clients
        Every client of the fleet, in client-id order.
    rng
        The policy's own random stream (seeded from the scenario seed).
    """

    name: ClassVar[str]
    Options: ClassVar[type[PolicyOptions]] = PolicyOptions
    observes_deployment_gap: ClassVar[bool] = False
    """Whether quantizing clients must measure their update's deployment gap for :meth:`observe`.
    The measurement is real work (deploying the update, a float and an int8 pass over the
    calibration samples), charged to the clients, so only a policy that reads it asks for it."""
    observes_training: ClassVar[bool] = False
    """Whether :meth:`observe` reads what real training produces (losses, divergence,
    quantization error) to change later assignments. Timing-only mode produces none of it,
    so it refuses such a policy rather than report timings a full run would not have."""

    def __init__(self, options: PolicyOptions, clients: Sequence[ClientInfo], rng: np.random.Generator) -> None:
        self.options = options
        self.clients: Mapping[int, ClientInfo] = {c.client_id: c for c in clients}
        self.rng = rng

    @abstractmethod
    def assign(self, ctx: RoundContext) -> dict[int, Strategy]:
        """Return a strategy for every client in ``ctx.selected``."""

    def strategies_for(self, client_id: int) -> frozenset[Strategy]:
        """Every strategy :meth:`assign` may give this client (all of them, unless overridden).

        The server selects only clients able to run at least one of them (memory and link,
        ``ClientInfo.able``), so a fixed policy never spends a slot on a client that cannot do
        what it will be told.
        """
        bits = self.options.bits
        return frozenset({Strategy("fp32", 32), Strategy("ptq", bits), Strategy("qat", bits)})

    def observe(self, reports: Sequence[ClientReport]) -> None:  # noqa: B027 - optional hook
        """Learn from a finished round; fixed policies ignore it."""

    def decision_log(self) -> list[dict[str, object]]:
        """Changes of assignment made during the run, with why (written to ``policy_log.csv``);
        fixed policies make none."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """What the policy learned so far, for a checkpoint: plain values and tensors only, so it
        loads with ``torch.load(weights_only=True)``. A policy rebuilt from the same options,
        clients and seed, then given this, decides as the original would from here on.
        Fixed policies decide everything when built, so they have nothing to save (a policy
        that changes itself in ``observe`` must override this and :meth:`load_state_dict`)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved."""
        if state:
            raise ValueError(f"policy {self.name} keeps no state, but a checkpoint holds {sorted(state)}")


P = TypeVar("P", bound=type[Policy])
POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str) -> Callable[[P], P]:
    """Class decorator: make a policy available to scenarios as ``policy.name: <name>``."""

    def add(cls: P) -> P:
        if name in POLICIES:
            raise ValueError(f"a policy named {name!r} is already registered")
        cls.name = name
        POLICIES[name] = cls
        return cls

    return add
