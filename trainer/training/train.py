"""Training: tf.data pipeline with on-the-fly augmentation (not part of the exported model), class
weights, early stopping, optional fine-tuning phase, TensorBoard logs, resumable per grid entry."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from trainer.data.dataset import ANY_TUMOUR, CLASSES, Prepared, protocol_split, split_train_val
from trainer.models.builders import (
    BACKBONES,
    build_from_config,
    fine_tune_cut_of,
    split_at_cut,
    unfreeze_top,
    weights_origin,
)
from trainer.models.features import pooled_feature_model
from trainer.models.losses import PartialLabelLoss, partial_label_accuracy
from trainer.training.distribute import scope
from trainer.training.grid import FAMILY_DEFAULTS
from trainer.training.recipe import Recipe

AUTOTUNE = tf.data.AUTOTUNE


def make_augmenter(seed: int) -> keras.Sequential:
    """Rotation, horizontal flip, zoom, brightness and contrast on 0–255 RGB images."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.04, fill_mode="constant", seed=seed),
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomZoom((-0.1, 0.1), fill_mode="constant", seed=seed),
            keras.layers.RandomBrightness(0.15, value_range=(0.0, 255.0), seed=seed),
            keras.layers.RandomContrast(0.15, value_range=(0.0, 255.0), seed=seed),
        ],
        name="augment",
    )


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    augment: bool = False,
    shuffle: bool = False,
    seed: int = 42,
) -> tf.data.Dataset:
    """uint8 images → float32 0–255 batches; augmentation runs in the pipeline, on the CPU, per batch."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=AUTOTUNE)
    if augment:
        aug = make_augmenter(seed)
        ds = ds.map(
            lambda a, b: (tf.clip_by_value(aug(a, training=True), 0.0, 255.0), b),
            num_parallel_calls=AUTOTUNE,
        )
    return ds.prefetch(AUTOTUNE)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Each label index (the classes, and the partial label ANY_TUMOUR where present) weighs the same in all."""
    n_labels = max(n_classes, int(y.max()) + 1 if len(y) else 0)
    counts = np.bincount(y, minlength=n_labels).astype(float)
    present = int((counts > 0).sum()) or 1
    return {c: float(len(y) / (present * counts[c])) if counts[c] else 0.0 for c in range(n_labels)}


