"""Brain-MRI tumour classifier inference service (FastAPI + onnxruntime, no TensorFlow).

Research tool, not for clinical use.
"""

__version__ = "0.4.0"
DISCLAIMER = "Research tool, not for clinical use."
