"""The administrators' page: closed without the admin token, the effective configuration and the feedback
statistics (from real HTTP calls) when opened, reload from the page or the API."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser

import pytest
from test_report import SIGN, show_and_answer

from cds_service.app import create_app
from tests.support import config_copy

# Storage-facing: every test here runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("each_database")

TOKEN = "admin-token-for-the-tests-0123456789"
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture(autouse=True)
def no_admin_token_in_the_environment(monkeypatch):
    monkeypatch.delenv("CDS_ADMIN_TOKEN", raising=False)


def admin_app(tmp_path, dev: bool = False, **changes):
    changes.setdefault("admin", {"token_sha256": TOKEN_SHA256})
    return create_app(config_dir=config_copy(tmp_path, **changes), dev=dev)


class Tables(HTMLParser):
    """The text of every table cell, by table id: {"stats": [["service", "finding", ...], ...]}."""

    def __init__(self, html: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def row(table: list[list[str]], *first: str) -> list[str]:
    return next(r for r in table if r[: len(first)] == list(first))


# --- who gets in --------------------------------------------------------------------------------------------


def test_without_a_configured_token_the_admin_page_does_not_exist(tmp_path):
    client = admin_app(tmp_path, admin={}).test_client()
    assert client.get("/admin", headers=BEARER).status_code == 404
    assert client.post("/admin/reload", headers=BEARER).status_code == 404
    assert client.get("/admin/login").status_code == 404


def test_without_the_token_an_api_client_gets_401_and_a_browser_the_login_form(tmp_path):
    client = admin_app(tmp_path).test_client()
    response = client.get("/admin")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    browser = client.get("/admin", headers=HTML)
    assert browser.status_code == 303 and browser.headers["Location"].endswith("/admin/login")
    assert client.get("/admin", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    assert client.get("/admin", headers={"Authorization": f"Bearer {TOKEN_SHA256}"}).status_code == 401
    assert client.post("/admin/reload").status_code == 401
    login = client.get("/admin/login")
    assert login.status_code == 200 and 'name="token"' in login.get_data(as_text=True)


def test_the_login_form_sets_a_strict_httponly_cookie_that_opens_the_page(tmp_path):
    client = admin_app(tmp_path).test_client()
    refused = client.post("/admin/login", data={"token": "not-it"})
    assert refused.status_code == 401 and "does not open" in refused.get_data(as_text=True)
    response = client.post("/admin/login", data={"token": TOKEN})
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert client.get("/admin", headers=HTML).status_code == 200
    client.post("/admin/logout", headers={"Sec-Fetch-Site": "same-origin"})
    assert client.get("/admin", headers=HTML).status_code == 303


def test_the_token_may_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_ADMIN_TOKEN", "another-long-admin-token-from-env")
    client = admin_app(tmp_path).test_client()
    assert (
        client.get(
            "/admin", headers={"Authorization": "Bearer another-long-admin-token-from-env"}
        ).status_code
        == 200
    )
    assert client.get("/admin", headers=BEARER).status_code == 200  # the configured hash still opens it


def test_dev_mode_has_a_fixed_token_only_when_none_is_configured(tmp_path):
    dev_open = admin_app(tmp_path / "a", dev=True, admin={}).test_client()
    assert dev_open.get("/admin", headers={"Authorization": "Bearer dev-admin-token"}).status_code == 200
    dev_configured = admin_app(tmp_path / "b", dev=True).test_client()
    assert (
        dev_configured.get("/admin", headers={"Authorization": "Bearer dev-admin-token"}).status_code == 401
    )


# --- what the page shows ------------------------------------------------------------------------------------


def test_the_page_shows_the_effective_configuration(tmp_path):
    app = admin_app(
        tmp_path,
        thresholds={"potassium_max": 5.8},
        findings={"N1": {"enabled": False}, "P2": {"indicator": "warning"}},
        tenants={"hospital-a": {"thresholds": {"creatinine_rise_warning": 0.15},
                                "findings": {"N7": {"enabled": False}}}},
    )  # fmt: skip
    response = app.test_client().get("/admin", headers=BEARER)
    assert response.status_code == 200 and response.mimetype == "text/html"
    tables = Tables(response.get_data(as_text=True)).tables
    assert [r[0] for r in tables["services"][1:]] == [
        "tacrolimus-monitoring",
        "tacrolimus-order-select",
        "tacrolimus-order-sign",
    ]
    assert row(tables["thresholds"], "potassium_max")[1] == "5.8"
    rise = row(tables["thresholds"], "creatinine_rise_warning")
    assert rise[1] == "0.2" and "N2" in rise[3] and "tenant hospital-a: 0.15" in rise[4]
    n1 = row(tables["findings"], "N1")
    assert n1[1] == "Baseline labs missing"  # every finding is named in words next to its id
    assert n1[2].startswith("off") and n1[3].startswith("off") and n1[4].startswith("off")
    assert row(tables["findings"], "N11")[2] == "not run by this service"  # patient-view: N11, N15, S0-S4
    assert row(tables["services"], "tacrolimus-monitoring")[1] == "patient-view"
    assert "min_indicator: warning" in row(tables["services"], "tacrolimus-monitoring")[4]
    assert all(r[1] for r in tables["findings"][1:])
    assert "indicator warning" in row(tables["findings"], "P2")[2]
    assert "tenant hospital-a: off" in row(tables["findings"], "N7")[5]
    assert row(tables["other"], "hold_repeats.window_minutes")[1] == "60"
    assert (
        row(tables["tenants"], "hospital-a")[1]
        == "thresholds.creatinine_rise_warning: 0.15 findings.N7.enabled: false"
    )
    assert row(tables["other"], "fhir.deadline_seconds")[1] == "2.5"


def test_the_page_shows_the_statistics_of_feedback_posted_over_http(tmp_path):
    app = admin_app(tmp_path, dev=True)
    show_and_answer(app)
    html = app.test_client().get("/admin", headers=BEARER).get_data(as_text=True)
    stats = Tables(html).tables["stats"]
    assert stats[0] == [
        "Service",
        "Finding",
        "In words",
        "Shown",
        "Accepted",
        "Overridden",
        "Accept rate",
        "Override reasons",
    ]
    reason = "risk-benefit-ratio (Recipient assessment of risk/benefit ratio) 1"  # the stored display
    assert row(stats, SIGN, "N2") == [
        SIGN,
        "N2",
        "Creatinine 20–30 % above baseline",
        "2",
        "0",
        "1",
        "0%",
        reason,
    ]
    # the accepted suggestion (stop mycophenolate) answers P2, not P1 on the same card
    assert row(stats, SIGN, "P2") == [SIGN, "P2", "Teratogen active in pregnancy", "1", "1", "0", "100%", ""]
    assert row(stats, SIGN, "P1")[3:7] == ["1", "0", "0", "-"]
    assert row(stats, SIGN, "S3")[6] == "-"
    # the chart: one bar group per row, each titled with its numbers
    svg = html[html.index("<svg") : html.index("</svg>")]
    assert "<title>N2 · tacrolimus-order-sign: shown 2, accepted 0, overridden 1</title>" in svg
    assert svg.count("<g>") == len(stats) - 1
    filtered = app.test_client().get("/admin?since=2999-01-01", headers=BEARER).get_data(as_text=True)
    assert "stats" not in Tables(filtered).tables and "No cards shown" in filtered


def test_the_page_loads_nothing_from_elsewhere_and_runs_no_script(tmp_path):
    response = admin_app(tmp_path).test_client().get("/admin", headers=BEARER)
    html = response.get_data(as_text=True)
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"style-src 'nonce-([^']+)'", policy)[1]
    assert (
        "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "script-src" not in policy
    )
    assert f'<style nonce="{nonce}">' in html
    assert "<script" not in html and not re.search(r'\b(src|href)="(https?:)?//', html)
    assert response.headers["Cache-Control"] == "no-store"
    other = admin_app(tmp_path / "again").test_client().get("/admin", headers=BEARER)
    assert other.headers["Content-Security-Policy"] != policy  # a fresh nonce per page


# --- reload -------------------------------------------------------------------------------------------------


def test_reload_over_the_api_applies_a_good_file_and_refuses_a_bad_one(tmp_path):
    app = admin_app(tmp_path)
    client = app.test_client()
    settings = tmp_path / "hooks" / "settings.yaml"
    settings.write_text(settings.read_text().replace("potassium_max: 5.5", "potassium_max: 5.9"))
    response = client.post("/admin/reload", headers=BEARER)
    assert response.status_code == 200 and response.get_json()["reloaded"] is True
    assert app.extensions["cds_runtime"]().config.settings["thresholds"]["potassium_max"] == 5.9

    settings.write_text(settings.read_text().replace("potassium_max: 5.9", "potassium_max: lots"))
    refused = client.post("/admin/reload", headers=BEARER)
    assert refused.status_code == 422
    body = refused.get_json()
    assert body["reloaded"] is False
    assert body["problems"] == [
        f"{settings}:{_line_of(settings, 'potassium_max')}: thresholds.potassium_max: "
        "must be a number between 2 and 10, got 'lots'"
    ]
    assert app.extensions["cds_runtime"]().config.settings["thresholds"]["potassium_max"] == 5.9
    page = client.get("/admin", headers=BEARER).get_data(as_text=True)
    assert "a reload would be refused" in page and "got &#39;lots&#39;" in page


def _line_of(path, key: str) -> int:
    return next(
        i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip().startswith(f"{key}:")
    )


def _form_token(html: str) -> str:
    """The token the page's reload form carries (every POST form carries the same one)."""
    tokens = re.findall(r'<input type="hidden" name="csrf_token" value="([^"]+)">', html)
    assert len(tokens) == 3 and len(set(tokens)) == 1  # reload, sign out and simulate
    return tokens[0]