def cell_weights(y: np.ndarray, groups: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Per-image weights (for every image; mean 1 over `index`) that balance class × group cells of the images
    in `index`, softened to 1/√count so that a cell of a dozen images does not dominate."""
    cells = y * (int(groups.max()) + 1) + groups
    counts = np.bincount(cells[index], minlength=int(cells.max()) + 1).astype(float)
    w = 1.0 / np.sqrt(np.maximum(counts[cells], 1.0))
    return (w / w[index].mean()).astype(np.float32)


def train_val_indices(
    p: Prepared, val_fraction: float, seed: int, protocol: str = "official", exclude_source: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the prepared arrays; validation carved (duplicate-aware) from the protocol's training
    pool — the official Training split (with every other root's images), or the pooled protocol's 80 %.
    Images of `exclude_source`, and every image in a duplicate group with one of them, are left out of both:
    a cross-source run tests on them.

    A root that lists a split (files.csv) is not carved: its `train` rows train and its `val` rows are the
    tie-broken check (data.tiebroken), never trained on; no image in a duplicate group with a validation or
    checked image trains."""
    train_pool, _ = protocol_split(p, protocol)
    if exclude_source:
        held = p.source == exclude_source
        train_pool = train_pool[~np.isin(p.group[train_pool], np.unique(p.group[held]))]
    listed = p.listed_split[train_pool] != ""
    carve = train_pool[~listed]
    tr, va = split_train_val(p.y[carve], p.group[carve], val_fraction, seed)
    if not listed.any():
        return carve[tr], carve[va]
    train = np.concatenate([carve[tr], train_pool[listed & ~p.held[train_pool]]])
    kept_out = np.unique(np.concatenate([p.group[carve[va]], p.group[p.held]]))
    return train[~np.isin(p.group[train], kept_out)], carve[va]


def evaluation_indices(p: Prepared, cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(validation, test) indices for a model trained with cfg's seed, val_fraction and protocol: the test
    side is the official Testing split, or the pooled protocol's held-out 20 %."""
    recipe = Recipe.of(cfg)
    _, va = train_val_indices(p, float(cfg["val_fraction"]), int(cfg["seed"]), recipe.protocol, recipe.exclude_source)
    return va, protocol_split(p, recipe.protocol)[1]


def _feature_cache_path(cfg: dict[str, Any], p: Prepared, cache_dir: Path, kind: str = "features") -> Path:
    parts = [cfg["backbone"], cfg["weights"], _weights_digest(cfg["weights"]), p.data_hash]
    if Recipe.of(cfg).backbone_input:
        parts.append(f"input{Recipe.of(cfg).backbone_input}")
    if kind != "features":
        parts.append(kind)
    if Recipe.of(cfg).multiscale:
        parts.append(list(BACKBONES[cfg["backbone"]].multiscale_taps or ()))
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return cache_dir / f"{kind}-{cfg['backbone']}-{key}.npz"


def _weights_digest(weights: str) -> str:
    path = Path(weights)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else weights


def frozen_features(model: keras.Model, cfg: dict[str, Any], p: Prepared, cache_dir: Path) -> np.ndarray:
    """Pooled backbone features of every prepared image, computed once and cached (.npz)."""
    path = _feature_cache_path(cfg, p, cache_dir)
    if path.exists():
        with np.load(path) as z:
            return np.asarray(z["features"])
    extractor = pooled_feature_model(model)
    print(f"[{cfg['name']}] computing frozen {cfg['backbone']} features for {len(p.x)} images (cached after)")
    feats = np.asarray(extractor.predict(p.x.astype(np.float32), batch_size=32, verbose=2))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=feats)
    return feats


CUT_VIEWS = ("identity", "hflip")


def _cached_views(
    path: Path, bottom: keras.Model, views: Sequence[tuple[str, Callable[[], np.ndarray]]], log: str
) -> np.ndarray:
    """The bottom's outputs (float16) for each named view's images, stacked (views, N, ...), cached at path."""
    if path.exists():
        with np.load(path) as z:
            return np.asarray(z["features"])
    outs = []
    for name, images in views:
        print(f"{log}, {name}")
        outs.append(
            np.asarray(bottom.predict(images().astype(np.float32), batch_size=32, verbose=2)).astype(np.float16)
        )
    feats = np.stack(outs)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=feats)
    return feats


def _clean_views(bottom: keras.Model, p: Prepared, path: Path, log: str) -> np.ndarray:
    views = [
        (f"view {view}", (lambda: p.x) if view == "identity" else (lambda: p.x[:, :, ::-1, :])) for view in CUT_VIEWS
    ]
    return _cached_views(path, bottom, views, log)


SHIFT_SEED = 2020  # draws the shifted views; fixed, so runs with other init seeds share one cache file


def _shifted_views(
    bottom: keras.Model, p: Prepared, k: int, path: Path, log: str, kind: str = "acquisition"
) -> np.ndarray:
    from trainer.data.shifts import random_shift
    from trainer.training.appearance import random_appearance

    draw = random_appearance if kind == "appearance" else random_shift

    def shifted(v: int) -> np.ndarray:
        rngs = np.random.default_rng([SHIFT_SEED, v]).spawn(len(p.x))
        return np.stack([draw(img, rng) for img, rng in zip(p.x, rngs, strict=True)])

    views = [(f"shift {v + 1}/{k}", partial(shifted, v)) for v in range(k)]
    return _cached_views(path, bottom, views, log)


def cut_features(bottom: keras.Model, cfg: dict[str, Any], p: Prepared, cache_dir: Path) -> np.ndarray:
    """The frozen bottom's output for every image in each of CUT_VIEWS, shape (views, N, h, w, c), float16,
    computed once and cached: fine-tuning the top block(s) then costs a fraction of a full forward pass."""
    cut = fine_tune_cut_of(cfg["backbone"], Recipe.of(cfg).fine_tune_blocks)
    log = f"[{cfg['name']}] computing frozen {cfg['backbone']} → {cut} for {len(p.x)} images"
    return _clean_views(bottom, p, _feature_cache_path(cfg, p, cache_dir, f"cut-{cut}"), log)


