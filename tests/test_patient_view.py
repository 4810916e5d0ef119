"""The patient-view service ``tacrolimus-monitoring`` (rules.md § Patients already on tacrolimus): patients on
tacrolimus for months get warnings when their chart is opened, at most once a day per finding unless it
gets worse; everyone else gets ``{"cards": []}`` at once."""

from __future__ import annotations

import copy
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml

from cds_service.api import HELD_BACK_EXTENSION
from cds_service.app import create_app
from cds_service.fixtures import manifest
from cds_service.hook_call import answer_hook
from cds_service.protocol import check_response
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request
from cds_service.sandbox.store import FhirStore
from cds_service.services import SPEC_BY_ID
from tests.support import config_copy, finding_ids, start_service

SERVICE = "tacrolimus-monitoring"
PATH = f"/cds-services/{SERVICE}"
TOKEN = "patient-view-token-1"
PV_FIXTURES = sorted(name for name, entry in manifest().items() if entry.get("service") == SERVICE)


def monitoring_config(tmp_path: Path, **service_changes) -> Path:
    """A copy of hooks/ whose services/tacrolimus-monitoring.yaml has ``service_changes`` applied."""
    directory = config_copy(tmp_path)
    path = directory / "services" / f"{SERVICE}.yaml"
    service = yaml.safe_load(path.read_text())
    service.update(service_changes)
    path.write_text(yaml.safe_dump(service, sort_keys=False))
    return directory


def app_for(tmp_path: Path, **service_changes):
    return create_app(config_dir=monitoring_config(tmp_path, **service_changes), dev=True)


def templates(app) -> dict[str, str]:
    runtime = app.extensions["cds_runtime"]()
    return runtime.templates_for(runtime.service(SERVICE))


def pv_request(app, fixture: str, **options) -> dict:
    return build_request(fixture, hook="patient-view", prefetch_templates=templates(app), **options)


def post(client, body: dict) -> dict:
    response = client.post(PATH, json={**body, "hookInstance": str(uuid.uuid4())})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def held_back(answer: dict) -> set[str]:
    """The findings of an answer without cards that the alert memory held back (named with ``--dev``)."""
    assert answer["cards"] == []
    return {item["id"] for item in answer["extension"][HELD_BACK_EXTENSION]}


