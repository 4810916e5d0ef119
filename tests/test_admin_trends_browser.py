"""The ``/admin/trends`` charts drawn by Chromium against a real ``cds-service serve --dev`` (issue 27):
seeded feedback, the numbers each chart draws equal ``feedback report``'s, and nothing the CSP refused.

Then a proposal on disk is simulated from the page's form. The screenshots are left at
``/tmp/admin-trends.png`` and ``/tmp/admin-staged.png``.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta

import pytest
from test_admin_trends import report_by_finding, seed_weeks

from cds_service.storage import make_engine
from tests.support import CHROMIUM, CHROMIUM_ARGS, config_copy, start_service

pytestmark = pytest.mark.browser
SCREENSHOT = "/tmp/admin-trends.png"
STAGED_SCREENSHOT = "/tmp/admin-staged.png"


@pytest.mark.timeout(600)  # the simulation of 2 x 200 patients in one server process, on a loaded machine
def test_the_trend_charts_draw_what_feedback_report_counts(tmp_path):
    from playwright.sync_api import sync_playwright

    config_dir = config_copy(tmp_path)
    engine = make_engine(f"sqlite:///{tmp_path / 'cds.sqlite3'}")
    today = datetime.now(UTC).date()
    seed_weeks(engine, today)
    engine.dispose()
    since = today - timedelta(weeks=6)
    expected = report_by_finding(config_dir, since)
    with (
        start_service(config_dir, workers=1, dev=True) as service,
        sync_playwright() as playwright,
        tempfile.TemporaryDirectory() as profile,
    ):
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"{service.base}/admin/login")
        page.fill("#token", "dev-admin-token")
        page.click("button:text('Sign in')")
        page.wait_for_url(f"{service.base}/admin")
        page.click("a:text('Trends')")
        page.goto(f"{service.base}/admin/trends?since={since}")
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        drawn = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll("section.finding")].map((s) => {
                const chart = Chart.getChart("chart-" + s.dataset.finding);
                const sum = (label) => chart.data.datasets.find((d) => d.label === label).data
                    .reduce((a, b) => a + b, 0);
                return [s.dataset.finding, {shown: sum("cards shown"), overridden: sum("overridden"),
                    accepted: sum("accepted"), drawn: chart.canvas.width > 0 && chart.canvas.height > 0}];
            }))"""
        )
        reasons = page.evaluate("() => Chart.getChart('chart-reasons').data.datasets[0].data")
        flagged = page.locator("#flagged").inner_text()
        page.screenshot(path=SCREENSHOT, full_page=True)

        # A proposal on disk, simulated from the page's own form before reloading.
        settings = config_dir / "settings.yaml"
        settings.write_text(settings.read_text().replace("potassium_max: 5.5", "potassium_max: 5.0"))
        page.goto(f"{service.base}/admin")
        with page.expect_response(f"{service.base}/admin/simulate", timeout=400_000) as answer:
            page.click("button:text('Simulate')")
        assert answer.value.status == 200
        staged = page.locator("#staged-differences").inner_text()
        page.locator("#staged").screenshot(path=STAGED_SCREENSHOT)
        browser.close()
    assert problems == []
    assert drawn.keys() == expected.keys() == {"N7", "N11"}
    for finding, counts in drawn.items():
        assert counts.pop("drawn")
        assert counts == {k: expected[finding][k] for k in ("shown", "overridden", "accepted")}, finding
    # 22 overrides, alert-fatigue and patient-ineligible in turn; the 10 cards with N7 count for both findings
    assert sorted(reasons, reverse=True) == [16, 16]
    assert "N11" in flagged and "22 of 25 cards" in flagged
    assert "N5" in staged and "High potassium" in staged
