"""The course SMART app: launched in headless Chromium as an EHR launches it, and its server-side parts.

Two launches, both through the real SMART App Launch sequence (``iss`` + ``launch``, discovery, authorization
code with PKCE, token with patient context) against a fixture FHIR server on loopback:

* EHR-style: the test, as the EHR, mints a launch id at the fixture server's development authorization
  endpoint and opens ``/smart/launch?iss=…&launch=…`` of a real ``cds-service serve --dev`` process;
* from a card: in the web sandbox, fire order-sign and press the monitoring card's ``smart`` link.

Each checks that the chart holds exactly the fixture's creatinine, trough and UPCR values (the ones the rules
read, from the service's own record builder) and the exposure periods of the charted drug classes, and that
the baseline line sits at the value ``cds-service explain`` reports.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from cds_service.cli import main
from cds_service.fixtures import load_bundle, manifest
from cds_service.record_builder import build_record
from cds_service.sandbox import FhirStore, serve_in_thread
from cds_service.smart import DRUG_GROUPS
from cds_service.terminology import Terminology
from tests.support import CHROMIUM, CHROMIUM_ARGS, config_copy, make_app, start_service

SHOTS = Path(tempfile.gettempdir()) / "smart-course"
LAUNCHED = [
    "n2-creatinine-rise-25pct",  # baseline before tacrolimus began, N2
    "tacrolimus-kidney-decline-clarithromycin",  # N3, high trough, an interacting drug bar
    "n3-creatinine-rise-first-order",  # a new start: the baseline is the lowest other recent value
    "s2-cyc-and-mmf-exposed",  # cyclophosphamide and mycophenolate exposure bars
    "class-v-egfr-40",  # creatinine in µmol/L, UPCR in mg/mmol
    "n6-low-magnesium-si",  # magnesium in mmol/L
    "malformed-observation-skipped",  # a potassium whose value is 'abc': left out, as the rules leave it
    "s7-stopped-order-supply-duration",  # a stopped order's exposure from its supply duration and repeats
]
CHARTED = (
    "creatinine", "egfr", "tacrolimus-level", "upcr", "systolic-bp", "diastolic-bp", "potassium", "magnesium",
)  # fmt: skip


# --- what the chart must hold, from the service's own reading of the fixture --------------------------------
def expected_course(name: str) -> dict:
    """Every charted lab value and the drug exposure periods, as the rules read them."""
    bundle = load_bundle(name)
    resources = [e["resource"] for e in bundle["entry"]]
    drafts = set(manifest()[name].get("drafts", ()))
    stored = [r for r in resources if f"{r['resourceType']}/{r['id']}" not in drafts]
    record = build_record(
        terminology=Terminology.load(),
        now=datetime.now(UTC),
        patient=next(r for r in stored if r["resourceType"] == "Patient"),
        medications=[r for r in stored if r["resourceType"] == "MedicationRequest"],
        observations=[r for r in stored if r["resourceType"] == "Observation"],
    )
    labs = {
        group: sorted((v.when.date().isoformat(), round(v.value, 6)) for v in record.lab(group).values())
        for group in CHARTED
    }
    bars = sorted(
        (group, m.exposure.start.date().isoformat(), m.exposure.end.date().isoformat())
        for m in record.medications
        if m.exposure
        for group in DRUG_GROUPS
        if group in m.concepts
    )
    return {"labs": labs, "bars": bars, "patient": record.patient.id}


def explained_baseline(name: str) -> pytest.approx | None:
    """The baseline creatinine in ``cds-service explain``'s N2/N3 lines, to the digits it prints (None when
    it reports none)."""
    result = CliRunner().invoke(main, ["explain", name, "--format", "json"])
    assert result.exit_code == 0, result.output
    lines = [
        line
        for verdict in json.loads(result.output)["findings"]
        if verdict["id"] in ("N2", "N3")
        for line in verdict["why"]
    ]
    for line in lines:
        found = re.search(r"(?:Creatinine \(baseline\): |the baseline )(\d+(?:\.\d+)?) mg/dL", line)
        if found:
            decimals = len(found.group(1).partition(".")[2])
            return pytest.approx(float(found.group(1)), abs=0.5 * 10**-decimals)
    return None


# --- the browser --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smart-app")
    with start_service(config_copy(tmp), workers=1, dev=True) as server:
        yield server.base


@pytest.fixture(scope="module")
def fhir():
    with serve_in_thread(FhirStore.from_fixtures()) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        context = chromium.new_context(viewport={"width": 420, "height": 900}, timezone_id="UTC")
        yield context
        context.close()
        chromium.close()


def watch(page) -> list[str]:
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "response",
        lambda r: (
            problems.append(f"HTTP {r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")  # the sandbox page has none (yet)
            else None
        ),
    )
    return problems


def chart_content(page) -> dict:
    """What the chart draws (read from Chart.js) and what the page says about the baseline."""
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    return page.evaluate(
        """() => {
            const chart = Chart.getChart("course-chart");
            const day = (t) => new Date(t).toISOString().slice(0, 10);
            const out = {labs: {}, bars: [], lines: {}, highlighted: [], drafts: []};
            for (const d of chart.data.datasets) {
                if (d.draft) {
                    for (const p of d.data) out.drafts.push([d.group, p.draft.name]);
                } else if (d.exposure) {
                    for (const p of d.data) if (p.bar && p.x === p.bar.start)
                        out.bars.push([d.group, day(p.bar.start), day(p.bar.end)]);
                } else if (d.reference) {
                    out.lines[d.label] = d.data[0].y;
                } else {
                    out.labs[d.group] = d.data.map((p) => [p.date, Math.round(p.y * 1e6) / 1e6]);
                }
                if (d.highlighted) out.highlighted.push(d.group);
            }
            out.baselineText = document.getElementById("baseline").textContent;
            out.legend = [...document.querySelectorAll("#legend li")].map((li) => li.dataset.line);
            out.findings = [...document.querySelectorAll("#findings-list li")]
                .map((li) => li.dataset.finding);
            out.tableRows = document.querySelectorAll("#table-list tbody tr").length;
            return out;
        }"""
    )


def check_chart(drawn: dict, name: str) -> None:
    expected = expected_course(name)
    for group in CHARTED:  # creatinine, trough and UPCR above all, but every other series too
        assert sorted(map(tuple, drawn["labs"][group])) == expected["labs"][group], group
    assert sorted(map(tuple, drawn["bars"])) == expected["bars"]
    baseline = explained_baseline(name)
    if baseline is None:
        assert "Baseline" not in drawn["lines"]
        assert drawn["baselineText"].startswith("No creatinine baseline")
    else:
        assert drawn["lines"]["Baseline"] == baseline
        assert drawn["lines"]["+20 %"] == pytest.approx(drawn["lines"]["Baseline"] * 1.2)
        assert drawn["lines"]["+30 %"] == pytest.approx(drawn["lines"]["Baseline"] * 1.3)
    assert drawn["lines"]["10 ng/mL"] == 10
    # the lower limit applies with mycophenolate only (N4): drawn while it is given, else not at all
    with_mycophenolate = any(g == "mycophenolate" for g, _, _ in expected["bars"]) or any(
        g == "mycophenolate" for g, _ in drawn["drafts"]
    )
    assert ("8 ng/mL" in drawn["lines"]) == with_mycophenolate
    assert ("level-mycophenolate" in drawn["legend"]) == with_mycophenolate
    assert "level-max" in drawn["legend"]
    assert ("baseline" in drawn["legend"] and "band" in drawn["legend"]) == (baseline is not None)


DAY_MS = 86_400_000


def check_window(page, name: str) -> None:
    """The first view is the last 12 months, or since tacrolimus began if shorter (the baseline kept in
    view); the button shows the whole record and back."""
    shown = page.evaluate(
        """() => {
            const x = Chart.getChart("course-chart").scales.x;
            const note = document.getElementById("window-note");
            return {min: x.min, max: x.max, window: note.dataset.window, note: note.textContent,
                    button: !document.getElementById("window-toggle").hidden, now: Date.now()};
        }"""
    )
    expected = expected_course(name)
    now = shown["now"]
    day = lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000  # noqa: E731
    dates = [d for values in expected["labs"].values() for d, _ in values]
    dates += [s for _, s, _ in expected["bars"]]
    earliest = min(day(d) for d in dates)
    starts = [day(s) for g, s, _ in expected["bars"] if g == "tacrolimus"]
    start = max(now - 365 * DAY_MS, min(starts)) if starts else now - 365 * DAY_MS
    baseline = re.search(r"Baseline creatinine .*? on (\d{4}-\d{2}-\d{2})", page.inner_text("#baseline"))
    if baseline:
        start = min(start, day(baseline.group(1)))
    assert shown["max"] > now  # today is always in view
    if earliest >= start - DAY_MS:  # the record is shorter than the window: all of it, no button
        assert shown["min"] <= earliest and not shown["button"]
        return
    pad = max(3 * DAY_MS, (now - start) * 0.02)
    assert abs(shown["min"] - (start - pad)) < 2 * DAY_MS, shown["note"]
    assert shown["window"] == "recent" and shown["button"]
    page.click("#window-toggle")
    assert page.evaluate("() => Chart.getChart('course-chart').scales.x.min") <= earliest
    assert page.get_attribute("#window-note", "data-window") == "all"
    page.click("#window-toggle")
    assert page.get_attribute("#window-note", "data-window") == "recent"


def check_axes(page) -> None:
    """Each lab has an axis of its own (potassium and magnesium too), and every axis title fits its panel
    in a legible font: no title longer than the panel it names, no panels overlapping."""
    axes = page.evaluate(
        """() => {
            const chart = Chart.getChart("course-chart");
            const out = {};
            for (const d of chart.data.datasets)
                if (!d.reference && !d.exposure && !d.draft) out[d.group] = d.yAxisID;
            const titles = [];
            for (const scale of Object.values(chart.scales)) {
                const title = scale.options.title;
                if (!title || !title.display) continue;
                const font = Chart.helpers.toFont(title.font);
                chart.ctx.font = font.string;
                const lines = [].concat(title.text);
                titles.push({id: scale.id, lines, size: font.size, top: scale.top, bottom: scale.bottom,
                             widest: Math.max(...lines.map((l) => chart.ctx.measureText(l).width))});
            }
            return {groups: out, titles};
        }"""
    )
    groups = axes["groups"]
    assert groups["potassium"] != groups["magnesium"]
    assert len({groups[g] for g in ("creatinine", "egfr", "tacrolimus-level", "upcr", "potassium")}) == 5
    for title in axes["titles"]:
        assert title["size"] >= 11, title
        assert title["widest"] <= title["bottom"] - title["top"], title  # a vertical title within its panel
    spans = sorted((t["top"], t["bottom"]) for t in axes["titles"])
    assert all(a[1] <= b[0] + 1 for a, b in itertools.pairwise(spans))


def exposure_rows(page) -> list[list[str]]:
    return page.evaluate(
        """() => [...document.querySelectorAll("table[data-series=exposure] tbody tr")]
            .map((tr) => [...tr.cells].map((td) => td.textContent))"""
    )


def check_ongoing(page, name: str) -> None:
    """An active order without a past end runs "ongoing": its end is never given as today's date."""
    today = datetime.now(UTC).date().isoformat()
    rows = [row for row in exposure_rows(page) if len(row) == 5]
    for _, _, _, to, status in rows:
        if status in ("active", "on-hold"):
            assert to == "ongoing" or to < today, (name, rows)
        assert to != today or status not in ("active", "on-hold")


