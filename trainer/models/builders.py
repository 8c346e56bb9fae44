"""Functional-API model builders. Every model takes raw RGB float32 pixels 0–255 (NHWC) and does its
own normalisation, so the exported ONNX needs nothing but the shared crop/resize."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import keras
from keras import layers

from trainer.models import losses  # noqa: F401  (registers the partial-label loss: models compiled with it load)
from trainer.models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

# ImageNet "caffe" mode means (BGR), as in keras.applications.{vgg16,vgg19,resnet50}.preprocess_input
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="trainer")
class CaffePreprocess(layers.Layer):
    """RGB 0–255 → BGR minus the ImageNet mean: `preprocess_input` of VGG16/VGG19/ResNet50 as a layer."""

    def call(self, inputs: Any) -> Any:
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=inputs.dtype)


@keras.saving.register_keras_serializable(package="trainer")
class ImageNetNormalise(layers.Layer):
    """RGB 0–255 → (x / 255 − mean) / std with ImageNet statistics: the input of the EfficientNet-Lite checkpoints
    (PyTorch's "torch" mode), as a layer."""

    def call(self, inputs: Any) -> Any:
        mean = keras.ops.convert_to_tensor([255.0 * m for m in IMAGENET_MEAN], dtype=inputs.dtype)
        scale = keras.ops.convert_to_tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], dtype=inputs.dtype)
        return (inputs - mean) * scale


@dataclass(frozen=True)
class Backbone:
    factory: Any
    preprocess: str  # "caffe" (BGR minus mean), "tf" (scale to -1..1) or "torch" (ImageNet mean/std)
    # layer-name prefix(es) of the top block unfrozen in phase 2
    fine_tune_prefix: str | tuple[str, ...] | None
    # output of the last frozen layer when fine-tuning: its output is cached and only the layers above it
    # train on the cached tensors (None: fine-tune end to end on images)
    fine_tune_cut: str | None = None
    # the feature map for class activation maps (finer than the final pooled map); None: the backbone output
    cam_layer: str | None = None
    # sequential backbones whose layers are named block<i>_… (VGG): how many blocks, so that fine-tuning can
    # reach below the top block (`fine_tune_blocks`); None: only the top block can be fine-tuned
    blocks: int | None = None
    # the feature maps a multi-scale head pools, finest first; the last one sets the grid the others are
    # average-pooled to (None: the backbone offers no multi-scale head)
    multiscale_taps: tuple[str, ...] | None = None
    # stage-named backbones (EfficientNet-Lite, layers block<stage><letter>…): the last frozen layer when the top
    # 1, 2, 3… blocks are fine-tuned, one stage deeper each (None: only `fine_tune_cut`)
    stage_cuts: tuple[str, ...] | None = None


LITE_STAGES = 7


def _lite_backbone(variant: str, stage3_5_ends: tuple[str, str, str], stage6_end: str) -> Backbone:
    """EfficientNet-Lite: fine-tuning trains stages 6 and 7 and the head conv (stride 32) on the cached output of
    stage 5 (fine_tune_blocks 1), or also stage 5 (2, on stage 4's stride-16 output) or stages 4–5 (3, on stage
    3's stride-8 output); the multi-scale taps are the ends of stages 4–6 and the head, the stride-16 ones
    average-pooled onto the stride-32 grid."""
    stage3_end, stage4_end, stage5_end = stage3_5_ends
    taps = (stage4_end, stage5_end, stage6_end, "top_relu")
    factory = partial(EfficientNetLite, variant)
    cuts = (stage5_end, stage4_end, stage3_end)
    return Backbone(factory, "torch", ("block6", "block7", "top_"), stage5_end, multiscale_taps=taps, stage_cuts=cuts)


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(
        keras.applications.VGG16,
        "caffe",
        "block5_",
        "block4_pool",
        "block5_conv3",
        blocks=5,
        multiscale_taps=("block3_pool", "block4_pool", "block5_conv3"),
    ),
    "vgg19": Backbone(
        keras.applications.VGG19,
        "caffe",
        "block5_",
        "block4_pool",
        "block5_conv4",
        blocks=5,
        multiscale_taps=("block3_pool", "block4_pool", "block5_conv4"),
    ),
    "resnet50": Backbone(keras.applications.ResNet50, "caffe", "conv5_"),
    "mobilenetv2": Backbone(keras.applications.MobileNetV2, "tf", "block_16_"),
    "inceptionv3": Backbone(keras.applications.InceptionV3, "tf", "mixed10"),
    "xception": Backbone(keras.applications.Xception, "tf", "block14_"),
    "efficientnet_lite0": _lite_backbone(
        "efficientnet_lite0", ("block3b_add", "block4c_add", "block5c_add"), "block6d_add"
    ),
    "efficientnet_lite2": _lite_backbone(
        "efficientnet_lite2", ("block3c_add", "block4d_add", "block5d_add"), "block6e_add"
    ),
}


