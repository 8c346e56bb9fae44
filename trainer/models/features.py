"""What a trained model's pooling head exposes: whether it has one, and the model up to it (the pooled
features that the ood_score, the sequence probe and the cached-feature recipes read)."""

from __future__ import annotations

import keras


def has_pooling_head(model: keras.Model) -> bool:
    """A transfer model: a nested backbone followed by the global-pooling layer "gap"."""
    names = {layer.name for layer in model.layers}
    return "gap" in names and any(isinstance(layer, keras.Model) for layer in model.layers)


def has_own_pooling_head(model: keras.Model) -> bool:
    """A model that pools its own last feature map ("gap") without a nested backbone (builders.build_resnet)."""
    names = {layer.name for layer in model.layers}
    return "gap" in names and not any(isinstance(layer, keras.Model) for layer in model.layers)


def pooled_feature_model(model: keras.Model) -> keras.Model:
    return keras.Model(model.inputs, model.get_layer("gap").output)
