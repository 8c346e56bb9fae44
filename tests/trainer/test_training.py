"""Training recipes: learning-rate schedule, cached frozen features, seeds, fine-tuning on cache or images, shifted
views and multi-scale heads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")


from tests.utils import MRI_FIXTURES

pytestmark = pytest.mark.slow


def test_reduce_lr_on_plateau_divides_the_learning_rate(tmp_path: Path) -> None:
    """`reduce_lr_patience` in a grid: the learning rate drops by 3 after that many epochs without a lower
    val_loss (here a learning rate so small that val_loss cannot move), and the run's history records it."""
    from trainer.data.dataset import prepare
    from trainer.training.grid import expand
    from trainer.training.train import train_entry

    p = prepare(MRI_FIXTURES, tmp_path / "cache", None)
    (cfg,) = expand(
        {
            "defaults": {"epochs": 4, "batch_size": 8, "val_fraction": 0.25, "patience": 10, "learning_rate": 1e-9},
            "ann": [{"dense_layers": 0, "units": 8, "reduce_lr_patience": 1}],
        }
    )
    train_entry(cfg, p, tmp_path / "run", verbose=0, cache_dir=tmp_path / "cache")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    rates = history["learning_rate"]
    assert len(rates) == 4 and rates[0] == pytest.approx(1e-9)
    assert rates[-1] == pytest.approx(1e-9 / 9, rel=1e-3)  # divided twice: after epochs 2 and 3


def test_frozen_transfer_trains_its_head_on_cached_features(tmp_path: Path) -> None:
    import keras

    from trainer.data.dataset import prepare
    from trainer.training.grid import expand
    from trainer.training.train import frozen_features, head_model, train_entry

    p = prepare(MRI_FIXTURES, tmp_path / "cache")
    (cfg,) = expand(
        {
            "defaults": {"epochs": 2, "batch_size": 8, "val_fraction": 0.25},
            "transfer": [{"backbone": "mobilenetv2", "weights": "none", "cache_features": True}],
        }
    )
    result = train_entry(cfg, p, tmp_path / "runs" / cfg["name"], verbose=0, cache_dir=tmp_path / "cache")
    assert result["epochs_run"] >= 1
    assert len(list((tmp_path / "cache").glob("features-mobilenetv2-*.npz"))) == 1
    model = keras.models.load_model(tmp_path / "runs" / cfg["name"] / "model.keras")
    feats = frozen_features(model, cfg, p, tmp_path / "cache")  # from the cache now
    via_head = np.asarray(head_model(model).predict(feats[:4], verbose=0))
    via_model = np.asarray(model.predict(p.x[:4].astype(np.float32), verbose=0))
    np.testing.assert_allclose(via_head, via_model, atol=1e-5)
    # the saved full model carries the trained head: its validation loss is the best one training saw
    from trainer.training.train import train_val_indices

    _, va = train_val_indices(p, cfg["val_fraction"], cfg["seed"])
    probs = np.asarray(model.predict(p.x[va].astype(np.float32), verbose=0))
    val_loss = float(-np.log(np.clip(probs[np.arange(len(va)), p.y[va]], 1e-7, 1)).mean())
    history = json.loads((tmp_path / "runs" / cfg["name"] / "history.json").read_text())
    assert val_loss == pytest.approx(min(history["val_loss"]), abs=1e-3)


def test_init_seed_trains_other_weights_on_the_same_validation_split(tmp_path: Path) -> None:
    import keras

    from trainer.data.dataset import prepare
    from trainer.training.grid import expand
    from trainer.training.train import train_entry, train_val_indices

    p = prepare(MRI_FIXTURES, tmp_path / "cache")
    recipe = {"epochs": 2, "batch_size": 8, "val_fraction": 0.25, "patience": 5}
    a, b = expand(
        {"defaults": recipe, "ann": [{"dense_layers": 0, "units": 8}, {"dense_layers": 0, "units": 8, "init_seed": 7}]}
    )
    assert (a["name"], b["name"]) == ("ann-d0-u8", "ann-d0-u8-s7")
    _, va = train_val_indices(p, recipe["val_fraction"], a["seed"])
    weights = []
    for cfg in (a, b):
        train_entry(cfg, p, tmp_path / "runs" / cfg["name"], verbose=0)
        model = keras.models.load_model(tmp_path / "runs" / cfg["name"] / "model.keras")
        weights.append(model.get_weights())
        # both validated on the split the shared seed draws: the best val_loss seen is the saved model's loss on it
        val_loss = model.evaluate(p.x[va].astype(np.float32), p.y[va], verbose=0)[0]
        history = json.loads((tmp_path / "runs" / cfg["name"] / "history.json").read_text())
        assert val_loss == pytest.approx(min(history["val_loss"]), rel=1e-4)
    assert any(not np.allclose(x, y) for x, y in zip(*weights, strict=True))


