# Trainer image: TensorFlow/Keras, tf2onnx. Writes the ensemble into /work/models (mount ./models there).
# CPU: docker build -f docker/trainer.Dockerfile -t mri-classifier-trainer .
# GPU (CUDA machine): --build-arg TF_EXTRA="[and-cuda]" (pip installs CUDA libraries with TensorFlow),
#   run with `--gpus all` (compose: see README); with several GPUs, train on all of them with
#   `docker run --gpus all ... mri-classifier-trainer train --grid <grid> --distribute mirrored`.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TF_EXTRA=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
COPY trainer ./trainer
RUN pip install -c constraints.txt ".[trainer]" \
 && if [ -n "$TF_EXTRA" ]; then pip install -c constraints.txt "tensorflow${TF_EXTRA}"; fi \
 && find /opt/venv -name "__pycache__" -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin trainer
COPY --from=build /opt/venv /opt/venv
WORKDIR /work
COPY trainer/grids ./trainer/grids
RUN mkdir -p /work/models /work/out && chown trainer /work/models /work/out
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MRI_DATA=/data \
    MRI_WORK=/work/out \
    MPLCONFIGDIR=/tmp/matplotlib
USER trainer
ENTRYPOINT ["python", "-m", "trainer"]
CMD ["--help"]
