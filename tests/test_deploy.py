"""deploy/: the compose file and the Kubernetes manifests are valid against their published schemas.

Both schemas come installed with test packages, nothing is downloaded: the Compose Specification schema as
vendored by check-jsonschema, the Kubernetes OpenAPI-derived schemas as shipped by kubernetes-validate.
"""

from __future__ import annotations

import importlib.resources
import json
import runpy
from pathlib import Path

import kubernetes_validate
import yaml
from jsonschema import Draft202012Validator
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def compose_schema() -> dict:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text())


def test_the_compose_file_follows_the_compose_specification():
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    errors = sorted(Draft202012Validator(compose_schema()).iter_errors(document), key=str)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []
    services = document["services"]
    assert {"db", "cds-a", "cds-b", "balancer"} <= set(services)
    for name in ("cds-a", "cds-b"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
        assert "CDS_DATABASE_URL" in services[name]["environment"]
    assert "healthcheck" in services["db"] and "healthcheck" in services["balancer"]
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "server cds-a:8080" in nginx and "server cds-b:8080" in nginx


def manifests() -> list[dict]:
    return [
        document
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_the_kubernetes_manifests_follow_the_kubernetes_schemas_strictly():
    documents = manifests()
    assert {d["kind"] for d in documents} == {"Deployment", "Service", "ConfigMap", "Secret"}
    for document in documents:
        kubernetes_validate.validate(document, latest_version(), strict=True)  # raises on any problem


def test_the_deployment_probes_secret_and_configmap_fit_together():
    by_kind = {d["kind"]: d for d in manifests()}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    database = next(e for e in container["env"] if e["name"] == "CDS_DATABASE_URL")
    secret = database["valueFrom"]["secretKeyRef"]
    assert secret["name"] == by_kind["Secret"]["metadata"]["name"]
    assert secret["key"] in by_kind["Secret"]["stringData"]
    [hooks] = [v for v in pod["volumes"] if "configMap" in v]
    assert hooks["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    assert {i["key"] for i in hooks["configMap"]["items"]} == set(by_kind["ConfigMap"]["data"])


def test_the_configmap_holds_the_configuration_in_hooks():
    script = runpy.run_path(str(DEPLOY / "kubernetes" / "make-configmap"), run_name="make_configmap")
    expected = script["configmap"](ROOT / "hooks")["data"]
    [configmap] = [d for d in manifests() if d["kind"] == "ConfigMap"]
    assert configmap["data"] == expected, "hooks/ changed: run deploy/kubernetes/make-configmap"
