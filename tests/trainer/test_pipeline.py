"""The whole trainer pipeline (prepare → train → evaluate → export → report) on the fixtures, both protocols."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from fastapi.testclient import TestClient

from service.config import Settings
from service.inference.manifest import Manifest, load_manifest
from service.inference.runtime import Ensemble
from service.main import create_app
from tests.utils import MRI_FIXTURES, ROOT, run_trainer
from trainer.evaluation.splits import eval_splits
from trainer.evaluation.tta import mcnemar_p

pytestmark = pytest.mark.slow


def second_root(root: Path) -> Path:
    """A data root as brain-tumor-mri-more is laid out: class folders only, other spellings of the class names,
    a files.csv naming each image's source; its images are mirrored fixture slices (not duplicates)."""
    import cv2

    rows = ["path,class,source"]
    for folder, fixture, source in (("notumor", "no_tumor", "br35h"), ("glioma", "glioma_tumor", "figshare")):
        (root / folder).mkdir(parents=True)
        for i, path in enumerate(sorted((MRI_FIXTURES / "Training" / fixture).glob("*.jpg"))):
            img = cv2.imread(str(path))
            cv2.imwrite(str(root / folder / f"{i}.jpg"), np.ascontiguousarray(img[::-1]))
            rows.append(f"{folder}/{i}.jpg,{folder},{source}")
    (root / "files.csv").write_text("\n".join(rows) + "\n")
    return root


