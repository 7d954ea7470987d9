"""The ``training`` section of a scenario: rounds, local work, deadlines and the aggregation mode."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedhq_sim.aggregation_modes import AggregationSpec, Mode, buffer_size, concurrency
from fedhq_sim.schema import Seconds, StrictModel


class TrainingSpec(StrictModel):
    """The federated-learning settings of a run."""

    rounds: int = Field(ge=1, le=100_000)
    clients_per_round: int = Field(ge=1)
    local_epochs: int = Field(default=1, ge=1)
    local_steps: int | None = Field(default=None, ge=1, le=1_000_000)
    """Exactly this many minibatch steps per round (reshuffling after each pass), instead of
    ``local_epochs`` passes: every client then does the same work whatever data it holds."""
    batch_size: int = Field(ge=1, le=4096)  # the feasibility check traces a step of this batch
    learning_rate: float = Field(gt=0.0, le=100.0)
    calibration_samples: int = Field(default=32, ge=1, le=100_000)
    round_deadline: Seconds
    over_selection: float = Field(default=1.0, ge=1.0, le=10.0)
    """Select this many times ``clients_per_round`` (rounded up) and close the round once
    ``clients_per_round`` updates have arrived (at the server, or at a site's gateway); the others are cancelled
    (FedScale's over-commitment, Google's practice): stragglers stop setting the round's end."""
    time_limit: Seconds | None = None
    """End the run with the first round (version) that ends at or after this simulated time,
    if that comes before ``rounds``: "what does an hour of training reach?"."""
    mode: Mode = "sync"
    """How arrivals become model versions (:mod:`fedhq_sim.aggregation_modes`)."""
    aggregation: AggregationSpec = Field(default_factory=AggregationSpec)

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> TrainingSpec:
        if self.local_steps is not None and "local_epochs" in self.model_fields_set:
            raise ValueError("give local_epochs or local_steps, not both")
        # Options of other modes are ignored, not refused: one scenario can be swept across modes.
        if self.mode == "semi-sync" and self.aggregation.period is None:
            raise ValueError("mode semi-sync needs aggregation.period, the rounds' fixed length")
        slots, buffered = concurrency(self.aggregation, self.clients_per_round), self.mode == "buffered"
        if buffered and buffer_size(self.aggregation, self.clients_per_round) > slots:
            raise ValueError("aggregation.buffer_size is larger than the concurrency: the buffer would never fill")
        return self
