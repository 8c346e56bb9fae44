"""The acquisition-shift check of an exported ensemble (trainer/evaluation/robustness.py) and its report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.image.preprocessing import PREPROCESSING_PARAMS, crop_and_resize, decode_image
from service.inference.runtime import Ensemble
from tests.utils import MRI_FIXTURES
from trainer.data.shifts import SHIFTS
from trainer.evaluation.robustness import mean_shifted_accuracy, measure, plot_robustness, scale_box
from trainer.reporting.report import replace_section, update_robustness_docs
from trainer.reporting.shifts import ROBUSTNESS_SECTION, robustness_section

FIXTURES = sorted(MRI_FIXTURES.rglob("*.jpg"))


def test_every_shift_keeps_a_grey_uint8_image_and_changes_it() -> None:
    img = decode_image(FIXTURES[0].read_bytes())
    for name, _, shift in SHIFTS:
        out = shift(img, 3)
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3, name
        assert (out.max(axis=2) == out.min(axis=2)).all(), f"{name}: a grey image must stay grey"
        if name == "none":
            assert out is img
        else:
            assert out.shape != img.shape or not np.array_equal(out, img), f"{name} changed nothing"
    noise = dict((n, f) for n, _, f in SHIFTS)["noise σ 8"]
    assert np.array_equal(noise(img, 3), noise(img, 3)) and not np.array_equal(noise(img, 3), noise(img, 4))
    dark = dict((n, f) for n, _, f in SHIFTS)["brightness ×0.5"](img, 0)
    assert dark.astype(int).max() <= img.astype(int).max() // 2 + 1


def test_measure_runs_the_service_path_and_the_section_renders(tiny_models: Path, tmp_path: Path) -> None:
    paths = [str(p.relative_to(MRI_FIXTURES)) for p in FIXTURES[:6]]
    y = np.arange(6) % 4
    ensemble = Ensemble.load(tiny_models)
    r = measure(ensemble, MRI_FIXTURES, paths, y, batch=4)
    assert r["n"] == 6 and list(r["shifts"]) == [name for name, _, _ in SHIFTS]
    none = r["shifts"]["none"]
    assert none["agreement_with_unshifted"] == 1.0
    labels = np.array([p.label for p in ensemble.predict_batch(np.stack([_crop(MRI_FIXTURES / p) for p in paths]))])
    assert none["accuracy"] == pytest.approx(float((labels == y).mean()), abs=1e-4)
    for m in r["shifts"].values():
        assert all(0 <= m[k] <= 1 for k in ("accuracy", "macro_f1", "agreement_with_unshifted", "failed_crops"))
    # the box held at the unshifted image's: none for the reference and the rotations, recomputable by hand
    held = {name: m["accuracy_box_held"] for name, m in r["shifts"].items()}
    assert held["none"] is None and held["rotation 10°"] is None and held["rotation 25°"] is None
    for name in ("gamma 0.6 (brighter darks)", "downscaled to 128 px"):
        shift = dict((n, f) for n, _, f in SHIFTS)[name]
        crops = []
        for i, p in enumerate(paths):
            img = decode_image((MRI_FIXTURES / p).read_bytes())
            box = crop_and_resize(img).box
            shifted = shift(img, i)
            crops.append(crop_and_resize(shifted, box=scale_box(box, img.shape, shifted.shape)).image)
        by_hand = np.array([p.label for p in ensemble.predict_batch(np.stack(crops))])
        assert held[name] == pytest.approx(float((by_hand == y).mean()), abs=1e-4), name
    # the section: one row per shift, inserted before the not-an-MRI section, then replaced in place
    docs = tmp_path / "docs"
    (docs / "img").mkdir(parents=True)
    (docs / "evaluation.md").write_text("# E\n\n## Not an MRI? (warnings)\n\nx\n")
    lines = robustness_section(r)
    assert lines[0] == ROBUSTNESS_SECTION and sum(line.startswith("| ") for line in lines) == len(SHIFTS) + 1
    replace_section(docs, lines, ["## Not an MRI? (warnings)"])
    replace_section(docs, lines, ["## Not an MRI? (warnings)"])
    text = (docs / "evaluation.md").read_text()
    assert text.count(ROBUSTNESS_SECTION) == 1 and text.index(ROBUSTNESS_SECTION) < text.index("## Not an MRI?")
    assert r["preprocessing_version"] == PREPROCESSING_PARAMS["version"]  # the tiny models': the current one
    assert r["model_version"] == ensemble.manifest.model_version
    earlier = {**r, "model_version": "old-1", "preprocessing_version": 1}
    compared = robustness_section(r, earlier)
    rows = [line for line in compared if line.startswith("| ")]
    assert "accuracy, `old-1` (preprocessing v1)" in rows[0] and all(row.count("|") == 9 for row in rows)
    assert (
        "| accuracy, unshifted box |" in rows[0] and rows[1].startswith("| none |") and rows[1].split(" | ")[6] == "–"
    )
    unmeasured = {
        **r,
        "shifts": {n: {k: v for k, v in m.items() if k != "accuracy_box_held"} for n, m in r["shifts"].items()},
    }
    assert not any("unshifted box" in line for line in robustness_section(unmeasured))  # older measurements
    assert any(
        "the same measurement of another ensemble, not the one in `models/`: `old-1` (preprocessing v1)" in line
        for line in compared
    )
    worse = {**earlier, "shifts": {n: {**m, "accuracy": m["accuracy"] / 2} for n, m in r["shifts"].items()}}
    mean = float(np.mean([m["accuracy"] for n, m in r["shifts"].items() if n != "none"]))
    assert mean_shifted_accuracy(worse) == pytest.approx(mean / 2)
    line = f"Mean accuracy over the {len(SHIFTS) - 1} shifts: {100 * mean:.1f} % (`old-1` (preprocessing v1): "
    assert any(x.startswith(line) for x in robustness_section(r, worse))
    plot_robustness(r, docs / "img" / "robustness-compared.png", earlier)
    # a fresh measurement replaces the section and keeps the crop-stability section that follows it
    crops = "## Crop stability across preprocessing versions\n\n| shift | v2 | v3 |\n"
    (docs / "evaluation.md").write_text(text.replace("## Not an MRI?", crops + "\n## Not an MRI?"))
    update_robustness_docs(r, docs, earlier)
    updated = (docs / "evaluation.md").read_text()
    assert crops in updated and updated.count(ROBUSTNESS_SECTION) == 1 and "unshifted box" in updated
    assert updated.index(ROBUSTNESS_SECTION) < updated.index(crops) < updated.index("## Not an MRI?")
    plot_robustness(r, docs / "img" / "robustness.png")
    assert (docs / "img" / "robustness.png").stat().st_size > 0


def _crop(path: Path) -> np.ndarray:
    from service.image.preprocessing import preprocess_bytes

    return preprocess_bytes(path.read_bytes()).image


def test_a_given_crop_box_is_used_scaled_and_checked() -> None:
    img = decode_image(FIXTURES[0].read_bytes())
    found = crop_and_resize(img)
    assert not found.fallback
    again = crop_and_resize(img, box=found.box)  # the box it finds, given: the same crop
    assert again.box == found.box and np.array_equal(again.image, found.image)
    other = crop_and_resize(img, box=(0, 0, 40, 60))
    assert other.box == (0, 0, 40, 60) and other.image.shape == (150, 150, 3) and not other.fallback
    for bad in [(0, 0, 0, 10), (10, 10, 5, 20), (0, 0, img.shape[1] + 1, 10), (-1, 0, 10, 10)]:
        with pytest.raises(ValueError, match="not inside"):
            crop_and_resize(img, box=bad)
    assert scale_box((100, 50, 400, 500), (512, 512, 3), (128, 128, 3)) == (25, 12, 100, 125)
    assert scale_box((100, 50, 400, 500), (512, 512, 3), (512, 512, 3)) == (100, 50, 400, 500)
    assert scale_box((510, 511, 512, 512), (512, 512, 3), (4, 4, 3)) == (3, 3, 4, 4)  # never empty


def test_random_shift_is_seeded_keeps_the_99th_percentile_and_varies() -> None:
    """The training shift (grid key shift_views): reproducible from its generator, a grey uint8 image of the
    same size, its grey 99th percentile put back (what preprocessing v2 would do), and different draws differ."""
    from service.image.preprocessing import INTENSITY_PERCENTILE, crop_and_resize, grey_percentile
    from trainer.data.shifts import random_shift

    crop = crop_and_resize(decode_image(FIXTURES[0].read_bytes())).image
    first = random_shift(crop, np.random.default_rng(5))
    assert np.array_equal(first, random_shift(crop, np.random.default_rng(5)))
    draws = [random_shift(crop, np.random.default_rng(s)) for s in range(12)]
    for out in draws:
        assert out.dtype == np.uint8 and out.shape == crop.shape and (out.max(axis=2) == out.min(axis=2)).all()
        assert abs(grey_percentile(out, INTENSITY_PERCENTILE) - grey_percentile(crop, INTENSITY_PERCENTILE)) <= 2
    assert len({out.tobytes() for out in draws}) == len(draws) and not any(np.array_equal(o, crop) for o in draws)
    with pytest.raises(ValueError, match="uint8"):
        random_shift(crop.astype(np.float32), np.random.default_rng(0))


def test_crop_stability_compares_versions_per_shift(tmp_path: Path) -> None:
    from service.image.preprocessing import PREPROCESSING_V2, PREPROCESSING_V3
    from trainer.evaluation.crops import crop_stability
    from trainer.evaluation.robustness import box_iou

    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0 and box_iou((0, 0, 1, 1), (1, 1, 2, 2)) == 0.0
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)
    images = [decode_image((MRI_FIXTURES / "Training" / "no_tumor" / "1.jpg").read_bytes())]
    images += [decode_image(p.read_bytes()) for p in FIXTURES[:3]]
    r = crop_stability(images, {"v2": PREPROCESSING_V2, "v3": PREPROCESSING_V3})
    kept = [name for name, family, _ in SHIFTS[1:] if family != "geometry"]
    assert list(r["shifts"]) == kept and "rotation 10°" not in r["shifts"]
    assert r["unshifted_vs_first"]["v2"] == {"mean_iou": 1.0, "moved": 0.0}
    assert len(r["boxes"]["v3"]) == len(images) and all(0 <= c <= 1 for b in r["boxes"]["v3"] for c in b)
    for row in r["shifts"].values():
        for m in row.values():
            assert 0.0 <= m["mean_iou"] <= 1.0 and 0.0 <= m["moved"] <= 1.0
    assert r["shifts"]["brightness ×0.5"]["v3"]["mean_iou"] > 0.95  # undone by the intensity step
    gamma = r["shifts"]["gamma 1.6 (darker darks)"]
    assert gamma["v2"]["moved"] >= 0.25 and gamma["v3"]["mean_iou"] > gamma["v2"]["mean_iou"]


def test_crops_command_writes_the_table_and_the_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from trainer.cli import main

    assert main(["crops", "--data", str(MRI_FIXTURES), "--work", str(tmp_path), "--n", "5"]) == 0
    last = [line for line in capsys.readouterr().out.splitlines() if line.startswith("unshifted, vs v3")]
    assert len(last) == 1 and last[0].split()[-4] == "(reference)"  # not v3's trivial 1.000 against itself
    r = json.loads((tmp_path / "report" / "crop_stability.json").read_text())
    assert r["n"] == 5 and len(r["files"]) == 5 and set(r["unshifted_vs_first"]) == {"v3", "v4"}  # the two newest
    assert (tmp_path / "report" / "crop_boxes.png").stat().st_size > 10_000
    assert main(["crops", "--data", str(MRI_FIXTURES), "--work", str(tmp_path), "--versions", "2", "9"]) == 2


def test_crop_stability_section_renders_every_shift_and_version() -> None:
    from trainer.reporting.shifts import crop_stability_section

    cell = {"mean_iou": 0.9, "moved": 0.1}
    c = {
        "n": 3,
        "seed": 0,
        "shifts": {"gamma 1.6 (darker darks)": {"v2": {"mean_iou": 0.711, "moved": 0.44}, "v3": cell}},
        "unshifted_vs_first": {"v2": {"mean_iou": 1.0, "moved": 0.0}, "v3": cell},
    }
    lines = crop_stability_section(c, picture=True)
    assert "| gamma 1.6 (darker darks) | 0.711 / 44.0 % | 0.900 / 10.0 % |" in lines
    assert "| unshifted, against v2's box | (reference) | 0.900 / 10.0 % |" in lines  # not a trivial 1.000
    assert "![crop boxes](img/crop_boxes.png)" in lines
    assert not any("crop_boxes.png" in line for line in crop_stability_section(c, picture=False))


def test_limits_and_crop_sentence_follow_the_preprocessing_version() -> None:
    from service.image.preprocessing import PREPROCESSING_V2, PREPROCESSING_V3, PREPROCESSING_V4
    from trainer.reporting.shifts import shift_limits

    v2, v3, v4 = (" ".join(shift_limits(p)) for p in (PREPROCESSING_V2, PREPROCESSING_V3, PREPROCESSING_V4))
    assert "fixed threshold miss the head" in v2 and "candidate crop" in v3 and "gamma-normalised copy" in v4
    assert len({v2, v3, v4}) == 3 and all("Training on shifted views" in v for v in (v2, v3, v4))
    shifts = {
        name: {"accuracy": 0.9, "macro_f1": 0.9, "agreement_with_unshifted": 1.0, "failed_crops": 0.0, "flagged": 0.0}
        for name, _, _ in SHIFTS
    }
    r = {"n": 3, "model_version": "x", "shifts": shifts, "validation_macro_f1": 0.9}
    text = {v: " ".join(robustness_section({**r, "preprocessing_version": v})) for v in (2, 3, 4)}
    assert "at 45." in text[2] and "(preprocessing version 3)." in text[3] and "90th percentile at 97" in text[4]
