"""Generated surface-inspection images: the workload of a visual-inspection rollout.

``data: {module: data/inspection.py, dataset: inspection_images}`` runs this file, whose
``@register_dataset`` makes ``inspection_images`` available: RGB images of a brushed-metal
surface (a grain texture under uneven lighting) in four classes, ``ok``, ``scratch`` (a thin
bright line), ``dent`` (a shaded ellipse) and ``stain`` (a dark blotch), at ``size`` pixels.
They stand in for a line camera's crops: the model, the image size and the sample counts are
what a plant deploys, so the simulated round costs what its rounds would; the pictures
themselves are synthetic, generated from a fixed seed (nothing is downloaded).
"""

from __future__ import annotations

import numpy as np

from fedhq_sim.datasets import register_dataset

CLASSES = ("ok", "scratch", "dent", "stain")


def _surface(rng: np.random.Generator, size: int) -> np.ndarray:
    rows = np.linspace(0.0, 1.0, size)[:, None]
    cols = np.linspace(0.0, 1.0, size)[None, :]
    grain = np.cumsum(rng.normal(0.0, 0.04, (size, size)), axis=1)  # brushed along the rows
    light = 0.55 + 0.15 * np.sin(2 * np.pi * (rng.uniform(0.3, 1.0) * rows + rng.uniform() * cols))
    gray = np.clip(light + 0.3 * (grain - grain.mean()), 0.0, 1.0)
    tint = rng.uniform(0.9, 1.1, 3)
    return np.stack([gray * t for t in tint])


def _defect(image: np.ndarray, kind: int, rng: np.random.Generator) -> np.ndarray:
    size = image.shape[1]
    y, x = np.mgrid[0:size, 0:size] / size
    cy, cx = rng.uniform(0.2, 0.8, 2)
    if kind == 1:  # scratch: a thin line at a random angle
        angle = rng.uniform(0, np.pi)
        distance = np.abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle))
        along = np.abs((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle))
        mask = (distance < rng.uniform(0.004, 0.012)) & (along < rng.uniform(0.15, 0.4))
        image = np.where(mask, np.minimum(image + 0.45, 1.0), image)
    elif kind == 2:  # dent: an ellipse lit from one side
        ry, rx = rng.uniform(0.05, 0.15, 2)
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        shade = np.where(inside < 1.0, 0.35 * (x - cx) / rx * np.sqrt(np.clip(1 - inside, 0, 1)), 0.0)
        image = np.clip(image + shade, 0.0, 1.0)
    elif kind == 3:  # stain: a soft dark blotch
        radius = rng.uniform(0.06, 0.18)
        blotch = np.exp(-(((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2)))
        image = image * (1.0 - 0.6 * blotch * rng.uniform(0.5, 1.0))
    return image


@register_dataset("inspection_images", kind="image")
def inspection_images(images_per_class: int = 1000, size: int = 96, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``images_per_class`` images of each class: x (N, 3, size, size) in [0, 1], y (N,)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), images_per_class))
    x = np.empty((len(labels), 3, size, size), dtype=np.float32)
    for index, label in enumerate(labels):
        x[index] = _defect(_surface(rng, size), int(label), rng)
    return x, labels
