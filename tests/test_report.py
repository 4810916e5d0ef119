"""Feedback statistics: ``cds-service feedback report`` counts cards shown, accepted and overridden per
service and finding, from cards and feedback that went over HTTP; the aggregation itself on hand-made rows."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta

import pytest
from click.testing import CliRunner

from cds_service.cli import main
from cds_service.report import UNKNOWN_CARD, aggregate, as_csv, as_json, as_table
from cds_service.sandbox.requests import build_request
from tests.support import FINDINGS_KEY, make_app

# Storage-facing: the tests that store cards and feedback run on SQLite and on PostgreSQL (``each_database``,
# tests/conftest.py); the aggregation on hand-made rows runs once.

SIGN = "tacrolimus-order-sign"
SELECT = "tacrolimus-order-select"
NON_ADHERENCE = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"


# --- the scenario: cards shown and answered over HTTP -------------------------------------------------------


def _cards(client, service: str, fixture: str, hook: str) -> dict[str, dict]:
    response = client.post(f"/cds-services/{service}", json=build_request(fixture, hook=hook))
    assert response.status_code == 200, response.get_json()
    return {card["source"]["topic"]["code"]: card for card in response.get_json()["cards"]}


def _ids(card: dict) -> list[str]:
    return [item["id"] for item in card["extension"][FINDINGS_KEY]]


def _answer(client, service: str, *items: dict) -> None:
    stamped = [
        {"outcomeTimestamp": datetime.now(UTC).isoformat(timespec="seconds"), **item} for item in items
    ]
    response = client.post(f"/cds-services/{service}/feedback", json={"feedback": stamped})
    assert response.status_code == 200, response.get_json()


def _overridden(card: str, code: str | None) -> dict:
    item = {"card": card, "outcome": "overridden"}
    if code:
        item["overrideReason"] = {
            "reason": {"system": NON_ADHERENCE, "code": code},
            "userComment": "discussed",
        }
    return item


def show_and_answer(app) -> None:
    """Cards for three fixture patients over HTTP, then clinicians' feedback on some of them.

    order-sign: the N2 patient twice (N2 overridden once, risk/benefit); the pregnant patient with a flare
    (pregnancy card P1+P2 accepted, monitoring card N1+N11 overridden with no reason, salvage S3 unanswered);
    order-select: the pregnant patient on methotrexate (pregnancy card overridden, patient-ineligible).
    Plus one answer about a card the service never showed.
    """
    client = app.test_client()
    n2 = _cards(client, SIGN, "n2-creatinine-rise-25pct", "order-sign")
    _cards(client, SIGN, "n2-creatinine-rise-25pct", "order-sign")
    flare = _cards(client, SIGN, "pregnant-ln-flare-on-mmf", "order-sign")
    mtx = _cards(client, SELECT, "p2-pregnant-on-methotrexate", "order-select")
    assert _ids(n2["nephrotoxicity-monitoring"]) == ["N2"]
    assert sorted(_ids(flare["pregnancy"])) == ["P1", "P2"] and _ids(flare["salvage-context"]) == ["S3"]
    assert sorted(_ids(flare["nephrotoxicity-monitoring"])) == ["N1", "N11"]
    assert sorted(_ids(mtx["pregnancy"])) == ["P1", "P2"]
    pregnancy = flare["pregnancy"]
    _answer(
        client, SIGN,
        _overridden(n2["nephrotoxicity-monitoring"]["uuid"], "risk-benefit-ratio"),
        {"card": pregnancy["uuid"], "outcome": "accepted",
         "acceptedSuggestions": [{"id": pregnancy["suggestions"][0]["uuid"]}]},
        _overridden(flare["nephrotoxicity-monitoring"]["uuid"], None),
        _overridden("0b7e6f1c-0000-4000-8000-000000000000", "policy-contradicts"),
    )  # fmt: skip
    _answer(client, SELECT, _overridden(mtx["pregnancy"]["uuid"], "patient-ineligible"))


EXPECTED = {
    # (service, finding): (shown, accepted, overridden, {reason: count})
    (SELECT, "P1"): (1, 0, 1, {"patient-ineligible": 1}),
    (SELECT, "P2"): (1, 0, 1, {"patient-ineligible": 1}),
    (SELECT, "N11"): (1, 0, 0, {}),
    (SIGN, "P1"): (1, 0, 0, {}),  # the accepted suggestion (stop mycophenolate) answers P2 alone
    (SIGN, "P2"): (1, 1, 0, {}),
    (SIGN, "S3"): (1, 0, 0, {}),
    (SIGN, "N1"): (1, 0, 1, {"(none given)": 1}),
    (SIGN, "N2"): (2, 0, 1, {"risk-benefit-ratio": 1}),
    (SIGN, "N11"): (1, 0, 1, {"(none given)": 1}),
    (SIGN, UNKNOWN_CARD): (0, 0, 1, {"policy-contradicts": 1}),
}


@pytest.fixture
def answered(tmp_path, each_database):
    app = make_app(tmp_path)
    show_and_answer(app)
    return app, tmp_path / "hooks"


def run_report(config_dir, *options: str):
    result = CliRunner().invoke(main, ["feedback", "report", "--config", str(config_dir), *options])
    assert result.exit_code == 0, result.output
    return result.output


def test_report_json_counts_shown_accepted_overridden_and_reasons(answered):
    _, config_dir = answered
    rows = json.loads(run_report(config_dir, "--format", "json"))
    got = {(r["service"], r["finding"]): (r["shown"], r["accepted"], r["overridden"], r["override_reasons"])
           for r in rows}  # fmt: skip
    assert got == EXPECTED
    rate = {(r["service"], r["finding"]): r["accept_rate"] for r in rows}
    assert rate[(SIGN, "P2")] == 1.0 and rate[(SIGN, "N2")] == 0.0 and rate[(SIGN, "S3")] is None
    # services in order, findings in catalog order within each
    assert [(r["service"], r["finding"]) for r in rows][:3] == [
        (SELECT, "P1"),
        (SELECT, "P2"),
        (SELECT, "N11"),
    ]
    assert [r["finding"] for r in rows if r["service"] == SIGN] == ["P1", "P2", "S3", "N1", "N2", "N11", "?"]


def test_report_table_and_csv_say_the_same(answered):
    _, config_dir = answered
    table = run_report(config_dir)
    n2_line = next(line for line in table.splitlines() if line.startswith(SIGN) and " N2 " in line)
    assert n2_line.split()[:6] == [SIGN, "N2", "2", "0", "1", "0%"]
    # the Sandbox sends system + code only; the display comes from the card's own overrideReasons
    assert "risk-benefit-ratio (Recipient assessment of risk/benefit ratio) 1" in n2_line
    assert "accept rate = accepted / (accepted + overridden)" in table
    rows = list(csv.DictReader(io.StringIO(run_report(config_dir, "--format", "csv"))))
    p2 = next(r for r in rows if r["service"] == SIGN and r["finding"] == "P2")
    assert (p2["shown"], p2["accepted"], p2["overridden"], p2["accept_rate"]) == ("1", "1", "0", "1.0000")
    select_p2 = next(r for r in rows if r["service"] == SELECT and r["finding"] == "P2")
    assert select_p2["override_reasons"] == "patient-ineligible=1"
    assert select_p2["override_reason_displays"] == (
        "patient-ineligible=Patient does not meet eligibility for recommended action"
    )


def test_report_since_and_tenant_filter(answered):
    _, config_dir = answered
    tomorrow = (date.today() + timedelta(days=1)).isoformat()
    assert "no cards shown and no feedback received" in run_report(config_dir, "--since", tomorrow)
    assert json.loads(run_report(config_dir, "--format", "json", "--since", date.today().isoformat()))
    # a tenant neither configured nor in the database is a typo, not an empty report
    result = CliRunner().invoke(
        main, ["feedback", "report", "--config", str(config_dir), "--tenant", "hospital-a"]
    )
    assert result.exit_code == 2
    assert "unknown tenant 'hospital-a'" in result.output


@pytest.mark.usefixtures("each_database")
def test_report_rejects_a_bad_date_and_a_bad_configuration(tmp_path):
    make_app(tmp_path)  # a configuration copy and its database
    config_dir = tmp_path / "hooks"
    result = CliRunner().invoke(
        main, ["feedback", "report", "--config", str(config_dir), "--since", "25/11/2026"]
    )
    assert result.exit_code == 2 and "--since" in result.output
    (config_dir / "settings.yaml").write_text("scope: everywhere\n")
    result = CliRunner().invoke(main, ["feedback", "report", "--config", str(config_dir)])
    assert result.exit_code == 2 and "configuration is invalid" in result.output


# --- the aggregation on its own -----------------------------------------------------------------------------

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def shown(card: str, finding: str, at: datetime = T0, service: str = SIGN, tenant: str | None = None) -> dict:
    return {"service_id": service, "card_uuid": card, "finding_id": finding, "shown_at": at, "tenant": tenant}


def answer(card: str, outcome: str, at: datetime = T0, code: str | None = None, service: str = SIGN,
           tenant: str | None = None) -> dict:  # fmt: skip
    return {"service_id": service, "card_uuid": card, "outcome": outcome, "received_at": at,
            "override_code": code, "tenant": tenant}  # fmt: skip


def test_an_answer_counts_for_every_finding_on_its_card_and_only_for_its_service():
    rows = [shown("c1", "N1"), shown("c1", "N11"), shown("c1", "N1", service=SELECT)]
    stats = aggregate(rows, [answer("c1", "accepted")])
    got = {(s.service, s.finding): (s.shown, s.accepted) for s in stats}
    assert got == {(SELECT, "N1"): (1, 0), (SIGN, "N1"): (1, 1), (SIGN, "N11"): (1, 1)}


def test_since_counts_answers_in_the_window_about_cards_shown_before_it():
    before, after = T0 - timedelta(days=3), T0 + timedelta(hours=1)
    stats = aggregate(
        [shown("c1", "N2", at=before)], [answer("c1", "overridden", at=after, code="x")], since=T0.date()
    )
    [n2] = stats
    assert (n2.finding, n2.shown, n2.overridden, dict(n2.reasons)) == ("N2", 0, 1, {"x": 1})


def test_naive_database_times_are_utc_and_tenants_filter():
    naive = T0.replace(tzinfo=None)
    rows = [shown("c1", "P3", at=naive, tenant="a"), shown("c2", "P3", at=naive, tenant="b")]
    [p3] = aggregate(rows, [answer("c2", "accepted", at=naive, tenant="b")], since=T0.date(), tenant="b")
    assert (p3.shown, p3.accepted, p3.accept_rate) == (1, 1, 1.0)


def test_formats_on_an_empty_period():
    assert "no cards shown" in as_table([])
    assert as_csv([]).strip() == (
        "service,finding,shown,accepted,overridden,accept_rate,override_reasons,override_reason_displays"
    )
    assert json.loads(as_json([])) == []


@pytest.mark.usefixtures("each_database")
def test_a_reason_by_code_alone_gets_the_cards_display_and_a_suggestion_counts_for_its_finding(tmp_path):
    """The CDS Hooks Sandbox sends override reasons as system + code; accepting the "order baseline labs"
    suggestion on a card with N1, N11 and N15 counts for N1 (whose suggestion it is), not for the others."""
    app = make_app(tmp_path)
    client = app.test_client()
    cards = _cards(client, SIGN, "n1-missing-baseline-labs", "order-sign")
    monitoring = cards["nephrotoxicity-monitoring"]
    assert sorted(_ids(monitoring)) == ["N1", "N11", "N15"]
    by_finding = {s["extension"][FINDINGS_KEY][0]["id"]: s for s in monitoring["suggestions"]}
    assert sorted(by_finding) == ["N1", "N15"]  # order the missing labs; order HBsAg
    order_labs = by_finding["N1"]
    _answer(
        client,
        SIGN,
        {"card": monitoring["uuid"], "outcome": "accepted",
         "acceptedSuggestions": [{"id": order_labs["uuid"]}]},
        _overridden(monitoring["uuid"], "expert-contradicts"),
        {"card": monitoring["uuid"], "outcome": "overridden",
         "overrideReason": {"reason": {"system": "https://example.org/own", "code": "expert-contradicts"}}},
    )  # fmt: skip
    store = app.extensions["cds_runtime"]().store
    stored = {
        (r["override_system"], r["override_code"]): r["override_display"] for r in store.feedback_rows()
    }
    assert (
        stored[(NON_ADHERENCE, "expert-contradicts")]
        == "Advice from expert contradicts the recommended action"
    )
    assert stored[("https://example.org/own", "expert-contradicts")] is None  # not one of the card's reasons
    rows = {r["finding"]: r for r in json.loads(run_report(tmp_path / "hooks", "--format", "json"))}
    assert (rows["N1"]["accepted"], rows["N11"]["accepted"], rows["N15"]["accepted"]) == (1, 0, 0)
    assert rows["N11"]["override_reason_displays"] == {
        "expert-contradicts": "Advice from expert contradicts the recommended action"
    }
    table = run_report(tmp_path / "hooks")
    assert "expert-contradicts (Advice from expert contradicts the recommended action) 2" in table