def _checked_spec(backbone: str, blocks: int) -> Backbone:
    """The backbone's spec, once `blocks` top blocks are known to be fine-tunable for it."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    spec = BACKBONES[backbone]
    limit = (spec.blocks - 1) if spec.blocks else len(spec.stage_cuts) if spec.stage_cuts else 1
    if not 1 <= blocks <= limit:
        raise ValueError(f"fine_tune_blocks for {backbone} must be between 1 and {limit}, got {blocks}")
    return spec


def fine_tune_prefixes(backbone: str, blocks: int = 1) -> tuple[str, ...]:
    """Layer-name prefixes of the top `blocks` blocks, the ones phase 2 unfreezes."""
    spec = _checked_spec(backbone, blocks)
    if blocks > 1 and spec.stage_cuts is not None:  # stages 7 - blocks … 7 and the head
        return (*(f"block{stage}" for stage in range(LITE_STAGES - blocks, LITE_STAGES + 1)), "top_")
    if blocks == 1 or spec.blocks is None:  # _checked_spec allows blocks > 1 only for block- or stage-named ones
        if isinstance(spec.fine_tune_prefix, tuple):
            return spec.fine_tune_prefix
        return (spec.fine_tune_prefix,) if spec.fine_tune_prefix else ()
    return tuple(f"block{i}_" for i in range(spec.blocks - blocks + 1, spec.blocks + 1))


def fine_tune_cut_of(backbone: str, blocks: int = 1) -> str | None:
    """The last frozen layer when the top `blocks` blocks are fine-tuned (None: no cut, end to end)."""
    spec = _checked_spec(backbone, blocks)
    if spec.stage_cuts is not None:
        return spec.stage_cuts[blocks - 1]
    if blocks == 1 or spec.fine_tune_cut is None or spec.blocks is None:
        return spec.fine_tune_cut
    return f"block{spec.blocks - blocks}_pool"


def _input(input_shape: tuple[int, int, int]) -> keras.KerasTensor:
    return keras.Input(shape=input_shape, name=INPUT_NAME, dtype="float32")


def _head(x: Any, num_classes: int, dense_layers: int, units: int, dropout: float) -> Any:
    for i in range(dense_layers):
        x = layers.Dense(units, activation="relu", name=f"dense_{i + 1}")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name=OUTPUT_NAME)(x)


def _check(num_classes: int, **counts: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be ≥ 2, got {num_classes}")
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be ≥ 0, got {value}")


def build_ann(
    input_shape: tuple[int, int, int],
    num_classes: int,
    dense_layers: int = 1,
    units: int = 64,
    dropout: float = 0.25,
) -> keras.Model:
    """Flatten → dense_layers × Dense(units, relu) → Dropout → Dense(num_classes, softmax)."""
    _check(num_classes, dense_layers=dense_layers, units=units)
    inputs = _input(input_shape)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Flatten(name="flatten")(x)
    outputs = _head(x, num_classes, dense_layers, units, dropout)
    return keras.Model(inputs, outputs, name=f"ann_d{dense_layers}_u{units}")


def build_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    conv_layers: int = 2,
    filters: int = 64,
    dense_layers: int = 1,
    units: int | None = None,
    dropout: float = 0.25,
) -> keras.Model:
    """conv_layers × [Conv2D(filters, 3×3, relu) + MaxPool] → Flatten → dense_layers × Dense → softmax.

    As in the original grid, the dense width defaults to the conv width ("layer size").
    """
    units = filters if units is None else units
    _check(num_classes, conv_layers=conv_layers, filters=filters, dense_layers=dense_layers)
    if conv_layers < 1:
        raise ValueError("a CNN needs at least one conv layer")
    inputs = _input(input_shape)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i in range(conv_layers):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv_{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool_{i + 1}")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = _head(x, num_classes, dense_layers, units, dropout)
    return keras.Model(inputs, outputs, name=f"cnn_c{conv_layers}_f{filters}_d{dense_layers}")


def _residual_block(x: Any, width: int, stride: int, name: str) -> Any:
    """Two 3×3 Conv–BatchNorm layers with a shortcut (1×1 projection where the shape changes), ReLU after the sum."""
    shortcut = x
    y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or shortcut.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def build_resnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    stages: int = 4,
    width: int = 32,
    dropout: float = 0.3,
) -> keras.Model:
    """A small residual CNN trained from scratch (not in the 2020 grid): a stride-2 3×3 stem with 3×3 max-pooling
    (150 → 38 px), then `stages` residual blocks of width·2^i channels, each after the first halving the grid,
    global average pooling → Dropout → Dense(num_classes, softmax). BatchNorm throughout."""
    _check(num_classes, stages=stages, width=width)
    if stages < 1 or width < 1:
        raise ValueError(f"a residual CNN needs stages ≥ 1 and width ≥ 1, got stages={stages}, width={width}")
    inputs = _input(input_shape)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for i in range(stages):
        x = _residual_block(x, width * 2**i, 1 if i == 0 else 2, f"stage{i + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name=f"resnet_st{stages}_w{width}")


def describe_weights(weights: str) -> str:
    """A plain statement of where a backbone's weights came from, for the manifest and README."""
    if weights == "imagenet":
        return "imagenet (keras.applications download)"
    if weights == "none":
        return "random initialisation (no pretrained weights)"
    path = Path(weights)
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    origin = meta.get("origin", "")
    if meta.get("member_sha256"):  # written by `trainer weights`: the exact file the weights were read from
        origin += f" (read from {meta['member']}, sha256 {meta['member_sha256']})"
    return f"local file {path.name}" + (f": {origin}" if origin else "")


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str = "imagenet") -> Any:
    """A headless keras.applications backbone; weights: 'imagenet', 'none' or a local .weights.h5 file."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    factory = BACKBONES[name].factory
    if weights == "imagenet":  # a download from the Keras hub (EfficientNet-Lite has none: a clear error)
        return factory(include_top=False, weights="imagenet", input_shape=input_shape)
    base = factory(include_top=False, weights=None, input_shape=input_shape)
    if weights != "none":
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: {path}")
        base.load_weights(str(path))
    return base


MULTISCALE_SUFFIX = "_multiscale"


def is_multiscale(base: keras.Model) -> bool:
    """Whether a transfer model's backbone is the multi-scale one of `multiscale_backbone`."""
    return str(base.name).endswith(MULTISCALE_SUFFIX)