def ehr_launch(fhir_base: str, patient: str, app_context: str | None = None) -> str:
    """What an EHR does: ask its authorization server for a launch id bound to the patient."""
    form = {"patient": patient, **({"appContext": app_context} if app_context else {})}
    response = requests.post(f"{fhir_base}/auth/launch", data=form, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["launch"]


@pytest.mark.browser
@pytest.mark.parametrize("name", LAUNCHED)
def test_ehr_launch_against_the_fixture_server_charts_the_fixture(service, fhir, browser, name):
    page = browser.new_page()
    problems = watch(page)
    fhir_requests: list[str] = []
    page.on("request", lambda r: fhir_requests.append(r.url))
    launch = ehr_launch(fhir, expected_course(name)["patient"])
    page.goto(f"{service}/smart/launch?iss={fhir}&launch={launch}")
    drawn = chart_content(page)
    check_chart(drawn, name)
    assert "computed in the app" in drawn["baselineText"] or drawn["baselineText"].startswith("No creatinine")
    check_window(page, name)
    check_axes(page)
    check_ongoing(page, name)
    if name == "class-v-egfr-40":  # as the laboratory reported it, with the rules' unit beside it
        cells = page.locator("table[data-series=creatinine] tbody td").all_inner_texts()
        assert "162 µmol/L (1.833 mg/dL)" in cells
        assert "420 mg/mmol (3.717 g/g)" in page.locator("table[data-series=upcr] tbody td").all_inner_texts()
    if name == "tacrolimus-kidney-decline-clarithromycin":  # active tacrolimus and clarithromycin orders
        assert ["ongoing", "active"] in [row[3:] for row in exposure_rows(page)]
    assert drawn["findings"] == []  # no card, no appContext
    # the app called only the service (its own files) and the FHIR server the launch named
    assert {re.match(r"https?://[^/]+", u).group(0) for u in fhir_requests} <= {service, fhir}
    assert not any(u.startswith(service) and "/smart/" not in u for u in fhir_requests)
    # the token stays in this tab: sessionStorage, not localStorage or cookies
    stored = page.evaluate("() => JSON.stringify(Object.assign({}, sessionStorage))")
    assert "access_token" in stored
    assert page.evaluate("() => localStorage.length") == 0
    assert problems == []
    # it reads in a 420 px frame, and every charted value is also in a table (the accessible alternative)
    assert page.evaluate("() => document.getElementById('course-chart').getBoundingClientRect().right") <= 420
    expected = expected_course(name)
    assert drawn["tableRows"] >= sum(len(v) or 1 for v in expected["labs"].values()) + len(expected["bars"])
    left_out = page.inner_text("#left-out") if page.is_visible("#left-out") else ""
    for malformed in manifest()[name].get("malformed", ()):
        assert malformed in left_out  # named, never silently dropped
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-420.png"), full_page=True)
    if name == LAUNCHED[1]:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.wait_for_timeout(300)
        page.screenshot(path=str(SHOTS / f"{name}-1280.png"), full_page=True)
    page.close()


def _order(oid: str, **medication) -> dict:
    return {
        "resourceType": "MedicationRequest", "id": oid, "status": "active", "intent": "order",
        "subject": {"reference": "Patient/p"}, "authoredOn": "2026-01-10T08:00:00Z", **medication,
    }  # fmt: skip


RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
HAND_MADE_ORDERS = [
    _order("by-code", medicationCodeableConcept={"coding": [{"system": RXNORM, "code": "198377"}]}),
    _order("by-brand-name", medicationCodeableConcept={"text": "Prograf 1 mg capsule"}),
    _order("ointment", medicationCodeableConcept={"text": "Protopic (tacrolimus) 0.1 % ointment"}),
    _order("oint-abbreviated", medicationCodeableConcept={"text": "tacrolimus 0.03 % oint"}),
    _order("systemic-word-wins", medicationCodeableConcept={"text": "tacrolimus ER 1 mg cap top"}),
    _order(
        "by-oid",
        medicationCodeableConcept={"coding": [{"system": "urn:oid:2.16.840.1.113883.6.88", "code": "21212"}]},
    ),
    _order(
        "by-ingredient",
        contained=[
            {
                "resourceType": "Medication",
                "id": "m",
                "code": {"text": "compounded capsule"},
                "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "42316"}]}}],
            }
        ],
        medicationReference={"reference": "#m"},
    ),
    _order("rifampicin-text", medicationCodeableConcept={"text": "Rifampicin 300 mg"}),
    _order("nasal-live-vaccine", medicationCodeableConcept={"text": "FluMist Quadrivalent nasal spray"}),
    _order("unknown", medicationCodeableConcept={"text": "paracetamol 500 mg"}),
]


@pytest.mark.browser
def test_the_app_recognises_drug_orders_as_the_rules_do(service, fhir, browser):
    """Codes, system aliases, ingredients, names and local forms: the app and the record builder agree."""
    record = build_record(
        terminology=Terminology.load(), now=datetime.now(UTC), patient=None, medications=HAND_MADE_ORDERS
    )
    expected = sorted((m.id, g) for m in record.medications for g in DRUG_GROUPS if g in m.concepts)
    assert ("by-brand-name", "tacrolimus") in expected and ("systemic-word-wins", "tacrolimus") in expected
    assert not any(i in ("ointment", "oint-abbreviated") for i, _ in expected)
    assert ("nasal-live-vaccine", "live-vaccines") in expected  # a live vaccine counts whatever its form
    page = browser.new_page()
    launch = ehr_launch(fhir, expected_course(LAUNCHED[0])["patient"])
    page.goto(f"{service}/smart/launch?iss={fhir}&launch={launch}")
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    seen = page.evaluate(
        """async (orders) => {
            const terms = await (await fetch("terminology.json")).json();
            return Course.exposures(terms, orders, Date.now(), {}).map((b) => [b.id.split("/")[1], b.group]);
        }""",
        HAND_MADE_ORDERS,
    )
    assert sorted(map(tuple, seen)) == expected
    page.close()


def launch_from_the_monitoring_card(service: str, browser, name: str):
    """What a tester does: in the web sandbox, fire order-sign for the fixture and press the monitoring card's
    course link. Returns the sandbox page, its problems and the app's page."""
    page = browser.new_page()
    problems = watch(page)
    page.goto(f"{service}/sandbox")
    page.wait_for_selector("body[data-ready=true]")
    page.select_option("#fixture", name)
    page.wait_for_selector("#drafts li[data-ref]")
    page.click(".fire-button[data-hook=order-sign]")
    link = page.locator(".card[data-topic=nephrotoxicity-monitoring] button.smart-launch")
    link.first.wait_for()
    with browser.expect_page() as opened:
        link.first.click()
    return page, problems, opened.value


@pytest.mark.browser
@pytest.mark.parametrize("name", ["n2-creatinine-rise-25pct", "tacrolimus-kidney-decline-clarithromycin"])
def test_the_monitoring_cards_smart_link_launches_the_app_from_the_web_sandbox(service, browser, name):
    page, problems, app = launch_from_the_monitoring_card(service, browser, name)
    app_problems = watch(app)
    drawn = chart_content(app)
    check_chart(drawn, name)
    assert "from the card" in drawn["baselineText"]
    expected = set(manifest()[name]["expected"]) & {"N2", "N3", "N4", "N9"}
    assert expected <= set(drawn["findings"])
    assert "creatinine" in drawn["highlighted"]
    drafts = [group for group, _ in drawn["drafts"]]
    assert "tacrolimus" in drafts  # the order being signed, drawn at today on the tacrolimus row
    if "N9" in expected:  # the clarithromycin drafted in this session: only the card can tell the app
        assert ["cyp3a4-strong-inhibitors", "clarithromycin 500 mg tablet"] in drawn["drafts"]
        assert "cyp3a4-strong-inhibitors" in drawn["highlighted"]
    assert app.url.startswith(f"{service}/smart/app")
    assert problems == [] and app_problems == []
    SHOTS.mkdir(exist_ok=True)
    app.screenshot(path=str(SHOTS / f"{name}-from-card-420.png"), full_page=True)
    app.close()
    page.close()


@pytest.mark.browser
def test_launched_from_the_duplicate_cni_card_the_app_shows_the_cyclosporine(service, browser):
    """N12's drugs come from its declaration: the calcineurin inhibitors, not the CYP3A4 classes."""
    page, _, app = launch_from_the_monitoring_card(service, browser, "n12-cyclosporine-active")
    problems = watch(app)
    drawn = chart_content(app)
    check_chart(drawn, "n12-cyclosporine-active")
    finding = app.inner_text("#findings-list li[data-finding=N12]")
    assert "Other calcineurin inhibitors" in finding and "tacrolimus" in finding.lower()
    assert "CYP3A4" not in finding
    assert {"tacrolimus", "other-calcineurin-inhibitors"} <= set(drawn["highlighted"])
    today = datetime.now(UTC).date().isoformat()
    assert ["other-calcineurin-inhibitors", "2026-06-10", today] in drawn["bars"]
    rows = exposure_rows(app)
    assert ["Other calcineurin inhibitors", "cyclosporine (modified) 100 mg capsule", "2026-06-10", "ongoing",
            "active"] in rows  # fmt: skip
    assert app.is_visible("#legend li[data-line=level-max]")
    assert "10 ng/mL" in app.inner_text("#legend")
    assert drawn["baselineText"].startswith("No creatinine baseline")  # one creatinine, no tacrolimus yet
    check_window(app, "n12-cyclosporine-active")
    assert problems == []
    SHOTS.mkdir(exist_ok=True)
    app.screenshot(path=str(SHOTS / "n12-cyclosporine-from-card-420.png"), full_page=True)
    app.close()
    page.close()


# --- server side: launch page, CSP, terminology, card links, development authorization ---------------------
@pytest.fixture
def client(tmp_path):
    return make_app(tmp_path).test_client()


def test_the_launch_page_allows_connections_only_to_the_named_fhir_server(client):
    answer = client.get("/smart/launch?iss=http://127.0.0.1:9999/fhir&launch=abc")
    assert answer.status_code == 200
    csp = answer.headers["Content-Security-Policy"]
    assert "connect-src 'self' http://127.0.0.1:9999;" in csp
    assert "script-src 'self';" in csp and "unsafe" not in csp
    # the OAuth redirect target gets the same policy from the launch's cookie
    app_csp = client.get("/smart/app").headers["Content-Security-Policy"]
    assert "connect-src 'self' http://127.0.0.1:9999;" in app_csp


@pytest.mark.parametrize(
    "query",
    [
        "launch=abc",  # no iss
        "iss=http://ehr.example.org/fhir&launch=abc",  # plain http off loopback
        "iss=javascript:alert(1)&launch=abc",
        "iss=https://ehr.example.org/fhir",  # no launch
    ],
)
def test_a_launch_without_a_usable_iss_and_launch_is_refused(client, query):
    answer = client.get(f"/smart/launch?{query}")
    assert answer.status_code == 400
    assert "iss" in answer.get_json()["error"]


def test_an_administrator_can_let_an_ehr_frame_the_app_and_reach_its_token_endpoint(tmp_path):
    smart = {"frame_ancestors": ["https://ehr.example.org"], "connect_origins": ["https://auth.example.org"]}
    ehr = {"issuer": "https://ehr.example.org", "jwks_url": "https://ehr.example.org/jwks"}
    callers = [{**ehr, "fhir_servers": ["https://fhir.example.org/r4"]}]
    client = make_app(tmp_path, smart=smart, callers=callers).test_client()
    csp = client.get("/smart/launch?iss=https://fhir.example.org/r4&launch=x").headers[
        "Content-Security-Policy"
    ]
    assert "connect-src 'self' https://fhir.example.org https://auth.example.org;" in csp
    assert csp.endswith("frame-ancestors 'self' https://ehr.example.org")


@pytest.mark.parametrize(
    "iss",
    ["https://tracker.example/fhir", "https://fhir.example.org/other", "http://[::ffff:10.0.0.1]/fhir"],
)
def test_a_launch_naming_a_server_no_caller_registered_is_refused_before_the_policy_widens(tmp_path, iss):
    """Outside the registered callers' fhir_servers (and, with --dev, loopback), connect-src stays 'self'."""
    callers = [
        {
            "issuer": "https://ehr.example.org",
            "jwks_url": "https://ehr.example.org/jwks",
            "fhir_servers": ["https://fhir.example.org/r4"],
        }
    ]
    client = make_app(tmp_path, callers=callers).test_client()
    answer = client.get(f"/smart/launch?iss={iss}&launch=x")
    assert answer.status_code == 400
    assert "registered caller" in answer.get_json()["error"] or "iss" in answer.get_json()["error"]
    assert (
        "Content-Security-Policy" not in answer.headers
        or iss not in answer.headers["Content-Security-Policy"]
    )


def test_origins_that_could_widen_the_policy_are_refused_by_config_check(tmp_path):
    from cds_service.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"smart\.connect_origins"):
        load_config(config_copy(tmp_path, smart={"connect_origins": ["https://a.org; script-src *"]}))


