"""A first day without surprises (issue 26), in-process: what a tester, a developer and an administrator meet
in their first minutes with ``make run``: findings held back and why, the alert memory cleared, the fixture
FHIR API on any port, a 412 that names the server, cards whose sentences carry no resource ids, the landing
and login pages, ``feedback report --tenant`` and ``cds_feedback_total`` agreeing with the report."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from cds_service.api import HELD_BACK_EXTENSION
from cds_service.cards import build_cards
from cds_service.cli import dev_base_url, main
from cds_service.config import load_config
from cds_service.record import PatientRecord, Unusable
from cds_service.report import store_statistics
from cds_service.rules.model import Evidence, Finding
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request
from cds_service.sandbox.store import FhirStore
from cds_service.storage import Store
from tests.support import FINDINGS_KEY, ROOT, config_copy, make_app

EXAMPLES = ROOT / "examples"
SELECT = "/cds-services/tacrolimus-order-select"
SIGN = "/cds-services/tacrolimus-order-sign"
MONITORING = "/cds-services/tacrolimus-monitoring"
RESOURCE_ID = re.compile(r"\b(?:Observation|Condition|MedicationRequest|Patient|Procedure)/[\w.-]+")


@pytest.fixture(scope="module")
def fixtures_api():
    """The fixture patients on a loopback FHIR server (the in-process app has no socket to read its own)."""
    with serve_in_thread(FhirStore.from_fixtures()) as base:
        yield base


@pytest.fixture
def example(fixtures_api):
    """An example request of examples/ as the README sends it, reading the fixtures from ``fixtures_api``."""

    def load(name: str) -> dict:
        body = json.loads((EXAMPLES / name).read_text())
        if "fhirServer" in body:
            body["fhirServer"] = fixtures_api
        return body

    return load


@pytest.fixture
def dev(tmp_path):
    """``serve --dev`` in-process (sandbox and fixture FHIR API composed in), on a fresh database."""
    app = make_app(tmp_path, dev=True)
    return app, app.test_client()


def ids_on(answer: dict) -> set[str]:
    return {item["id"] for card in answer["cards"] for item in card["extension"][FINDINGS_KEY]}


# --- what was held back, and starting over ---------------------------------------------------------------


def test_patient_view_twice_names_what_was_held_back_and_clearing_the_memory_shows_it_again(dev, example):
    _, client = dev
    first = client.post(MONITORING, json=example("patient-view.json")).get_json()
    assert ids_on(first) == {"N4"} and "extension" not in first
    second = client.post(MONITORING, json=example("patient-view.json")).get_json()
    assert second["cards"] == []
    [held] = second["extension"][HELD_BACK_EXTENSION]
    assert held["id"] == "N4" and held["indicator"] == "warning"
    assert "already shown at patient-view for this patient" in held["why"] and "1440 min" in held["why"]
    assert held["summary"] == "Tacrolimus level 14 ng/mL above 10"

    same_origin = {"Sec-Fetch-Site": "same-origin"}
    cleared = client.post("/sandbox/api/alert-memory/clear", json={}, headers=same_origin)
    assert cleared.status_code == 200 and cleared.get_json()["forgotten"] >= 1
    third = client.post(MONITORING, json=example("patient-view.json")).get_json()
    assert ids_on(third) == {"N4"}


def test_order_sign_after_order_select_names_the_info_findings_it_held_back(dev, example):
    _, client = dev
    shown = ids_on(client.post(SELECT, json=example("order-select.json")).get_json())
    sign = client.post(SIGN, json=example("order-sign.json")).get_json()
    held = {item["id"]: item for item in sign["extension"][HELD_BACK_EXTENSION]}
    assert set(held) == shown - ids_on(sign) and set(held) >= {"P1", "N1"}
    assert all(item["indicator"] == "info" for item in held.values())
    assert "already shown at order-select" in held["P1"]["why"]


def test_another_site_cannot_clear_the_alert_memory(dev, example):
    _, client = dev
    client.post(MONITORING, json=example("patient-view.json"))
    cross_site = {"Sec-Fetch-Site": "cross-site"}
    refused = client.post("/sandbox/api/alert-memory/clear", json={}, headers=cross_site)
    assert refused.status_code == 403
    assert client.post(MONITORING, json=example("patient-view.json")).get_json()["cards"] == []


def test_production_answers_never_carry_the_held_back_extension(tmp_path):
    """Outside --dev a repeated patient-view answers exactly ``{"cards": []}`` (the spec's shape, no more)."""
    app = make_app(tmp_path, dev=True)  # no caller JWT needed; its runtime then answers as production does
    app.extensions["cds_runtime"]().dev = False
    body = build_request("pv-high-trough", hook="patient-view")  # the record in the prefetch
    client = app.test_client()
    assert ids_on(client.post(MONITORING, json=body).get_json()) == {"N4"}
    assert client.post(MONITORING, json=body).get_json() == {"cards": []}


def test_the_cli_clears_the_alert_memory(tmp_path, example):
    app = make_app(tmp_path, dev=True)
    client = app.test_client()
    client.post(MONITORING, json=example("patient-view.json"))
    assert client.post(MONITORING, json=example("patient-view.json")).get_json()["cards"] == []
    result = CliRunner().invoke(main, ["alert-memory", "clear", "--config", str(tmp_path / "hooks")])
    assert result.exit_code == 0, result.output
    assert "alert memory cleared: 1 remembered finding(s) forgotten" in result.output
    assert ids_on(client.post(MONITORING, json=example("patient-view.json")).get_json()) == {"N4"}


# --- a 412 names its server; explain as the README says ---------------------------------------------------


def test_a_412_names_the_fhir_base_it_could_not_reach(dev, example):
    _, client = dev
    body = example("order-select.json")
    body["fhirServer"] = "http://127.0.0.1:9/fhir"  # nothing listens on the discard port
    answer = client.post(SELECT, json=body)
    assert answer.status_code == 412
    diagnostics = [issue["diagnostics"] for issue in answer.get_json()["issue"]]
    assert diagnostics and all("(fhirServer http://127.0.0.1:9/fhir)" in d for d in diagnostics)


def test_explain_reads_a_saved_request_naming_the_fixture_api_without_dev(tmp_path):
    """The README: ``cds-service explain examples/order-select.json``, no service running, no --dev."""
    config = config_copy(tmp_path)
    saved = str(EXAMPLES / "order-select.json")
    result = CliRunner().invoke(main, ["explain", saved, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "answer:   HTTP 200, 3 card(s)" in result.output
    assert "read from fhir_fixtures/" in result.output
    assert re.search(r"^P2 +FIRED \(critical, card pregnancy\)", result.output, re.MULTILINE)


def test_explain_says_to_add_dev_for_another_plain_http_server(tmp_path, example):
    body = example("order-select.json")
    body["fhirServer"] = "http://127.0.0.1:9/fhir"
    saved = tmp_path / "request.json"
    saved.write_text(json.dumps(body))
    config = config_copy(tmp_path)
    result = CliRunner().invoke(main, ["explain", str(saved), "--config", str(config)])
    assert "HTTP 412" in result.output
    assert "hint: fhirServer http://127.0.0.1:9/fhir is plain http: add --dev" in result.output


# --- dev mode follows the port ------------------------------------------------------------------------------


def test_dev_mode_names_its_own_port_unless_an_operator_chose_the_url(tmp_path, monkeypatch):
    monkeypatch.delenv("CDS_PUBLIC_BASE_URL", raising=False)
    bundled = load_config(config_copy(tmp_path / "a"))  # http://127.0.0.1:8080
    assert dev_base_url(bundled, "127.0.0.1", 18181) == "http://127.0.0.1:18181"
    assert dev_base_url(bundled, "127.0.0.1", 8080) is None  # already right
    chosen = load_config(config_copy(tmp_path / "b", server={"public_base_url": "https://cds.example.org"}))
    assert dev_base_url(chosen, "127.0.0.1", 18181) is None
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", "http://127.0.0.1:9999")
    assert dev_base_url(bundled, "127.0.0.1", 18181) is None


# --- the card: ids once, at its end ------------------------------------------------------------------------


def test_resource_ids_are_kept_out_of_the_sentences_and_listed_once_where_in_the_record():
    when = datetime(2026, 11, 20, tzinfo=UTC)
    n1 = Finding(
        "N1",
        "nephrotoxicity-monitoring",
        "info",
        "Baseline missing",
        "Nothing is recorded for potassium.",
        (),
        evidence=(
            Evidence("Systolic blood pressure", "124 mmHg", when, "Observation/bp-1"),
            Evidence("Diastolic blood pressure", "78 mmHg", when, "Observation/bp-1"),
            Evidence("eGFR", "104 mL/min/1.73 m²", when, "Observation/egfr-1"),
        ),
        missing=("no potassium in the last 30 days",),
    )
    record = PatientRecord(now=when, patient=None, skipped=(Unusable("Observation/k-9", "no value"),))
    [card] = build_cards([n1], record, {"cards": {}})
    body, _, where = card["detail"].partition("**Where in the record:**")
    assert RESOURCE_ID.findall(body) == []
    assert "**Left out:** 1 item of the record, named with the reason under Where in the record." in body
    # N1's present values under their own heading, after the sentence about what is missing
    assert "\n\n*On record:*\n- Systolic blood pressure: 124 mmHg on 2026-11-20" in body
    assert where.strip().startswith(
        "Systolic blood pressure, Diastolic blood pressure: Observation/bp-1; eGFR: Observation/egfr-1;"
    )
    assert "left out: Observation/k-9: no value." in where
    assert card["detail"].count("Observation/bp-1") == 1


def test_no_fixture_card_names_a_resource_id_before_where_in_the_record(dev, example):
    """Every example and fixture the README points at: the clinician's sentences hold no ids."""
    _, client = dev
    for path, name in ((SELECT, "order-select.json"), (MONITORING, "patient-view.json")):
        for card in client.post(path, json=example(name)).get_json()["cards"]:
            body = card["detail"].partition("**Where in the record:**")[0]
            assert RESOURCE_ID.findall(body) == [], card["summary"]
            assert RESOURCE_ID.findall(card["summary"]) == []


# --- first-minute pages ----------------------------------------------------------------------------------


def test_the_dev_root_is_a_landing_page_and_the_login_page_names_the_dev_token(dev):
    _, client = dev
    landing = client.get("/")
    assert landing.status_code == 200
    text = landing.get_data(as_text=True)
    for link in ('href="/sandbox"', 'href="/admin"', 'href="/docs"'):
        assert link in text
    assert "dev-admin-token" in text
    login = client.get("/admin/login").get_data(as_text=True)
    assert "Development mode: the token is <code>dev-admin-token</code>" in login


def test_production_has_no_landing_page_and_its_login_page_names_no_token(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_ADMIN_TOKEN", "a-long-production-token-for-this-test")
    client = make_app(tmp_path, dev=False).test_client()
    assert client.get("/").status_code == 404
    assert "dev-admin-token" not in client.get("/admin/login").get_data(as_text=True)


# --- feedback: an unknown tenant, and the metric that agrees with the report ------------------------------


def test_feedback_report_says_a_tenant_is_unknown(tmp_path):
    config = config_copy(tmp_path, tenants={"hospital-a": {"min_indicator": "warning"}})
    runner = CliRunner()
    unknown = runner.invoke(main, ["feedback", "report", "--config", str(config), "--tenant", "nope"])
    assert unknown.exit_code == 2
    assert "unknown tenant 'nope'; known tenants: hospital-a" in unknown.output
    known = runner.invoke(main, ["feedback", "report", "--config", str(config), "--tenant", "hospital-a"])
    assert known.exit_code == 0 and "no cards shown" in known.output


def _metric(client, finding: str, outcome: str) -> float:
    page = client.get("/metrics").get_data(as_text=True)
    labels = f'finding="{finding}",outcome="{outcome}",service="tacrolimus-order-select"'
    for line in page.splitlines():
        if line.startswith("cds_feedback_total{") and all(part in line for part in labels.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_accepted_suggestion_counts_for_its_own_finding_in_the_metrics_as_in_the_report(dev, example):
    """The pregnancy card holds P2 and P1; "Stop mycophenolate" answers P2 alone."""
    app, client = dev
    cards = client.post(SELECT, json=example("order-select.json")).get_json()["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == "pregnancy")
    assert {i["id"] for i in card["extension"][FINDINGS_KEY]} == {"P1", "P2"}
    [stop] = card["suggestions"]
    assert [i["id"] for i in stop["extension"][FINDINGS_KEY]] == ["P2"]
    before = {f: _metric(client, f, "accepted") for f in ("P1", "P2")}
    feedback = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": stop["uuid"]}],
        "outcomeTimestamp": "2026-12-07T10:00:00Z",
    }
    assert client.post(f"{SELECT}/feedback", json={"feedback": [feedback]}).status_code == 200
    after = {f: _metric(client, f, "accepted") for f in ("P1", "P2")}
    assert after["P2"] - before["P2"] == 1 and after["P1"] == before["P1"]
    store: Store = app.extensions["cds_runtime"]().store
    stats = store_statistics(store)
    report = {s.finding: s.accepted for s in stats if s.service == "tacrolimus-order-select"}
    assert report["P2"] == 1 and report.get("P1", 0) == 0


def test_an_override_still_counts_for_every_finding_on_the_card(dev, example):
    _, client = dev
    cards = client.post(SELECT, json=example("order-select.json")).get_json()["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == "pregnancy")
    before = {f: _metric(client, f, "overridden") for f in ("P1", "P2")}
    overridden = copy.deepcopy({"card": card["uuid"], "outcome": "overridden"})
    overridden["outcomeTimestamp"] = "2026-12-07T10:00:00Z"
    assert client.post(f"{SELECT}/feedback", json={"feedback": [overridden]}).status_code == 200
    after = {f: _metric(client, f, "overridden") for f in ("P1", "P2")}
    assert all(after[f] - before[f] == 1 for f in ("P1", "P2"))
