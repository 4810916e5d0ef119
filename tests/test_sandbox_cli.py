"""`cds-service sandbox list|run` and `cds-service fixtures serve`, in-process and against real processes."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from cds_service.cli import main
from cds_service.fixtures import manifest
from cds_service.sandbox.runner import REDACTED, markdown_for_terminal
from tests.support import CDS_SERVICE, config_copy, finding_ids, free_port, make_app, start_service

FIXTURES = ["p1-pregnant-sle", "s1-mmf-inadequate-response", "n1-missing-baseline-labs"]


def _wait_until_up(process: subprocess.Popen, url: str, log: Path) -> None:
    """Until `url` answers 200 (for `cds-service fixtures serve`; the service: `support.start_service`)."""
    for _ in range(300):
        if process.poll() is not None:
            pytest.fail(f"the process exited: {log.read_text()}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            time.sleep(0.1)
    pytest.fail(f"{url} did not answer within 30 s")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`cds-service serve --dev` on a free port; yields (base URL, its SQLite file)."""
    tmp = tmp_path_factory.mktemp("sandbox-cli")
    with start_service(config_copy(tmp), workers=1, dev=True) as server:  # hooks/ with its database in tmp
        yield server.base, tmp / "cds.sqlite3"


def run_cli(*args: str):
    # The output follows the terminal width: a pipe's (100 columns), whatever COLUMNS says (xdist sets it).
    result = CliRunner(env={"COLUMNS": "100"}).invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def printed_findings(output: str) -> set[str]:
    """The ids on the "findings on the cards:" line of the readable output."""
    match = re.search(r"^findings on the cards:\s+(.*)$", output, re.MULTILINE)
    assert match, output
    return set() if match[1] == "none" else set(match[1].split(", "))


# --- sandbox list -------------------------------------------------------------------------------------------