def multiscale_backbone(base: keras.Model, backbone: str) -> keras.Model:
    """The backbone with one output: its `multiscale_taps` feature maps, each average-pooled to the grid of the
    last (coarsest) one and concatenated along channels. Pooled globally, that is the concatenation of every
    tap's global average (the pooling windows tile the map); the map itself gives class activation maps.

    Why: the edge-detection weights' top block alone is a weak descriptor of MRI slices; the middle blocks
    carry more (measured: a linear probe on frozen HED-VGG16 features reached validation macro-F1
    0.82 on block5_conv3, 0.86 on block4_pool, 0.92 on the three taps together).
    """
    taps = BACKBONES[backbone].multiscale_taps if backbone in BACKBONES else None
    if not taps:
        raise ValueError(
            f"backbone {backbone!r} has no multi-scale head; choose from "
            f"{sorted(k for k, v in BACKBONES.items() if v.multiscale_taps)}"
        )
    maps = [base.get_layer(name).output for name in taps]
    grid = tuple(maps[-1].shape[1:3])
    pooled = []
    for name, fmap in zip(taps, maps, strict=True):
        size = tuple(fmap.shape[1:3])
        factor = size[0] // grid[0]
        if factor < 1 or size[1] // grid[1] != factor or (size[0] // factor, size[1] // factor) != grid:
            raise ValueError(f"{name} ({size}) does not pool to the grid of {taps[-1]} ({grid})")
        pooled.append(layers.AveragePooling2D(factor, name=f"{name}_to_grid")(fmap) if factor > 1 else fmap)
    merged = layers.Concatenate(name="multiscale_concat")(pooled)
    return keras.Model(base.inputs, merged, name=f"{base.name}{MULTISCALE_SUFFIX}")


