# The exported ensemble as an image layer, for clusters that ship models as images (deploy/k8s: an init container
# copies /models into the pod). One tag per model_version. Research tool, not for clinical use.
# Build: docker build -f docker/models.Dockerfile -t mri-classifier-models:$(jq -r .model_version models/manifest.json) .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY models /models
USER app
CMD ["python", "-c", "import json; print(json.load(open('/models/manifest.json'))['model_version'])"]
