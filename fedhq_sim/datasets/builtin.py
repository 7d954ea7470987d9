"""The built-in datasets, neither downloaded at run time.

scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) for the image
models, and ``plant_sensors``, tabular condition-monitoring readings of pumps generated from
a fixed seed, for the MLP. Both are small stand-ins for a plant's own data.
"""

from __future__ import annotations

import numpy as np
import torch

from fedhq_sim.data import Samples
from fedhq_sim.datasets.registry import register_dataset


@register_dataset("digits", kind="image")
def load_digits() -> Samples:
    """scikit-learn's digits as tensors; pixel values 0..16 are scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits  # heavy import, only when needed

    bunch = sklearn_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    return Samples(x, y)


SENSOR_FEATURES = (
    "vibration_1x",
    "vibration_2x",
    "vibration_3x",
    "vibration_high_band",
    "vibration_kurtosis",
    "crest_factor",
    "bearing_temperature",
    "winding_temperature",
    "motor_current",
    "current_imbalance",
    "suction_pressure",
    "discharge_pressure",
    "flow",
    "acoustic_level",
    "power_factor",
    "ambient_temperature",
)
SENSOR_CLASSES = ("normal", "imbalance", "misalignment", "bearing_wear", "cavitation", "overheating")

# How each fault shifts each reading at full severity (rows: SENSOR_CLASSES[1:]), in the
# readings' own units; the patterns follow the textbook signatures (imbalance at 1x running
# speed, misalignment at 2x and 3x, bearing wear in the high band and kurtosis, cavitation
# in suction pressure, flow and noise, overheating in temperatures and current).
_FAULT_SHIFTS = np.array(
    [
        [1.2, 0.1, 0.0, 0.0, 0.0, 0.1, 2.0, 0.0, 0.02, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        [0.5, 1.0, 0.4, 0.0, 0.2, 0.1, 3.0, 0.0, 0.05, 0.01, 0.0, 0.0, 0.0, 1.5, -0.01, 0.0],
        [0.1, 0.0, 0.0, 1.0, 2.5, 0.8, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0],
        [0.2, 0.0, 0.0, 0.6, 0.8, 0.4, 0.0, 0.0, -0.04, 0.0, -0.35, -0.6, -0.15, 6.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 12.0, 18.0, 0.15, 0.02, 0.0, 0.0, 0.0, 0.0, -0.04, 0.0],
    ]
)
_NOISE_SD = np.array([0.12, 0.1, 0.06, 0.1, 0.5, 0.15, 3.0, 4.0, 0.05, 0.008, 0.05, 0.2, 0.05, 2.0, 0.015, 3.0])


@register_dataset("plant_sensors", kind="tabular")
def load_plant_sensors(samples_per_class: int = 600, seed: int = 2026) -> Samples:
    """Condition-monitoring readings of centrifugal pumps: 16 features, 6 conditions.

    Generated, not recorded: each sample draws an operating point (speed, load) that moves
    every reading, a fault severity in [0.2, 1] that scales its class's signature, and
    sensor noise; then every feature is standardized. The seed is fixed, so every run and
    host sees the same dataset; scenarios' seeds only change how it is split.
    """
    rng = np.random.default_rng(seed)
    n = samples_per_class * len(SENSOR_CLASSES)
    labels = np.repeat(np.arange(len(SENSOR_CLASSES)), samples_per_class)
    speed = rng.uniform(0.6, 1.0, n)
    load = rng.uniform(0.3, 1.0, n)
    ambient = rng.normal(25.0, 6.0, n)
    base = np.stack(
        [
            0.5 * speed,
            0.3 + 0.1 * speed,
            0.2 + 0.05 * speed,
            0.2 + 0.1 * load,
            3.0 + 0.0 * load,
            1.4 + 0.1 * load,
            35.0 + 15.0 * load + 0.4 * ambient,
            45.0 + 25.0 * load + 0.6 * ambient,
            0.8 * load * speed,
            0.02 + 0.0 * load,
            1.0 - 0.2 * load,
            3.0 + 2.0 * load * speed**2,
            0.9 * load * speed,
            70.0 + 10.0 * load,
            0.85 - 0.05 * (1.0 - load),
            ambient,
        ],
        axis=1,
    )
    severity = rng.uniform(0.2, 1.0, n)
    shifts = np.vstack([np.zeros(len(SENSOR_FEATURES)), _FAULT_SHIFTS])[labels] * severity[:, None]
    readings = base + shifts + rng.normal(0.0, 1.6, base.shape) * _NOISE_SD
    standardized = (readings - readings.mean(axis=0)) / readings.std(axis=0)
    order = rng.permutation(n)
    x = torch.as_tensor(standardized[order], dtype=torch.float32)
    return Samples(x, torch.as_tensor(labels[order], dtype=torch.long))
