"""Models and trust: the manifest, the ONNX ensemble and its vote, micro-batching, prediction sets and flags,
and heatmaps."""
