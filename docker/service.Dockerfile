# Slim inference image: onnxruntime + FastAPI, no TensorFlow. Research tool, not for clinical use.
# Build: docker build -f docker/service.Dockerfile -t mri-classifier-service .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
# Trimmed after install: build tooling, onnxruntime's transformer/quantisation tools, and its C-API library
# libonnxruntime.so (35 MB; the Python binding carries its own copy of the runtime and does not load it —
# `make docker-smoke` runs a real prediction in the image).
RUN pip install -c constraints.txt ".[service]" \
 && python -c "import service.main, importlib.util as u; assert u.find_spec('tensorflow') is None" \
 && pip uninstall -y -q Jinja2 MarkupSafe protobuf flatbuffers \
 && cd /opt/venv/lib/python3.11/site-packages \
 && find swagger_ui_bundle/vendor -type f ! -name swagger-ui-bundle.js ! -name swagger-ui.css -delete \
 && rm -rf pip setuptools pkg_resources _distutils_hack distutils-precedence.pth \
      onnxruntime/transformers onnxruntime/quantization onnxruntime/tools numpy/f2py numpy/_core/include \
      onnxruntime/capi/libonnxruntime.so* \
      pydicom/sr pydicom/data/test_files \
 && find . -type d \( -name tests -o -name __pycache__ \) -prune -exec rm -rf {} + \
 && find . -name "*.pyi" -delete \
 && python -c "import numpy, cv2, onnxruntime, pydicom.pixels, service.image.dicom, service.main"

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MRI_MODELS_DIR=/models \
    HOST=0.0.0.0 \
    PORT=8000
# Models are not baked in: mount an exported ensemble read-only at /models
# (docker-compose does: ./models:/models:ro), e.g. docker run -v "$PWD/models:/models:ro" ...
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PORT', '8000'), timeout=3).status == 200 else 1)"]
CMD ["python", "-m", "service"]