def _signed_in(tmp_path):
    client = admin_app(tmp_path).test_client()
    assert client.post("/admin/login", data={"token": TOKEN}).status_code == 303
    return client


RELOADED = "Configuration checked and reloaded."


def test_reload_from_the_page_in_a_browser_that_sends_fetch_metadata(tmp_path):
    """Chromium's form POST from the page: Sec-Fetch-Site same-origin, Origin null (the pages send no
    Referer), no form token needed."""
    client = _signed_in(tmp_path)
    browser = {**HTML, "Sec-Fetch-Site": "same-origin", "Origin": "null"}
    done = client.post("/admin/reload", headers=browser)
    assert done.status_code == 200 and RELOADED in done.get_data(as_text=True)
    for other_site in ("cross-site", "same-site"):
        refused = client.post("/admin/reload", headers={**browser, "Sec-Fetch-Site": other_site})
        assert refused.status_code == 403
        assert refused.get_json() == {"error": "cross-site request refused"}


def test_reload_from_the_page_with_the_form_token_and_refused_without_it(tmp_path):
    """A client without Fetch Metadata must show the session's form token; Origin: null proves nothing."""
    client = _signed_in(tmp_path)
    token = _form_token(client.get("/admin", headers=HTML).get_data(as_text=True))
    done = client.post("/admin/reload", headers={**HTML, "Origin": "null"}, data={"csrf_token": token})
    assert done.status_code == 200 and RELOADED in done.get_data(as_text=True)
    assert _form_token(done.get_data(as_text=True)) == token  # the answer page can reload again
    for headers, data in [
        ({"Origin": "null"}, {}),
        ({}, {}),
        ({"Origin": "https://evil.example"}, {}),
        ({"Origin": "null"}, {"csrf_token": token[:-1] + ("0" if token[-1] != "0" else "1")}),
        ({"Sec-Fetch-Site": "cross-site"}, {"csrf_token": token}),  # a token never outweighs the browser
    ]:
        refused = client.post("/admin/reload", headers={**HTML, **headers}, data=data)
        assert refused.status_code == 403, (headers, data)
    other = _signed_in(tmp_path / "other-session")
    assert other.post("/admin/reload", headers=HTML, data={"csrf_token": token}).status_code == 403


def test_the_form_token_belongs_to_one_session_and_signing_out_needs_it_too(tmp_path):
    client = _signed_in(tmp_path)
    token = _form_token(client.get("/admin", headers=HTML).get_data(as_text=True))
    assert client.post("/admin/logout", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.get("/admin", headers=HTML).status_code == 200  # still signed in
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/admin", headers=HTML).status_code == 303
    client.post("/admin/login", data={"token": TOKEN})
    again = _form_token(client.get("/admin", headers=HTML).get_data(as_text=True))
    assert again != token
    assert client.post("/admin/reload", headers=HTML, data={"csrf_token": token}).status_code == 403


def test_another_site_cannot_sign_a_browser_in(tmp_path):
    client = admin_app(tmp_path).test_client()
    refused = client.post("/admin/login", data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403 and "Set-Cookie" not in refused.headers
    from_the_form = {"Sec-Fetch-Site": "same-origin", "Origin": "null"}
    assert client.post("/admin/login", data={"token": TOKEN}, headers=from_the_form).status_code == 303