def shifted_cut_features(bottom: keras.Model, cfg: dict[str, Any], p: Prepared, cache_dir: Path) -> np.ndarray:
    """The frozen bottom's output for `shift_views` randomly shifted copies of every image (robustness.
    random_shift, seeded per view and image), shape (K, N, h, w, c), float16, computed once and cached."""
    recipe = Recipe.of(cfg)
    k, kind = recipe.shift_views, recipe.shift_kind
    cut = fine_tune_cut_of(cfg["backbone"], recipe.fine_tune_blocks)
    log = f"[{cfg['name']}] computing frozen {cfg['backbone']} → {cut} for {len(p.x)} images"
    label = "shift" if kind == "acquisition" else kind
    path = _feature_cache_path(cfg, p, cache_dir, f"cut-{cut}-{label}{k}-seed{SHIFT_SEED}")
    return _shifted_views(bottom, p, k, path, log, kind)


def view_features(model: keras.Model, cfg: dict[str, Any], p: Prepared, cache_dir: Path) -> tuple[Any, ...]:
    """A frozen head's pooled features (multi-scale or of the backbone's output), float16, computed once and
    cached: (clean, shifted) with clean (len(CUT_VIEWS), N, d) for the identity and mirror views and shifted
    (shift_views, N, d) (None without shifted views)."""
    extractor = pooled_feature_model(model)
    prefix = "ms" if Recipe.of(cfg).multiscale else "pooled"
    log = f"[{cfg['name']}] computing frozen {prefix} {cfg['backbone']} features for {len(p.x)} images"
    clean = _clean_views(extractor, p, _feature_cache_path(cfg, p, cache_dir, f"{prefix}-views"), log)
    recipe = Recipe.of(cfg)
    k, kind = recipe.shift_views, recipe.shift_kind
    if not k:
        return clean, None
    label = "shift" if kind == "acquisition" else kind
    path = _feature_cache_path(cfg, p, cache_dir, f"{prefix}-{label}{k}-seed{SHIFT_SEED}")
    return clean, _shifted_views(extractor, p, k, path, log, kind)


