"""deploy/k8s renders with kustomize, validates against the Kubernetes schemas, and says what the service needs:
non-root, read-only root filesystem, resources, probes on the service's real health paths, selectors that match."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.utils import ROOT

KUSTOMIZE = ROOT / "deploy" / "k8s"
needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None and not os.environ.get("MRI_REQUIRE_KUBECTL"), reason="kubectl not installed"
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict]:
    out = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZE)], capture_output=True, text=True, check=True).stdout
    return {doc["kind"]: doc for doc in yaml.safe_load_all(out) if doc}


@needs_kubectl
def test_manifests_validate_against_the_kubernetes_schemas(rendered: dict[str, dict]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    assert set(rendered) == {"Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in rendered.values():
        kubernetes_validate.validate(doc, "1.37.0", strict=True)  # raises ValidationError
    broken = {**rendered["Deployment"], "spec": {**rendered["Deployment"]["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)


@needs_kubectl
def test_the_deployment_is_locked_down_probed_and_selected(rendered: dict[str, dict]) -> None:
    from service.main import create_app

    deployment = rendered["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    paths = set(create_app().openapi()["paths"])
    for container in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]
    (service,) = pod["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert service[probe]["httpGet"]["path"] in paths
    assert service["livenessProbe"]["httpGet"]["path"] == "/health/live"
    models_dir = next(e["value"] for e in service["env"] if e["name"] == "MRI_MODELS_DIR")
    assert any(models_dir.startswith(m["mountPath"]) for m in service["volumeMounts"] if m["name"] == "models")
    for kind in ("Service", "PodDisruptionBudget"):
        spec = rendered[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector and selector.items() <= labels.items(), kind
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = rendered["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    images = {c["image"].split(":")[0] for c in pod["spec"]["containers"] + pod["spec"]["initContainers"]}
    assert images == {"mri-classifier-service", "mri-classifier-models"}  # docker/{service,models}.Dockerfile
    assert (ROOT / "docker" / "models.Dockerfile").exists()


def test_the_kustomization_pins_the_bundled_model_version_and_the_package_version() -> None:
    import json
    import tomllib

    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    tags = {i["name"]: i["newTag"] for i in kustomization["images"]}
    manifest = json.loads((ROOT / "models" / "manifest.json").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert tags == {"mri-classifier-models": manifest["model_version"], "mri-classifier-service": version}
