"""The card contract (rules.md § Card contract) on every fixture's cards, read as a clinician reads them: the
most serious finding first, a summary under 140 characters that names it and counts the others in words, and
each source cited once per card."""

from __future__ import annotations

import re

import pytest

from cds_service.fixtures import manifest
from cds_service.rules.citations import CITATIONS
from cds_service.rules.model import INDICATOR_RANK
from cds_service.sandbox.requests import build_request
from tests.support import FINDINGS_KEY, make_app

FIXTURES = sorted(manifest())
FINDING_HEAD = re.compile(r"^\*\*(Critical|Warning|Info) · ([PSRN]\d+)\.\*\* ", re.MULTILINE)


@pytest.fixture(scope="module")
def cards_by_fixture(tmp_path_factory) -> dict[str, list[dict]]:
    """Every fixture's order-sign cards (hold_repeats off: each fixture is a fresh order anyway); the
    patient-view fixtures' tacrolimus-monitoring cards."""
    client = make_app(tmp_path_factory.mktemp("contract"), hold_repeats={"enabled": False}).test_client()
    found = {}
    for fixture in FIXTURES:
        hook = manifest()[fixture].get("hook", "order-sign")
        service = manifest()[fixture].get("service", "tacrolimus-order-sign")
        response = client.post(f"/cds-services/{service}", json=build_request(fixture, hook=hook))
        assert response.status_code == 200, (fixture, response.get_json())
        found[fixture] = response.get_json()["cards"]
    return found


def test_some_fixture_cards_hold_several_findings_of_different_indicators(cards_by_fixture):
    """Otherwise the checks below could pass without checking anything."""
    mixed = [
        fixture
        for fixture, cards in cards_by_fixture.items()
        for card in cards
        if len({item["indicator"] for item in card["extension"][FINDINGS_KEY]}) > 1
    ]
    assert "pregnant-ln-flare-on-mmf" in mixed and len(mixed) >= 3


@pytest.mark.parametrize("fixture", FIXTURES)
def test_findings_run_from_the_most_serious_down_and_the_detail_opens_with_the_cards_indicator(
    cards_by_fixture, fixture
):
    for card in cards_by_fixture[fixture]:
        listed = card["extension"][FINDINGS_KEY]
        ranks = [INDICATOR_RANK[item["indicator"]] for item in listed]
        assert ranks == sorted(ranks, reverse=True), (fixture, listed)
        assert card["indicator"] == listed[0]["indicator"]
        heads = FINDING_HEAD.findall(card["detail"])
        assert [(word.lower(), fid) for word, fid in heads] == [(i["indicator"], i["id"]) for i in listed]
        # the first sentence of the detail is about the finding that gives the card its indicator
        assert card["detail"].startswith(f"**{card['indicator'].capitalize()} · {listed[0]['id']}.**")
        suggestion_ranks = [
            INDICATOR_RANK[s["extension"][FINDINGS_KEY][0]["indicator"]] for s in card.get("suggestions", [])
        ]
        assert suggestion_ranks == sorted(suggestion_ranks, reverse=True)


@pytest.mark.parametrize("fixture", FIXTURES)
def test_the_summary_names_the_most_serious_finding_and_counts_the_others_in_words(cards_by_fixture, fixture):
    for card in cards_by_fixture[fixture]:
        summary, others = card["summary"], len(card["extension"][FINDINGS_KEY]) - 1
        assert len(summary) < 140
        assert "(+" not in summary and "more)" not in summary
        if others:
            expected = f"; and {others} other finding{'s' if others > 1 else ''}"
            assert summary.endswith(expected), summary
        else:
            assert "other finding" not in summary


@pytest.mark.parametrize("fixture", FIXTURES)
def test_each_source_is_cited_once_per_card_as_a_numbered_link(cards_by_fixture, fixture):
    for card in cards_by_fixture[fixture]:
        text = card["detail"] + "\n" + "\n".join(link["label"] for link in card.get("links", []))
        for label, _ in CITATIONS.values():
            assert text.count(label) <= 1, (fixture, label)
        links = [link for link in card.get("links", []) if link["type"] == "absolute"]  # not SMART app links
        assert [link["label"].split("]")[0] for link in links] == [f"[{n}" for n in range(1, len(links) + 1)]
        cited = {
            int(n) for group in re.findall(r"\[(\d+(?:, \d+)*)\]", card["detail"]) for n in group.split(", ")
        }
        assert cited == set(range(1, len(links) + 1)), (
            fixture
        )  # every link is cited, every citation has a link


def test_the_pregnant_patient_on_mycophenolate_reads_stop_mycophenolate_first(cards_by_fixture):
    pregnancy = next(
        c for c in cards_by_fixture["pregnant-ln-flare-on-mmf"] if c["source"]["topic"]["code"] == "pregnancy"
    )
    assert pregnancy["summary"] == (
        "Teratogen active in pregnancy: mycophenolate mofetil 500 mg tablet; and 1 other finding"
    )
    first_paragraph = pregnancy["detail"].split("\n")[0]
    assert first_paragraph.startswith("**Critical · P2.**") and "mycophenolate" in first_paragraph
    assert pregnancy["detail"].index("**Info · P1.**") > pregnancy["detail"].index("**Critical · P2.**")
    assert pregnancy["suggestions"][0]["label"].startswith("Stop mycophenolate")
