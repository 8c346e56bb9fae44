"""Temperature scaling, ECE, and the uncertainty rule (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from service.inference.confidence import (
    HIGH_ENTROPY,
    LOW_TOP_PROBABILITY,
    MODELS_DISAGREE,
    UncertaintyRule,
    apply_temperature,
    normalized_entropy,
    uncertainty_reasons,
)
from service.inference.ensemble import majority_vote
from trainer.export.calibration import calibration_report, choose_rule, ece, fit_temperature


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_temperature_equals_dividing_the_logits() -> None:
    z = np.random.default_rng(0).normal(0, 3, (50, 4))
    np.testing.assert_allclose(apply_temperature(softmax(z), 2.5), softmax(z / 2.5), atol=1e-9)
    assert apply_temperature(softmax(z), 1.0) is not None
    with pytest.raises(ValueError):
        apply_temperature(softmax(z), 0.0)


def test_fit_temperature_recovers_an_overconfident_model() -> None:
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2, (4000, 4))
    y = np.array([rng.choice(4, p=p) for p in softmax(true_logits)])
    overconfident = softmax(true_logits * 3)  # the model's logits are 3× too large
    t = fit_temperature(overconfident, y)
    assert 2.6 < t < 3.4
    assert ece(apply_temperature(overconfident, t), y) < ece(overconfident, y) / 2


def test_ece_zero_for_perfect_and_large_for_wrong_confident() -> None:
    y = np.array([0, 1, 2, 3] * 25)
    assert ece(np.eye(4)[y], y) == 0.0
    assert ece(np.eye(4)[(y + 1) % 4], y) == pytest.approx(1.0)


def test_uncertainty_reasons() -> None:
    rule = UncertaintyRule(min_top_probability=0.6, max_normalized_entropy=0.5)
    probs = np.array(
        [
            [[0.9, 0.05, 0.03, 0.02], [0.4, 0.3, 0.2, 0.1], [0.5, 0.5, 0.0, 0.0]],
            [[0.95, 0.05, 0, 0], [0.4, 0.3, 0.2, 0.1], [0.1, 0.8, 0.1, 0.0]],
            [[0.97, 0.01, 0.01, 0.01], [0.4, 0.3, 0.2, 0.1], [0.5, 0.2, 0.2, 0.1]],
        ]
    )  # models × samples × classes
    labels, votes, mean = majority_vote(probs)
    reasons = uncertainty_reasons(votes, mean, labels, rule)
    assert reasons[0] == []
    assert reasons[1] == [LOW_TOP_PROBABILITY, HIGH_ENTROPY]
    assert reasons[2][0] == MODELS_DISAGREE
    assert normalized_entropy(np.full(4, 0.25)) == pytest.approx(1.0)
    assert uncertainty_reasons(votes, mean, labels, UncertaintyRule(flag_disagreement=False))[2] == []


def _confident_when_right(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(probs (3 models, n, 4), labels) of three agreeing models whose confidence predicts correctness."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    conf = rng.uniform(0.3, 1.0, n)
    correct = rng.uniform(0, 1, n) < conf
    label = np.where(correct, y, (y + 1) % 4)
    mean = np.full((n, 4), 0.0)
    mean[np.arange(n), label] = conf
    mean[np.arange(n), (label + 2) % 4] = 1 - conf
    return np.stack([mean, mean, mean]), y


def test_choose_rule_reaches_the_target_on_validation() -> None:
    probs, y = _confident_when_right(seed=2, n=600)
    rule = choose_rule(probs, y, target=0.9)
    report = calibration_report({"validation": probs}, {"validation": probs}, {"validation": y}, rule)["validation"]
    assert report["confident_accuracy"] >= 0.9
    assert report["uncertain_accuracy"] < report["confident_accuracy"]
    assert report["confident_n"] + report["uncertain_n"] == len(y)


def test_trust_rule_catches_wrong_answers_and_doubts_few_right_ones() -> None:
    """The export's rule: on validation, as many wrong answers flagged as possible with at most 10 % of the right
    ones flagged; here confidence predicts correctness, so it catches far more wrong than right answers."""
    from trainer.evaluation.metrics import flag_rates
    from trainer.export.calibration import choose_trust_rule

    probs, y = _confident_when_right(seed=5, n=800)
    rule = choose_trust_rule(probs, y, max_right_flagged=0.1)
    rates = flag_rates(probs, y, rule)
    assert rule.max_right_flagged == 0.1 and rule.target_accuracy is None
    assert rates["right_flagged_rate"] <= 0.1
    assert rates["wrong_flagged_rate"] > 2 * rates["right_flagged_rate"]
    # a looser limit never catches fewer wrong answers
    looser = flag_rates(probs, y, choose_trust_rule(probs, y, max_right_flagged=0.3))
    assert looser["wrong_flagged_rate"] >= rates["wrong_flagged_rate"]
