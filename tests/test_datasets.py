"""The synthetic data sets: what they return, and their errors on bad input."""

import numpy as np
import pytest

from sklearn_clasp.datasets import make_planted_partition, make_shapes_image


def test_planted_partition_groups_and_sizes():
    X, y = make_planted_partition(4, n_samples=100, imbalance=4.0, random_state=0)
    sizes = np.bincount(y)
    assert X.shape == (100, 64) and sizes.size == 4 and sizes.sum() == 100
    assert 3 <= sizes.max() / sizes.min() <= 4  # geometric sizes, rounded down


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_clusters=5, n_samples=3), "n_samples=3 is too few for 5 groups"),
    (dict(n_clusters=0), "'n_clusters' parameter"),
    (dict(n_clusters=2, noise=-1.0), "'noise' parameter"),
    (dict(n_clusters=2, imbalance=0.5), "'imbalance' parameter"),
    (dict(n_clusters=2, shape="round"), "'shape' parameter"),
])
def test_planted_partition_refuses_bad_input(kwargs, match):
    """5 groups of 3 samples silently gave one group; n_clusters=0 a broadcast error."""
    with pytest.raises(ValueError, match=match):
        make_planted_partition(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(noise=-5), "'noise' parameter"),
    (dict(background=(300, -5, 0)), r"background must be 3 values in 0..255"),
    (dict(background=(1, 2)), r"background must be 3 values in 0..255"),
    (dict(n_shapes=9), "'n_shapes' parameter"),
])
def test_shapes_image_refuses_bad_input(kwargs, match):
    """A negative noise and an out-of-range background were ignored or clipped."""
    with pytest.raises(ValueError, match=match):
        make_shapes_image(28, 28, **kwargs)


def test_shapes_image_truth_matches_its_colours():
    image, truth = make_shapes_image(56, 70, n_shapes=3, background=(10, 20, 30))
    assert image.shape == (56, 70, 3) and truth.shape == (56, 70)
    assert sorted(np.unique(truth).tolist()) == [0, 1, 2, 3]
    assert (image[truth == 0] == (10, 20, 30)).all()
