import numpy as np
import pytest

from service.inference.ensemble import majority_vote


def test_majority_wins_over_confidence() -> None:
    probs = np.array([[[0.6, 0.4]], [[0.55, 0.45]], [[0.0, 1.0]]])
    labels, votes, mean = majority_vote(probs)
    assert labels.tolist() == [0]  # two votes beat one very confident model
    assert votes.tolist() == [[2, 1]]
    assert mean[0, 1] > mean[0, 0]


def test_tie_goes_to_highest_mean_probability() -> None:
    probs = np.array([[[0.5, 0.45, 0.05]], [[0.1, 0.2, 0.7]], [[0.3, 0.6, 0.1]]])  # one vote each
    labels, votes, _ = majority_vote(probs)
    assert votes.tolist() == [[1, 1, 1]]
    assert labels.tolist() == [1]  # means 0.300, 0.417, 0.283: class 1, not the first or the most confident


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        majority_vote(np.zeros((3, 4)))
