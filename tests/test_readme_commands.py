"""What the README and the guides tell a newcomer to run: the example requests, the entry points, a busy
port."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys

import pytest

from cds_service.protocol import check_response
from cds_service.sandbox import official
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.store import FhirStore
from tests.support import CDS_SERVICE, ROOT, make_app

README = (ROOT / "README.md").read_text(encoding="utf-8")
INTEGRATION = (ROOT / "docs" / "integration.md").read_text(encoding="utf-8")  # the official Sandbox
EXAMPLES = ROOT / "examples"
# `curl ... http://127.0.0.1:${PORT:-8080}/cds-services/<path> ... -d @examples/<file>.json`
CURL_POST = re.compile(
    r"curl [^\n]*?http://127\.0\.0\.1:\$\{PORT:-8080\}(?P<path>/cds-services/\S+?)['\s]"
    r"[^\n]*\n?[^\n]*?-d @(?P<file>examples/\S+\.json)"
)


def readme_posts() -> list[tuple[str, str]]:
    return [(m["path"], m["file"]) for m in CURL_POST.finditer(README)]


def test_the_readme_posts_every_example_and_every_example_exists():
    posted = {file for _, file in readme_posts()}
    on_disk = {f"examples/{p.name}" for p in EXAMPLES.glob("*.json")}
    assert posted == on_disk
    assert {
        "examples/order-select.json",
        "examples/order-sign.json",
        "examples/patient-view.json",
        "examples/feedback.json",
    } <= on_disk


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """Each README curl line's answer from the dev service, its fhirServer replaced by a loopback server."""
    client = make_app(tmp_path_factory.mktemp("examples"), dev=True).test_client()
    with serve_in_thread(FhirStore.from_fixtures()) as fhir_base:
        results = {}
        for path, file in readme_posts():
            body = json.loads((ROOT / file).read_text())
            if "fhirServer" in body:
                assert body["fhirServer"] == "http://127.0.0.1:8080/sandbox/fhir"  # what `make run` mounts
                body["fhirServer"] = fhir_base
            response = client.post(path, json=body)
            results[file] = (response.status_code, response.get_json())
    return results


def test_order_select_and_order_sign_examples_get_the_pregnancy_cards(answers):
    """As the README says: three cards at order-select; at order-sign, sent next for the same draft order,
    only the critical one (its info findings were just shown)."""
    for name, cards in (("examples/order-select.json", 3), ("examples/order-sign.json", 1)):
        status, body = answers[name]
        assert status == 200
        assert check_response(body) == []
        assert len(body["cards"]) == cards
        assert body["cards"][0]["indicator"] == "critical"
        assert body["cards"][0]["summary"].startswith("Teratogen active in pregnancy")


def test_patient_view_example_gets_the_monitoring_warning(answers):
    status, body = answers["examples/patient-view.json"]
    assert status == 200 and check_response(body) == []
    [card] = body["cards"]
    assert card["indicator"] == "warning" and "N4" in json.dumps(card["extension"])


def test_feedback_example_is_stored(answers):
    assert answers["examples/feedback.json"] == (200, {"stored": 1})


@pytest.mark.slow
def test_python_dash_m_runs_the_same_command_line():
    listed = subprocess.run(
        [sys.executable, "-m", "cds_service", "sandbox", "list"], capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert "pregnant-ln-flare-on-mmf" in listed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("command", [["serve", "--dev"], ["fixtures", "serve"]], ids=" ".join)
def test_a_busy_port_gives_one_clear_error_and_no_serving_line(command):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        run = subprocess.run(
            [CDS_SERVICE, *command, "--port", str(port)], capture_output=True, text=True, timeout=60
        )
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    busy_line = f"error: cannot listen on 127.0.0.1:{port}: address already in use; stop what runs there"
    assert lines == [busy_line + " or choose another --port"]
    assert "serving" not in run.stderr and "fixture FHIR server on" not in run.stderr


@pytest.mark.slow
def test_the_integration_guide_gives_a_ready_official_sandbox_link_per_fixture():
    rows = subprocess.run(
        [CDS_SERVICE, "sandbox", "links", "--markdown"], capture_output=True, text=True, timeout=60
    ).stdout.splitlines()
    assert len(rows) == len(official.links())
    missing = [row for row in rows if row not in INTEGRATION.splitlines()]
    assert missing == [], (
        "docs/integration.md table out of date: paste `cds-service sandbox links --markdown`"
    )
