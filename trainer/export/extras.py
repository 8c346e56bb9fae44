"""Extra ONNX outputs for models with a global-pooling head (the transfer models and the residual CNN):

- `class_map` (N, h, w, classes): the model's own head applied at every location of the last
  convolutional feature map — a class activation map that needs no gradients and no TensorFlow in the
  service (for a linear head it is exactly CAM; with a hidden layer it is the head's verdict per location).
- `ood_score` (N,): Mahalanobis distance of the pooled features to the nearest class mean of the training
  images (shared, shrunk covariance), for flagging uploads unlike anything the model was trained on.

Both are built from the trained model's layers with fixed constants, so the exported graph is
self-contained and `probabilities` is bit-for-bit the original output.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from trainer.models.builders import BACKBONES, INPUT_NAME, OUTPUT_NAME, backbone_of, is_multiscale

CLASS_MAP = "class_map"
OOD_SCORE = "ood_score"
SHRINKAGE = 0.1


@keras.saving.register_keras_serializable(package="trainer")
class FrozenAffine(keras.layers.Layer):
    """y = x * scale + shift on the last axis: an inference-mode BatchNormalization usable on any rank."""

    def __init__(self, scale: Any, shift: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = np.asarray(scale, np.float32)
        self.shift = np.asarray(shift, np.float32)

    def call(self, x: Any) -> Any:
        return x * keras.ops.convert_to_tensor(self.scale) + keras.ops.convert_to_tensor(self.shift)


@keras.saving.register_keras_serializable(package="trainer")
class Mahalanobis(keras.layers.Layer):
    """min over classes of ‖(x − μ_c) L‖, where L Lᵀ is the shared precision matrix."""

    def __init__(self, means: Any, chol: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.means_l = (np.asarray(means, np.float64) @ np.asarray(chol, np.float64)).astype(np.float32)
        self.chol = np.asarray(chol, np.float32)

    def call(self, x: Any) -> Any:
        z = keras.ops.matmul(x, keras.ops.convert_to_tensor(self.chol))  # (N, d)
        diff = keras.ops.expand_dims(z, 1) - keras.ops.convert_to_tensor(self.means_l)[None]  # (N, C, d)
        return keras.ops.sqrt(keras.ops.min(keras.ops.sum(diff * diff, axis=-1), axis=-1))


def _as_affine(bn: keras.layers.BatchNormalization) -> FrozenAffine:
    gamma, beta, mean, var = (np.asarray(w) for w in bn.get_weights())
    scale = gamma / np.sqrt(var + bn.epsilon)
    return FrozenAffine(scale, beta - mean * scale, name=f"{bn.name}_frozen")


def _head_layers(model: keras.Model) -> list[Any]:
    gap = model.get_layer("gap")
    layers = model.layers[model.layers.index(gap) + 1 :]
    return [_as_affine(la) if isinstance(la, keras.layers.BatchNormalization) else la for la in layers]


def fit_mahalanobis(features: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means and the Cholesky factor of the shrunk shared precision matrix."""
    f = features.astype(np.float64)
    means = np.stack([f[y == c].mean(axis=0) if (y == c).any() else f.mean(axis=0) for c in range(n_classes)])
    centred = f - means[y]
    cov = centred.T @ centred / max(1, len(f) - n_classes)
    d = cov.shape[0]
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / d * np.eye(d)
    precision = np.linalg.inv(cov)
    return means, np.linalg.cholesky(precision)


def with_extras(model: keras.Model, backbone: str, means: np.ndarray, chol: np.ndarray) -> keras.Model:
    """The model with outputs {probabilities, class_map, ood_score} (see the module docstring)."""
    base = backbone_of(model)
    # a multi-scale backbone's output is already the map on a grid (the concatenated taps)
    cam_layer = None if is_multiscale(base) else BACKBONES[backbone].cam_layer
    cam_out = base.get_layer(cam_layer).output if cam_layer else base.output
    two = keras.Model(base.inputs, [cam_out, base.output], name=f"{base.name}_cam")
    inputs = keras.Input(shape=model.inputs[0].shape[1:], name=INPUT_NAME)
    x = inputs
    for layer in model.layers[1 : model.layers.index(base)]:  # preprocessing
        x = layer(x)
    fmap, last = two(x)
    pooled = model.get_layer("gap")(last)
    probs = pooled
    for layer in model.layers[model.layers.index(model.get_layer("gap")) + 1 :]:
        probs = layer(probs)
    cmap = fmap
    for layer in _head_layers(model):
        cmap = layer(cmap)
    ood = Mahalanobis(means, chol, name=OOD_SCORE)(pooled)
    outputs = {
        OUTPUT_NAME: probs,  # produced by the layer named "probabilities", so the ONNX output keeps that name
        CLASS_MAP: keras.layers.Identity(name=CLASS_MAP)(cmap),
        OOD_SCORE: ood,
    }
    return keras.Model(inputs, outputs, name=f"{model.name}_extras")


def with_own_extras(model: keras.Model, means: np.ndarray, chol: np.ndarray) -> keras.Model:
    """with_extras for a model without a nested backbone: the class map is the head applied to the feature map
    that "gap" pools, the OOD score the Mahalanobis distance of the pooled features."""
    gap = model.get_layer("gap")
    cmap = gap.input
    for layer in _head_layers(model):
        cmap = layer(cmap)
    outputs = {
        OUTPUT_NAME: model.outputs[0],
        CLASS_MAP: keras.layers.Identity(name=CLASS_MAP)(cmap),
        OOD_SCORE: Mahalanobis(means, chol, name=OOD_SCORE)(gap.output),
    }
    return keras.Model(model.inputs, outputs, name=f"{model.name}_extras")
