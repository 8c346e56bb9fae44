"""Data preparation: scan, crop/resize (shared preprocessing), cache, duplicate analysis, splits.

No TensorFlow here: `python -m trainer prepare` stays fast and light.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.image.preprocessing import (
    IMAGE_SIZE,
    PREPROCESSING_PARAMS,
    decode_image,
    grey_percentile,
    preprocess_bytes,
    preprocessing_version,
)
from trainer.progress import progress

# The class names the models and the manifest use, in output order.
CLASSES: list[str] = ["glioma", "meningioma", "no_tumor", "pituitary"]
# How each class reads in plain words: written into the manifest (class_words) for the page and the model card.
CLASS_WORDS: dict[str, str] = {
    "glioma": "glioma",
    "meningioma": "meningioma",
    "no_tumor": "no tumour",
    "pituitary": "pituitary tumour",
}
# Folder names found in public brain-tumour collections → a class of CLASSES: the one table of aliases.
CLASS_ALIASES: dict[str, str] = {
    "glioma_tumor": "glioma",
    "glioma": "glioma",
    "meningioma_tumor": "meningioma",
    "meningioma": "meningioma",
    "no_tumor": "no_tumor",
    "notumor": "no_tumor",
    "no_tumour": "no_tumor",
    "normal": "no_tumor",
    "pituitary_tumor": "pituitary",
    "pituitary": "pituitary",
    "tumor": "tumor",
    "tumour": "tumor",
}
# A folder of tumours whose type is not given (`tumor`): a partial label, "one of the tumour classes". Its images
# carry the label index ANY_TUMOUR, one past the classes; a model is right on one when it answers any tumour class.
ANY_TUMOUR_NAME = "tumor"
ANY_TUMOUR = len(CLASSES)
NO_TUMOUR = "no_tumor"  # the one class that is not a tumour
# A root's files.csv may give each image a `split`: rows marked VAL_SPLIT are for checking and choosing only.
VAL_SPLIT = "val"
SPLITS = ("Training", "Testing")
TRAIN, TEST = 0, 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# Evaluation protocols: "official" trains on Training (and every image of the other data roots) and tests on the
# official Testing split; "clean" is official without any training image whose duplicate group holds a Testing
# image (nothing near an evaluation image is trained on); "pooled" pools Training and Testing, keeps every
# duplicate group on one side and holds out a stratified POOLED_TEST_FRACTION.
PROTOCOLS = ("official", "clean", "pooled")
POOLED_TEST_FRACTION = 0.2
POOLED_SEED = 2020
NEAR_DUPLICATE_MAX_HAMMING = 4  # pHash bits that may differ for two images to count as near-duplicates
CACHE_FORMAT = 2


@dataclass
class Prepared:
    """The prepared dataset: arrays aligned by index."""

    x: np.ndarray  # uint8 (N, 150, 150, 3) RGB
    y: np.ndarray  # int64 class index into CLASSES
    split: np.ndarray  # int8: TRAIN or TEST (the official split)
    paths: np.ndarray  # str, relative to the data root
    sha256: np.ndarray  # str, of the file bytes
    phash: np.ndarray  # uint64 perceptual hash of the original image
    fallback: np.ndarray  # bool: crop fell back to the whole image
    group: np.ndarray  # int64 duplicate-group id (exact ∪ near duplicates); singletons have their own
    data_hash: str  # of the files, labels, splits and the preprocessing: names the cache and the manifest
    preprocessing: dict[str, Any]  # the manifest-style preprocessing block the crops were made with
    dataset_hash: str  # of the files, labels and splits only: scores under any preprocessing compare
    # str: where each image came from (files.csv's source, else its root's name)
    source: np.ndarray = field(default_factory=lambda: np.zeros(0, str))
    # str: the MRI sequence its root's files.csv gives (T1, T1C, FLAIR, T2…), '' where none is given
    sequence: np.ndarray = field(default_factory=lambda: np.zeros(0, str))
    # str: the split its root's files.csv gives ('train', VAL_SPLIT), '' where none is given
    listed_split: np.ndarray = field(default_factory=lambda: np.zeros(0, str))

    def __post_init__(self) -> None:
        if len(self.source) != len(self.paths):
            self.source = np.array([source_of_path(str(rel)) for rel in self.paths])
        if len(self.sequence) != len(self.paths):
            self.sequence = np.full(len(self.paths), "", dtype=object).astype(str)
        if len(self.listed_split) != len(self.paths):
            self.listed_split = np.full(len(self.paths), "", dtype=object).astype(str)

    @property
    def held(self) -> np.ndarray:
        """Images their root puts in its `val` split: checked and chosen on, never trained on."""
        return self.listed_split == VAL_SPLIT

    def subset(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[mask], self.y[mask]


def source_of_path(rel: str) -> str:
    """An image's source from its path alone (its root's folder name; PRIMARY_SOURCE for the first root): for
    prepared caches written before sources were recorded."""
    return rel.split("/", 1)[0] if rel.startswith(EXTRA_ROOT_PREFIX) else PRIMARY_SOURCE


# Paths of images from the second and later data roots start with this and the root's folder name, so that one
# relative path names one image across all roots (image_path resolves it); the first root's paths are bare.
EXTRA_ROOT_PREFIX = "+"
PRIMARY_SOURCE = "brain-tumor-mri"
# One data root, or several (`--data A --data B`).
DataRoots = Path | Sequence[Path]


def label_index(name: str) -> int:
    """The label index of a class name of CLASS_ALIASES' values: its place in CLASSES, or ANY_TUMOUR."""
    return ANY_TUMOUR if name == ANY_TUMOUR_NAME else CLASSES.index(name)


