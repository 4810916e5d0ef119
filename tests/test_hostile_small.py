"""The smaller findings of the adversarial run (issue 25, point 5, and the report's control characters)."""

from __future__ import annotations

import base64
import copy
import json
import threading
from collections import Counter

import pytest
import requests

from cds_service.admin_sessions import FREE_ATTEMPTS, AdminSessions
from cds_service.report import aggregate, as_csv, as_table
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request
from cds_service.sandbox.store import FhirStore
from cds_service.storage import make_engine
from tests.support import make_app

SIGN = "/cds-services/tacrolimus-order-sign"


def _code(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "granted",
    [
        {"redirect_uri": "http://127.0.0.1:1/app", "challenge": "x"},  # no patient
        {"patient": ["p"], "redirect_uri": "http://127.0.0.1:1/app", "challenge": "x"},
        {"patient": "p", "redirect_uri": "http://127.0.0.1:1/app", "challenge": "é"},  # non-ASCII challenge
    ],
    ids=["no-patient", "patient-not-text", "non-ascii-challenge"],
)
def test_the_dev_authorization_server_answers_400_for_a_code_it_never_issued(granted):
    with serve_in_thread(FhirStore.from_fixtures(["n2-creatinine-rise-25pct"])) as base:
        form = {
            "grant_type": "authorization_code",
            "code": _code(granted),
            "redirect_uri": granted["redirect_uri"],
            "code_verifier": "v" * 50,
        }
        answer = requests.post(f"{base}/auth/token", data=form, timeout=5)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_grant"


def test_60_concurrent_wrong_guesses_get_no_more_tries_than_the_throttle_allows(database_url):
    """All at the same moment: only the free attempts pass the check; the rest wait, as one by one."""
    sessions = AdminSessions(make_engine(database_url), clock=lambda: 1_000_000.0)
    start = threading.Barrier(60)
    outcomes: list[bool] = []

    def guess() -> None:
        start.wait()
        outcomes.append(sessions.attempt("198.51.100.7") is None)

    threads = [threading.Thread(target=guess) for _ in range(60)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(outcomes) == {True: FREE_ATTEMPTS, False: 60 - FREE_ATTEMPTS}
    assert sessions.wait("198.51.100.7") is not None
    assert sessions.attempt("203.0.113.9") is None  # per client


def test_an_order_whose_text_is_too_long_to_keep_keeps_its_codes_and_its_critical_finding(tmp_path):
    client = make_app(tmp_path, hold_repeats={"enabled": False}).test_client()
    body = build_request("pregnant-ln-flare-on-mmf", hook="order-sign")
    order = next(
        e["resource"]
        for e in body["prefetch"]["medications"]["entry"]
        if e["resource"]["id"] == "pregflare-mr-2"
    )
    order["medicationCodeableConcept"]["text"] = "mycophenolate " + "x" * 300_000  # the order is ~300 KB
    answer = client.post(SIGN, json=body).get_json()
    critical = next(card for card in answer["cards"] if card["indicator"] == "critical")
    assert any(item["id"] == "P2" for item in critical["extension"]["org.example.tacrolimus-cds.findings"])
    assert "too large to read" not in json.dumps(answer)
    assert "mycophenolate xxx" in critical["detail"] and "…" in critical["detail"]


def test_feedback_report_strips_control_characters_from_caller_text():
    hostile = "risk\x1b[2J\x07\u202e-benefit\r\nreason"
    feedback = [
        {
            "service_id": "tacrolimus-order-sign",
            "card_uuid": "c-1",
            "outcome": "overridden",
            "override_code": hostile,
            "override_display": "shown \x1b]0;pwned\x07 display\u2066",
            "received_at": None,
            "tenant": None,
        }
    ]
    stats = aggregate([], copy.deepcopy(feedback))
    for text in (as_table(stats), as_csv(stats)):
        lines = text.splitlines()
        assert not any(ch in line for line in lines for ch in "\x1b\x07\r\u202e\u2066"), text
        assert "risk[2J-benefit reason" in text and "shown ]0;pwned display" in text