def test_without_a_launch_the_app_page_may_connect_only_to_the_service(client):
    csp = client.get("/smart/app").headers["Content-Security-Policy"]
    assert "connect-src 'self';" in csp


def test_terminology_json_carries_the_value_sets_and_the_rules_unit_factors(client):
    terms = client.get("/smart/terminology.json").get_json()
    assert ["http://loinc.org", "2160-0"] in terms["labs"]["creatinine"]
    assert ["http://www.nlm.nih.gov/research/umls/rxnorm", "42316"] in terms["drugs"]["tacrolimus"]
    assert terms["units"]["creatinine"]["factors"]["umol/l"] == pytest.approx(1 / 88.4)
    assert terms["units"]["magnesium"]["factors"]["mmol/l"] == pytest.approx(2.43)
    assert terms["units"]["upcr"]["factors"]["mg/mmol"] == pytest.approx(1 / 113)
    assert terms["units"]["upcr"]["factors"]["mg/g"] == pytest.approx(0.001)
    assert terms["units"]["tacrolimus-level"]["factors"]["ug/l"] == 1
    assert terms["thresholds"]["creatinine_rise_warning"] == 0.2
    assert "patient/Observation.read" in terms["scopes"]


def _card_links(client, name: str, hook: str = "order-sign") -> dict[str, list[dict]]:
    from cds_service.sandbox.requests import build_request

    body = build_request(name, hook=hook)
    cards = client.post(f"/cds-services/tacrolimus-{hook}", json=body).get_json()["cards"]
    return {c["source"]["topic"]["code"]: c.get("links", []) for c in cards}