def test_fine_tune_on_images_trains_block5_end_to_end_with_augmentation(tmp_path: Path) -> None:
    """`fine_tune_on = "images"`: the head trains on cached features, then block5 + head on augmented images
    (no block4_pool cache is made); a bad value is refused when the grid expands."""
    from trainer.data.dataset import prepare
    from trainer.training.grid import expand
    from trainer.training.train import train_entry

    p = prepare(MRI_FIXTURES, tmp_path / "cache")
    recipe = {"epochs": 1, "batch_size": 8, "val_fraction": 0.25, "fine_tune_epochs": 1, "patience": 1}
    entry = {"backbone": "vgg16", "weights": "none", "cache_features": True, "fine_tune_on": "images"}
    (cfg,) = expand({"defaults": recipe, "transfer": [entry]})
    assert cfg["name"] == "transfer-vgg16-d0-scratch-ftimg"
    result = train_entry(cfg, p, tmp_path / "runs" / cfg["name"], verbose=0, cache_dir=tmp_path / "cache")
    assert result["epochs_run"] == 2  # one head epoch, one fine-tuning epoch
    cached = sorted(f.name.split("-")[0] for f in (tmp_path / "cache").glob("*-vgg16-*.npz"))
    assert cached == ["features"]  # pooled features for the head; no cut cache: block5 saw images
    with pytest.raises(ValueError, match="fine_tune_on"):  # refused when the grid expands, before any training
        expand({"defaults": recipe, "transfer": [{**entry, "fine_tune_on": "pixels"}]})


def test_fine_tune_two_blocks_trains_block4_on_the_cached_block3_output(tmp_path: Path) -> None:
    """`fine_tune_blocks = 2`: block4 + block5 + head fine-tune on a cached block3_pool output (its own cache
    file, next to the pooled features), and the saved model's block4 differs from the starting weights."""
    from trainer.data.dataset import prepare
    from trainer.training.grid import expand
    from trainer.training.train import train_entry

    p = prepare(MRI_FIXTURES, tmp_path / "cache")
    recipe = {"epochs": 1, "batch_size": 8, "val_fraction": 0.25, "fine_tune_epochs": 1, "patience": 1}
    entry = {"backbone": "vgg16", "weights": "none", "cache_features": True, "fine_tune_blocks": 2}
    (cfg,) = expand({"defaults": recipe, "transfer": [entry]})
    assert cfg["name"] == "transfer-vgg16-d0-scratch-ft2"
    run_dir = tmp_path / "runs" / cfg["name"]
    result = train_entry(cfg, p, run_dir, verbose=0, cache_dir=tmp_path / "cache")
    assert result["epochs_run"] == 2  # one head epoch, one fine-tuning epoch
    cached = sorted(f.name.rsplit("-", 1)[0] for f in (tmp_path / "cache").glob("*-vgg16-*.npz"))
    assert cached == ["cut-block3_pool-vgg16", "features-vgg16"]
    with np.load(next((tmp_path / "cache").glob("cut-*.npz"))) as z:
        assert z["features"].shape == (2, len(p.y), 18, 18, 256)  # identity and mirror views, 150 px input
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(int(cfg["seed"]))  # the initial weights train_entry started from
    from trainer.models.builders import backbone_of, build_from_config

    start = backbone_of(build_from_config(cfg, (150, 150, 3), 4))
    saved = backbone_of(keras.saving.load_model(run_dir / "model.keras"))
    for layer, moved in (("block3_conv3", False), ("block4_conv1", True), ("block5_conv1", True)):
        same = np.allclose(saved.get_layer(layer).get_weights()[0], start.get_layer(layer).get_weights()[0])
        assert same is not moved, layer


