import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedhq_sim.data import PartitionError, dirichlet_partition
from fedhq_sim.datasets import load_plant_sensors

LABELS = np.repeat(np.arange(10), 50)


@settings(max_examples=40, deadline=None)
@given(n_clients=st.integers(1, 20), alpha=st.floats(0.05, 100.0), seed=st.integers(0, 2**32 - 1))
def test_partition_hands_out_every_sample_exactly_once(n_clients, alpha, seed):
    try:
        parts = dirichlet_partition(LABELS, n_clients, alpha, 1, np.random.default_rng(seed))
    except PartitionError:
        return  # very small alpha with many clients may not reach the minimum; that is reported
    together = np.sort(np.concatenate(parts))
    assert np.array_equal(together, np.arange(len(LABELS)))
    assert all(len(p) >= 1 for p in parts)


def test_small_alpha_gives_more_skewed_clients():
    def mean_top_class_share(alpha):
        parts = dirichlet_partition(LABELS, 10, alpha, 5, np.random.default_rng(1))
        return np.mean([np.bincount(LABELS[p]).max() / len(p) for p in parts])

    assert mean_top_class_share(0.1) > mean_top_class_share(100.0) + 0.3


def test_an_impossible_minimum_is_an_error_not_an_empty_client():
    with pytest.raises(PartitionError, match="need"):
        dirichlet_partition(LABELS, 100, 1.0, 10, np.random.default_rng(0))


def test_federate_keeps_test_and_calibration_apart_from_training(digits_federation):
    data = digits_federation
    assert len(data.test) == round(0.2 * 1797)
    assert len(data.server_calibration) == 64
    assert sum(len(c) for c in data.clients) == 1797 - len(data.test) - 64
    assert data.input_shape == (1, 8, 8)


def test_plant_sensors_are_generated_the_same_every_time_and_balanced():
    from fedhq_sim.datasets import SENSOR_CLASSES, SENSOR_FEATURES, load_plant_sensors

    one, two = load_plant_sensors(), load_plant_sensors()
    assert torch.equal(one.x, two.x) and torch.equal(one.y, two.y)
    assert one.x.shape == (600 * len(SENSOR_CLASSES), len(SENSOR_FEATURES))
    assert one.y.bincount().tolist() == [600] * len(SENSOR_CLASSES)
    assert torch.allclose(one.x.mean(dim=0), torch.zeros(len(SENSOR_FEATURES)), atol=1e-5)


def test_each_fault_moves_the_readings_away_from_normal():
    from fedhq_sim.datasets import load_plant_sensors

    data = load_plant_sensors()
    normal = data.x[data.y == 0].mean(dim=0)
    for label in range(1, 6):
        assert (data.x[data.y == label].mean(dim=0) - normal).abs().max() > 0.5, label


def test_plant_sensors_come_in_the_size_a_large_fleet_needs():
    large = load_plant_sensors(samples_per_class=5000)
    assert len(large) == 30_000 and torch.bincount(large.y).tolist() == [5000] * 6