def label_sets(classes: Sequence[str] = CLASSES) -> np.ndarray:
    """(len(classes) + 1, len(classes)) bool: which classes each label index admits. A class admits itself; the
    partial label ANY_TUMOUR admits every class but NO_TUMOUR."""
    admits = np.zeros((len(classes) + 1, len(classes)), bool)
    admits[np.arange(len(classes)), np.arange(len(classes))] = True
    admits[len(classes)] = [c != NO_TUMOUR for c in classes]
    return admits


def correct(y: np.ndarray, pred: np.ndarray, classes: Sequence[str] = CLASSES) -> np.ndarray:
    """Whether each answer is right under its (possibly partial) label."""
    y, pred = np.asarray(y, np.int64), np.asarray(pred, np.int64)
    return label_sets(classes)[y, pred] if len(y) else np.zeros(0, bool)


def _class_dirs(root: Path) -> list[tuple[Path, int]]:
    """(folder, label index) for every class folder directly under root (names from CLASS_ALIASES)."""
    return sorted(
        (d, label_index(CLASS_ALIASES[d.name.lower()]))
        for d in root.iterdir()
        if d.is_dir() and d.name.lower() in CLASS_ALIASES
    )


@dataclass(frozen=True)
class Listed:
    """What a root's files.csv says of one image (each column optional)."""

    source: str = ""
    sequence: str = ""
    split: str = ""


def _listing(root: Path) -> dict[str, Listed]:
    """{path relative to root: Listed} from root/files.csv (columns path, source, sequence, split), if any."""
    listing = root / "files.csv"
    if not listing.is_file():
        return {}
    with listing.open(newline="") as f:
        return {
            row["path"]: Listed(row.get("source") or "", row.get("sequence") or "", row.get("split") or "")
            for row in csv.DictReader(f)
        }


def scan(
    roots: DataRoots, limit_per_class: int | None = None, with_source: bool = False, with_listing: bool = False
) -> list[tuple[Any, ...]]:
    """(relative path, split, label index[, source[, sequence, held]]) for every image of every data root.

    A root holds either {Training,Testing}/<class>/ (the official split) or <class>/ folders (all training
    images); it may hold only some classes, under any name of CLASS_ALIASES. The first root's paths are relative
    to it; a later root's start with EXTRA_ROOT_PREFIX and its folder name. An image's source is what the root's
    files.csv says, else the root's folder name (PRIMARY_SOURCE for the first root without one); `with_listing`
    adds its sequence and the split its files.csv gives ('' where not given).
    """
    roots = [Path(roots)] if isinstance(roots, str | Path) else [Path(r) for r in roots]
    if len({r.name for r in roots[1:]}) != len(roots[1:]):
        raise ValueError(f"data roots after the first need distinct folder names: {[str(r) for r in roots]}")
    found: list[tuple[Any, ...]] = []
    for i, root in enumerate(roots):
        if not root.is_dir():
            raise FileNotFoundError(f"data folder not found: {root}")
        prefix = "" if i == 0 else f"{EXTRA_ROOT_PREFIX}{root.name}/"
        listed = _listing(root)
        default_source = PRIMARY_SOURCE if i == 0 else root.name
        if all((root / s).is_dir() for s in SPLITS):
            parts = [(root / split_name, split_index) for split_index, split_name in enumerate(SPLITS)]
        else:
            parts = [(root, TRAIN)]
        n_before = len(found)
        for folder, split_index in parts:
            class_dirs = _class_dirs(folder)
            if not class_dirs:
                known = ", ".join(sorted(CLASS_ALIASES))
                raise FileNotFoundError(f"no class folder ({known}) in {folder}")
            for class_dir, class_index in class_dirs:
                files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                if limit_per_class is not None:
                    files = files[:limit_per_class]
                for p in files:
                    rel = str(p.relative_to(root))
                    item: tuple[Any, ...] = (prefix + rel, split_index, class_index)
                    row = listed.get(rel, Listed())
                    if with_source or with_listing:
                        item = (*item, row.source or default_source)
                    if with_listing:
                        item = (*item, row.sequence, row.split)
                    found.append(item)
        if len(found) == n_before:
            raise ValueError(f"no images found under {root}")
    return found


