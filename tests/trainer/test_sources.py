"""Several data roots: class-name aliases, sources, one path per image, duplicates across roots, the clean
protocol and leave-one-source-out splits (no TensorFlow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.utils import MRI_FIXTURES
from trainer.data.dataset import (
    CLASSES,
    EXTRA_ROOT_PREFIX,
    PRIMARY_SOURCE,
    TEST,
    TRAIN,
    image_path,
    near_test,
    prepare,
    protocol_split,
    report,
    scan,
)
from trainer.data.sources import source_table


def _extra_root(tmp_path: Path, name: str = "more") -> Path:
    """A root of <class>/ folders under other names (notumor, glioma), a files.csv naming a source, and one
    near-copy of a Testing fixture (which must not be trained on under the clean protocol)."""
    root = tmp_path / name
    (root / "notumor").mkdir(parents=True)
    (root / "glioma").mkdir()
    (root / "README.txt").write_text("not an image folder")
    shutil.copy(MRI_FIXTURES / "Training" / "no_tumor" / "image(103).jpg", root / "notumor" / "n 1.jpg")
    near = cv2.resize(cv2.imread(str(MRI_FIXTURES / "Testing" / "glioma_tumor" / "image(1).jpg")), (300, 300))
    cv2.imwrite(str(root / "glioma" / "g1.jpg"), near, [cv2.IMWRITE_JPEG_QUALITY, 80])
    (root / "files.csv").write_text("path,class,sha256,source\nglioma/g1.jpg,glioma,x,figshare\n")
    return root


def test_scan_reads_several_roots_with_aliases_and_sources(tmp_path: Path) -> None:
    extra = _extra_root(tmp_path)
    files = scan([MRI_FIXTURES, extra], with_source=True)
    primary = [f for f in files if not f[0].startswith(EXTRA_ROOT_PREFIX)]
    added = {f[0]: f for f in files if f[0].startswith(EXTRA_ROOT_PREFIX)}
    assert len(primary) == 20 and {f[3] for f in primary} == {PRIMARY_SOURCE}
    assert added == {
        "+more/glioma/g1.jpg": ("+more/glioma/g1.jpg", TRAIN, CLASSES.index("glioma"), "figshare"),
        "+more/notumor/n 1.jpg": ("+more/notumor/n 1.jpg", TRAIN, CLASSES.index("no_tumor"), "more"),
    }
    assert image_path([MRI_FIXTURES, extra], "+more/notumor/n 1.jpg") == extra / "notumor" / "n 1.jpg"
    assert image_path([MRI_FIXTURES, extra], "Testing/no_tumor/image(1).jpg").is_file()
    with pytest.raises(FileNotFoundError, match="no data root named"):
        image_path([MRI_FIXTURES], "+more/notumor/n 1.jpg")


def test_scan_refuses_roots_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "empty" / "glioma").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        scan([MRI_FIXTURES, tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="no class folder"):
        scan([MRI_FIXTURES, tmp_path / "other"])
    with pytest.raises(ValueError, match="distinct folder names"):
        scan([MRI_FIXTURES, _extra_root(tmp_path / "a"), _extra_root(tmp_path / "b")])


def test_one_root_keeps_its_data_hash_and_several_roots_are_deduplicated_together(tmp_path: Path) -> None:
    single = prepare(MRI_FIXTURES, tmp_path / "c1")
    again = prepare([MRI_FIXTURES], tmp_path / "c2")
    assert single.data_hash == again.data_hash  # a list of one root is the same data
    extra = _extra_root(tmp_path)
    p = prepare([MRI_FIXTURES, extra], tmp_path / "c3")
    assert len(p.y) == 22 and p.data_hash != single.data_hash
    i = {str(rel): k for k, rel in enumerate(p.paths)}
    near, test = i["+more/glioma/g1.jpg"], i["Testing/glioma_tumor/image(1).jpg"]
    assert p.group[near] == p.group[test]  # the duplicate finder runs across roots and splits
    assert near_test(p)[near] and p.split[test] == TEST
    official, _ = protocol_split(p, "official")
    clean, tests = protocol_split(p, "clean")
    assert near in official and near not in clean and not np.isin(clean, tests).any()
    assert report(p)["sources"]["figshare"] == {"glioma": 1, "meningioma": 0, "no_tumor": 0, "pituitary": 0}
    cached = prepare([MRI_FIXTURES, extra], tmp_path / "c3")  # from the cache: the sources come back too
    assert np.array_equal(cached.source, p.source)
    rows = {r["name"]: r for r in source_table(p.source, p.paths, p.y, CLASSES, "mri")}
    assert rows["figshare"]["licence"] == "CC BY 4.0" and rows["figshare"]["root"] == "more"
    assert rows[PRIMARY_SOURCE]["root"] == "mri" and rows[PRIMARY_SOURCE]["images"] == 20
    assert rows["more"] == {
        "name": "more",
        "root": "more",
        "images": 1,
        "per_class": {"no_tumor": 1},
        "licence": "",
        "citation": "",
    }


def test_a_cross_source_run_neither_trains_nor_validates_on_its_source(tmp_path: Path) -> None:
    from trainer.training.train import train_val_indices

    p = prepare([MRI_FIXTURES, _extra_root(tmp_path)], tmp_path / "c")
    held = np.nonzero(p.source == "more")[0]
    tr, va = train_val_indices(p, 0.25, 42, "official", exclude_source="more")
    assert not np.isin(held, np.concatenate([tr, va])).any()
    tr_all, va_all = train_val_indices(p, 0.25, 42, "official")
    assert np.isin(held, np.concatenate([tr_all, va_all])).all()
