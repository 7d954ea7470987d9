"""Datasets: one registry for the built-ins and a user's own, and readers for a plant's files
(importing this registers the built-ins)."""

from fedhq_sim.datasets import builtin as _builtin  # noqa: F401 - registers the built-in datasets
from fedhq_sim.datasets import plaid as _plaid  # noqa: F401 - registers PLAID (read from the sktime wheel)
from fedhq_sim.datasets.builtin import SENSOR_CLASSES, SENSOR_FEATURES, load_digits, load_plant_sensors
from fedhq_sim.datasets.files import read_csv, read_image_folder, read_npz
from fedhq_sim.datasets.registry import DATASETS, Dataset, checked_samples, load_registered, register_dataset

__all__ = [
    "DATASETS",
    "SENSOR_CLASSES",
    "SENSOR_FEATURES",
    "Dataset",
    "checked_samples",
    "load_digits",
    "load_plant_sensors",
    "load_registered",
    "read_csv",
    "read_image_folder",
    "read_npz",
    "register_dataset",
]
