"""What a result says, every way a chart codes it (``cds_service.reading``; rules.md v3 § Reading the record).

Table-driven: each row is one coding style of one fact and the meaning the rules must get from it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cds_service.reading import hcg_meaning, read_polarity, read_quantity
from cds_service.record_builder import build_record
from cds_service.terminology import Terminology

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


@pytest.fixture(scope="module")
def terms() -> Terminology:
    return Terminology.load()


def coded(*codings: tuple[str, str], text: str | None = None) -> dict:
    concept: dict = {"coding": [{"system": s, "code": c} for s, c in codings]}
    if text is not None:
        concept["text"] = text
    return {"valueCodeableConcept": concept}


def flagged(*codes: str) -> dict:
    return {"interpretation": [{"coding": [{"system": V3, "code": c}]} for c in codes]}


# (value elements, expected answer, flag only)
QUALITATIVE = [
    (coded((LOINC, "LA6576-8")), "positive", False),
    (coded((LOINC, "LA6577-6")), "negative", False),
    (coded((LOINC, "LA11882-0")), "positive", False),
    (coded((LOINC, "LA11883-8")), "negative", False),
    (coded((SNOMED, "10828004")), "positive", False),
    (coded((SNOMED, "260385009")), "negative", False),
    (coded((SNOMED, "11214006")), "positive", False),
    (coded((SNOMED, "131194007")), "negative", False),
    (coded((SNOMED, "260373001")), "positive", False),
    (coded((SNOMED, "260415000")), "negative", False),
    (coded(("urn:local", "P1"), (SNOMED, "11214006")), "positive", False),  # every coding, not the first
    (coded(("urn:local", "R"), text="Reactive"), "positive", False),  # a local code: its text is read
    ({"valueString": "Positive"}, "positive", False),
    ({"valueString": "NEGATIVE"}, "negative", False),
    ({"valueString": "Not detected"}, "negative", False),
    ({"valueString": "non-reactive"}, "negative", False),
    ({"valueString": "Nonreactive"}, "negative", False),
    ({"valueString": "detected"}, "positive", False),
    ({"valueString": "no"}, "negative", False),
    ({"valueBoolean": True}, "positive", False),
    ({"valueBoolean": False}, "negative", False),
    (flagged("POS"), "positive", False),
    (flagged("DET"), "positive", False),
    (flagged("NEG"), "negative", False),
    (flagged("ND"), "negative", False),
    (flagged("A"), "positive", True),
    (flagged("N"), "negative", True),
    ({**coded((LOINC, "LA6576-8")), **flagged("A")}, "positive", False),  # A agrees with a positive
    ({**coded((LOINC, "LA6577-6")), **flagged("N")}, "negative", False),  # N with a negative
    ({**coded((LOINC, "LA6576-8"), text="hCG urine"), "valueString": "see comment"}, "positive", False),
]


@pytest.mark.parametrize(("value", "answer", "flag_only"), QUALITATIVE)
def test_each_coding_style_of_a_qualitative_result_reads_the_same(terms, value, answer, flag_only):
    said = read_polarity(value, terms)
    assert (said.answer, said.flag_only, said.fault) == (answer, flag_only, None)


DISAGREEING = [
    {**coded((LOINC, "LA6576-8")), "valueString": "Negative"},
    {**coded((LOINC, "LA6576-8")), **flagged("NEG")},
    {**coded((SNOMED, "131194007")), **flagged("A")},  # non-reactive flagged abnormal
    {"valueString": "Positive", **flagged("N")},
    coded((LOINC, "LA6576-8"), (SNOMED, "260385009")),  # two codings of opposite polarity
    {"valueString": "Negative for A, positive for B"},
]


@pytest.mark.parametrize("value", DISAGREEING)
def test_code_text_and_interpretation_that_disagree_make_it_unreadable_and_say_so(terms, value):
    said = read_polarity(value, terms)
    assert said.answer is None and said.fault


def test_an_unknown_code_is_the_element_at_fault(terms):
    said = read_polarity(coded((LOINC, "LA9999-9")), terms)
    assert said.answer is None and said.fault == "valueCodeableConcept http://loinc.org|LA9999-9"


def test_a_value_that_states_nothing_is_silent(terms):
    assert read_polarity({"valueString": "see comment"}, terms).answer is None
    assert read_polarity({"valueString": "see comment"}, terms).fault is None


BREASTFEEDING = [
    ("Breastfeeding, not exclusively", "positive"),
    ("Exclusively breastfed", "positive"),
    ("Mixed feeding", "positive"),
    ("partial", "positive"),
    ("Breast milk and formula", "positive"),
    ("Yes", "positive"),
    ("Not breastfeeding", "negative"),
    ("never breastfed", "negative"),
    ("Formula only", "negative"),
    ("Weaned", "negative"),
    ("No", "negative"),
    ("Breastfeeding, no formula", "positive"),  # "no" negates formula, not the answer
]


@pytest.mark.parametrize(("words", "answer"), BREASTFEEDING)
def test_breastfeeding_means_any_breast_milk_and_a_negation_counts_only_before_its_word(terms, words, answer):
    for value in ({"valueString": words}, {"valueCodeableConcept": {"text": words}}):
        assert read_polarity(value, terms, "lactation").answer == answer, value


@pytest.mark.parametrize(
    ("value", "answer"),
    [
        (coded((LOINC, "LA33-6")), "positive"),
        (coded((SNOMED, "373066001")), "positive"),
        (coded((SNOMED, "866041003")), "positive"),  # a lactation finding as the answer
        (coded((LOINC, "LA32-8")), "negative"),
        ({"valueBoolean": True}, "positive"),
    ],
)
def test_coded_breastfeeding_answers(terms, value, answer):
    assert read_polarity(value, terms, "lactation").answer == answer


@pytest.mark.parametrize(
    ("value", "answer"),
    [
        (coded((SNOMED, "77386006")), "pregnant"),
        (coded((SNOMED, "60001007")), "not-pregnant"),
        (coded((SNOMED, "261665006")), "unknown"),
        ({"valueString": "Pregnant"}, "pregnant"),
        ({"valueString": "not pregnant"}, "not-pregnant"),
        ({"valueString": "Unknown"}, "unknown"),
        ({"valueCodeableConcept": {"text": "Patient is not pregnant"}}, "not-pregnant"),
    ],
)
def test_pregnancy_status_in_words_reads_like_the_coded_answers(terms, value, answer):
    assert read_polarity(value, terms, "pregnancy").answer == answer


def test_a_pregnancy_status_whose_code_and_text_disagree_is_unreadable(terms):
    said = read_polarity(coded((SNOMED, "77386006"), text="Not pregnant"), terms, "pregnancy")
    assert said.answer is None and "disagree" in (said.fault or "")


@pytest.mark.parametrize(
    ("value", "number", "unit", "comparator"),
    [
        ({"valueQuantity": {"value": 5.2, "unit": "mmol/L"}}, 5.2, "mmol/L", None),
        ({"valueQuantity": {"value": 5, "comparator": "<", "code": "[IU]/L"}}, 5, None, "<"),
        ({"valueString": "5.2 mmol/L"}, 5.2, "mmol/L", None),
        ({"valueString": "<5 IU/L"}, 5, "IU/L", "<"),
        ({"valueString": "> 1000 IU/L"}, 1000, "IU/L", ">"),
        ({"valueString": "≤ 2,5 mIU/mL"}, 2.5, "mIU/mL", "<="),
    ],
)
def test_quantities_from_value_quantity_and_value_string_keep_their_comparator(
    value, number, unit, comparator
):
    quantity = read_quantity(value)
    assert quantity is not None
    assert (quantity.value, quantity.unit, quantity.comparator) == (number, unit, comparator)


@pytest.mark.parametrize("words", ["see comment", "Positive", "5 to 10", ""])
def test_a_value_string_without_one_number_is_not_a_quantity(words):
    assert read_quantity({"valueString": words}) is None


@pytest.mark.parametrize(
    ("value", "comparator", "meaning"),
    [
        (4.99, None, "negative"),
        (5, None, "indeterminate"),  # the band's edges are inside it
        (12, None, "indeterminate"),
        (25, None, "indeterminate"),
        (25.01, None, "positive"),
        (5, "<", "negative"),
        (5, "<=", "indeterminate"),
        (25, "<", "indeterminate"),
        (1000, ">", "positive"),
        (25, ">", "positive"),
        (25, ">=", "indeterminate"),
        (10, ">", "indeterminate"),
    ],
)
def test_hcg_band_edges_and_comparators(value, comparator, meaning):
    assert hcg_meaning(value, comparator, (5, 25), 25) == meaning


# --- through the record builder: what the rules see -------------------------------------------------------
NOW = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def built(terms: Terminology, loinc: str, value: dict, oid: str = "o1"):
    resource = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": loinc}]},
        "effectiveDateTime": "2026-10-30",
        **value,
    }
    return build_record(terminology=terms, now=NOW, patient=None, observations=[resource])


def test_a_value_string_quantity_with_a_comparator_reaches_the_rules_converted(terms):
    series = built(terms, "19080-1", {"valueString": "<5 mIU/mL"}).lab("hcg-quantitative")
    value = series.newest()
    assert value is not None and (value.value, value.comparator) == (5.0, "<")
    potassium = built(terms, "2823-3", {"valueString": "5.8 mEq/L"}).lab("potassium").newest()
    assert potassium is not None and potassium.value == 5.8 and potassium.unit == "mmol/L"


def test_an_unreadable_result_is_named_with_its_element_and_resource(terms):
    series = built(terms, "2106-3", coded((LOINC, "LA9999-9")), oid="x").lab("hcg-qualitative")
    assert series.newest() is None
    (reason,) = [u.reason for u in series.unusable]
    assert reason == (
        "hCG (qualitative) result on 2026-10-30 could not be read: "
        "valueCodeableConcept http://loinc.org|LA9999-9 (Observation/x)"
    )


def test_a_delivery_procedure_is_read_with_its_performed_date(terms):
    procedure = {
        "resourceType": "Procedure",
        "id": "cs",
        "status": "completed",
        "code": {"coding": [{"system": SNOMED, "code": "11466000", "display": "Cesarean section"}]},
        "performedPeriod": {"start": "2026-10-20T08:00:00Z", "end": "2026-10-20T09:10:00Z"},
    }
    not_done = {**procedure, "id": "nd", "status": "not-done"}
    other = {**procedure, "id": "other", "code": {"coding": [{"system": SNOMED, "code": "80146002"}]}}
    record = build_record(terminology=terms, now=NOW, patient=None, procedures=[procedure, not_done, other])
    (found,) = record.procedures
    assert found.reference == "Procedure/cs" and found.performed.isoformat() == "2026-10-20T09:10:00+00:00"
    assert "delivery-procedures" in found.concepts


def test_a_quantitative_hcg_reported_in_words_or_as_an_answer_code_is_read(terms):
    negative = built(terms, "19080-1", coded((LOINC, "LA6577-6"))).lab("hcg-quantitative").newest()
    assert negative is not None and negative.answer == "negative"
    number = built(terms, "19080-1", {"valueQuantity": {"value": 3, "unit": "IU/L"}, **flagged("POS")})
    value = number.lab("hcg-quantitative").newest()
    assert value is not None and value.value == 3.0  # the number wins over a flag
