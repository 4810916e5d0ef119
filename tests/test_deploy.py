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


def test_compose_keeps_admin_and_metrics_inside_and_each_replica_can_be_scraped():
    """The public port serves the EHR's paths; /admin and each replica's /metrics are on a second port that
    compose publishes on the host's loopback only."""
    balancer = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["balancer"]
    assert "8080:80" in balancer["ports"] and "127.0.0.1:9100:9100" in balancer["ports"]
    public, inside = nginx_servers()
    assert "listen 80;" in public and "listen 9100;" in inside
    assert "location = /metrics { return 404; }" in public and "location /admin { return 404; }" in public
    for replica in ("cds-a", "cds-b"):
        assert f"location = /metrics/{replica} {{ proxy_pass http://{replica}:8080/metrics; }}" in inside
    assert "location /admin {\n            proxy_pass http://cds;" in inside


def nginx_servers() -> list[str]:
    """The text of each ``server { ... }`` block of deploy/nginx.conf, in order."""
    text = (DEPLOY / "nginx.conf").read_text()
    blocks, start = [], text.find("server {")
    while start != -1:
        depth, index = 0, start
        while True:
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if text[index] == "}" and depth == 0:
                break
            index += 1
        blocks.append(text[start : index + 1])
        start = text.find("server {", index)
    return blocks


def manifests() -> list[dict]:
    return [
        document
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_the_kubernetes_manifests_follow_the_kubernetes_schemas_strictly():
    documents = manifests()
    assert {d["kind"] for d in documents} == {"Deployment", "Service", "ConfigMap", "Secret", "Ingress"}
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


def test_the_public_base_url_is_the_operators_and_the_ingress_keeps_admin_and_metrics_inside():
    by_kind = {d["kind"]: d for d in manifests()}
    [container] = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"]
    public = next(e for e in container["env"] if e["name"] == "CDS_PUBLIC_BASE_URL")
    assert "value" not in public  # not a URL written into the manifest
    assert public["valueFrom"]["configMapKeyRef"] == {"name": "tacrolimus-cds-site", "key": "public-base-url"}
    assert "tacrolimus-cds-site" in (ROOT / "docs" / "deployment.md").read_text()  # how to make it
    ingress = by_kind["Ingress"]
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["path"] for p in paths} == {"/cds-services", "/smart", "/docs"}  # what EHRs and browsers need
    assert {p["backend"]["service"]["name"] for p in paths} == {by_kind["Service"]["metadata"]["name"]}
    assert not [p for p in paths if p["path"] in ("/", "/admin", "/metrics")]


def test_the_configmap_holds_the_configuration_in_hooks():
    script = runpy.run_path(str(DEPLOY / "kubernetes" / "make-configmap"), run_name="make_configmap")
    expected = script["configmap"](ROOT / "hooks")["data"]
    [configmap] = [d for d in manifests() if d["kind"] == "ConfigMap"]
    assert configmap["data"] == expected, "hooks/ changed: run deploy/kubernetes/make-configmap"
