"""Keras → ONNX with a parity check on real images, and the extra outputs (class map, OOD score) that heatmaps
and the not-an-MRI check need."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
import tf2onnx

from service.image.preprocessing import to_model_input
from trainer.data.dataset import CLASSES, Prepared
from trainer.export.extras import CLASS_MAP, OOD_SCORE, fit_mahalanobis, with_extras, with_own_extras
from trainer.models.builders import INPUT_NAME, OUTPUT_NAME
from trainer.models.features import has_own_pooling_head, pooled_feature_model
from trainer.training.recipe import Recipe
from trainer.training.train import train_val_indices

OPSET = 17


PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    pass


def to_onnx(model: keras.Model, path: Path, opset: int = OPSET) -> list[str]:
    """Keras model → ONNX with a dynamic batch dimension, input 'image', output 'probabilities' (plus
    'class_map' and 'ood_score' for models wrapped by trainer.export.extras). Returns the output names."""
    shape = (None, *model.inputs[0].shape[1:])
    spec = (tf.TensorSpec(shape, tf.float32, name=INPUT_NAME),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    outputs = [o.name for o in proto.graph.output]
    if OUTPUT_NAME not in outputs or not set(outputs) <= {OUTPUT_NAME, CLASS_MAP, OOD_SCORE}:
        raise ValueError(f"{path.name}: expected output {OUTPUT_NAME!r} (+ {CLASS_MAP}, {OOD_SCORE}), got {outputs}")
    path.write_bytes(proto.SerializeToString())
    return outputs


def parity(model: keras.Model, onnx_path: Path, images: np.ndarray) -> float:
    """Max abs difference between Keras and onnxruntime outputs (every output, relative to its scale)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = to_model_input(images)
    keras_out = model.predict(x, verbose=0)
    if not isinstance(keras_out, dict):
        keras_out = {OUTPUT_NAME: keras_out}
    names = [o.name for o in sess.get_outputs()]
    diffs = []
    for name, onnx_out in zip(names, sess.run(names, {INPUT_NAME: x}), strict=True):
        ref = np.asarray(keras_out[name])
        scale = max(1.0, float(np.abs(ref).max()))  # ood_score is a distance, not a probability
        diffs.append(float(np.abs(ref - onnx_out).max()) / scale)
    return max(diffs)


def add_extras(model: keras.Model, cfg: dict[str, Any], p: Prepared, max_images: int = 800) -> keras.Model:
    """Wrap a global-pooling model with class_map and ood_score outputs; the OOD statistics come from
    (up to max_images of) the images it was trained on."""
    tr, _ = train_val_indices(p, float(cfg["val_fraction"]), int(cfg["seed"]), Recipe.of(cfg).protocol)
    tr = tr[p.y[tr] < len(CLASSES)]  # class means need a class: partial labels (a tumour of unknown type) are left out
    idx = np.random.default_rng(0).permutation(tr)[:max_images]
    feats = np.asarray(pooled_feature_model(model).predict(to_model_input(p.x[idx]), batch_size=32, verbose=0))
    means, chol = fit_mahalanobis(feats, p.y[idx], len(CLASSES))
    print(f"[export] {cfg['name']}: class_map + ood_score outputs (Mahalanobis on {len(idx)} training images)")
    if has_own_pooling_head(model):
        return with_own_extras(model, means, chol)
    return with_extras(model, cfg["backbone"], means, chol)
