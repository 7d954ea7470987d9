"""The scenario's ``deployment`` section: how the global model becomes the model devices run.

Every round the server quantizes the aggregated fp32 model for the devices, and its test
accuracy is the run's **deployed accuracy**. Weights are quantized per channel from the
aggregated model; the activation grids need ranges, which come from one of two places:

- ``clients`` (the default): the sample-weighted combination of the ranges in the round's
  updates (:mod:`fedhq_sim.quant.ranges`). The server holds no data, as a plant's usually
  does not, and what each client calibrated (PTQ), learned (QAT) or observed (fp32) reaches
  the deployed model. Before any update has arrived (the initial model) there are no ranges,
  and the deployed accuracy is not reported (NaN).
- ``server``: PTQ calibration on ``server_samples`` samples the server holds, drawn IID from
  the data before the clients' split: the deployment of earlier versions, kept for comparison.

The bit width is a fact of the run (the devices' runtime), not of the policy: every policy
quantizes at it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedhq_sim.schema import StrictModel


class DeploymentSpec(StrictModel):
    """Bit width and activation-range source of the deployed model."""

    bits: Literal[4, 8] = 8
    """8 or 4 bits: a 4-bit model stores its integer values in int8 (as int8 runtimes run them,
    restricted to 16 levels); its updates travel packed two values per byte."""
    calibration: Literal["clients", "server"] = "clients"
    server_samples: int = Field(default=64, ge=1, le=100_000)
    """Calibration samples the server holds (``server``). They are held out of the clients'
    data under ``clients`` too (and given to no one), so that both deployments train on the
    same client data and compare on it."""

    @property
    def from_clients(self) -> bool:
        return self.calibration == "clients"