def test_view_sampler_shows_each_image_once_clean_and_once_shifted_per_epoch() -> None:
    """ViewSampler: per epoch, every training image twice (one clean view, one shifted view) with its label,
    batches of the asked size, and other draws in the next epoch."""
    from trainer.training.train import ViewSampler

    n, index = 10, np.array([1, 3, 4, 6, 8, 9])
    y = np.arange(n) % 4
    # every stored value encodes (source, view, image): clean 0/1, shifted 10 + view
    clean = np.stack([np.full((n, 2, 2, 1), v, np.float16) * 100 + np.arange(n)[:, None, None, None] for v in (0, 1)])
    shifted = np.stack(
        [np.full((n, 2, 2, 1), 10 + v, np.float16) * 100 + np.arange(n)[:, None, None, None] for v in range(3)]
    )
    sampler = ViewSampler(clean, shifted, index, y, batch_size=4, seed=1)
    assert len(sampler) == 3  # 12 samples in batches of 4

    def epoch() -> list[tuple[int, int]]:
        seen = []
        for i in range(len(sampler)):
            x, labels = sampler[i]
            codes = x[:, 0, 0, 0].astype(int)
            assert list(labels) == list(y[codes % 100])
            seen += [(int(c) // 100, int(c) % 100) for c in codes]
        return seen

    first = epoch()
    for image in index:
        views = sorted(v for v, j in first if j == image)
        assert len(views) == 2 and views[0] in (0, 1) and views[1] in (10, 11, 12), (image, views)
    assert {j for _, j in first} == set(index.tolist())
    sampler.on_epoch_end()
    assert epoch() != first
    with pytest.raises(ValueError, match="do not match"):
        ViewSampler(clean, shifted[:, :, :1], index, y, 4, 0)


def test_shift_views_fine_tune_caches_shifted_views_beside_the_clean_ones(tmp_path: Path) -> None:
    """`shift_views = 2`: block5 fine-tunes on the cached clean views plus 2 shifted views of every image (their
    own cache file, named by the fixed shift seed, not the init seed)."""
    from trainer.data.dataset import prepare
    from trainer.training.grid import expand
    from trainer.training.train import train_entry

    p = prepare(MRI_FIXTURES, tmp_path / "cache")
    recipe = {"epochs": 1, "batch_size": 8, "val_fraction": 0.25, "fine_tune_epochs": 1, "patience": 1}
    entry = {"backbone": "vgg16", "weights": "none", "cache_features": True, "shift_views": 2}
    (cfg,) = expand({"defaults": recipe, "transfer": [entry]})
    assert cfg["name"] == "transfer-vgg16-d0-scratch-ft-sh2"
    result = train_entry(cfg, p, tmp_path / "runs" / cfg["name"], verbose=0, cache_dir=tmp_path / "cache")
    assert result["epochs_run"] == 2
    cached = {f.name.rsplit("-", 1)[0]: f for f in (tmp_path / "cache").glob("*-vgg16-*.npz")}
    assert sorted(cached) == ["cut-block4_pool-shift2-seed2020-vgg16", "cut-block4_pool-vgg16", "features-vgg16"]
    with np.load(cached["cut-block4_pool-shift2-seed2020-vgg16"]) as z, np.load(cached["cut-block4_pool-vgg16"]) as c:
        assert z["features"].shape == c["features"].shape == (2, len(p.y), 9, 9, 512)
        assert not np.array_equal(z["features"][0], c["features"][0])


def test_multiscale_head_trains_on_cached_clean_and_shifted_features(tmp_path: Path) -> None:
    """`multiscale = true, shift_views = 2`: the frozen backbone's three taps are pooled once per view (identity,
    mirror, 2 shifted) into cache files keyed by the taps; the head trains on them, and the saved full model
    computes from pixels what the head computes from the cache."""
    import keras

    from trainer.data.dataset import prepare
    from trainer.training.grid import expand
    from trainer.training.train import head_model, train_entry, train_val_indices, view_features

    p = prepare(MRI_FIXTURES, tmp_path / "cache")
    recipe = {"epochs": 2, "batch_size": 8, "val_fraction": 0.25, "patience": 2}
    entry = {"backbone": "vgg16", "weights": "none", "cache_features": True, "multiscale": True, "shift_views": 2}
    (cfg,) = expand({"defaults": recipe, "transfer": [entry]})
    assert cfg["name"] == "transfer-vgg16-d0-scratch-ms-sh2"
    run_dir = tmp_path / "runs" / cfg["name"]
    result = train_entry(cfg, p, run_dir, verbose=0, cache_dir=tmp_path / "cache")
    assert result["epochs_run"] >= 1
    cached = sorted(f.name.rsplit("-", 1)[0] for f in (tmp_path / "cache").glob("*-vgg16-*.npz"))
    assert cached == ["ms-shift2-seed2020-vgg16", "ms-views-vgg16"]
    model = keras.models.load_model(run_dir / "model.keras")
    clean, shifted = view_features(model, cfg, p, tmp_path / "cache")  # from the cache now
    assert clean.shape == (2, len(p.y), 256 + 512 + 512) and shifted.shape == (2, len(p.y), 1280)
    assert not np.array_equal(clean[0], clean[1]) and not np.array_equal(clean[0], shifted[0])
    via_head = np.asarray(head_model(model).predict(clean[0][:4].astype(np.float32), verbose=0))
    via_model = np.asarray(model.predict(p.x[:4].astype(np.float32), verbose=0))
    np.testing.assert_allclose(via_head, via_model, atol=2e-3)  # the cache holds float16
    _, va = train_val_indices(p, cfg["val_fraction"], cfg["seed"])
    probs = np.asarray(model.predict(p.x[va].astype(np.float32), verbose=0))
    val_loss = float(-np.log(np.clip(probs[np.arange(len(va)), p.y[va]], 1e-7, 1)).mean())
    history = json.loads((run_dir / "history.json").read_text())
    assert val_loss == pytest.approx(min(history["val_loss"]), abs=2e-2)


def _tie_broken_data(tmp_path: Path):  # type: ignore[no-untyped-def]
    """The fixtures plus a root with a files.csv split and sequences, and a root of partially labelled tumours."""
    import shutil

    from trainer.data.dataset import prepare

    tcga, br35h = tmp_path / "tcga", tmp_path / "br35h"
    rows = ["path,class,sha256,source,sequence,patient,slice,split"]
    for cls, src in (("glioma", "glioma_tumor"), ("no_tumor", "no_tumor")):
        (tcga / cls).mkdir(parents=True)
        for i, img in enumerate(sorted((MRI_FIXTURES / "Training" / src).glob("*.jpg"))):
            shutil.copy(img, tcga / cls / f"T1__{i}.jpg")
            rows.append(f"{cls}/T1__{i}.jpg,{cls},x,TCGA-LGG,T1,p{i},1,{'val' if i == 0 else 'train'}")
    (tcga / "files.csv").write_text("\n".join(rows) + "\n")
    (br35h / "tumor").mkdir(parents=True)
    rows = ["path,class,sha256,source,sequence,patient,slice,split"]
    for i, img in enumerate(sorted((MRI_FIXTURES / "Testing" / "pituitary_tumor").glob("*.jpg"))):
        shutil.copy(img, br35h / "tumor" / f"y{i}.jpg")
        rows.append(f"tumor/y{i}.jpg,tumor,x,br35h-yes,,,,{'val' if i == 0 else 'train'}")
    (br35h / "files.csv").write_text("\n".join(rows) + "\n")
    return prepare([MRI_FIXTURES, tcga, br35h], tmp_path / "cache")


@pytest.mark.parametrize("how", ["cache", "all"])
def test_partial_labels_train_and_the_kept_checkpoint_is_chosen_on_the_check(tmp_path: Path, how: str) -> None:
    """A partially labelled root trains with the summed-tumour loss; every fine-tuning epoch is scored on validation
    and the tie-broken check, its weights saved, and the kept checkpoint is what model.keras holds (on the cache:
    scored by the full model on images; whole network: on crops randomised anew each epoch)."""
    import keras

    import trainer.models.builders  # noqa: F401  (registers the loss and layers for loading)
    from trainer.data.dataset import ANY_TUMOUR
    from trainer.training.grid import expand
    from trainer.training.online import score
    from trainer.training.train import train_entry, train_val_indices

    p = _tie_broken_data(tmp_path)
    recipe = {"epochs": 1, "batch_size": 8, "val_fraction": 0.25, "fine_tune_epochs": 3, "patience": 1}
    entry: dict = {"backbone": "efficientnet_lite0", "weights": "none", "cache_features": True, "checkpoint": "check"}
    if how == "all":
        entry |= {"fine_tune_on": "images", "fine_tune_all": True, "appearance_p": 0.8}
    else:
        entry |= {"shift_views": 1}
    (cfg,) = expand({"defaults": recipe, "transfer": [entry]})
    run = tmp_path / "runs" / cfg["name"]
    result = train_entry(cfg, p, run, verbose=0, cache_dir=tmp_path / "cache")
    tr, va = train_val_indices(p, 0.25, 42, "official")
    assert (p.y[tr] == ANY_TUMOUR).any() and not p.held[tr].any()
    scores = json.loads((run / "checkpoints" / "scores.json").read_text())
    assert set(scores["scores"]) == {"epoch-01", "epoch-02", "epoch-03", "mean-2"}  # mean of epochs 2-3
    assert result["checkpoint"] == scores["chosen"] and result["checkpoint_scores"]["check"]["n"] == int(p.held.sum())
    model = keras.models.load_model(run / "model.keras")
    assert score(model, p, va) == scores["scores"][scores["chosen"]]  # the saved model is the kept checkpoint