def test_monitoring_and_salvage_cards_carry_a_smart_link_with_the_rules_baseline(client):
    links = _card_links(client, "n2-creatinine-rise-25pct")
    smart = [link for link in links["nephrotoxicity-monitoring"] if link["type"] == "smart"]
    assert len(smart) == 1
    assert smart[0]["url"] == "http://localhost/smart/launch"
    context = json.loads(smart[0]["appContext"])
    assert context["findings"] == ["N2"]
    assert context["baseline"]["value"] == explained_baseline("n2-creatinine-rise-25pct")
    assert context["thresholds"]["creatinine_rise_critical"] == 0.3
    assert any(link["type"] == "absolute" for link in links["nephrotoxicity-monitoring"])

    salvage = _card_links(client, "s1-mmf-inadequate-response")["salvage-context"]
    assert [json.loads(link["appContext"])["findings"] for link in salvage if link["type"] == "smart"] == [
        ["S1"]
    ]
    pregnancy = _card_links(client, "pregnant-ln-flare-on-mmf")["pregnancy"]
    assert all(link["type"] == "absolute" for link in pregnancy)


def test_the_smart_link_can_be_pointed_elsewhere_or_turned_off(tmp_path):
    moved = make_app(tmp_path / "a", cards={"smart_app_url": "https://cds.example.org/smart/launch"})
    links = _card_links(moved.test_client(), "n2-creatinine-rise-25pct")["nephrotoxicity-monitoring"]
    assert [link["url"] for link in links if link["type"] == "smart"] == [
        "https://cds.example.org/smart/launch"
    ]
    off = make_app(tmp_path / "b", cards={"smart_app_url": None})
    links = _card_links(off.test_client(), "n2-creatinine-rise-25pct")["nephrotoxicity-monitoring"]
    assert [link for link in links if link["type"] == "smart"] == []


