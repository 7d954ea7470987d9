"""Models: one registry for the built-ins and a user's own (importing this registers the built-ins)."""

from fedhq_sim.models import builtin as _builtin  # noqa: F401 - registers the built-in models
from fedhq_sim.models.builtin import STAND_IN_MODELS
from fedhq_sim.models.registry import (
    IMAGE_INPUT,
    MODELS,
    Arch,
    ModelRef,
    UserCode,
    build_model,
    load_user_code,
    model_ref,
    read_user_code,
    register_model,
    traced_build,
    traced_load,
)

__all__ = [
    "IMAGE_INPUT",
    "MODELS",
    "STAND_IN_MODELS",
    "Arch",
    "ModelRef",
    "UserCode",
    "build_model",
    "load_user_code",
    "model_ref",
    "read_user_code",
    "register_model",
    "traced_build",
    "traced_load",
]
