"""Export: ONNX conversion with parity checks, the ensemble bundle (models/ + manifest), calibration, merging."""
