"""Compute per upload, in multiply-accumulates (MACs) of the convolutions and matrix products (the usual count:
BatchNorm, activations, pooling and additions are left out).

`onnx_macs` counts what an exported file runs for one image, after shape inference, so a merged ensemble whose
voters share a frozen backbone counts it once, as onnxruntime computes it. `keras_macs` counts a Keras model the
same way, for choosing an ensemble before anything is exported.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np


def _dims(shape: Any) -> list[int]:
    return [int(d) if d is not None else 1 for d in shape]


def keras_macs(model: Any) -> int:
    """MACs of one forward pass of a Keras model for one image (nested models are counted inside)."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += keras_macs(layer)
            continue
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense"):
            continue
        out = _dims(layer.output.shape)[1:]
        cin = _dims(layer.input.shape)[-1]
        positions = int(np.prod(out[:-1])) if len(out) > 1 else 1
        if kind == "Dense":
            total += positions * cin * out[-1]
        elif kind == "Conv2D":
            kh, kw = layer.kernel_size
            total += positions * kh * kw * (cin // layer.groups) * out[-1]
        elif kind == "DepthwiseConv2D":
            kh, kw = layer.kernel_size
            total += positions * kh * kw * out[-1]
        else:  # separable: depthwise at the input's channels, then a 1×1 pointwise
            kh, kw = layer.kernel_size
            total += positions * (kh * kw * cin * layer.depth_multiplier + cin * layer.depth_multiplier * out[-1])
    return total


def onnx_macs(path: Path) -> int:
    """MACs an ONNX file computes for one image (batch dimension 1): Conv, ConvTranspose, Gemm and MatMul nodes.

    The shapes are read off one onnxruntime run on a zero image (shape inference does not resolve every reshape
    of the class-map outputs), so the count is of the graph as it runs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    g = model.graph
    weights = {init.name: list(init.dims) for init in g.initializer}
    counted = [n for n in g.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    wanted = {name for n in counted for name in (n.input[0], n.output[0])} - set(weights)
    known = {o.name for o in g.output}
    g.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(wanted - known))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in session.get_inputs():
        dims = [1 if not isinstance(d, int) else d for d in i.shape]
        feeds[i.name] = np.zeros(dims, dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    shapes = {**weights, **{n: list(v.shape) for n, v in zip(names, session.run(names, feeds), strict=True)}}
    total = 0
    for node in counted:
        x, out = shapes[node.input[0]], shapes[node.output[0]]
        if node.op_type == "Conv":
            total += int(np.prod(out[2:])) * int(np.prod(shapes[node.input[1]]))  # weights (out, in/groups, kh, kw)
        elif node.op_type == "ConvTranspose":
            total += int(np.prod(x[2:])) * int(np.prod(shapes[node.input[1]]))
        else:
            total += int(np.prod(out)) * x[-1]
    return total


@functools.cache
def _config_macs(cfg_json: str, input_shape: tuple[int, int, int], num_classes: int) -> tuple[int, int]:
    """(MACs of the model a grid entry builds, MACs of its frozen backbone: 0 when fine-tuned or not transfer)."""
    from trainer.models.builders import backbone_of, build_from_config

    cfg = json.loads(cfg_json)
    transfer = cfg["family"] == "transfer"
    model = build_from_config({**cfg, "weights": "none"} if transfer else cfg, input_shape, num_classes)
    frozen = keras_macs(backbone_of(model)) if transfer and not cfg.get("fine_tune_epochs") else 0
    return keras_macs(model), frozen


def ensemble_macs(rows: list[dict[str, Any]], input_shape: tuple[int, int, int], num_classes: int) -> int:
    """Estimated MACs per upload of an ensemble of leaderboard rows: every model's, with a frozen backbone that
    several voters share (same backbone, weights and input size) counted once, as the merged file runs it."""
    seen: set[tuple[str, str, str]] = set()
    total = 0
    for row in rows:
        cfg = row["config"]
        macs, frozen = _config_macs(json.dumps(cfg, sort_keys=True), tuple(input_shape), num_classes)
        key = (str(cfg.get("backbone")), str(cfg.get("weights")), str(cfg.get("backbone_input")))
        if frozen and key in seen:
            macs -= frozen
        if frozen:
            seen.add(key)
        total += macs
    return total