def image_path(roots: DataRoots, rel: str) -> Path:
    """The file of a prepared image's relative path (see scan) among the data roots."""
    roots = [Path(roots)] if isinstance(roots, str | Path) else [Path(r) for r in roots]
    if rel.startswith(EXTRA_ROOT_PREFIX):
        name, _, rest = rel[len(EXTRA_ROOT_PREFIX) :].partition("/")
        for root in roots[1:]:
            if root.name == name:
                return root / rest
        raise FileNotFoundError(f"{rel}: no data root named {name!r} among {[str(r) for r in roots]}")
    return roots[0] / rel


def phash(data: bytes) -> int:
    """64-bit DCT perceptual hash of the (uncropped) image, robust to re-encoding and resizing."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        return 0
    small = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits).view(">u8")[0])


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def exact_groups(sha: np.ndarray) -> np.ndarray:
    """Group ids of byte-identical files: equal ids for equal sha256."""
    return np.unique(sha, return_inverse=True)[1]


def duplicate_groups(
    sha: np.ndarray, hashes: np.ndarray, max_hamming: int = NEAR_DUPLICATE_MAX_HAMMING
) -> tuple[np.ndarray, np.ndarray]:
    """Group ids for exact duplicates (same sha256) and for exact ∪ near duplicates (pHash distance).

    Returns (exact_group, group): each an int array, equal ids meaning "same group"; a near-duplicate
    group's id is the index of its first member.
    """
    n = len(sha)
    exact_group = exact_groups(sha)
    near = _UnionFind(n)
    first_of: dict[int, int] = {}
    for i, g in enumerate(exact_group):
        near.union(first_of.setdefault(int(g), i), i)
    h = hashes.astype(np.uint64)
    for i in range(n - 1):
        dist = np.bitwise_count(h[i + 1 :] ^ h[i])
        for j in np.nonzero(dist <= max_hamming)[0]:
            near.union(i, i + 1 + int(j))
    group = np.array([near.find(i) for i in range(n)])
    return exact_group, group


def _cache_key(
    files: list[tuple[str, int, int]],
    digests: list[str],
    preprocessing: Mapping[str, Any] | None,
    held: Sequence[bool] | np.ndarray | None = None,
) -> str:
    """The data hash (with `preprocessing`) or, with None, the dataset hash (the images, labels and splits alone;
    a root's `val` rows are marked, so that moving an image into or out of them makes other data)."""
    h = hashlib.sha256()
    if preprocessing is not None:
        h.update(json.dumps({"format": CACHE_FORMAT, "preprocessing": preprocessing}).encode())
    marks = held if held is not None else [False] * len(files)
    for (rel, split, label), digest, mark in zip(files, digests, marks, strict=True):
        h.update(f"{rel}\0{split}\0{label}\0{digest}{chr(0) + VAL_SPLIT if mark else ''}\n".encode())
    return h.hexdigest()


def prepare(
    root: DataRoots,
    cache_dir: Path,
    limit_per_class: int | None = None,
    preprocessing: Mapping[str, Any] = PREPROCESSING_PARAMS,
) -> Prepared:
    """Crop/resize every image of every data root once under `preprocessing` (a manifest-style block; default:
    the current version); reuse the .npz cache when the inputs' content hash and the preprocessing match. The
    duplicate finder runs across all roots and splits at once."""
    preprocessing_version(preprocessing)  # ValueError for one this code does not implement
    scanned = scan(root, limit_per_class, with_listing=True)
    files = [(rel, split, label) for rel, split, label, *_ in scanned]
    held = np.array([s == VAL_SPLIT for *_, s in scanned], bool)
    blobs_digest = []
    for rel, _, _ in progress(files, len(files), "hashing"):
        blobs_digest.append(hashlib.sha256(image_path(root, rel).read_bytes()).hexdigest())
    key = _cache_key(files, blobs_digest, preprocessing, held)
    identity: dict[str, Any] = {
        "data_hash": key,
        "preprocessing": dict(preprocessing),
        "dataset_hash": _cache_key(files, blobs_digest, None, held),
    }
    source = np.array([row[3] for row in scanned])
    listing: dict[str, Any] = {
        "source": source,
        "sequence": np.array([row[4] for row in scanned], dtype=object).astype(str),
        "listed_split": np.array([row[5] for row in scanned], dtype=object).astype(str),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"prepared-{key[:16]}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in ("data_hash", "source")}
            return Prepared(**arrays, **identity, **listing)
    n = len(files)
    x = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    hashes = np.zeros(n, np.uint64)
    fallback = np.zeros(n, bool)
    for i, (rel, _, _) in enumerate(progress(files, n, "cropping")):
        data = image_path(root, rel).read_bytes()
        result = preprocess_bytes(data, params=preprocessing)
        x[i] = result.image
        fallback[i] = result.fallback
        hashes[i] = phash(data)
    sha = np.array(blobs_digest)
    _, group = duplicate_groups(sha, hashes)
    prepared = Prepared(
        x=x,
        y=np.array([f[2] for f in files], np.int64),
        split=np.array([f[1] for f in files], np.int8),
        paths=np.array([f[0] for f in files]),
        sha256=sha,
        phash=hashes,
        fallback=fallback,
        group=group,
        **identity,
        **listing,
    )
    tmp = cache.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **{k: v for k, v in prepared.__dict__.items() if k not in identity and k not in listing})
    tmp.replace(cache)
    return prepared


def report(p: Prepared) -> dict:
    """Per-class counts, crop fallbacks and duplicate facts, as a JSON-able dict."""
    exact_group = exact_groups(p.sha256)

    def group_stats(groups: np.ndarray) -> dict:
        ids, counts = np.unique(groups, return_counts=True)
        multi = ids[counts > 1]
        crossing = sum(1 for g in multi if len(np.unique(p.split[groups == g])) > 1)
        conflicting = sum(1 for g in multi if len(np.unique(p.y[groups == g])) > 1)
        return {
            "groups": len(multi),
            "images": int(counts[counts > 1].sum()),
            "groups_crossing_training_testing": int(crossing),
            "groups_with_conflicting_labels": int(conflicting),
        }

    per_class = {}
    for c, name in enumerate(CLASSES):
        row: dict[str, Any] = {}
        for s, split_name in enumerate(SPLITS):
            m = (p.y == c) & (p.split == s)
            row[split_name] = {"images": int(m.sum()), "crop_fallbacks": int(p.fallback[m].sum())}
        in_class = p.y == c
        _, counts = np.unique(exact_group[in_class], return_counts=True)
        row["exact_duplicate_images"] = int(counts[counts > 1].sum())
        _, counts = np.unique(p.group[in_class], return_counts=True)
        row["near_duplicate_images"] = int(counts[counts > 1].sum())
        per_class[name] = row
    sources: dict[str, dict[str, int]] = {}
    for name in dict.fromkeys(p.source.tolist()):
        per_label = {c: int(((p.source == name) & (p.y == k)).sum()) for k, c in enumerate(CLASSES)}
        partial = int(((p.source == name) & (p.y == ANY_TUMOUR)).sum())
        sources[str(name)] = {**per_label, ANY_TUMOUR_NAME: partial} if partial else per_label
    return {
        "data_hash": p.data_hash,
        "images": len(p.y),
        "sources": sources,
        "per_class": per_class,
        "crop_fallbacks": int(p.fallback.sum()),
        "exact_duplicates": group_stats(exact_group),
        "near_duplicates": {**group_stats(p.group), "max_phash_hamming": NEAR_DUPLICATE_MAX_HAMMING},
    }


def brightness_by_class(root: DataRoots, p: Prepared, cache_dir: Path) -> dict[str, dict[str, float]]:
    """{split: {class: median over its images of the grey 99th percentile of the decoded image}}, before any
    preprocessing: how bright each class was exported. Cached per dataset hash (decoding takes ~30 s)."""
    cache = cache_dir / f"brightness-{p.dataset_hash[:16]}.json"
    if cache.exists():
        return dict(json.loads(cache.read_text()))
    levels = np.array(
        [
            grey_percentile(decode_image(image_path(root, str(rel)).read_bytes()), 99.0)
            for rel in progress(p.paths, len(p.paths), "brightness")
        ]
    )
    out = {
        split_name: {c: float(np.median(levels[(p.split == s) & (p.y == k)])) for k, c in enumerate(CLASSES)}
        for s, split_name in enumerate(SPLITS)
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1) + "\n")
    return out


