"""Generated vibration windows of motors: a dataset a scenario registers from its own module.

``data: {module: data/vibration.py, dataset: vibration_windows}`` runs this file, whose
``@register_dataset`` makes ``vibration_windows`` available. Each window is three
accelerometer axes over 256 samples at 2.56 kHz (0.1 s) of a motor running at 20-30 Hz, in one
of five conditions with their textbook signatures: normal (noise and a small 1x line),
imbalance (a strong 1x line), misalignment (2x and 3x, strongest axially), bearing outer-race
fault (impacts at 3.57x running speed ringing at a 900 Hz resonance) and looseness (many
harmonics of 1x, clipped). Generated from a fixed seed: the same windows on every host.
"""

from __future__ import annotations

import numpy as np

from fedhq_sim.datasets import register_dataset

CONDITIONS = ("normal", "imbalance", "misalignment", "bearing_outer_race", "looseness")
RATE_HZ, SAMPLES = 2560.0, 256


def _window(condition: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(SAMPLES) / RATE_HZ
    speed = rng.uniform(20.0, 30.0)
    phase = rng.uniform(0, 2 * np.pi, 3)
    severity = rng.uniform(0.4, 1.0)
    axes = np.stack([0.1 * np.sin(2 * np.pi * speed * t + p) for p in phase])
    if condition == 1:
        axes[:2] += 1.0 * severity * np.sin(2 * np.pi * speed * t + phase[:2, None])
    elif condition == 2:
        for harmonic, gain in ((2, 0.8), (3, 0.4)):
            axes += (
                gain
                * severity
                * np.sin(2 * np.pi * harmonic * speed * t + phase[:, None])
                * np.array([[0.5], [0.5], [1.0]])
            )
    elif condition == 3:
        period = 1.0 / (3.57 * speed)
        since = np.mod(t + rng.uniform(0, period), period)
        axes += 1.5 * severity * np.exp(-since * 400.0) * np.sin(2 * np.pi * 900.0 * since)
    elif condition == 4:
        harmonics = sum(np.sin(2 * np.pi * k * speed * t + phase[:, None]) / k for k in range(1, 8))
        axes += np.clip(0.8 * severity * harmonics, -0.5, 0.9)
    return (axes + rng.normal(0.0, 0.15, axes.shape)).astype(np.float32)


@register_dataset("vibration_windows", kind="sequence")
def vibration_windows(windows_per_condition: int = 240, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """``windows_per_condition`` windows of each condition: x (N, 3, 256), y (N,)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CONDITIONS)), windows_per_condition)
    x = np.stack([_window(int(c), rng) for c in labels])
    order = rng.permutation(len(labels))
    return x[order], labels[order]
