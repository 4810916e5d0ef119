"""Which draft orders are systemic tacrolimus (rules.md "When the service speaks at all")."""

from __future__ import annotations

import pytest

from cds_service.terminology import Terminology
from cds_service.trigger import bundle_resolver, drug_name, find_trigger_orders

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TERMINOLOGY = Terminology.load()


def order(order_id: str = "o1", **medication) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        **medication,
    }


def coded(code: str, text: str | None = None) -> dict:
    concept = {"coding": [{"system": RXNORM, "code": code}]}
    return {"medicationCodeableConcept": {**concept, **({"text": text} if text else {})}}


def context(*orders: dict, selections: list[str] | None = None) -> dict:
    ctx = {
        "patientId": "p",
        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": o} for o in orders]},
    }
    if selections is not None:
        ctx["selections"] = selections
    return ctx


def triggers(ctx: dict, hook: str = "order-sign", resolve=None) -> list[str]:
    return [o["id"] for o in find_trigger_orders(ctx, hook, TERMINOLOGY, resolve)]


@pytest.mark.parametrize(
    "code",
    ["42316", "198377", "2665162", "1664461", "108515", "1431974"],
    ids=["IN", "SCD", "BX", "XR", "inj", "SBDF"],
)
def test_systemic_tacrolimus_codes_trigger(code):
    assert triggers(context(order(**coded(code)))) == ["o1"]


def test_a_code_outside_the_set_still_triggers_when_its_text_names_tacrolimus():
    # rules.md v2 § Drug recognition: by name when no code matches (an unknown product code, a local code)
    assert triggers(context(order(**coded("308182", text="tacrolimus 1 mg capsule")))) == ["o1"]


def test_a_text_naming_a_word_that_merely_contains_a_name_does_not_trigger():
    assert triggers(context(order(medicationCodeableConcept={"text": "pretacrolimusine 1 mg"}))) == []


def test_a_topical_form_never_triggers_even_with_the_ingredient_code():
    # 284520 Protopic (clinical.md: topical tacrolimus) is in no set; the ingredient code cannot revive it
    topical = {"coding": [{"system": RXNORM, "code": "42316"}], "text": "tacrolimus 0.1 % topical ointment"}
    assert triggers(context(order(medicationCodeableConcept=topical))) == []


@pytest.mark.parametrize("text", ["Prograf 1 mg capsule", "tacrolimus 0.5 mg", "Envarsus XR 4 mg tablet"])
def test_uncoded_text_naming_tacrolimus_or_a_brand_triggers(text):
    assert triggers(context(order(medicationCodeableConcept={"text": text}))) == ["o1"]


@pytest.mark.parametrize("text", ["Protopic 0.1% ointment", "tacrolimus topical 0.03%", "tacrolimus cream"])
def test_topical_tacrolimus_never_triggers(text):
    assert triggers(context(order(medicationCodeableConcept={"text": text}))) == []


def test_contained_medication_is_resolved():
    o = order(
        medicationReference={"reference": "#med"},
        contained=[
            {
                "resourceType": "Medication",
                "id": "med",
                "code": {"coding": [{"system": RXNORM, "code": "198378"}]},
            }
        ],
    )
    assert triggers(context(o)) == ["o1"]


def test_medication_in_the_same_bundle_or_fetched_is_resolved():
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {"coding": [{"system": RXNORM, "code": "313190"}]},
    }
    o = order(medicationReference={"reference": "Medication/m1"})
    assert triggers(context(o), resolve=bundle_resolver([medication])) == ["o1"]
    assert triggers(context(o)) == []  # nothing to resolve it with, and no text


def test_reference_display_is_the_last_resort():
    o = order(medicationReference={"reference": "Medication/gone", "display": "Prograf 1 mg"})
    assert triggers(context(o), resolve=lambda ref: None) == ["o1"]
    assert drug_name(o).label == "Prograf 1 mg"


def test_order_select_only_looks_at_selections():
    tac, other = order("tac", **coded("198377")), order("other", **coded("308182"))
    assert triggers(context(tac, other, selections=["MedicationRequest/other"]), "order-select") == []
    assert triggers(context(tac, other, selections=["MedicationRequest/tac"]), "order-select") == ["tac"]
    assert triggers(context(tac, other, selections=["MedicationRequest/other"]), "order-sign") == ["tac"]


def test_dstu2_medication_order_and_untyped_bundle_are_read():
    o = {"resourceType": "MedicationOrder", "id": "d2", **coded("198377")}
    assert triggers({"draftOrders": {"entry": [{"resource": o}]}}) == ["d2"]


def test_malformed_draft_orders_never_raise():
    for junk in (None, [], "x", {"entry": "x"}, {"entry": [None, 3, {"resource": "x"}]}):
        assert triggers({"draftOrders": junk}) == []
