"""Trainer: builds, compares and exports the brain-MRI tumour classifiers (TensorFlow/Keras).

Importing this package does not import TensorFlow; the sub-modules that need it do.
"""

__version__ = "0.4.0"