def class_rows(r: dict) -> list[tuple[str, int, int, int, int, int]]:
    """(class, Training images, Testing images, crop fallbacks, exact-dup images, near-dup images)."""
    return [
        (
            name,
            row["Training"]["images"],
            row["Testing"]["images"],
            row["Training"]["crop_fallbacks"] + row["Testing"]["crop_fallbacks"],
            row["exact_duplicate_images"],
            row["near_duplicate_images"],
        )
        for name, row in r["per_class"].items()
    ]


def format_report(r: dict) -> str:
    lines = [f"{'class':<12}{'train':>7}{'test':>7}{'fallb.':>8}{'exact dup':>11}{'near dup':>10}"]
    lines += [f"{n:<12}{a:>7}{b:>7}{c:>8}{d:>11}{e:>10}" for n, a, b, c, d, e in class_rows(r)]
    e, nd = r["exact_duplicates"], r["near_duplicates"]
    lines.append(
        f"exact duplicates: {e['groups']} groups ({e['images']} images), "
        f"{e['groups_crossing_training_testing']} cross Training/Testing"
    )
    lines.append(
        f"near duplicates (pHash ≤ {nd['max_phash_hamming']} bits, incl. exact): {nd['groups']} groups "
        f"({nd['images']} images), {nd['groups_crossing_training_testing']} cross Training/Testing, "
        f"{nd['groups_with_conflicting_labels']} with conflicting labels"
    )
    lines.append(f"crop fallbacks (whole image used): {r['crop_fallbacks']} of {r['images']}")
    for name, counts in r.get("sources", {}).items():
        lines.append(f"source {name}: " + ", ".join(f"{c} {n}" for c, n in counts.items() if n))
    return "\n".join(lines)


