"""Models: Functional builders of every family, the backbone registry, EfficientNet-Lite, weights from packages
and compute counts."""
