"""The splits an exported ensemble is measured on: those of its models' protocol (validation carved from
Training, and the official Testing split or the pooled hold-out)."""

from __future__ import annotations

import numpy as np

from service.inference.manifest import Manifest
from service.inference.runtime import Ensemble
from trainer.data.dataset import Prepared
from trainer.evaluation.evaluate import split_names
from trainer.training.train import evaluation_indices


def eval_splits(ensemble: Ensemble, p: Prepared) -> dict[str, tuple[str, np.ndarray]]:
    """{metrics key: (description, indices)} of the validation and test splits of the ensemble's protocol."""
    cfg = ensemble.manifest.models[0].config
    va, te = evaluation_indices(p, cfg)
    (val_key, val_split), (test_key, test_split) = split_names(cfg)
    return {val_key: (val_split, va), test_key: (test_split, te)}


def test_key(manifest: Manifest) -> str:
    """The metrics key of the ensemble's test split: official_test, or pooled_test for the pooled protocol."""
    return split_names(manifest.models[0].config)[1][0]
