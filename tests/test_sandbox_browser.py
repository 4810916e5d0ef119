"""The /sandbox page in headless Chromium against a real `cds-service serve --dev` process.

A full round as a tester does it: pick a fixture, fire, read the cards, accept a suggestion, dismiss a card
with a reason; then the feedback rows in the service's SQLite file are checked. Two more tests feed the
page hand-made cards (Playwright answers the service call): hostile Markdown and HTML, which the real
service never sends, must not run; and delete/update actions, which no fixture triggers, must change the
draft list as the CDS Hooks spec says.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from cds_service.fixtures import manifest
from tests.support import CHROMIUM, CHROMIUM_ARGS, config_copy, start_service

PREGNANT = "pregnant-ln-flare-on-mmf"
RISK_BENEFIT = ("risk-benefit-ratio", "Recipient assessment of risk/benefit ratio")
SCREENSHOT = Path(tempfile.gettempdir()) / "sandbox-round.png"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """`cds-service serve --dev` on a free port, on a copy of hooks/ whose database is a temporary file."""
    tmp = tmp_path_factory.mktemp("sandbox-browser")
    with start_service(config_copy(tmp), workers=1, dev=True) as server:  # hooks/ with its database in tmp
        yield server.base, tmp / "cds.sqlite3"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        yield context
        context.close()


@pytest.fixture
def page(browser, service):
    page = browser.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("dialog", lambda dialog: (page.problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.goto(f"{service[0]}/sandbox")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    page.close()


def _feedback_rows(database: Path, card_uuid: str) -> list[dict]:
    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        rows = connection.execute(
            "SELECT * FROM feedback WHERE card_uuid = ? ORDER BY id", (card_uuid,)
        ).fetchall()
    return [dict(row) for row in rows]


def _wait_for_rows(database: Path, card_uuid: str, count: int) -> list[dict]:
    for _ in range(100):
        rows = _feedback_rows(database, card_uuid)
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    return _feedback_rows(database, card_uuid)


def _shown_findings(page) -> set[str]:
    return {chip.inner_text() for chip in page.query_selector_all(".card .chip")}


def test_page_has_its_own_strict_csp(service):
    response = requests.get(f"{service[0]}/sandbox", timeout=10)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "<script>" not in response.text  # no inline script: the only script is /sandbox/static/sandbox.js


def test_full_round_pick_fire_accept_dismiss_and_feedback_is_stored(page, service):
    _, database = service
    page.select_option("#fixture", PREGNANT)
    page.wait_for_selector("#drafts li[data-ref]")
    assert "Expected findings" in page.inner_text("#banner")
    drafts_before = page.locator("#drafts li[data-ref]").count()

    page.click(".fire-button[data-hook=order-select]")
    pregnancy = page.wait_for_selector(".card[data-topic=pregnancy]")
    assert pregnancy.get_attribute("data-indicator") == "critical"
    assert "pregnan" in pregnancy.inner_text().lower()
    assert _shown_findings(page) == set(manifest()[PREGNANT]["expected"])
    assert page.query_selector(".card.indicator-critical .badge").inner_text().lower() == "critical"

    # Accept the monitoring card's "order labs" suggestion: lab orders join the draft list.
    monitoring = page.query_selector(".card[data-topic=nephrotoxicity-monitoring]")
    suggestion = monitoring.query_selector(".suggestion")
    monitoring_uuid, suggestion_uuid = (
        monitoring.get_attribute("data-uuid"),
        suggestion.get_attribute("data-uuid"),
    )
    suggestion.click()
    page.wait_for_selector("#drafts li[data-type=ServiceRequest]")
    assert page.locator("#drafts li[data-ref]").count() > drafts_before
    expect(page.locator("#status")).to_contain_text("accepted")

    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Dismiss the pregnancy card with a reason.
    pregnancy_uuid = pregnancy.get_attribute("data-uuid")
    pregnancy.query_selector(".dismiss-reason").select_option(label=RISK_BENEFIT[1])
    pregnancy.query_selector(".dismiss-button").click()
    page.wait_for_selector(f".dismissed-line[data-uuid='{pregnancy_uuid}']")
    assert page.query_selector(".card[data-topic=pregnancy]") is None
    expect(page.locator("#status")).to_contain_text("overridden")

    accepted = _wait_for_rows(database, monitoring_uuid, 1)
    assert [(r["outcome"], json.loads(r["accepted_suggestions"])) for r in accepted] == [
        ("accepted", [suggestion_uuid])
    ]
    overridden = _wait_for_rows(database, pregnancy_uuid, 1)
    assert [(r["outcome"], r["override_code"]) for r in overridden] == [("overridden", RISK_BENEFIT[0])]
    assert overridden[0]["service_id"] == "tacrolimus-order-select"

    # Sign with the new lab drafts, the service reading the record from the mounted fixture FHIR API.
    page.check("input[name=via][value=fhir]")
    page.click(".fire-button[data-hook=order-sign]")
    expect(page.locator("#status")).to_contain_text("order-sign via fhir: HTTP 200")
    assert page.query_selector(".card[data-topic=pregnancy]") is not None
    assert page.problems == []


def test_editing_the_product_changes_the_order_sent(page):
    page.select_option("#fixture", "p1-pregnant-sle")
    product = page.wait_for_selector("#drafts select.product")
    product.select_option("1664461")  # 24 HR tacrolimus 1 MG Extended Release Oral Tablet
    page.fill("#drafts input.dose", "2 mg once daily")
    page.dispatch_event("#drafts input.dose", "change")
    with page.expect_request("**/cds-services/tacrolimus-order-select") as sent:
        page.click(".fire-button[data-hook=order-select]")
    draft = sent.value.post_data_json["context"]["draftOrders"]["entry"][0]["resource"]
    assert draft["medicationCodeableConcept"]["coding"][0]["code"] == "1664461"
    assert draft["dosageInstruction"][0]["text"] == "2 mg once daily"
    page.wait_for_selector(".card[data-topic=pregnancy]")


def test_stop_mycophenolate_is_applied_when_firing_again(page):
    page.select_option("#fixture", PREGNANT)
    page.wait_for_selector("#drafts li[data-ref]")
    page.click(".fire-button[data-hook=order-select]")
    pregnancy = page.wait_for_selector(".card[data-topic=pregnancy]")
    stop = next(
        b for b in pregnancy.query_selector_all(".suggestion") if "mycophenolate" in b.inner_text().lower()
    )
    stop.click()
    expect(page.locator("#staged li")).to_contain_text("Stop mycophenolate")

    # Fired again, on the path where the service reads the rest of the record from /sandbox/fhir itself.
    page.check("input[name=via][value=fhir]")
    with page.expect_response("**/cds-services/tacrolimus-order-select") as answered:
        page.click(".fire-button[data-hook=order-select]")
    findings = {
        f["id"]
        for c in answered.value.json()["cards"]
        for f in c["extension"]["org.example.tacrolimus-cds.findings"]
    }
    assert "P2" not in findings and "P1" in findings
    expect(page.locator("#status")).to_contain_text("order-select via fhir: HTTP 200")
    assert "P2" not in _shown_findings(page)
    assert page.query_selector(".card.indicator-critical") is None
    assert page.problems == []


def test_a_draft_can_be_marked_as_renewal_of_a_stored_order(page):
    page.select_option("#fixture", "tacrolimus-active-duplicate")
    renews = page.wait_for_selector("#drafts select.renews")
    stored = next(o for o in renews.query_selector_all("option") if "tacrolimus" in o.inner_text().lower())
    renews.select_option(stored.get_attribute("value"))
    with page.expect_request("**/cds-services/tacrolimus-order-select") as sent:
        page.click(".fire-button[data-hook=order-select]")
    draft = sent.value.post_data_json["context"]["draftOrders"]["entry"][0]["resource"]
    assert draft["priorPrescription"] == {"reference": stored.get_attribute("value")}
    expect(page.locator("#status")).to_contain_text("HTTP 200")
    # Renewing the immediate-release order as Envarsus is still a formulation switch (N17), never a duplicate.
    assert _shown_findings(page) == set(manifest()["tacrolimus-active-duplicate"]["expected"]) == {"N17"}


HOSTILE = "<script>window.__pwned = 'script'</script> <img src=x onerror=\"window.__pwned = 'img'\">"


def _hand_made_cards(route, cards: list[dict]) -> None:
    route.fulfill(status=200, content_type="application/json", body=json.dumps({"cards": cards}))


def test_hostile_card_content_is_shown_as_text_and_never_runs(page):
    card = {
        "uuid": "11111111-2222-4333-8444-555555555555",
        "summary": HOSTILE,
        "indicator": "warning",
        "detail": f"**Bold** {HOSTILE}\n\n[click me](javascript:window.__pwned='link')\n\n<iframe src=x>",
        "source": {"label": HOSTILE},
        "suggestions": [{"label": HOSTILE, "uuid": "s-1", "actions": []}],
        "selectionBehavior": "any",
        "links": [{"label": "bad link", "url": "javascript:window.__pwned='card-link'", "type": "absolute"}],
        "overrideReasons": [{"system": "x", "code": "y", "display": HOSTILE}],
    }
    page.route("**/cds-services/tacrolimus-order-select", lambda route: _hand_made_cards(route, [card]))
    page.select_option("#fixture", "p1-pregnant-sle")
    page.wait_for_selector("#drafts li[data-ref]")
    page.click(".fire-button[data-hook=order-select]")
    shown = page.wait_for_selector(".card")

    assert page.evaluate("window.__pwned") is None
    assert page.query_selector_all(".card script, .card img, .card iframe") == []
    assert page.query_selector_all(".card a[href^='javascript']") == []
    assert "<script>" in shown.query_selector(".card-summary").inner_text()
    assert "<img src=x" in shown.query_selector(".card-detail").inner_text()
    assert shown.query_selector(".card-detail strong").inner_text() == "Bold"  # Markdown itself still renders
    for text in ("click me", "bad link"):
        page.click(f".card :text('{text}')")
    assert page.evaluate("window.__pwned") is None
    assert page.problems == []


def test_suggestion_actions_create_delete_and_update_the_drafts(page):
    page.select_option("#fixture", "tacrolimus-kidney-decline-clarithromycin")
    page.wait_for_selector("#drafts li[data-ref]")
    refs = [li.get_attribute("data-ref") for li in page.query_selector_all("#drafts li[data-ref]")]
    tacrolimus, clarithromycin = refs  # the fixture drafts both
    replacement = {
        "resourceType": "MedicationRequest",
        "id": tacrolimus.split("/")[1],
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "tacrolimus 0.5 mg (new)"},
    }
    lab = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "code": {"text": "Trough level"},
    }
    card = {
        "uuid": "66666666-2222-4333-8444-555555555555",
        "summary": "Hand-made card",
        "indicator": "info",
        "source": {"label": "test"},
        "selectionBehavior": "any",
        "suggestions": [
            {"label": "Remove clarithromycin", "uuid": "s-del",
             "actions": [{"type": "delete", "description": "remove", "resourceId": clarithromycin}]},
            {"label": "Change the dose", "uuid": "s-upd",
             "actions": [{"type": "update", "description": "change", "resource": replacement}]},
            {"label": "Order a trough", "uuid": "s-new",
             "actions": [{"type": "create", "description": "order", "resource": lab}]},
        ],
    }  # fmt: skip
    page.route("**/cds-services/tacrolimus-order-select", lambda route: _hand_made_cards(route, [card]))
    page.click(".fire-button[data-hook=order-select]")
    page.wait_for_selector(".card")
    for label in ("Remove clarithromycin", "Change the dose", "Order a trough"):
        page.click(f".suggestion:has-text('{label}')")
    page.wait_for_selector("#drafts li[data-type=ServiceRequest]")

    labels = {
        li.get_attribute("data-ref"): li.inner_text()
        for li in page.query_selector_all("#drafts li[data-ref]")
    }
    assert clarithromycin not in labels
    assert "tacrolimus 0.5 mg (new)" in labels[tacrolimus]
    assert any(ref.startswith("ServiceRequest/") and "Trough level" in text for ref, text in labels.items())


def test_the_patient_view_button_opens_a_chart_and_shows_the_monitoring_warning(page, service):
    """A patient on tacrolimus for months: Fire patient-view calls tacrolimus-monitoring (no draft order);
    a second view within 24 hours (the service reading the chart from /sandbox/fhir) shows nothing new."""
    page.select_option("#fixture", "pv-high-trough")
    expect(page.locator("#banner")).to_contain_text("trough 14")
    page.click(".fire-button[data-hook=patient-view]")
    card = page.wait_for_selector(".card[data-topic=nephrotoxicity-monitoring]")
    assert card.get_attribute("data-indicator") == "warning"
    assert _shown_findings(page) == {"N4"}
    page.check("input[name=via][value=fhir]")
    page.click(".fire-button[data-hook=patient-view]")
    expect(page.locator("#status")).to_contain_text("patient-view via fhir: HTTP 200, 0 cards")
    assert page.query_selector(".card") is None
    assert "POST /cds-services/tacrolimus-monitoring" in page.text_content("body")  # the raw exchange
    assert page.problems == []


def test_the_co_prescribing_picker_drafts_clarithromycin_and_fires_the_co_prescribing_service(page):
    """Issue 24: a patient already on tacrolimus, another clinician's drug picked and drafted, the
    co-prescribing service fired: its card names the tacrolimus being taken; acetaminophen gives no card."""
    page.click("#co-prescribing summary")
    page.click("#co-patient")
    page.wait_for_selector("#drafts li[data-ref]")
    page.select_option("#co-drug", "clarithromycin")
    page.click("#co-draft")
    expect(page.locator("#drafts li[data-ref]")).to_have_count(1)
    assert "clarithromycin" in page.inner_text("#drafts").lower()
    page.click(".co-fire[data-service=tacrolimus-co-prescribing-select]")
    card = page.wait_for_selector(".card[data-indicator=warning]")
    assert "This patient takes tacrolimus" in card.inner_text()
    assert _shown_findings(page) == {"N9"}

    page.select_option("#co-drug", "acetaminophen")
    page.click("#co-draft")
    page.click(".co-fire[data-service=tacrolimus-co-prescribing-sign]")
    page.wait_for_selector(".no-cards")
    assert page.problems == []