def build_transfer(
    input_shape: tuple[int, int, int],
    num_classes: int,
    backbone: str = "vgg16",
    weights: str = "imagenet",
    dense_layers: int = 0,
    units: int = 128,
    dropout: float = 0.3,
    multiscale: bool = False,
    backbone_input: int | None = None,
) -> keras.Model:
    """Frozen backbone (its own preprocessing inside) → GlobalAveragePooling → BatchNorm → new softmax head.

    Args:
        multiscale: pool the backbone's `multiscale_taps` (`multiscale_backbone`) instead of its last output.
        backbone_input: resize (bilinear) to this square size inside the model before the backbone, so that a
            backbone sees the resolution it was trained at while the model still takes `input_shape`.
    """
    _check(num_classes, dense_layers=dense_layers, units=units)
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    inner_shape = (backbone_input, backbone_input, input_shape[2]) if backbone_input else input_shape
    base = build_backbone(backbone, inner_shape, weights)
    if multiscale:
        base = multiscale_backbone(base, backbone)
    base.trainable = False
    inputs = _input(input_shape)
    x = inputs
    if backbone_input:
        x = layers.Resizing(backbone_input, backbone_input, interpolation="bilinear", name="backbone_resize")(x)
    preprocess = BACKBONES[backbone].preprocess
    if preprocess == "caffe":
        x = CaffePreprocess(name="caffe_preprocess")(x)
    elif preprocess == "torch":
        x = ImageNetNormalise(name="imagenet_normalise")(x)
    else:
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="tf_preprocess")(x)
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    # Pooled features of a frozen backbone span orders of magnitude; standardising them lets the head fit
    # (measured on HED-VGG16 features: validation accuracy 0.74 → 0.77 for a linear head).
    x = layers.BatchNormalization(name="feature_norm")(x)
    outputs = _head(x, num_classes, dense_layers, units, dropout)
    return keras.Model(inputs, outputs, name=f"{backbone}_transfer")


def unfreeze_top(model: keras.Model, backbone: str, blocks: int | None = 1) -> int:
    """Phase 2: make the backbone's top `blocks` blocks trainable, or every layer with None (BatchNorm stays
    frozen either way). Returns #layers."""
    prefixes = fine_tune_prefixes(backbone, blocks) if blocks is not None else ("",)
    base = backbone_of(model)
    base.trainable = True
    count = 0
    for layer in base.layers:
        on = any(layer.name.startswith(prefix) for prefix in prefixes)
        on = on and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = on
        count += int(on)
    return count


def backbone_of(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def split_at_cut(model: keras.Model, backbone: str, blocks: int = 1) -> tuple[keras.Model, keras.Model]:
    """(bottom, top) of a transfer model below its top `blocks` blocks (`fine_tune_cut_of`), sharing weights
    with `model`.

    bottom: RGB pixels 0–255 → cut tensor (preprocessing + frozen layers); top: cut tensor →
    probabilities (the backbone's top block + pooling + head). Training `top` trains the layer objects
    `model` holds, so `model` is the fine-tuned full model afterwards.
    """
    cut = fine_tune_cut_of(backbone, blocks)
    if cut is None:
        raise ValueError(f"backbone {backbone!r} has no fine_tune_cut; fine-tune it end to end instead")
    base = backbone_of(model)
    base_bottom = keras.Model(base.inputs, base.get_layer(cut).output)
    pixels = keras.Input(shape=model.inputs[0].shape[1:], name=INPUT_NAME)
    x = pixels
    for layer in model.layers[1 : model.layers.index(base)]:  # the preprocessing layer(s)
        x = layer(x)
    bottom = keras.Model(pixels, base_bottom(x), name=f"{backbone}_bottom")
    # the backbone's graph from the cut on (residual adds included), sharing its layers
    base_top = keras.Model(base.get_layer(cut).output, base.output, name=f"{backbone}_above_cut")
    inputs = keras.Input(shape=base.get_layer(cut).output.shape[1:], name="cut_features")
    x = base_top(inputs, training=False)  # BatchNorm in inference mode, as in the full model
    for layer in model.layers[model.layers.index(base) + 1 :]:
        x = layer(x)
    return bottom, keras.Model(inputs, x, name=f"{backbone}_top")


def build_from_config(cfg: dict[str, Any], input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    family = cfg["family"]
    if family == "ann":
        return build_ann(input_shape, num_classes, cfg["dense_layers"], cfg["units"], cfg.get("dropout", 0.25))
    if family == "cnn":
        return build_cnn(
            input_shape,
            num_classes,
            cfg["conv_layers"],
            cfg["filters"],
            cfg["dense_layers"],
            cfg.get("units"),
            cfg.get("dropout", 0.25),
        )
    if family == "transfer":
        return build_transfer(
            input_shape,
            num_classes,
            cfg["backbone"],
            cfg.get("weights", "imagenet"),
            cfg.get("dense_layers", 0),
            cfg.get("units", 128),
            cfg.get("dropout", 0.3),
            bool(cfg.get("multiscale", False)),
            cfg.get("backbone_input"),
        )
    if family == "resnet":
        return build_resnet(input_shape, num_classes, cfg["stages"], cfg["width"], cfg.get("dropout", 0.3))
    raise ValueError(f"unknown model family {family!r} (ann, cnn, resnet, transfer)")


def weights_origin(cfg: dict[str, Any]) -> str:
    if cfg["family"] == "transfer":
        return describe_weights(cfg.get("weights", "imagenet"))
    return "random initialisation, trained from scratch on this dataset"