class RecordingStore(FhirStore):
    """The fixture FHIR store, noting which resource types the service asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def read(self, resource_type, resource_id):
        self.asked.append(resource_type)
        return super().read(resource_type, resource_id)

    def search(self, resource_type, params, base_url):
        self.asked.append(resource_type)
        return super().search(resource_type, params, base_url)


@pytest.fixture(scope="module")
def fixture_app(tmp_path_factory):
    # Each fixture call is judged on its own here; repeats are tested below.
    return app_for(tmp_path_factory.mktemp("pv"), hold_repeats={"enabled": False})


@pytest.fixture(scope="module")
def fhir_base():
    with serve_in_thread(FhirStore.from_fixtures(), require_token=TOKEN) as base:
        yield base


# --- discovery ----------------------------------------------------------------------------------------------


def test_discovery_lists_the_monitoring_service_with_templates_from_what_its_rules_read(fixture_app):
    services = fixture_app.test_client().get("/cds-services").get_json()["services"]
    service = next(s for s in services if s["id"] == SERVICE)
    assert service["hook"] == "patient-view"
    assert service["title"] and "tacrolimus" in service["description"]
    assert "patient-view" in service["usageRequirements"]
    prefetch = service["prefetch"]
    # No rule of patient-view reads allergies: no allergies key. Procedures: deliveries end a pregnancy (v3).
    assert set(prefetch) == {
        "patient", "conditions", "medications", "observations", "procedures", "immunizations"
    }  # fmt: skip
    asked = set(re.search(r"code=([^&]+)", prefetch["observations"]).group(1).split(","))
    terminology = fixture_app.extensions["cds_runtime"]().terminology
    needed = {
        f"{s}|{c}"
        for name in SPEC_BY_ID[SERVICE].needs["Observation"]
        for s, c, _ in terminology.codes(name)
        if s == "http://loinc.org"
    }
    assert asked == needed
    assert "http://loinc.org|11253-2" in asked and "http://loinc.org|2160-0" in asked  # trough, creatinine
    assert "http://loinc.org|2465-3" not in asked  # IgG is read only by S3, which patient-view does not run
    order_select = next(s for s in services if s["id"] == "tacrolimus-order-select")
    assert "allergies" in order_select["prefetch"]


def test_an_administrator_can_disable_it(tmp_path):
    client = app_for(tmp_path, enabled=False).test_client()
    ids = [s["id"] for s in client.get("/cds-services").get_json()["services"]]
    assert SERVICE not in ids and "tacrolimus-order-sign" in ids
    assert client.post(PATH, json={}).status_code == 404


# --- the fixture patients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
@pytest.mark.parametrize("fixture", PV_FIXTURES)
def test_patients_on_tacrolimus_get_exactly_their_expected_findings(fixture_app, fhir_base, fixture, via):
    body = pv_request(
        fixture_app, fixture, via=via, fhir_base=fhir_base if via == "fhir" else None, token=TOKEN
    )
    if via == "fhir":
        assert "prefetch" not in body
    cards = post(fixture_app.test_client(), body)
    assert check_response(cards) == []
    assert finding_ids(cards) == set(manifest()[fixture]["expected"])
    for card in cards["cards"]:
        assert card["indicator"] in ("warning", "critical")


def test_the_six_situations_are_covered():
    expected = {name: set(manifest()[name]["expected"]) for name in PV_FIXTURES}
    assert expected == {
        "pv-creatinine-rise-45pct": {"N3"},
        "pv-high-trough": {"N4"},
        "pv-new-clarithromycin": {"N9"},
        "pv-duplicate-calcineurin-inhibitor": {"N12"},
        "pv-new-pregnancy": {"P2"},
        "pv-stable-well-monitored": set(),
        "pv-paxlovid-active-20-days": {"N21"},
        "pv-paxlovid-ended-10-days-ago": {"N21"},
        "pv-paxlovid-ended-11-days-ago": set(),
        "pv-live-vaccine-given-42-days-ago": {"N19"},
        "pv-live-vaccine-given-43-days-ago": set(),
    }
    clarithromycin = [
        e["resource"]
        for e in FhirStore.from_fixtures(["pv-new-clarithromycin"]).search(
            "MedicationRequest", {"patient": ["pvclari-pat"]}, "http://x"
        )["entry"]
        if "clarithromycin" in e["resource"]["medicationCodeableConcept"]["text"]
    ]
    assert clarithromycin[0]["requester"]["reference"] == "Practitioner/urgent-care-prescriber"


def test_the_card_names_the_data_and_advises_on_continuing_therapy(fixture_app):
    cards = post(fixture_app.test_client(), pv_request(fixture_app, "pv-creatinine-rise-45pct"))["cards"]
    (card,) = cards
    assert card["indicator"] == "critical"
    assert "1.16" in card["detail"] and "0.8" in card["detail"]
    assert "dose reduction" in card["detail"] or "reduc" in card["detail"].lower()


def test_info_findings_are_shown_only_when_the_minimum_is_lowered(tmp_path):
    quiet = app_for(tmp_path / "a", hold_repeats={"enabled": False})
    assert finding_ids(post(quiet.test_client(), pv_request(quiet, "pv-new-pregnancy"))) == {"P2"}
    chatty = app_for(tmp_path / "b", hold_repeats={"enabled": False}, min_indicator="info")
    assert finding_ids(post(chatty.test_client(), pv_request(chatty, "pv-new-pregnancy"))) == {"P1", "P2"}


def test_no_active_tacrolimus_gets_no_cards_and_nothing_but_the_medications_is_read(fixture_app):
    store = RecordingStore()
    store.add_bundle(
        {"entry": [{"resource": r} for r in _resources("complete-well-monitored")]},
        exclude=manifest()["complete-well-monitored"]["drafts"],  # its tacrolimus is only a draft
    )
    with serve_in_thread(store, require_token=TOKEN) as base:
        body = build_request("complete-well-monitored", hook="patient-view", via="fhir", fhir_base=base)
        body["fhirAuthorization"]["access_token"] = TOKEN
        assert post(fixture_app.test_client(), body) == {"cards": []}
    assert store.asked == ["MedicationRequest"]


def test_a_patient_with_only_topical_or_stopped_tacrolimus_gets_no_cards(fixture_app):
    body = pv_request(fixture_app, "pv-high-trough")
    for entry in body["prefetch"]["medications"]["entry"]:
        if "tacrolimus" in entry["resource"]["medicationCodeableConcept"]["text"]:
            entry["resource"]["status"] = "stopped"
    assert post(fixture_app.test_client(), body) == {"cards": []}
    body = pv_request(fixture_app, "pv-high-trough")
    for entry in body["prefetch"]["medications"]["entry"]:
        if "tacrolimus" in entry["resource"]["medicationCodeableConcept"]["text"]:
            entry["resource"]["medicationCodeableConcept"] = {"text": "Protopic 0.1 % ointment"}
    assert post(fixture_app.test_client(), body) == {"cards": []}


def test_a_null_medications_prefetch_means_no_orders_and_an_error_in_it_is_fetched(fixture_app, fhir_base):
    body = pv_request(fixture_app, "pv-high-trough")
    body["prefetch"]["medications"] = None  # the EHR ran the query and found nothing
    assert post(fixture_app.test_client(), body) == {"cards": []}
    body = pv_request(fixture_app, "pv-high-trough", via="both", fhir_base=fhir_base, token=TOKEN)
    body["prefetch"]["medications"] = {"resourceType": "OperationOutcome", "issue": []}
    assert finding_ids(post(fixture_app.test_client(), body)) == {"N4"}  # fetched from the server instead


def test_without_medications_and_without_a_server_it_answers_412(fixture_app):
    body = pv_request(fixture_app, "pv-high-trough")
    del body["prefetch"]["medications"]
    response = fixture_app.test_client().post(PATH, json=body)
    assert response.status_code == 412
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["prefetch.medications"]


def test_an_order_hook_request_is_refused_by_name(fixture_app):
    body = build_request("pv-high-trough", hook="order-sign")
    response = fixture_app.test_client().post(PATH, json=body)
    assert response.status_code == 400
    assert "patient-view" in response.get_json()["error"]


# --- at most once a day unless it rises --------------------------------------------------------------------


def _resources(fixture: str) -> list[dict]:
    from cds_service.fixtures import load_bundle

    return [e["resource"] for e in load_bundle(fixture)["entry"]]


def with_bp(body: dict, systolic: int, diastolic: int, minutes_ago: int) -> dict:
    """The same chart with a newer blood pressure reading (N7: 160/100 warning, above 165/105 critical)."""
    body = copy.deepcopy(body)
    when = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat(timespec="seconds")
    reading = {
        "resourceType": "Observation",
        "id": f"bp-{systolic}-{diastolic}-{minutes_ago}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": f"Patient/{body['context']['patientId']}"},
        "effectiveDateTime": when,
        "component": [
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org"},
            }
            for code, value in (("8480-6", systolic), ("8462-4", diastolic))
        ],
    }
    body["prefetch"]["observations"]["entry"].insert(0, {"resource": reading})
    return body


def test_a_second_visit_within_a_day_shows_nothing_new_and_a_rising_indicator_shows_again(tmp_path):
    client = app_for(tmp_path).test_client()
    app = client.application
    first = pv_request(app, "pv-high-trough")
    assert finding_ids(post(client, first)) == {"N4"}
    assert held_back(post(client, first)) == {"N4"}  # same day, same finding: held back (--dev names it)
    warning = with_bp(first, 162, 102, 30)
    assert finding_ids(post(client, warning)) == {"N7"}  # a new finding shows; N4 stays held back
    assert held_back(post(client, warning)) == {"N4", "N7"}
    critical = with_bp(warning, 172, 110, 10)
    (card,) = post(client, critical)["cards"]
    assert card["indicator"] == "critical" and finding_ids({"cards": [card]}) == {"N7"}  # it rose: shown
    assert held_back(post(client, with_bp(critical, 162, 102, 5))) == {"N4", "N7"}  # fell back: seen higher
    other = pv_request(app, "pv-new-clarithromycin")  # another patient is not affected
    assert finding_ids(post(client, other)) == {"N9"}


def test_after_the_window_the_finding_shows_again(tmp_path):
    app = app_for(tmp_path)
    runtime = app.extensions["cds_runtime"]()
    service = runtime.service(SERVICE)
    body = {**pv_request(app, "pv-high-trough"), "hookInstance": str(uuid.uuid4())}
    now = datetime.now(UTC)

    def shown_at(moment: datetime) -> set[str]:
        answer = answer_hook(body, service, runtime, now=moment)
        if answer.to_remember:
            answer.to_remember()
        return finding_ids(answer.body)

    assert shown_at(now) == {"N4"}
    assert shown_at(now + timedelta(hours=23, minutes=59)) == set()
    assert shown_at(now + timedelta(hours=24, minutes=1)) == {"N4"}


def test_the_window_and_the_minimum_are_set_per_tenant_for_this_service_alone(tmp_path):
    directory = monitoring_config(tmp_path)
    settings_path = directory / "settings.yaml"
    settings = yaml.safe_load(settings_path.read_text())
    settings["tenants"] = {
        "clinic-a": {
            "hold_repeats": {"window_minutes": 30},
            "services": {SERVICE: {"min_indicator": "info", "hold_repeats": {"window_minutes": 720}}},
        }
    }
    settings_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    config = create_app(config_dir=directory, dev=True).extensions["cds_runtime"]().config
    own = config.settings_for(SERVICE, "clinic-a")
    assert own["min_indicator"] == "info" and own["hold_repeats"]["window_minutes"] == 720
    assert config.settings_for("tacrolimus-order-sign", "clinic-a")["hold_repeats"]["window_minutes"] == 30
    assert config.settings_for("tacrolimus-order-sign", "clinic-a")["min_indicator"] == "info"  # the default
    assert config.settings_for(SERVICE, None)["min_indicator"] == "warning"
    assert config.settings_for(SERVICE, None)["hold_repeats"]["window_minutes"] == 1440


@pytest.mark.slow
def test_across_two_workers_a_second_view_shows_nothing_new_and_a_rise_shows_again(tmp_path):
    """A real ``cds-service serve --workers 2``: views of the same chart land on both workers (fresh
    connections, several at once); the memory is in the database, so no worker repeats what another showed."""
    directory = monitoring_config(tmp_path)

    def view(service, body: dict) -> tuple[set[str], int]:
        body = {**body, "hookInstance": str(uuid.uuid4())}
        response = requests.post(service.base + PATH, json=body, timeout=60)
        assert response.status_code == 200, response.text
        event = service.wait_for_event(lambda e: e.get("hook_instance") == body["hookInstance"], timeout=30)
        return finding_ids(response.json()), event["worker_pid"]

    with start_service(directory, workers=2, dev=True) as service:
        templates_ = next(
            s["prefetch"]
            for s in requests.get(service.base + "/cds-services", timeout=30).json()["services"]
            if s["id"] == SERVICE
        )
        patient = build_request("pv-high-trough", hook="patient-view", prefetch_templates=templates_)
        shown, first_worker = view(service, patient)
        assert shown == {"N4"}
        workers_seen = {first_worker}
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(10):  # gunicorn decides which worker answers: keep viewing until both have
                again = list(pool.map(lambda _: view(service, patient), range(8)))
                assert {frozenset(found) for found, _ in again} == {frozenset()}
                workers_seen |= {pid for _, pid in again}
                if len(workers_seen) > 1:
                    break
        assert len(workers_seen) == 2, "no second view reached the other worker"
        rising = with_bp(patient, 162, 102, 20)
        assert view(service, rising)[0] == {"N7"}  # a new finding (warning)
        higher = with_bp(rising, 172, 110, 10)
        assert view(service, higher)[0] == {"N7"}  # the same finding, now critical: shown again
        with ThreadPoolExecutor(max_workers=4) as pool:
            after = list(pool.map(lambda _: view(service, higher), range(6)))
        assert {frozenset(found) for found, _ in after} == {frozenset()}


def _as_patient(body: dict, patient_id: str) -> dict:
    """The same chart under another patient id (a fresh patient for the memory)."""
    body = copy.deepcopy(body)
    body["context"]["patientId"] = patient_id
    return body


# --- the tools: sandbox run, explain, feedback report ------------------------------------------------------


def cli(*args: str):
    from click.testing import CliRunner

    from cds_service.cli import main

    return CliRunner().invoke(main, list(args))


def test_sandbox_run_opens_the_chart_of_a_patient_on_tacrolimus(tmp_path):
    directory = monitoring_config(tmp_path)
    config = ["--config", str(directory)]
    result = cli("sandbox", "run", "pv-new-clarithromycin", "--hook", "patient-view", *config)
    assert result.exit_code == 0, result.output
    assert "patient-view via prefetch · /cds-services/tacrolimus-monitoring" in result.output
    assert re.search(r"^findings on the cards:\s+N9$", result.output, re.MULTILINE)
    assert "clarithromycin" in result.output.lower()
    # Without --hook a patient-view fixture is sent by its own hook; by FHIR callback too.
    result = cli("sandbox", "run", "pv-duplicate-calcineurin-inhibitor", "--via", "fhir", *config)
    assert result.exit_code == 0, result.output
    assert re.search(r"^findings on the cards:\s+N12$", result.output, re.MULTILINE)


def test_explain_names_what_was_below_the_minimum_and_what_the_service_does_not_run(tmp_path):
    directory = monitoring_config(tmp_path)
    result = cli("explain", "pv-new-pregnancy", "--service", SERVICE, "--config", str(directory))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "service:  tacrolimus-monitoring (hook patient-view)" in out
    assert "card pregnancy (critical): P2" in out
    assert "P1   fired, below min_indicator (info)" in out
    assert "below this service's min_indicator (warning)" in out
    assert re.search(r"^N11  not run$", out, re.MULTILINE) and re.search(r"^S3   not run$", out, re.MULTILINE)
    assert re.search(r"^N4   quiet$", out, re.MULTILINE)
    # Explained as patient-view, an order fixture whose tacrolimus is only a draft has no trigger.
    result = cli("explain", "complete-well-monitored", "--service", SERVICE, "--config", str(directory))
    assert "no active systemic tacrolimus order on record" in result.output


def test_cards_shown_and_feedback_are_reported_for_the_service(tmp_path):
    import json as json_

    app = app_for(tmp_path)
    client = app.test_client()
    cards = post(client, pv_request(app, "pv-creatinine-rise-45pct"))["cards"]
    (card,) = cards
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": card["overrideReasons"][0]},
                "outcomeTimestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        ]
    }
    assert client.post(f"{PATH}/feedback", json=feedback).status_code == 200
    directory = tmp_path / "hooks"
    result = cli("feedback", "report", "--config", str(directory), "--format", "json")
    assert result.exit_code == 0, result.output
    rows = [r for r in json_.loads(result.output) if r["service"] == SERVICE]
    assert [(r["finding"], r["shown"], r["overridden"]) for r in rows] == [("N3", 1, 1)]
    assert card["overrideReasons"][0]["code"] in json_.dumps(rows[0]["override_reasons"])


# --- secured like the other services; the official CDS Hooks Sandbox ---------------------------------------


def test_outside_dev_mode_only_a_registered_ehr_signed_for_this_url_is_answered(tmp_path):
    from tests.security_helpers import Signer, bearer, claims

    issuer, key, base = "https://ehr.example.org/cds-client", Signer("ES384"), "https://cds.example.org"
    callers = [{"issuer": issuer, "jwks": {"keys": [key.jwk()]}, "algorithms": ["ES384"]}]
    directory = config_copy(tmp_path, server={"public_base_url": base}, callers=callers)
    app = create_app(config_dir=directory, dev=False)
    client = app.test_client()
    body = {**pv_request(app, "pv-high-trough"), "hookInstance": str(uuid.uuid4())}
    assert client.post(PATH, json=body).status_code == 401
    wrong = key.token(claims(issuer, f"{base}/cds-services/tacrolimus-order-sign"))
    assert client.post(PATH, json=body, headers=bearer(wrong)).status_code == 401
    right = key.token(claims(issuer, f"{base}{PATH}"))
    answer = client.post(PATH, json=body, headers=bearer(right))
    assert answer.status_code == 200 and finding_ids(answer.get_json()) == {"N4"}


def test_the_official_sandbox_patient_view_call_gets_the_cards(fixture_app):
    """What sandbox.cds-hooks.org's Patient View sends with `fhirServiceUrl` set to the fixture FHIR API: its
    default user, an open FHIR server (no fhirAuthorization) and prefetch it filled from our templates."""
    with serve_in_thread(FhirStore.from_fixtures()) as base:
        body = pv_request(fixture_app, "pv-duplicate-calcineurin-inhibitor", via="both", fhir_base=base)
        body["context"] = {"patientId": "pvcni-pat", "userId": "Practitioner/COREPRACTITIONER1"}
        del body["fhirAuthorization"]
        assert finding_ids(post(fixture_app.test_client(), body)) == {"N12"}
        del body["prefetch"]  # the service reads the open server itself (dev mode, loopback)
        assert finding_ids(post(fixture_app.test_client(), body)) == {"N12"}
    services = fixture_app.test_client().get(
        "/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"}
    )
    assert services.headers.get("Access-Control-Allow-Origin") in ("*", "https://sandbox.cds-hooks.org")


def test_a_reload_turns_it_off_and_on_again(tmp_path):
    directory = monitoring_config(tmp_path)
    client = create_app(config_dir=directory, dev=True).test_client()
    admin = {"Authorization": "Bearer dev-admin-token"}
    path = directory / "services" / f"{SERVICE}.yaml"

    def listed() -> bool:
        return SERVICE in [s["id"] for s in client.get("/cds-services").get_json()["services"]]

    assert listed()
    path.write_text(path.read_text().replace("enabled: true", "enabled: false"))
    assert client.post("/admin/reload", headers=admin).status_code == 200
    assert not listed()
    text = path.read_text().replace("enabled: false", "enabled: true")
    path.write_text(text.replace("min_indicator: warning", "min_indicator: info"))
    assert client.post("/admin/reload", headers=admin).status_code == 200
    assert listed()
    app = client.application
    assert finding_ids(post(client, pv_request(app, "pv-new-pregnancy"))) == {"P1", "P2"}
