"""``/admin/trends`` (issue 27): per finding and week, cards shown, overridden, accepted, as charts with a
data table each; their numbers are ``feedback report``'s; findings overridden too often are flagged."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import insert
from test_admin import BEARER, HTML, TOKEN_SHA256, admin_app
from test_report import show_and_answer

from cds_service.cli import main
from cds_service.tables import feedback, shown_findings

# Storage-facing: every test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_database")

SERVICE = "tacrolimus-order-sign"


def seed_weeks(engine, today: date) -> None:
    """Four weeks of N11 cards, overridden 22 times out of 25 (flagged), and N7 cards mostly accepted."""
    shown, answers = [], []
    for n in range(25):
        when = datetime.combine(today - timedelta(days=3 + n), datetime.min.time(), tzinfo=UTC)
        card = str(uuid.UUID(int=n + 1))
        for finding, indicator in (("N11", "info"), ("N7", "warning")) if n < 10 else (("N11", "info"),):
            shown.append(
                {"shown_at": when, "service_id": SERVICE, "tenant": None, "hook_instance": f"h{n}",
                 "card_uuid": card, "topic": "monitoring", "finding_id": finding, "indicator": indicator}
            )  # fmt: skip
        outcome = "overridden" if n < 22 else "accepted"
        reason = ("alert-fatigue", "Already known") if n % 2 else ("patient-ineligible", "Not relevant")
        answers.append(
            {"received_at": when + timedelta(minutes=5), "service_id": SERVICE, "tenant": None,
             "card_uuid": card, "outcome": outcome, "outcome_timestamp": when.isoformat(),
             "accepted_suggestions": [],
             "override_system": "http://example.org/reasons" if outcome == "overridden" else None,
             "override_code": reason[0] if outcome == "overridden" else None,
             "override_display": reason[1] if outcome == "overridden" else None, "user_comment": None}
        )  # fmt: skip
    with engine.begin() as connection:
        connection.execute(insert(shown_findings), shown)
        connection.execute(insert(feedback), answers)


def trend_data(html: str) -> dict:
    found = re.search(
        r'<script type="application/json" id="trend-data" nonce="[^"]+">(.*?)</script>', html, re.S
    )
    assert found, "no trend data in the page"
    return json.loads(found.group(1))


def report_by_finding(config_dir, since: date) -> dict[str, Counter]:
    """``feedback report --since`` summed over the services, per finding."""
    result = CliRunner().invoke(
        main,
        ["feedback", "report", "--since", since.isoformat(), "--format", "json", "--config", str(config_dir)],
    )
    assert result.exit_code == 0, result.output
    totals: dict[str, Counter] = {}
    for row in json.loads(result.output):
        totals.setdefault(row["finding"], Counter()).update(
            {k: row[k] for k in ("shown", "accepted", "overridden")} | Counter(row["override_reasons"])
        )
    return totals


def test_trends_count_what_feedback_report_counts_and_flag_the_overridden(tmp_path):
    app = admin_app(tmp_path, dev=True)
    show_and_answer(app)
    runtime = app.extensions["cds_runtime"]()
    today = datetime.now(UTC).date()
    seed_weeks(runtime.store.engine, today)
    since = today - timedelta(weeks=6)

    page = app.test_client().get(f"/admin/trends?since={since}", headers={**BEARER, **HTML})
    assert page.status_code == 200
    data = trend_data(page.get_data(as_text=True))
    expected = report_by_finding(tmp_path / "hooks", since)
    drawn = {f["finding"]: f for f in data["findings"]}
    assert drawn.keys() == expected.keys()
    for finding, f in drawn.items():
        weeks = Counter()
        for w in f["weeks"]:
            weeks.update({k: w[k] for k in ("shown", "accepted", "overridden")})
        assert (f["shown"], f["accepted"], f["overridden"]) == tuple(
            weeks[k] for k in ("shown", "accepted", "overridden")
        )
        assert {k: expected[finding][k] for k in ("shown", "accepted", "overridden")} == {
            k: f[k] for k in ("shown", "accepted", "overridden")
        }, finding
        for reason in f["reasons"]:
            assert expected[finding][reason["code"]] == reason["count"]
    assert drawn["N11"]["flagged"] and drawn["N11"]["shown"] == 27  # 25 seeded, 2 from the fixtures' calls
    assert not drawn["N7"]["flagged"] and not drawn["N2"]["flagged"]  # N2: overridden, but on 2 cards only
    assert len(drawn["N11"]["weeks"]) in (7, 8)  # six weeks, the first and last part weeks
    assert data["top_reasons"][0]["code"] in ("alert-fatigue", "patient-ineligible")
    other = app.test_client().get(
        f"/admin/trends?since={since}&tenant=hospital-b", headers={**BEARER, **HTML}
    )
    assert trend_data(other.get_data(as_text=True))["findings"] == []  # per tenant: nothing of hospital-b's


def test_the_flag_threshold_is_a_setting(tmp_path):
    app = admin_app(tmp_path / "b", admin={"token_sha256": TOKEN_SHA256, "override_flag_rate": 0.95})
    today = datetime.now(UTC).date()
    seed_weeks(app.extensions["cds_runtime"]().store.engine, today)
    data = trend_data(
        app.test_client().get("/admin/trends", headers={**BEARER, **HTML}).get_data(as_text=True)
    )
    assert not any(f["flagged"] for f in data["findings"])  # 22 of 27 = 81 %, under 95 %


def test_the_trends_page_runs_only_its_own_nonce_tagged_scripts(tmp_path):
    app = admin_app(tmp_path)
    page = app.test_client().get("/admin/trends", headers={**BEARER, **HTML})
    policy = page.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy and "default-src 'none'" in policy
    html = page.get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>", html)
    assert scripts and all(f'nonce="{nonce}"' in s for s in scripts)
    assert app.test_client().get("/admin/trends").status_code in (303, 401)  # the token is needed
    assert app.test_client().get("/admin/static/trends.js").status_code == 200
    assert app.test_client().get("/smart/static/vendor/chart.umd.min.js").status_code == 200
