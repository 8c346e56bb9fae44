"""Partial labels: an image labelled "a tumour, type not given" (trainer.data.dataset.ANY_TUMOUR) teaches the
model that it is a tumour without teaching which one. The loss is the cross-entropy of the summed probability of
the classes its label admits (dataset.label_sets): for a full label that is the usual sparse categorical
cross-entropy; for the partial one, -log(1 - p(no tumour)). Registered for saving, so that a model compiled with it
loads with `import trainer.models.builders`."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from trainer.data.dataset import CLASSES, label_sets

EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="mri")
class PartialLabelLoss(keras.losses.Loss):
    """Sparse labels over the classes plus one partial label (index len(classes)): −log Σ p(admitted classes)."""

    def __init__(self, classes: list[str] | None = None, name: str = "partial_label_crossentropy", **kw: Any) -> None:
        super().__init__(name=name, **kw)
        self.classes = list(classes or CLASSES)
        self.admits = label_sets(self.classes).astype(np.float32)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        mask = keras.ops.take(keras.ops.convert_to_tensor(self.admits), y, axis=0)
        p = keras.ops.sum(y_pred * keras.ops.cast(mask, y_pred.dtype), axis=-1)
        return -keras.ops.log(keras.ops.clip(p, EPSILON, 1.0))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes}


@keras.saving.register_keras_serializable(package="mri")
def partial_label_accuracy(y_true: Any, y_pred: Any) -> Any:
    """Share of answers (argmax) that the label admits: any tumour class is right for the partial label."""
    admits = keras.ops.convert_to_tensor(label_sets(CLASSES).astype(np.float32))
    y = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
    mask = keras.ops.take(admits, y, axis=0)
    pred = keras.ops.one_hot(keras.ops.argmax(y_pred, axis=-1), len(CLASSES))
    return keras.ops.sum(mask * keras.ops.cast(pred, mask.dtype), axis=-1)
