"""Training on more than one device (opt-in: `trainer train --distribute mirrored`).

`tf.distribute.MirroredStrategy` keeps one copy of the model per device and splits every batch between them
(the grid's `batch_size` stays the global batch), summing gradients before each step. It uses every visible GPU;
without one, the CPU. `MRI_LOGICAL_CPUS=N` splits the CPU into N logical devices and mirrors over them: no faster,
but it runs the multi-device code path on any machine (the tests do).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

STRATEGIES = ("none", "mirrored")


def make_strategy(kind: str) -> Any:
    """The tf.distribute strategy for `kind` (None for "none"); call before any model is built."""
    if kind not in STRATEGIES:
        raise ValueError(f"--distribute must be one of {STRATEGIES}, got {kind!r}")
    if kind == "none":
        return None
    import tensorflow as tf

    devices = None
    logical = int(os.environ.get("MRI_LOGICAL_CPUS", "0") or 0)
    if logical > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices)
    names = devices or [d.name for d in tf.config.list_logical_devices("GPU")] or ["CPU"]
    print(f"[distribute] MirroredStrategy: {strategy.num_replicas_in_sync} replicas ({', '.join(names)})")
    return strategy


def scope(strategy: Any) -> contextlib.AbstractContextManager[Any]:
    """Where models must be built and compiled: the strategy's scope, or nothing special."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()
