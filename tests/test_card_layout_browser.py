"""The cards in a narrow EHR sidebar: the /sandbox page at 420 px in headless Chromium shows every card's text
without clipping or sideways scrolling (rules.md § Card contract: Markdown that renders well in a sidebar)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests.support import CHROMIUM, CHROMIUM_ARGS, config_copy, start_service

SCREENSHOT = Path(tempfile.gettempdir()) / "sandbox-420px.png"
FIXTURES = (
    "pregnant-ln-flare-on-mmf",
    "tacrolimus-kidney-decline-clarithromycin",
    "mmf-failure-hbv-rising-upcr",
)

pytestmark = pytest.mark.browser

OVERFLOWING = """() => {
  const out = [];
  const page = document.documentElement.clientWidth;
  for (const card of document.querySelectorAll('.card')) {
    const box = card.getBoundingClientRect();
    if (box.right > page + 0.5) out.push(`card ${card.dataset.topic} is ${box.right - page}px too wide`);
    for (const el of card.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width === 0) continue;
      if (r.right > box.right + 0.5 || r.left < box.left - 0.5)
        out.push(`${el.tagName} "${el.textContent.slice(0, 40)}" leaves its card`);
      if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== 'visible')
        out.push(`${el.tagName} "${el.textContent.slice(0, 40)}" is clipped`);
    }
  }
  if (document.documentElement.scrollWidth > page + 0.5) out.push('the page scrolls sideways');
  return out;
}"""


@pytest.mark.parametrize("fixture", FIXTURES)
def test_cards_fit_a_420_px_sidebar(tmp_path, fixture):
    from playwright.sync_api import sync_playwright

    with (
        start_service(config_copy(tmp_path), workers=1, dev=True) as service,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 420, "height": 900})
        page.goto(f"{service.base}/sandbox")
        page.wait_for_selector("body[data-ready=true]")
        page.select_option("#fixture", fixture)
        page.wait_for_selector("#drafts li[data-ref]")
        page.click(".fire-button[data-hook=order-select]")
        page.wait_for_selector(".card .card-detail")
        assert page.locator(".card").count() >= 1
        problems = page.evaluate(OVERFLOWING)
        page.locator(".cards").screenshot(path=str(SCREENSHOT.with_stem(f"sandbox-420px-{fixture}")))
        browser.close()
    assert problems == []