def test_list_shows_every_manifest_fixture_with_its_description():
    result = run_cli("sandbox", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == len(manifest())
    for name, entry in manifest().items():
        line = next((line for line in lines if line.split()[0] == name), None)
        assert line is not None, f"{name} missing from `sandbox list`"
        assert entry["description"] in line


# --- sandbox run, in-process --------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
@pytest.mark.parametrize("fixture", FIXTURES)
def test_run_in_process_prints_the_cards_with_the_expected_findings(fixture, via):
    result = run_cli("sandbox", "run", fixture, "--via", via, "--hook", "order-sign")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{fixture} · order-sign via {via}" in out
    assert "HTTP 200" in out
    assert printed_findings(out) == set(manifest()[fixture]["expected"])
    assert re.search(r"^1\. \[(CRITICAL|WARNING|INFO)\] \S", out, re.MULTILINE), out
    assert "Override reasons: patient-ineligible" in out
    assert "**" not in out  # Markdown is rendered, not shown raw


def test_run_prints_suggestions_with_their_actions_and_links():
    result = run_cli("sandbox", "run", "n1-missing-baseline-labs")
    assert result.exit_code == 0, result.output
    assert "Suggestions (choose any):" in result.stdout
    assert re.search(r"^\s+create ServiceRequest: Order .+\(LOINC [0-9-]+\)$", result.stdout, re.MULTILINE)
    assert re.search(r"^\s+Links:\n\s+↗ .+\n\s+https://", result.stdout, re.MULTILINE)


def test_json_holds_the_request_built_from_discovery_and_the_response():
    result = run_cli("sandbox", "run", "p1-pregnant-sle", "--json")
    assert result.exit_code == 0, result.output
    exchange = json.loads(result.stdout)
    request, response = exchange["request"], exchange["response"]
    assert request["hook"] == "order-select"
    assert re.fullmatch(r"[0-9a-f-]{36}", request["hookInstance"])
    draft_refs = [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in request["context"]["draftOrders"]["entry"]
    ]
    assert set(manifest()["p1-pregnant-sle"]["drafts"]) <= set(draft_refs)
    assert request["context"]["selections"] == manifest()["p1-pregnant-sle"]["selections"]
    assert set(request["prefetch"]) == {
        "patient", "conditions", "medications", "observations", "allergies", "procedures", "immunizations"
    }  # fmt: skip
    assert request["prefetch"]["patient"]["resourceType"] == "Patient"
    assert "fhirServer" not in request
    assert response["status"] == 200
    assert finding_ids(response["body"]) == set(manifest()["p1-pregnant-sle"]["expected"])


def test_json_via_fhir_sends_a_fhir_server_and_no_prefetch_and_hides_the_token():
    result = run_cli("sandbox", "run", "s1-mmf-inadequate-response", "--via", "fhir", "--json")
    assert result.exit_code == 0, result.output
    exchange = json.loads(result.stdout)
    request = exchange["request"]
    assert request["fhirServer"].startswith("http://127.0.0.1:")
    assert request["fhirAuthorization"]["access_token"] == REDACTED
    assert "prefetch" not in request
    assert finding_ids(exchange["response"]["body"]) == set(
        manifest()["s1-mmf-inadequate-response"]["expected"]
    )


def test_unknown_fixture_is_an_error_naming_it():
    result = run_cli("sandbox", "run", "no-such-patient")
    assert result.exit_code == 2
    assert "unknown fixture 'no-such-patient'" in result.stderr


def test_card_markdown_is_rendered_for_a_terminal_without_html_or_control_characters():
    markdown = "**P1 (info)**: pregnant\n- first item\n- second <script>x</script>\n\nSee [the label](https://e.org/x)\x1b]0;pwned\x07"
    text = markdown_for_terminal(markdown, width=80)
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[:3] == ["P1 (info): pregnant", "• first item", "• second <script>x</script>"]
    assert "See the label <https://e.org/x>" in text
    assert "\x1b" not in text and "\x07" not in text


# --- the dev-only surfaces that `--url ... --via fhir` relies on -------------------------------------------


def test_sandbox_page_and_fixture_fhir_api_exist_only_in_dev_mode(tmp_path):
    dev = make_app(tmp_path / "dev", dev=True).test_client()
    production = make_app(tmp_path / "prod", dev=False).test_client()
    for path in ("/sandbox", "/sandbox/fhir/metadata", "/sandbox/static/sandbox.js", "/static/sandbox.js"):
        assert production.get(path).status_code == 404, path
    assert dev.get("/sandbox").status_code == 200
    assert dev.get("/sandbox/fhir/metadata").get_json()["resourceType"] == "CapabilityStatement"
    patient = dev.get("/sandbox/fhir/Patient/p1preg-pat").get_json()
    assert patient["resourceType"] == "Patient"


# --- against running processes ------------------------------------------------------------------------------


def _shown_in(database: Path, hook_instance: str) -> bool:
    """Did the service record cards for this hook call? (Written in the background, within a second.)"""
    for _ in range(100):
        with sqlite3.connect(database) as connection:
            query = "SELECT 1 FROM shown_findings WHERE hook_instance = ?"
            if connection.execute(query, (hook_instance,)).fetchone():
                return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("via", ["prefetch", "fhir"])
def test_run_against_a_running_dev_service(service, via):
    base, database = service
    command = [CDS_SERVICE, "sandbox", "run", "p1-pregnant-sle", "--url", base, "--via", via, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    exchange = json.loads(done.stdout)
    assert exchange["service"] == f"{base}/cds-services/tacrolimus-order-select"
    if via == "fhir":
        assert exchange["request"]["fhirServer"] == f"{base}/sandbox/fhir"  # the API `serve --dev` mounts
    assert finding_ids(exchange["response"]["body"]) == set(manifest()["p1-pregnant-sle"]["expected"])
    # The running service (not an in-process copy) answered: it recorded the cards it showed.
    assert _shown_in(database, exchange["request"]["hookInstance"])

    readable = subprocess.run([*command[:-1]], capture_output=True, text=True, timeout=120, check=False)
    assert readable.returncode == 0, readable.stderr
    assert printed_findings(readable.stdout) == set(manifest()["p1-pregnant-sle"]["expected"])


def test_run_against_an_unreachable_url_says_so():
    result = run_cli("sandbox", "run", "p1-pregnant-sle", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 2
    assert "cannot reach" in result.stderr


@pytest.mark.slow
def test_fixtures_serve_answers_fhir_searches(tmp_path):
    port = free_port()
    log = tmp_path / "fixtures.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [CDS_SERVICE, "fixtures", "serve", "--port", str(port)], stdout=out, stderr=out
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until_up(process, f"{base}/metadata", log)
            bundle = requests.get(f"{base}/Patient", params={"_count": 2}, timeout=10).json()
            assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == 2
            assert any(link["relation"] == "next" for link in bundle["link"])
            unsupported = requests.get(f"{base}/Observation", params={"foo": "bar"}, timeout=10)
            assert unsupported.status_code == 400
            assert unsupported.json()["resourceType"] == "OperationOutcome"
        finally:
            process.terminate()
            process.wait(timeout=30)