def _pkce() -> tuple[str, str]:
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def test_the_development_authorization_server_grants_a_patient_token_with_pkce():
    with serve_in_thread(FhirStore.from_fixtures(["n2-creatinine-rise-25pct"])) as base:
        config = requests.get(f"{base}/.well-known/smart-configuration", timeout=5).json()
        assert config["code_challenge_methods_supported"] == ["S256"]
        launch = ehr_launch(base, "n2rise-pat", '{"findings":["N2"]}')
        verifier, challenge = _pkce()
        redirect = "http://127.0.0.1:1/smart/app"
        query = {
            "response_type": "code",
            "client_id": "tacrolimus-course",
            "redirect_uri": redirect,
            "launch": launch,
            "scope": "launch patient/Observation.read patient/Observation.write user/*.*",
            "state": "s1",
            "aud": base,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        answer = requests.get(f"{base}/auth/authorize", params=query, allow_redirects=False, timeout=5)
        assert answer.status_code == 302
        location = answer.headers["Location"]
        assert location.startswith(redirect + "?code=") and location.endswith("&state=s1")
        code = requests.utils.unquote(location.split("code=")[1].split("&")[0])
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect}
        wrong = requests.post(f"{base}/auth/token", data={**form, "code_verifier": "w" * 50}, timeout=5)
        assert wrong.status_code == 400 and "code_verifier" in wrong.json()["error_description"]
        token = requests.post(
            f"{base}/auth/token", data={**form, "code_verifier": verifier}, timeout=5
        ).json()
        assert token["patient"] == "n2rise-pat"
        assert token["appContext"] == '{"findings":["N2"]}'
        assert (
            token["scope"] == "launch patient/Observation.read"
        )  # read-only, patient-scoped: writes refused

        bad = {**query, "redirect_uri": "https://attacker.example.org/cb"}
        answer = requests.get(f"{base}/auth/authorize", params=bad, allow_redirects=False, timeout=5)
        assert answer.status_code == 400 and "redirect_uri" in answer.json()["error_description"]
        unknown = requests.post(f"{base}/auth/launch", data={"patient": "nobody"}, timeout=5)
        assert unknown.status_code == 400


def test_outside_dev_the_smart_link_names_the_public_base_url(tmp_path):
    from cds_service.api import smart_app_url

    production = make_app(tmp_path, dev=False, server={"public_base_url": "https://cds.example.org"})
    with production.test_request_context("/cds-services/tacrolimus-order-sign", base_url="http://10.0.0.5"):
        runtime = production.extensions["cds_runtime"]()
        assert smart_app_url(runtime) == "https://cds.example.org/smart/launch"  # never the Host header