def split_train_val(y: np.ndarray, group: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, duplicate-aware split of indices: a duplicate group never straddles the two sides.

    Groups are shuffled with the seed and given to validation while their (majority) class is short
    of its quota, so each class gets close to val_fraction of its images.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    ids = np.unique(group)
    rng.shuffle(ids)
    n_classes = int(y.max()) + 1
    quota = np.bincount(y, minlength=n_classes) * val_fraction
    taken = np.zeros(n_classes)
    val = np.zeros(len(y), bool)
    for g in ids:
        members = group == g
        label = np.bincount(y[members], minlength=n_classes).argmax()
        if taken[label] + members.sum() <= quota[label] + 0.5:
            val[members] = True
            taken[label] += members.sum()
    return np.nonzero(~val)[0], np.nonzero(val)[0]


def near_test(p: Prepared) -> np.ndarray:
    """Mask of the images whose duplicate group (exact or near, across every root) holds a Testing image."""
    test_groups = np.unique(p.group[p.split == TEST])
    return np.isin(p.group, test_groups)


def protocol_split(p: Prepared, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, test) indices of a protocol. Validation is later carved from the training pool.

    official: the first root's Training / Testing folders (every image of the other roots joins Training).
    clean: the same test side; the training pool leaves out every image near a Testing image (near_test).
    pooled: Training ∪ Testing split 80/20, stratified by class, duplicate groups (exact and near) kept whole,
    fixed seed — no duplicate crosses the split.
    """
    if protocol == "official":
        return np.nonzero(p.split == TRAIN)[0], np.nonzero(p.split == TEST)[0]
    if protocol == "clean":
        return np.nonzero((p.split == TRAIN) & ~near_test(p))[0], np.nonzero(p.split == TEST)[0]
    if protocol == "pooled":
        return split_train_val(p.y, p.group, POOLED_TEST_FRACTION, POOLED_SEED)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
