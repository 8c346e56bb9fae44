"""Dataset scan, cache, duplicate detection and the duplicate-aware split (no TensorFlow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.image.preprocessing import PREPROCESSING_PARAMS, PREPROCESSING_V1, PREPROCESSING_V2, preprocess_bytes
from tests.utils import MRI_FIXTURES
from trainer.data.dataset import CLASSES, TEST, TRAIN, duplicate_groups, phash, prepare, report, scan, split_train_val
from trainer.data.workdir import PREPROCESSING_FILE, work_preprocessing


def test_scan_maps_folders_to_classes_and_handles_spaces() -> None:
    files = scan(MRI_FIXTURES)
    assert len(files) == 20
    assert any(" " in rel for rel, _, _ in files)
    assert {label for _, _, label in files} == set(range(len(CLASSES)))
    assert {split for _, split, _ in files} == {TRAIN, TEST}


def test_planted_duplicates_are_found(tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(MRI_FIXTURES, root)
    src = root / "Training" / "glioma_tumor" / "gg (1).jpg"
    # exact copy across the split, and a re-encoded, resized near-copy
    shutil.copy(src, root / "Testing" / "glioma_tumor" / "copy of gg (1).jpg")
    img = cv2.imread(str(src))
    near = cv2.resize(img, (400, 400))
    cv2.imwrite(str(root / "Training" / "glioma_tumor" / "near.jpg"), near, [cv2.IMWRITE_JPEG_QUALITY, 70])
    p = prepare(root, tmp_path / "cache")
    r = report(p)
    assert r["exact_duplicates"]["groups"] == 1
    assert r["exact_duplicates"]["groups_crossing_training_testing"] == 1
    idx = {Path(str(path)).name: i for i, path in enumerate(p.paths)}
    assert p.group[idx["gg (1).jpg"]] == p.group[idx["near.jpg"]] == p.group[idx["copy of gg (1).jpg"]]
    # distinct images stay apart
    assert len(np.unique(p.group)) == len(p.group) - 2


def test_cache_is_reused_and_matches_shared_preprocessing(tmp_path: Path) -> None:
    p1 = prepare(MRI_FIXTURES, tmp_path)
    caches = list(tmp_path.glob("prepared-*.npz"))
    assert len(caches) == 1
    mtime = caches[0].stat().st_mtime_ns
    p2 = prepare(MRI_FIXTURES, tmp_path)
    assert caches[0].stat().st_mtime_ns == mtime and p1.data_hash == p2.data_hash
    np.testing.assert_array_equal(p1.x, p2.x)
    # parity: the trainer's cached array is byte for byte what the service computes from the upload
    for i, rel in enumerate(p1.paths):
        service_view = preprocess_bytes((MRI_FIXTURES / str(rel)).read_bytes()).image
        assert service_view.tobytes() == p1.x[i].tobytes(), rel


def test_each_preprocessing_version_has_its_own_cache_and_parity(tmp_path: Path) -> None:
    v1 = prepare(MRI_FIXTURES, tmp_path, preprocessing=PREPROCESSING_V1)
    v2 = prepare(MRI_FIXTURES, tmp_path, preprocessing=PREPROCESSING_V2)
    assert len(list(tmp_path.glob("prepared-*.npz"))) == 2 and v1.data_hash != v2.data_hash
    assert (v1.preprocessing, v2.preprocessing) == (PREPROCESSING_V1, PREPROCESSING_V2)
    assert np.abs(v1.x.astype(int) - v2.x.astype(int)).mean() > 1  # version 2 really rescaled these slices
    for p, params in ((v1, PREPROCESSING_V1), (v2, PREPROCESSING_V2)):
        rel = str(p.paths[3])
        assert preprocess_bytes((MRI_FIXTURES / rel).read_bytes(), params=params).image.tobytes() == p.x[3].tobytes()


def test_a_work_dir_remembers_its_preprocessing(tmp_path: Path) -> None:
    assert work_preprocessing(tmp_path) == PREPROCESSING_PARAMS  # a new work dir: the current version
    (tmp_path / "runs" / "cnn-old").mkdir(parents=True)
    assert work_preprocessing(tmp_path) == PREPROCESSING_V1  # runs from before versioning: version 1
    (tmp_path / PREPROCESSING_FILE).write_text(json.dumps(PREPROCESSING_V2))
    assert work_preprocessing(tmp_path) == PREPROCESSING_V2  # recorded by its first `train`


def test_train_chooses_a_preprocessing_version_only_for_a_fresh_work_dir(tmp_path: Path) -> None:
    from service.image.preprocessing import PREPROCESSING_V4
    from trainer.cli import main
    from trainer.data.workdir import chosen_preprocessing

    assert chosen_preprocessing(tmp_path, None) == PREPROCESSING_PARAMS
    assert chosen_preprocessing(tmp_path, 4) == PREPROCESSING_V4  # fresh: any implemented version
    with pytest.raises(ValueError, match="version 9 is not implemented"):
        chosen_preprocessing(tmp_path, 9)
    (tmp_path / PREPROCESSING_FILE).write_text(json.dumps(PREPROCESSING_V2))
    assert chosen_preprocessing(tmp_path, 2) == PREPROCESSING_V2  # its own version, named: fine
    with pytest.raises(ValueError, match="already trains with preprocessing version 2"):
        chosen_preprocessing(tmp_path, 4)
    legacy = tmp_path / "legacy"
    (legacy / "runs" / "cnn-old").mkdir(parents=True)
    with pytest.raises(ValueError, match="already trains with preprocessing version 1"):
        chosen_preprocessing(legacy, 3)
    grid = "trainer/grids/smoke.toml"  # refused before any data is read or model built
    assert main(["train", "--grid", grid, "--work", str(tmp_path), "--preprocessing-version", "4"]) == 2


def test_a_grid_that_declares_a_preprocessing_version_trains_on_it(tmp_path: Path) -> None:
    from trainer.cli import main
    from trainer.training.grid import grid_preprocessing_version, train_version

    v4, plain = Path("trainer/grids/archive/crop-v4.toml"), Path("trainer/grids/smoke.toml")
    assert grid_preprocessing_version(v4) == 4 and grid_preprocessing_version(plain) is None
    assert train_version(v4, None) == 4 and train_version(v4, 4) == 4
    assert train_version(plain, None) is None and train_version(plain, 2) == 2
    with pytest.raises(ValueError, match="declares preprocessing version 4; --preprocessing-version 3"):
        train_version(v4, 3)
    bad = tmp_path / "bad.toml"
    bad.write_text('preprocessing_version = "4"\n[[ann]]\ndense_layers = 0\nunits = 8\n')
    with pytest.raises(ValueError, match="must be an integer"):
        grid_preprocessing_version(bad)
    # a work dir on version 2 refuses the version-4 grid, and the contradiction is refused, both before TF loads
    (tmp_path / PREPROCESSING_FILE).write_text(json.dumps(PREPROCESSING_V2))
    assert main(["train", "--grid", str(v4), "--work", str(tmp_path)]) == 2
    fresh = tmp_path / "fresh"
    assert main(["train", "--grid", str(v4), "--work", str(fresh), "--preprocessing-version", "3"]) == 2
    assert not fresh.exists()
    assert main(["train", "--grid", str(tmp_path / "missing.toml"), "--work", str(fresh)]) == 2


def test_phash_robust_to_reencoding() -> None:
    data = (MRI_FIXTURES / "Training" / "no_tumor" / "1.jpg").read_bytes()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    other = cv2.imencode(".png", cv2.resize(img, (200, 200)))[1].tobytes()
    a, b = np.uint64(phash(data)), np.uint64(phash(other))
    assert int(np.bitwise_count(a ^ b)) <= 4
    sha = np.array(["a", "b"])
    _, groups = duplicate_groups(sha, np.array([a, b], np.uint64))
    assert groups[0] == groups[1]


def test_split_is_stratified_and_never_splits_a_group() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 1000)
    group = np.arange(1000)
    group[100:110] = 100  # a duplicate group of 10
    group[500:503] = 500
    y[100:110] = y[100]
    tr, va = split_train_val(y, group, 0.2, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 1000
    for g in (100, 500):
        members = np.nonzero(group == g)[0]
        assert set(members) <= set(tr) or set(members) <= set(va)
    for c in range(4):
        share = np.isin(va, np.nonzero(y == c)[0]).sum() / (y == c).sum()
        assert abs(share - 0.2) < 0.03
    _, va2 = split_train_val(y, group, 0.2, seed=3)
    assert np.array_equal(va, va2)


def test_protocol_split_pooled_keeps_groups_whole_and_official_follows_folders() -> None:
    from types import SimpleNamespace

    import pytest

    from trainer.data.dataset import POOLED_TEST_FRACTION, protocol_split

    rng = np.random.default_rng(7)
    n = 1200
    y = rng.integers(0, 4, n)
    split = (rng.random(n) < 0.12).astype(np.int8)  # ~12 % official Testing, like the dataset
    group = np.arange(n)
    group[10:14] = 10  # a duplicate group crossing the official split, as 64 groups do in the dataset
    y[10:14], split[10:12], split[12:14] = y[10], TRAIN, TEST
    p = SimpleNamespace(y=y, split=split, group=group)
    tr, te = protocol_split(p, "official")  # type: ignore[arg-type]
    assert np.array_equal(tr, np.nonzero(split == TRAIN)[0]) and np.array_equal(te, np.nonzero(split == TEST)[0])
    tr, te = protocol_split(p, "pooled")  # type: ignore[arg-type]
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == n
    assert set(range(10, 14)) <= set(tr) or set(range(10, 14)) <= set(te)
    assert {TRAIN, TEST} <= set(split[te].tolist())  # pooled: both official splits on each side
    for c in range(4):
        share = np.isin(te, np.nonzero(y == c)[0]).sum() / (y == c).sum()
        assert abs(share - POOLED_TEST_FRACTION) < 0.03
    assert np.array_equal(te, protocol_split(p, "pooled")[1])  # type: ignore[arg-type]  # fixed seed
    with pytest.raises(ValueError, match="protocol must be one of"):
        protocol_split(p, "leaky")  # type: ignore[arg-type]


def test_brightness_by_class_is_measured_on_the_originals_and_cached(tmp_path: Path) -> None:
    from service.image.preprocessing import decode_image, grey_percentile
    from trainer.data.dataset import brightness_by_class
    from trainer.reporting.sections import brightness_lines

    p = prepare(MRI_FIXTURES, tmp_path)
    b = brightness_by_class(MRI_FIXTURES, p, tmp_path)
    assert list(b) == ["Training", "Testing"] and all(list(v) == CLASSES for v in b.values())
    glioma = [
        grey_percentile(decode_image((MRI_FIXTURES / str(rel)).read_bytes()), 99.0)
        for rel, s, y in zip(p.paths, p.split, p.y, strict=True)
        if s == TRAIN and y == 0
    ]
    assert b["Training"]["glioma"] == float(np.median(glioma))
    assert brightness_by_class(MRI_FIXTURES, p, tmp_path) == b  # from the cache file
    assert len(list(tmp_path.glob("brightness-*.json"))) == 1
    (line,) = brightness_lines(b)
    lo, hi = min(b["Training"].values()), max(b["Training"].values())
    assert f"differ by up to {hi - lo:.0f} grey levels" in line and "version 2" in line
    assert brightness_lines(None) == []