def test_smoke_pipeline_on_fixture_images(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(
        "[defaults]\nepochs = 1\nbatch_size = 8\nval_fraction = 0.25\n"
        "[[ann]]\ndense_layers = [0, 1]\nunits = 8\n"
        "[[cnn]]\nconv_layers = 1\nfilters = 4\ndense_layers = 0\n"
    )
    work, models = tmp_path / "work", tmp_path / "models"
    more = second_root(tmp_path / "more")
    common = ["--data", str(MRI_FIXTURES), "--data", str(more), "--work", str(work)]
    out = run_trainer("prepare", *common, cwd=ROOT)
    assert "exact duplicates" in out
    run_trainer("train", *common, "--grid", str(grid), "--verbose", "0", cwd=ROOT)
    again = run_trainer("train", *common, "--grid", str(grid), "--verbose", "0", cwd=ROOT)
    assert again.count("already trained, skipping") == 3  # resumable: finished runs are not retrained
    run_trainer("evaluate", *common, cwd=ROOT)
    board = json.loads((work / "report" / "leaderboard.json").read_text())
    assert len(board) == 3 and [r["rank"] for r in board] == [1, 2, 3]
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png"):
        assert (work / "report" / name).stat().st_size > 0
    assert (work / "report" / board[0]["name"] / "confusion_test.png").exists()
    out = run_trainer(
        "export",
        *common,
        "--models-dir",
        str(models),
        "--top",
        "3",
        "--changelog",
        "smoke",
        "--previous",
        str(ROOT / "models"),
        cwd=ROOT,
    )
    assert "parity max" in out
    manifest = load_manifest(models)
    assert isinstance(manifest, Manifest)
    assert manifest.classes == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert len(manifest.models) == 3 and all(m.parity_max_abs_diff <= 1e-4 for m in manifest.models)
    assert manifest.ensemble.metrics["official_test"].n == 8
    # provenance: the grid it was trained from (recorded by train), this export's changelog line, then the
    # changelog of the ensemble it follows
    assert manifest.training.grids == [str(grid)] and "--top 3" in manifest.training.selection
    shipped = load_manifest(ROOT / "models")
    assert [c.change for c in manifest.changelog][:1] == ["smoke"]
    assert manifest.changelog[1:] == shipped.changelog and manifest.changelog[0].model_version == manifest.model_version
    assert {m.name for m in manifest.models} == {r["name"] for r in board}
    Ensemble.load(models)  # sha256 and shapes verify
    # two roots: each source with its count; the prediction sets and their figures, fitted at export
    sources = {s.name: s for s in manifest.training.sources}
    assert set(sources) == {"brain-tumor-mri", "figshare", "br35h"}
    assert sources["br35h"].per_class == {"no_tumor": 3} and sources["figshare"].licence == "CC BY 4.0"
    assert sources["br35h"].root == sources["figshare"].root == "more"
    conformal = manifest.ensemble.conformal
    assert conformal is not None and set(conformal.thresholds) == set(manifest.classes)
    assert {"validation", "official_test", "non_mri"} <= set(manifest.ensemble.trust)
    assert "blur σ 4 px" in manifest.ensemble.trust["validation"]["under_shifts"]
    # the headline numbers recompute from the shipped ONNX files with one command
    out = run_trainer("evaluate", *common, "--models-dir", str(models), cwd=ROOT)
    assert "official_test: n=8" in out and "DIFFERS" not in out
    # a paired comparison with another export (the single best model): each side's numbers are the ones its
    # manifest records, and the discordant counts account for the accuracy difference
    single = tmp_path / "single"
    run_trainer("export", *common, "--models-dir", str(single), "--names", board[0]["name"], cwd=ROOT)
    # exported by name: its manifest says so, which the report's "Ensembles tried" section reads
    assert load_manifest(single).training.selection.startswith("trainer export --names")
    out = run_trainer("compare", *common, "--models-dir", str(models), "--candidate", str(single), cwd=ROOT)
    compared = json.loads((work / "report" / "compare.json").read_text())
    assert compared["reference"] == manifest.model_version and "McNemar p" in out
    for key, row in compared["splits"].items():
        for side, m in (("reference", manifest), ("candidate", load_manifest(single))):
            assert row[side]["accuracy"] == pytest.approx(m.ensemble.metrics[key].accuracy), (key, side)
        gained = (row["candidate"]["accuracy"] - row["reference"]["accuracy"]) * row["n"]
        assert row["only_candidate_right"] - row["only_reference_right"] == pytest.approx(
            gained, abs=1e-4 * row["n"]
        )  # accuracies are stored to 4 decimals
        assert row["mcnemar_p"] == pytest.approx(
            mcnemar_p(row["only_reference_right"], row["only_candidate_right"]), abs=1e-4
        )
    run_trainer("compare", *common, "--models-dir", str(models), "--candidate", str(models), cwd=ROOT)
    same = json.loads((work / "report" / "compare.json").read_text())["splits"]["validation"]
    assert (same["only_reference_right"], same["only_candidate_right"], same["mcnemar_p"]) == (0, 0, 1.0)
    # an ensemble under another preprocessing version (the same ONNX file, declared version 2 with version 2's
    # data hash) is compared on the same images, each side fed its own crops
    from service.image.preprocessing import PREPROCESSING_V2
    from service.inference.manifest import write_manifest
    from trainer.data.dataset import prepare
    from trainer.evaluation.tta import scored_vote

    assert manifest.preprocessing != PREPROCESSING_V2  # a new work dir trains on the current version
    other = tmp_path / "single-v2"
    shutil.copytree(single, other)
    p2 = prepare([MRI_FIXTURES, more], work / "cache", None, PREPROCESSING_V2)
    relabelled = load_manifest(single).model_copy(
        update={"preprocessing": PREPROCESSING_V2, "data_hash": p2.data_hash, "model_version": "single-v2"}
    )
    write_manifest(relabelled, other)
    out = run_trainer("compare", *common, "--models-dir", str(models), "--candidate", str(other), cwd=ROOT)
    crossed = json.loads((work / "report" / "compare.json").read_text())
    assert crossed["preprocessing"] == {"reference": manifest.preprocessing["version"], "candidate": 2}
    candidate = Ensemble.load(other)
    for key, (split, idx) in eval_splits(candidate, p2).items():
        row = crossed["splits"][key]
        expected, _ = scored_vote(candidate.predict_images(p2.x[idx]), p2.y[idx], split)
        assert row["candidate"]["accuracy"] == pytest.approx(expected["accuracy"]), key
        assert row["reference"]["accuracy"] == pytest.approx(manifest.ensemble.metrics[key].accuracy)
    # fed the reference's crops instead, the version-2 ensemble is refused, not scored on the wrong input
    from trainer.evaluation.compare import compare_ensembles

    p3 = prepare(MRI_FIXTURES, work / "cache", None, manifest.preprocessing)
    with pytest.raises(ValueError, match="other data or preprocessing"):
        compare_ensembles(models, other, p3)
    out = run_trainer("tta", *common, "--models-dir", str(models), cwd=ROOT)
    tta = json.loads((work / "report" / "tta.json").read_text())
    assert set(tta["plain"]) == {"validation", "official_test"} and isinstance(tta["adopted"], bool)
    assert ("does not pay" in out) != tta["adopted"]
    docs = tmp_path / "docs"
    run_trainer("report", *common, "--models-dir", str(models), "--docs", str(docs), cwd=ROOT)
    text = (docs / "evaluation.md").read_text()
    test_acc = manifest.ensemble.metrics["official_test"].accuracy
    assert f"**{100 * test_acc:.1f} %**" in text and "not for clinical use" in text
    assert "pooled protocol (Training ∪ Testing" in text and "not measured for this ensemble's recipes yet" in text
    assert (docs / "img" / "ensemble_official_test.png").stat().st_size > 0
    # calibration: a temperature per model and the uncertainty split, fitted at export, shown in the report
    assert all(0.05 <= m.temperature <= 20 and "official_test" in m.calibration for m in manifest.models)
    cal = manifest.ensemble.calibration["validation"]
    assert cal["confident_n"] + cal["uncertain_n"] == manifest.ensemble.metrics["validation"].n
    # no_dark_background: the threshold is the brightest background among the training pool, so no
    # training-pool image (validation included) is flagged
    assert manifest.ensemble.background_threshold is not None and cal["background_flag_rate"] == 0
    assert "## Calibration and uncertainty" in text and "### Test-time augmentation" in text
    assert "had one combination to score: the 3 models its work dir holds" in text  # the 3 trained here
    # the not-an-MRI section re-measures on its own and replaces only itself
    (docs / "evaluation.md").write_text(text.replace("Flagged Testing images:", "STALE"))
    out = run_trainer("nonmri", *common, "--models-dir", str(models), "--docs", str(docs), cwd=ROOT)
    r = json.loads((work / "report" / "non_mri.json").read_text())
    fresh = (docs / "evaluation.md").read_text()
    row = f"| official Testing split (real MRI: false flags) | {r['mri_n']} | {r['mri_flagged']} |"
    assert "STALE" not in fresh and "Flagged Testing images:" in fresh and row in fresh
    after = text[text.index("### Training curves") :]
    before = text[: text.find("## Not an MRI?") if "## Not an MRI?" in text else text.index("### Training curves")]
    assert fresh.startswith(before) and fresh.endswith(after)
    assert f"non-MRI: {r['non_mri_caught']} of {r['non_mri_n']} caught" in out
    assert (docs / "img" / "reliability_official_test.png").stat().st_size > 0
    with TestClient(create_app(Settings(models_dir=models))) as client:
        data = (MRI_FIXTURES / "Testing" / "glioma_tumor" / "image(1).jpg").read_bytes()
        r = client.post("/v1/predict", files={"file": ("x.jpg", data, "image/jpeg")})
        assert r.status_code == 200
        assert r.json()["model_version"] == manifest.model_version


def test_pooled_protocol_trains_exports_and_recomputes(tmp_path: Path) -> None:
    """The pooled protocol end to end: its runs never see the pooled test side, and the exported ensemble's
    metrics are keyed pooled_test (not official_test) and recompute from the ONNX files."""
    from trainer.data.dataset import prepare, protocol_split
    from trainer.training.train import train_val_indices

    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[defaults]\nepochs = 1\nbatch_size = 8\nval_fraction = 0.25\nprotocol = "pooled"\n'
        "[[ann]]\ndense_layers = 0\nunits = [4, 8, 16]\n"
    )
    work, cache = tmp_path / "work", tmp_path / "cache"
    models = work / "models"
    common = ["--data", str(MRI_FIXTURES), "--work", str(work), "--cache", str(cache)]
    run_trainer("train", *common, "--grid", str(grid), "--verbose", "0", cwd=ROOT)
    assert len(list(cache.glob("prepared-*.npz"))) == 1 and not (work / "cache").exists()
    run_trainer("evaluate", *common, cwd=ROOT)
    board = json.loads((work / "report" / "leaderboard.json").read_text())
    assert {r["protocol"] for r in board} == {"pooled"} and all(r["name"].endswith("-pooled") for r in board)
    p = prepare(MRI_FIXTURES, cache)
    _, te = protocol_split(p, "pooled")
    fit, va = train_val_indices(p, 0.25, 42, "pooled")
    assert len(np.intersect1d(np.concatenate([fit, va]), te)) == 0
    result = json.loads((work / "runs" / board[0]["name"] / "result.json").read_text())
    assert result["n_train"] == len(fit) and result["n_val"] == len(va)
    run_trainer(
        "export", *common, "--models-dir", str(models), "--select", "top", "--weights-dtype", "float16", cwd=ROOT
    )
    manifest = load_manifest(models)
    # float16 storage: the ANNs' big kernels are float16 in the (merged) file, checked against Keras at export
    import onnx

    assert all(m.weights_dtype == "float16" and m.parity_max_abs_diff <= 1e-2 for m in manifest.models)
    graph = onnx.load(str(models / manifest.models[0].file)).graph
    sizes = [(i.data_type, int(np.prod(i.dims))) for i in graph.initializer]
    assert any(t == onnx.TensorProto.FLOAT16 for t, _ in sizes)
    assert not [n for t, n in sizes if t == onnx.TensorProto.FLOAT and n >= 1024], sizes  # every big one halved
    assert set(manifest.ensemble.metrics) == {"validation", "pooled_test"}
    assert manifest.ensemble.metrics["pooled_test"].n == len(te)
    assert "pooled" in manifest.ensemble.metrics["pooled_test"].split
    out = run_trainer("evaluate", *common, "--models-dir", str(models), cwd=ROOT)
    assert f"pooled_test: n={len(te)}" in out and "DIFFERS" not in out
    # the report's section on this protocol (docs/evaluation.md reads <work>/pooled the same way)
    from trainer.reporting.pooled import pooled_section, pooled_summary

    summary = pooled_summary(work)
    assert summary is not None and pooled_summary(tmp_path) is None
    text = "\n".join(pooled_section(work, summary, tmp_path, len(p.y)))
    acc = manifest.ensemble.metrics["pooled_test"].accuracy
    assert f"**{100 * acc:.1f} %**" in text and f"({len(p.y)} images)" in text
    # its reproduce commands export as this run did (float16 weights)
    assert f"--models-dir {work}/models --weights-dtype float16" in text
    assert (tmp_path / "pooled_test.png").stat().st_size > 0
    # the headline calls these runs the shipped recipes only when they are: the same configs as an official
    # export of these runs (protocol, name and init seed aside), not those of an ensemble of other recipes
    from trainer.reporting.pooled import pooled_label

    official = manifest.model_copy(
        update={
            "models": [e.model_copy(update={"config": {**e.config, "protocol": "official"}}) for e in manifest.models]
        }
    )
    assert pooled_label(official, manifest) == "same recipes retrained"
    assert "other recipes than the shipped" not in text
    other = official.model_copy(
        update={"models": [e.model_copy(update={"config": {**e.config, "units": 99}}) for e in manifest.models]}
    )
    assert pooled_label(other, manifest) == "earlier recipes retrained (not the shipped ones)"
    warned = "\n".join(pooled_section(work, summary, tmp_path, len(p.y), other))
    assert f"**These runs use other recipes than the shipped ensemble `{other.model_version}`**" in warned
    # `trainer pooled` brings this work dir into an existing report (whose official run's artefacts are gone):
    # the headline gains the pooled row, the section lands before the ensembles tried, nothing else moves
    from service.inference.manifest import write_manifest
    from trainer.reporting.report import PUBLISHED
    from trainer.reporting.sections import ENSEMBLES_TRIED_SECTION, headline_section

    shipped = tmp_path / "shipped"
    shutil.copytree(models, shipped)  # the same ONNX files, declared an official-protocol export
    metrics = {**manifest.ensemble.metrics, "official_test": manifest.ensemble.metrics["pooled_test"]}
    write_manifest(
        official.model_copy(update={"ensemble": official.ensemble.model_copy(update={"metrics": metrics})}), shipped
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    head = ["# Evaluation", "", *headline_section(load_manifest(shipped), None), "", PUBLISHED, "", "## The ensemble"]
    tail = [ENSEMBLES_TRIED_SECTION, "", "kept as it was", ""]
    (docs / "evaluation.md").write_text("\n".join([*head, "", *tail]))
    before = (docs / "evaluation.md").read_text()
    assert "not measured for this ensemble's recipes yet" in before
    texts = []
    for _ in range(2):  # a second run replaces its own sections: the same text
        out = run_trainer("pooled", *common, "--models-dir", str(shipped), "--docs", str(docs), cwd=ROOT)
        text = (docs / "evaluation.md").read_text()
        assert f"accuracy {acc:.4f}" in out
        row = f"| same recipes retrained, **leak-free pooled protocol** (held-out 20 %) | {len(te)} | "
        row += f"**{100 * acc:.1f} %**"
        assert row in text and "not measured for this ensemble's recipes yet" not in text
        assert text.index("## Leak-free pooled protocol") < text.index(ENSEMBLES_TRIED_SECTION)
        assert text.index("## The ensemble") < text.index("## Leak-free pooled protocol")
        assert text.startswith("# Evaluation") and text.endswith("\n".join(tail))
        assert PUBLISHED in text and (docs / "img" / "pooled_test.png").stat().st_size > 0
        assert "By the folder each image comes from" in text
        texts.append(text)
    assert texts[0] == texts[1]
    # ... and splits the held-out scores by the folder each image comes from (origins.json): the folders' counts
    # add up to the split, their accuracies to the manifest's
    origins = json.loads((work / "report" / "origins.json").read_text())
    assert origins["pooled"] == manifest.model_version
    for key, idx in (("validation", va), ("pooled_test", te)):
        folders = origins["by_origin"][key]
        assert sum(f["n"] for f in folders.values()) == len(idx)
        right = sum(f["n"] * f["accuracy"] for f in folders.values())
        assert right == pytest.approx(manifest.ensemble.metrics[key].accuracy * len(idx), abs=1e-2)  # 4 decimals
    # against the "shipped" ensemble on the held-out images whose duplicate group has no image in its training
    # part; here both are the same ONNX files, so they are right on the same images
    official_train, _ = train_val_indices(p, 0.25, 42, "official")
    unseen = te[~np.isin(p.group[te], p.group[official_train])]
    both = origins["unseen_by_both"]
    assert sum(row["n"] for row in both.values()) == len(unseen) > 0
    for row in both.values():
        assert row["pooled"] == row["shipped"] and (row["only_pooled_right"], row["only_shipped_right"]) == (0, 0)
    from service.inference.runtime import Ensemble as Loaded
    from trainer.evaluation.origins import unseen_by_both

    with pytest.raises(ValueError, match="pooled-protocol export with an official-protocol one"):
        unseen_by_both(Loaded.load(shipped), Loaded.load(models), p)

    def refused_pooled(work: Path) -> subprocess.CompletedProcess[str]:
        cmd = ["pooled", "--data", str(MRI_FIXTURES), "--work", str(work), "--docs", str(docs)]
        return subprocess.run([sys.executable, "-m", "trainer", *cmd], cwd=ROOT, capture_output=True, text=True)

    empty = tmp_path / "empty"
    failed = refused_pooled(empty)
    assert failed.returncode == 2 and "export the pooled runs first" in failed.stderr
    official_models = tmp_path / "official" / "models"  # an export without pooled_test metrics: refused too
    official_models.mkdir(parents=True)
    kept = {k: metrics[k] for k in ("validation", "official_test")}
    write_manifest(
        official.model_copy(update={"ensemble": official.ensemble.model_copy(update={"metrics": kept})}),
        official_models,
    )
    failed = refused_pooled(official_models.parent)
    assert failed.returncode == 2 and "not a pooled-protocol export" in failed.stderr, failed.stderr[-2000:]


def test_report_states_how_much_of_the_original_grid_was_trained() -> None:
    from trainer.reporting.leaderboard import grid_coverage

    board = [
        {"name": "ann-d0-u32", "family": "ann", "epochs_run": 5, "config": {}, "weights_origin": "random"},
        {"name": "cnn-c1-f32-d0", "family": "cnn", "epochs_run": 1, "config": {}, "weights_origin": "random"},
        {
            "name": "transfer-resnet50-d0-scratch",
            "family": "transfer",
            "epochs_run": 9,
            "config": {"backbone": "resnet50"},
            "weights_origin": "random initialisation (no pretrained weights)",
        },
    ]
    text = "\n".join(grid_coverage(board))
    assert "ANNs: 1 of 9 trained (epochs run: 5)" in text and "ann-d2-u128" in text
    assert "CNNs: 1 of 27 trained (epochs run: 1; 1 trained for one epoch only" in text
    assert "resnet50 (ImageNet download unreachable here): transfer-resnet50-d0-scratch (random init" in text
    assert "vgg19 (ImageNet download unreachable here): not trained" in text
