"""The administrators' page clicked in headless Chromium against a real `cds-service serve --dev` process.

Chromium posts the page's forms with ``Origin: null`` (the pages send no Referer) and ``Sec-Fetch-Site:
same-origin``; the tests with the Flask client only imitate that, this one is the browser itself. Sign in with
the dev token, reload a good configuration (the workers restart on it), then a broken one: the page names the
problem and the service keeps serving the last good configuration.
"""

from __future__ import annotations

import tempfile
import time

import pytest

from tests.support import CHROMIUM, CHROMIUM_ARGS, config_copy, start_service

pytestmark = pytest.mark.browser


def _threshold(page, key: str) -> str:
    row = page.locator("#thresholds tr", has=page.locator(f"code:text-is('{key}')"))
    return row.locator("td").nth(1).inner_text()


def _wait_for_threshold(page, base: str, key: str, value: str) -> None:
    """The workers restart on the new configuration in the background: refresh until the page shows it."""
    deadline = time.monotonic() + 60
    while _threshold(page, key) != value:
        assert time.monotonic() < deadline, f"{key} still {_threshold(page, key)!r}, expected {value!r}"
        time.sleep(0.5)
        page.goto(f"{base}/admin")


def test_reload_configuration_by_clicking_good_and_bad(tmp_path):
    from playwright.sync_api import sync_playwright

    settings = tmp_path / "hooks" / "settings.yaml"
    with (
        start_service(config_copy(tmp_path), workers=1, dev=True) as service,
        sync_playwright() as playwright,
        tempfile.TemporaryDirectory() as profile,
    ):
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page()
        page.goto(f"{service.base}/admin")
        assert page.url.endswith("/admin/login")
        page.fill("#token", "dev-admin-token")
        page.click("button:text('Sign in')")
        page.wait_for_url(f"{service.base}/admin")
        assert _threshold(page, "potassium_max") == "5.5"

        settings.write_text(settings.read_text().replace("potassium_max: 5.5", "potassium_max: 5.9"))
        with page.expect_response(f"{service.base}/admin/reload") as answer:
            page.click("button:text('Reload configuration')")
        assert answer.value.status == 200, answer.value.text()
        assert "Configuration checked; the workers restart on it" in page.locator(".notice").inner_text()
        _wait_for_threshold(page, service.base, "potassium_max", "5.9")

        settings.write_text(settings.read_text().replace("potassium_max: 5.9", "potassium_max: lots"))
        with page.expect_response(f"{service.base}/admin/reload") as answer:
            page.click("button:text('Reload configuration')")
        assert answer.value.status == 422
        refused = page.locator(".problems").inner_text()
        assert "Reload refused; still serving the last good configuration." in refused
        assert "thresholds.potassium_max: must be a number between 2 and 10, got 'lots'" in refused
        page.goto(f"{service.base}/admin")
        assert _threshold(page, "potassium_max") == "5.9"  # still the last good one, after the reload

        # Another site's page posts the same form from this signed-in browser: refused.
        evil = browser.new_page()
        form = f'<form method="post" action="{service.base}/admin/reload"><button>Win a prize</button></form>'
        evil.route("http://evil.test/", lambda route: route.fulfill(content_type="text/html", body=form))
        evil.goto("http://evil.test/")
        with evil.expect_response(f"{service.base}/admin/reload") as answer:
            evil.click("button")
        assert answer.value.status in (401, 403), answer.value.status
        evil.close()

        page.click("button:text('Sign out')")
        page.wait_for_url(f"{service.base}/admin/login")
        browser.close()