class ViewSampler(keras.utils.PyDataset):
    """Fine-tuning batches from cached views: each epoch, every image in `index` appears twice, once as one of
    its clean views (identity or mirror) and once as one of its shifted views, each drawn anew per epoch, in
    a new random order. Costs what the two clean views cost (the recipe without shifted views)."""

    def __init__(
        self,
        clean: np.ndarray,
        shifted: np.ndarray,
        index: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        seed: int,
        weights: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        if clean.shape[1:] != shifted.shape[1:]:
            raise ValueError(f"clean views {clean.shape} and shifted views {shifted.shape} do not match")
        self.clean, self.shifted, self.index, self.y = clean, shifted, np.asarray(index), y
        self.weights = weights
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        n = len(self.index)
        source = np.repeat([0, 1], n)  # 0: a clean view, 1: a shifted view
        view = np.concatenate([self.rng.integers(0, len(self.clean), n), self.rng.integers(0, len(self.shifted), n)])
        image = np.concatenate([self.index, self.index])
        order = self.rng.permutation(2 * n)
        self.samples = np.stack([source[order], view[order], image[order]], axis=1)

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
        rows = self.samples[i * self.batch_size : (i + 1) * self.batch_size]
        x = np.stack([(self.shifted if s else self.clean)[v, j] for s, v, j in rows])
        if self.weights is None:
            return x, self.y[rows[:, 2]]
        return x, self.y[rows[:, 2]], self.weights[rows[:, 2]]


def view_batches(
    clean: np.ndarray,
    shifted: np.ndarray | None,
    index: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int,
    weights: np.ndarray | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What `fit` trains on from cached views of the images in `index`: with shifted views a ViewSampler (one clean
    and one shifted view per image and epoch), else every clean view of every image, shuffled by Keras; with
    per-image `weights` as sample weights. Returns (fit's positional training data, its keyword arguments)."""
    if shifted is not None:
        sampler = ViewSampler(clean, shifted, index, y, batch_size, seed, weights)
        return (sampler,), {"validation_batch_size": batch_size}
    x = np.concatenate([view[index] for view in clean])
    kw: dict[str, Any] = {"batch_size": batch_size, "shuffle": True}
    if weights is not None:
        kw["sample_weight"] = np.concatenate([weights[index]] * len(clean))
    return (x, np.concatenate([y[index]] * len(clean))), kw


def head_model(model: keras.Model) -> keras.Model:
    """The layers after global pooling, as a model on pooled features (weights shared with `model`)."""
    gap = model.get_layer("gap")
    inputs = keras.Input(shape=gap.output.shape[1:], name="features")
    x = inputs
    after = model.layers[model.layers.index(gap) + 1 :]
    for layer in after:
        x = layer(x)
    return keras.Model(inputs, x, name="head")


def _merge(history: dict[str, list[float]], more: dict[str, list[float]]) -> dict[str, list[float]]:
    return {k: history.get(k, []) + [float(v) for v in more.get(k, [])] for k in set(history) | set(more)}


def train_entry(
    cfg: dict[str, Any],
    p: Prepared,
    run_dir: Path,
    verbose: int = 2,
    cache_dir: Path | None = None,
    grid: str | None = None,
) -> dict[str, Any]:
    """Train one grid entry into run_dir (model.keras, history.json, result.json, which names `grid`, the file
    it came from). Skips finished runs."""
    result_path = run_dir / "result.json"
    if result_path.exists() and (run_dir / "model.keras").exists():
        done = json.loads(result_path.read_text())
        # runs recorded before a family default existed used that same default
        stored = {**FAMILY_DEFAULTS.get(cfg["family"], {}), **done.get("config", {})}
        # runs recorded before protocols existed were trained under the official one
        stored["protocol"] = Recipe.of(stored).protocol
        if stored == {**cfg, "protocol": Recipe.of(cfg).protocol} and done.get("data_hash") == p.data_hash:
            print(f"[{cfg['name']}] already trained, skipping (delete {run_dir} to retrain)")
            return dict(done)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = Recipe.of(cfg)
    seed = recipe.run_seed
    keras.utils.set_random_seed(seed)
    tr, va = train_val_indices(p, float(cfg["val_fraction"]), int(cfg["seed"]), recipe.protocol, recipe.exclude_source)
    n_classes = len(CLASSES)
    input_shape = tuple(int(d) for d in p.x.shape[1:])
    model = build_from_config(cfg, input_shape, n_classes)  # type: ignore[arg-type]
    bs = int(cfg["batch_size"])
    cache_dir = cache_dir or run_dir.parent.parent / "cache"
    weights: dict[int, float] | None = class_weights(p.y[tr], n_classes)
    sample_w = None
    if recipe.balance == "class_group":  # sample weights per class × sequence group cell replace class weights
        from trainer.models.sequence import prepared_groups

        sample_w, weights = cell_weights(p.y, prepared_groups(p.x, p.data_hash, cache_dir), tr), None
    elif recipe.balance == "source_class_sequence":  # per source × class × sequence cell, 1/√count, mean 1
        sample_w, weights = _cell3_weights(p, tr, cache_dir), None
    lr_patience = recipe.reduce_lr_patience
    # partial labels (a tumour of unknown type) need the loss on the summed tumour probabilities
    partial = bool((p.y[tr] == ANY_TUMOUR).any())
    loss: Any = PartialLabelLoss(CLASSES) if partial else "sparse_categorical_crossentropy"
    metric: Any = partial_label_accuracy if partial else "accuracy"

    def fit(
        target: keras.Model, lr: float, epochs: int, phase: str, train: Any, val: Any, more: Any = (), **kw: Any
    ) -> dict:
        target.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=[metric])
        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(cfg["patience"]), restore_best_weights=True),
            keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard" / phase)),
        ]
        if more:  # fixed epochs, every one checkpointed and scored (no early stopping)
            callbacks = [callbacks[1], *more]
        if lr_patience:  # divide the learning rate by 3 when val_loss stalls (recipes from scratch)
            callbacks.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=1 / 3, patience=lr_patience, min_lr=lr / 100, verbose=1
                )
            )
        out = target.fit(
            *train, validation_data=val, epochs=epochs, class_weight=weights, callbacks=callbacks, verbose=verbose, **kw
        )
        return dict(out.history)

    def image_datasets() -> tuple[tuple[tf.data.Dataset], tf.data.Dataset]:
        train_ds = make_dataset(p.x[tr], p.y[tr], bs, augment=bool(cfg["augment"]), shuffle=True, seed=seed)
        return (train_ds,), make_dataset(p.x[va], p.y[va], bs)

    print(f"[{cfg['name']}] {model.count_params():,} params, train {len(tr)} / val {len(va)} images")
    start = time.monotonic()
    lr, epochs = float(cfg["learning_rate"]), int(cfg["epochs"])
    cached = cfg["family"] == "transfer" and bool(cfg.get("cache_features", False))
    frozen = cached and not int(cfg.get("fine_tune_epochs", 0))
    if cached and (recipe.multiscale or (frozen and recipe.shift_views)):
        # Frozen backbone, multi-scale or not: the head trains on cached pooled features of the identity and mirror
        # views, plus shifted views when the entry asks for them (one clean and one shifted per image and epoch).
        clean, shifted = view_features(model, cfg, p, cache_dir)
        train_on, kw = view_batches(clean, shifted, tr, p.y, bs, seed, sample_w)
        history = _merge({}, fit(head_model(model), lr, epochs, "train", train_on, (clean[0][va], p.y[va]), **kw))
    elif cached:
        # Frozen backbone: train the head on cached pooled features (no augmentation in this phase).
        feats = frozen_features(model, cfg, p, cache_dir)
        train_f, val_f = (feats[tr], p.y[tr]), (feats[va], p.y[va])
        kw = {} if sample_w is None else {"sample_weight": sample_w[tr]}
        history = _merge(
            {}, fit(head_model(model), lr, epochs, "train", train_f, val_f, batch_size=bs, shuffle=True, **kw)
        )
    else:
        history = _merge({}, fit(model, lr, epochs, "train", *image_datasets()))
    ft_epochs = int(cfg.get("fine_tune_epochs", 0))
    if cfg["family"] == "transfer" and ft_epochs > 0 and BACKBONES[cfg["backbone"]].fine_tune_prefix:
        blocks = recipe.fine_tune_blocks
        n = unfreeze_top(model, cfg["backbone"], None if recipe.fine_tune_all else blocks)
        what = "the whole backbone" if recipe.fine_tune_all else f"the top {blocks} backbone block(s)"
        print(f"[{cfg['name']}] fine-tuning {n} layers of {what}, up to {ft_epochs} epochs")
        ft_lr = float(cfg["fine_tune_learning_rate"])
        if recipe.fine_tune_all:
            ft = _fine_tune_all(model, recipe, p, tr, va, run_dir, cache_dir, fit, cfg["name"], bs, seed)
        elif cached and fine_tune_cut_of(cfg["backbone"], blocks) and recipe.fine_tune_on == "cache":
            # Train the top block(s) + head on the cached output of the frozen layers below; the views
            # (identity, horizontal flip) are the augmentation of this phase.
            bottom, top = split_at_cut(model, cfg["backbone"], blocks)
            cut = cut_features(bottom, cfg, p, cache_dir)
            val_cut = (cut[0][va], p.y[va])
            # plus randomly shifted views: one clean and one shifted per image and epoch
            shifted = shifted_cut_features(bottom, cfg, p, cache_dir) if recipe.shift_views else None
            train_on, kw = view_batches(cut, shifted, tr, p.y, bs, seed, sample_w)
            if recipe.checkpoint == "check":  # every epoch scored (on images, by the full model) and kept
                from trainer.training.online import Checkpoints

                folder = run_dir / "checkpoints"
                checkpoints = Checkpoints(p, va, folder, ft_epochs // 2 + 1, f"[{cfg['name']}] ", scored=model)
                ft = fit(top, ft_lr, ft_epochs, "fine_tune", train_on, val_cut, more=[checkpoints], **kw)
                checkpoints.finish()
            else:
                ft = fit(top, ft_lr, ft_epochs, "fine_tune", train_on, val_cut, **kw)
        else:  # end to end on images, with the training augmentation
            ft = fit(model, ft_lr, ft_epochs, "fine_tune", *image_datasets())
        history = _merge(history, ft)
    seconds = time.monotonic() - start
    model.save(run_dir / "model.keras")
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    result = {
        "name": cfg["name"],
        "config": cfg,
        "data_hash": p.data_hash,
        "params": int(model.count_params()),
        "epochs_run": len(history.get("loss", [])),
        "train_seconds": round(seconds, 1),
        "weights_origin": weights_origin(cfg),
        "n_train": len(tr),
        **_checkpoint_of(run_dir),
        "n_val": len(va),
        **({"grid": grid} if grid else {}),
    }
    result_path.write_text(json.dumps(result, indent=1))
    print(f"[{cfg['name']}] done in {seconds:.0f}s, {result['epochs_run']} epochs")
    return result


def _cell3_weights(p: Prepared, tr: np.ndarray, cache_dir: Path) -> np.ndarray:
    """Per-image weights (every image; mean 1 over tr) ∝ 1/√count of its source × class × sequence cell among tr;
    the sequence is the root's, else the sequence probe's group."""
    from trainer.models.sequence import prepared_groups
    from trainer.training.online import balanced_weights, sequence_cells

    seq = sequence_cells(p, prepared_groups(p.x, p.data_hash, cache_dir))
    cells = np.char.add(np.char.add(p.source.astype(str), "|" + p.y.astype(str) + "|"), seq)
    out = np.zeros(len(p.y), np.float32)
    out[tr] = balanced_weights(cells[tr]) * len(tr)
    return out


def _fine_tune_all(
    model: keras.Model,
    recipe: Recipe,
    p: Prepared,
    tr: np.ndarray,
    va: np.ndarray,
    run_dir: Path,
    cache_dir: Path,
    fit: Callable[..., dict],
    name: str,
    batch_size: int,
    seed: int,
) -> dict:
    """Phase 2 of a fine_tune_all recipe: the whole network on crops randomised anew each epoch (training.online),
    sampled by the recipe; every epoch checkpointed and scored; the kept weights loaded into `model`."""
    from trainer.training.online import Checkpoints, OnlineSampler

    probabilities = None
    if recipe.sampling == "balanced":
        weights = _cell3_weights(p, tr, cache_dir)[tr]
        probabilities = weights / weights.sum()
    sampler = OnlineSampler(
        p.x, p.y, tr, batch_size, seed, recipe.appearance_p, probabilities, workers=2, use_multiprocessing=False
    )
    epochs = recipe.fine_tune_epochs
    checkpoints = Checkpoints(p, va, run_dir / "checkpoints", average_from=epochs // 2 + 1, log=f"[{name}] ")
    history = fit(model, recipe.fine_tune_learning_rate, epochs, "fine_tune", (sampler,), None, more=[checkpoints])
    checkpoints.finish(choose=recipe.checkpoint == "check")
    return history


def _checkpoint_of(run_dir: Path) -> dict[str, Any]:
    """The kept checkpoint of a fine_tune_all run and its scores (validation, tie-broken check), for result.json."""
    path = run_dir / "checkpoints" / "scores.json"
    if not path.exists():
        return {}
    scores = json.loads(path.read_text())
    return {"checkpoint": scores["chosen"], "checkpoint_scores": scores["scores"][scores["chosen"]]}


def train_grid(
    entries: list[dict[str, Any]],
    p: Prepared,
    runs_dir: Path,
    verbose: int = 2,
    cache_dir: Path | None = None,
    strategy: Any = None,
    grid: str | None = None,
) -> list[dict[str, Any]]:
    """Train every entry in turn; with a tf.distribute `strategy` (distribute.make_strategy), each model is
    built, compiled and fitted in its scope."""
    results = []
    for i, cfg in enumerate(entries, 1):
        print(f"=== model {i}/{len(entries)}: {cfg['name']}")
        with scope(strategy):
            results.append(train_entry(cfg, p, runs_dir / cfg["name"], verbose, cache_dir, grid))
    return results
