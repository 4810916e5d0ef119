"""A tester's and an administrator's first minutes, clicked in headless Chromium against `cds-service serve
--dev` (issue 26): fire twice and read what was held back, clear the alert memory, order buttons off on a
chart without drafts, the cards scrolled into view on a narrow screen, the landing page, and /admin at 420 px
without sideways scrolling."""

from __future__ import annotations

import pytest
import requests
from playwright.sync_api import expect

from tests.support import config_copy, headless_chromium, start_service

pytestmark = pytest.mark.browser

PREGNANT = "pregnant-ln-flare-on-mmf"
ON_TACROLIMUS = "pv-high-trough"
NARROW = {"width": 420, "height": 800}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with start_service(config_copy(tmp_path_factory.mktemp("first-day")), workers=1, dev=True) as server:
        yield server.base


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as context:
        yield context


@pytest.fixture
def sandbox(browser, service):
    page = browser.new_page()
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.goto(f"{service}/sandbox")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    assert page.problems == []
    page.close()


def _fire(page, hook: str) -> None:
    with page.expect_response(lambda r: "/cds-services/" in r.url and r.request.method == "POST"):
        page.click(f".fire-button[data-hook={hook}]")
    expect(page.locator("#status")).to_contain_text(f"{hook} via")


def test_fire_twice_reads_what_was_held_back_then_clear_the_memory_and_see_the_card_again(sandbox):
    page = sandbox
    page.select_option("#fixture", ON_TACROLIMUS)
    expect(page.locator("#banner")).to_contain_text("trough 14")
    page.click("#clear-memory")  # start over: other tests of this module share the service's database
    expect(page.locator("#status")).to_contain_text("Alert memory cleared")

    _fire(page, "patient-view")
    expect(page.locator(".card[data-topic=nephrotoxicity-monitoring]")).to_be_visible()
    assert page.locator("#held-back").is_hidden()

    _fire(page, "patient-view")
    note = page.locator("#held-back")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Held back: 1 finding already shown")
    expect(note.locator("li[data-finding=N4]")).to_contain_text("Tacrolimus level 14 ng/mL above 10")
    expect(note).to_contain_text("already shown at patient-view for this patient")
    expect(page.locator(".no-cards")).to_have_text(
        "No cards: everything the service found was already shown (below)."
    )
    expect(page.locator("#status")).to_contain_text("1 finding held back")

    page.click("#clear-memory")
    expect(page.locator("#status")).to_contain_text("Alert memory cleared (1 remembered finding forgotten)")
    _fire(page, "patient-view")
    expect(page.locator(".card[data-topic=nephrotoxicity-monitoring] .chip")).to_have_text(["N4"])
    assert page.locator("#held-back").is_hidden()


def test_order_sign_after_order_select_names_the_info_findings_held_back(sandbox):
    page = sandbox
    page.select_option("#fixture", PREGNANT)
    page.wait_for_selector("#drafts li[data-ref]")
    page.click("#clear-memory")
    expect(page.locator("#status")).to_contain_text("Alert memory cleared")
    _fire(page, "order-select")
    expect(page.locator(".card")).to_have_count(3)
    _fire(page, "order-sign")
    expect(page.locator(".card")).to_have_count(1)
    held = page.locator("#held-back li")
    expect(held.first).to_be_visible()
    ids = {item.get_attribute("data-finding") for item in held.element_handles()}
    assert {"P1", "N1", "N11"} <= ids
    expect(page.locator("#held-back")).to_contain_text(
        "already shown at order-select for this patient and order"
    )


def test_a_chart_without_drafts_offers_only_patient_view(sandbox):
    page = sandbox
    page.select_option("#fixture", ON_TACROLIMUS)
    expect(page.locator("#banner")).to_contain_text("trough 14")
    expect(page.locator(".fire-button[data-hook=patient-view]")).to_be_enabled()
    for hook in ("order-select", "order-sign"):
        expect(page.locator(f".fire-button[data-hook={hook}]")).to_be_disabled()
    expect(page.locator("#fire-hint")).to_contain_text(
        "order-select and order-sign need a draft medication order"
    )

    page.select_option("#fixture", PREGNANT)  # a patient with a draft order: every button again
    page.wait_for_selector("#drafts li[data-ref]")
    for hook in ("order-select", "order-sign", "patient-view"):
        expect(page.locator(f".fire-button[data-hook={hook}]")).to_be_enabled()
    assert page.locator("#fire-hint").is_hidden()


def test_after_fire_the_cards_come_into_view_on_a_narrow_screen(browser, service):
    page = browser.new_page()
    page.set_viewport_size(NARROW)
    page.goto(f"{service}/sandbox")
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#fixture", PREGNANT)
    page.wait_for_selector("#drafts li[data-ref]")
    assert page.evaluate("window.scrollY") == 0
    page.click(".fire-button[data-hook=order-select]")
    page.wait_for_selector(".card")
    page.wait_for_function("window.scrollY > 0")
    top = page.evaluate("document.querySelector('#cards-heading').getBoundingClientRect().top")
    assert 0 <= top < NARROW["height"] / 2, top  # the cards' heading near the top of the screen
    page.close()


def test_the_landing_page_leads_to_the_sandbox_admin_and_docs(browser, service):
    page = browser.new_page()
    page.goto(f"{service}/")
    expect(page.locator("#link-admin")).to_have_attribute("href", "/admin")
    expect(page.locator("#link-docs")).to_have_attribute("href", "/docs")
    expect(page.locator("main")).to_contain_text("dev-admin-token")
    page.click("#link-sandbox")
    page.wait_for_selector("body[data-ready=true]")
    assert page.url == f"{service}/sandbox"
    page.close()


def test_admin_at_420_px_reads_without_sideways_scrolling(browser, service):
    # feedback statistics to show: a card shown and overridden, as the sandbox page would send them
    fixture = requests.get(f"{service}/sandbox/api/fixtures/{PREGNANT}", timeout=10).json()
    drafts = [draft["resource"] for draft in fixture["drafts"]]
    ask = {"fixture": PREGNANT, "hook": "order-select", "drafts": drafts}
    body = requests.post(f"{service}/sandbox/api/request", json=ask, timeout=10).json()
    cards = requests.post(f"{service}{body['service']['url']}", json=body["request"], timeout=30).json()[
        "cards"
    ]
    feedback = {"card": cards[0]["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-12-07T10:00:00Z"}
    requests.post(f"{service}{body['service']['url']}/feedback", json={"feedback": [feedback]}, timeout=10)

    page = browser.new_page()
    page.set_viewport_size(NARROW)
    page.goto(f"{service}/admin")
    expect(page.locator("#dev-token")).to_contain_text("dev-admin-token")  # the login page names it
    page.fill("#token", "dev-admin-token")
    page.click("button:text('Sign in')")
    page.wait_for_url(f"{service}/admin")
    expect(page.locator("#stats")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"the page is {width} px wide at {NARROW['width']} px"
    # every statistic still says what it is
    expect(page.locator("#stats td[data-label=Overridden]").first).to_be_visible()
    page.close()
