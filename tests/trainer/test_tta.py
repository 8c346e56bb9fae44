"""The test-time augmentation rule: adopted only when validation macro-F1 rises and an exact McNemar test says
the vote is right on significantly more validation images (TTA doubles the compute per upload)."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorflow")

from trainer.evaluation.tta import mcnemar_p
from trainer.reporting.sections import tta_section


def test_mcnemar_exact_two_sided_p_values() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)  # all five discordant pairs on one side
    assert mcnemar_p(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_p(3, 5) == pytest.approx(2 * (1 + 8 + 28 + 56) / 256)
    assert mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(2, 4) == mcnemar_p(4, 2)
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_p(-1, 3)


def _result(adopted: bool, only_plain: int, only_tta: int) -> dict:
    m = {"accuracy": 0.9, "macro_f1": 0.9, "glioma_recall": 0.9}
    d = {"only_plain_right": only_plain, "only_tta_right": only_tta, "mcnemar_p": mcnemar_p(only_plain, only_tta)}
    return {
        "plain": {"validation": m, "official_test": m},
        "hflip_tta": {"validation": m, "official_test": m},
        "discordant": {"validation": d, "official_test": d},
        "adopted": adopted,
    }


def test_report_shows_the_paired_counts_and_never_claims_the_service_does_tta() -> None:
    text = "\n".join(tta_section(_result(False, 4, 6)))
    assert "| validation | 4 | 6 | 0.754 |" in text
    assert "not adopted; the service does not average over the mirror image" in text
    text = "\n".join(tta_section(_result(True, 1, 12)))
    assert "it pays, but the service does not average over the mirror image yet" in text
    # a tta.json from before the paired test keeps its old verdict
    old = _result(False, 0, 0)
    del old["discordant"]
    assert "not adopted: it does not raise validation macro-F1" in "\n".join(tta_section(old))
