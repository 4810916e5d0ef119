"""How orders and Medications are read (rules.md v3 § Drug recognition, § Reading the record: References).

Forms for skin, eye, ear or mucosa from RxNorm dose-form names and pharmacy abbreviations (systemic words win;
a full local dose-form name is local whatever else the text says); the tacrolimus formulation class from a
product code or from words; the daily dose from ``dosageInstruction``; and a ``medicationReference`` found
whichever way it is written.
"""

from __future__ import annotations

import pytest

from cds_service.dosage import administrations_per_day, daily_dose_mg
from cds_service.drug_forms import tables, words
from cds_service.terminology import RXNORM, default_terminology
from cds_service.trigger import MedicationIndex, drug_name, readable_reference

TERMS = default_terminology()
FORMS = tables().forms


@pytest.mark.parametrize(
    "text",
    [
        "tacrolimus 0.03 % oint",
        "TACROLIMUS 0.1% OINT,TOP",
        "hydrocortisone 1 % crm",
        "ketoconazole 2% top",
        "cyclosporine 0.05% ophth emulsion",
        "erythromycin opht oint",
        "tobramycin 0.3% SOLN,OPH",
        "ofloxacin otic",
        "calamine lot",
        "prednisolone acetate 1 % susp ophth",
        "ciprofloxacin 0.3 % gtt ou",
        "neomycin/polymyxin gtts in left ear",
        "diclofenac 1 % gel",
        "tacrolimus 1 MG/ML Topical Ointment [Protopic]",
        # a full local dose-form name is local whatever else the text says
        "clotrimazole 1 % Vaginal Cream, 1 applicator oral dose form",
        "ketoconazole 20 MG/ML Medicated Shampoo (tablet strength)",
        "fluticasone Nasal Spray",
        "cyclosporine 0.5 MG/ML Ophthalmic Solution",
        "ciprofloxacin 0.3% Otic Suspension",
    ],
)
def test_local_forms_and_pharmacy_abbreviations_count_for_no_drug_class(text):
    assert FORMS.is_local(words(text)), text
    assert TERMS.recognise(texts=[text]).local_form


@pytest.mark.parametrize(
    "text",
    [
        "tacrolimus 1 mg capsule",
        "tacrolimus ext rel 4 mg",  # "ext" is extended release, never external
        "tacrolimus ER 1 mg cap top",  # a systemic word wins over a local abbreviation
        "ibuprofen 800 mg tablet (for ear pain)",
        "morphine 2 mg gtt",  # an infusion drip: gtt counts only beside an eye or ear word
        "fentanyl 25 MCG/HR Transdermal System",
        "indomethacin 50 MG Rectal Suppository",
        "clotrimazole 10 MG troche",
        "nystatin oral gel",
        "chlorhexidine mouthwash",
        "buprenorphine sublingual tablet",
        "ketorolac tromethamine 15.75 MG/ACTUAT Nasal Spray",
        "etonogestrel / ethinyl estradiol vaginal ring",
        "Prograf 5 mg/mL injection",
        "top-dose methotrexate 2.5 mg tablets",
    ],
)
def test_systemic_forms_routes_and_words_are_not_local(text):
    assert not FORMS.is_local(words(text)), text


def test_oint_abbreviated_tacrolimus_is_not_systemic_tacrolimus_but_the_capsule_is():
    assert TERMS.recognise(texts=["tacrolimus 0.03 % oint"]).classes == frozenset()
    assert "tacrolimus" in TERMS.recognise(texts=["tacrolimus 1 mg cap"]).classes


def test_a_medications_form_counts_like_the_orders_text():
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {"text": "tacrolimus 0.1 %"},
        "form": {"text": "Oint"},
    }
    order = {"resourceType": "MedicationRequest", "id": "o", "medicationReference": {"reference": "#m1"}}
    order["contained"] = [medication]
    name = drug_name(order)
    assert TERMS.recognise(name.codings, name.ingredients, name.names + name.other_words).local_form


# --- tacrolimus formulation ---------------------------------------------------------------------------------
def rx(code: str) -> dict:
    return {"system": RXNORM, "code": code}


@pytest.mark.parametrize(
    ("code", "formulation"),
    [
        ("198377", "immediate-release"),
        ("2665162", "immediate-release"),  # BX-rated generic capsule
        ("2052605", "immediate-release"),  # granules for oral suspension
        ("427808", "immediate-release"),  # PED's old "Tacrolimus 1 MG Oral Tablet"
        ("1664461", "extended-release tablet"),
        ("1664463", "extended-release tablet"),  # [Envarsus]
        ("1431980", "extended-release capsule"),
        ("1431982", "extended-release capsule"),  # [Astagraf]
        ("198379", "intravenous"),
        ("1738336", "intravenous"),
        ("42316", "unknown"),  # the ingredient alone
    ],
)
def test_formulation_from_the_product_code(code, formulation):
    assert TERMS.formulation([rx(code)], []) == formulation
    other = "Prograf 1 mg capsule" if formulation == "intravenous" else "tacrolimus injection"
    if formulation != "unknown":  # the product code wins over words that say otherwise
        assert TERMS.formulation([rx(code)], [other]) == formulation
    else:  # the ingredient alone says nothing: the words tell
        assert TERMS.formulation([rx(code)], [other]) == "intravenous"


@pytest.mark.parametrize(
    ("texts", "formulation"),
    [
        (["Envarsus XR 4 mg"], "extended-release tablet"),
        (["Astagraf XL 5 mg"], "extended-release capsule"),
        (["Advagraf 3 mg"], "extended-release capsule"),
        (["tacrolimus XR 1 mg"], "extended-release tablet"),
        (["tacrolimus XL 1 mg"], "extended-release capsule"),
        (["tacrolimus 24 HR 1 MG extended release tablet"], "extended-release tablet"),
        (["tacrolimus ER 1 mg", "Extended Release Oral Capsule"], "extended-release capsule"),
        (
            ["tacrolimus 1 mg", "Oral Capsule"],
            "immediate-release",
        ),  # Medication.form read as part of the name
        (["Prograf 1 mg"], "immediate-release"),
        (["Hecoria 0.5 mg capsule"], "immediate-release"),
        (["tacrolimus 1 mg granules"], "immediate-release"),
        (["Prograf 5 mg/mL injection"], "intravenous"),
        (["tacrolimus IV 1 mg"], "intravenous"),
        (["tacrolimus ER 1 mg"], "unknown"),  # extended release, but tablet or capsule is not said
        (["tacrolimus 1 mg"], "unknown"),
    ],
)
def test_formulation_from_words(texts, formulation):
    assert TERMS.formulation([], texts) == formulation


# --- daily dose ---------------------------------------------------------------------------------------------
def dosed(*instructions: dict) -> dict:
    return {"resourceType": "MedicationRequest", "dosageInstruction": list(instructions)}


def dose(value: float, unit: str = "mg", **timing) -> dict:
    quantity = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    return {"doseAndRate": [{"doseQuantity": quantity}], "timing": timing}


def every(frequency: int, period: float, unit: str) -> dict:
    return {"repeat": {"frequency": frequency, "period": period, "periodUnit": unit}}


@pytest.mark.parametrize(
    ("order", "strength", "mg_per_day", "per_day"),
    [
        (dosed(dose(2, **every(1, 12, "h"))), None, 4.0, 2.0),
        (dosed(dose(4, **every(1, 1, "d"))), None, 4.0, 1.0),
        (dosed(dose(1, **every(2, 1, "d"))), None, 2.0, 2.0),
        (dosed(dose(3, code={"coding": [{"code": "BID"}]})), None, 6.0, 2.0),
        (dosed(dose(1, code={"coding": [{"code": "Q12H"}]})), None, 2.0, 2.0),
        (dosed(dose(500, "ug", code={"coding": [{"code": "QD"}]})), None, 0.5, 1.0),
        (dosed(dose(2, "{capsule}", **every(1, 12, "h"))), 1.0, 4.0, 2.0),  # count × product strength
        (
            dosed(dose(3, **{"repeat": {"when": ["MORN"]}}), dose(2, **{"repeat": {"when": ["EVE"]}})),
            None,
            5.0,
            2.0,
        ),
        (
            dosed(dose(2, **every(1, 12, "h")), {**dose(1, **every(1, 4, "h")), "asNeededBoolean": True}),
            None,
            4.0,
            2.0,
        ),
        (dosed(dose(2, "{capsule}", **every(1, 12, "h"))), None, None, 2.0),  # no strength: not computable
        (dosed({"text": "2 mg by mouth every 12 hours"}), None, None, None),  # text only
        (dosed(dose(2)), None, None, None),  # no timing
        ({"resourceType": "MedicationRequest"}, None, None, None),
        (dosed({"doseAndRate": "2 mg", "timing": []}), None, None, None),  # malformed: None, never an error
    ],
)
def test_daily_dose(order, strength, mg_per_day, per_day):
    assert daily_dose_mg(order, strength) == mg_per_day
    assert administrations_per_day(order) == per_day


def test_strength_comes_from_the_published_display_never_a_concentration():
    assert TERMS.strength_mg([rx("198378")]) == 5.0
    assert TERMS.strength_mg([rx("1664456")]) == 0.75
    assert TERMS.strength_mg([rx("198379")]) is None  # 5 MG/ML injection
    assert TERMS.strength_mg([{"system": RXNORM, "code": "999", "display": "tacrolimus 5 MG"}]) is None


# --- references ---------------------------------------------------------------------------------------------
MEDICATION = {"resourceType": "Medication", "id": "med-1", "code": {"coding": [rx("198377")]}}


@pytest.mark.parametrize(
    ("reference", "base"),
    [
        ("Medication/med-1", "https://ehr.example.org/fhir"),
        ("Medication/med-1/_history/3", "https://ehr.example.org/fhir"),
        ("https://ehr.example.org/fhir/Medication/med-1", "https://ehr.example.org/fhir/"),
        ("urn:uuid:0f8b1c2e-3d4a-4b5c-9d6e-7f8091a2b3c4", "https://ehr.example.org/fhir"),
        ("https://other.example.org/fhir/Medication/x", "https://ehr.example.org/fhir"),  # matched by fullUrl
    ],
)
def test_a_medication_is_found_by_id_by_absolute_url_and_by_full_url(reference, base):
    index = MedicationIndex(base)
    index.add_bundle(
        {
            "entry": [
                {"fullUrl": "urn:uuid:0f8b1c2e-3d4a-4b5c-9d6e-7f8091a2b3c4", "resource": MEDICATION},
                {"fullUrl": "https://other.example.org/fhir/Medication/x", "resource": MEDICATION},
            ]
        }
    )
    assert index.find(reference) is MEDICATION


def test_a_contained_medication_is_found_in_the_order():
    order = {
        "resourceType": "MedicationRequest",
        "contained": [{**MEDICATION, "id": "m"}],
        "medicationReference": {"reference": "#m"},
    }
    assert "tacrolimus" in TERMS.recognise(drug_name(order).codings).classes


def test_only_relative_references_and_urls_on_the_ehrs_own_server_may_be_read_from_it():
    base = "https://ehr.example.org/fhir"
    assert readable_reference("Medication/m-1", base) == "Medication/m-1"
    assert readable_reference(f"{base}/Medication/m-1", base) == "Medication/m-1"
    for never in (
        "urn:uuid:0f8b1c2e",
        "#m",
        "https://evil.example.org/fhir/Medication/m-1",
        "Patient/p",
        "Medication/../x",
    ):
        assert readable_reference(never, base) is None


def test_an_unresolved_reference_is_kept_and_the_order_is_read_by_its_text():
    order = {
        "resourceType": "MedicationRequest",
        "medicationReference": {"reference": "urn:uuid:nowhere", "display": "Prograf 1 mg capsule"},
    }
    name = drug_name(order, MedicationIndex().find)
    assert name.unresolved and name.reference == "urn:uuid:nowhere"
    assert TERMS.recognise(name.codings, name.ingredients, name.names).by_name == {"tacrolimus"}


def test_the_prefetch_is_read_only_for_a_reference_no_server_can_be_asked_for():
    reads = []

    def more():
        reads.append(1)
        return [("urn:uuid:abc", MEDICATION)]

    index = MedicationIndex("https://ehr.example.org/fhir", more=more)
    assert index.find("Medication/unknown") is None and reads == []
    assert index.find("urn:uuid:abc") is MEDICATION and reads == [1]


def test_the_record_carries_each_tacrolimus_orders_formulation_and_daily_dose():
    from datetime import UTC, datetime

    from cds_service.record_builder import build_record

    def draft(order_id: str, concept: dict, *dosage: dict) -> dict:
        return {
            "resourceType": "MedicationRequest",
            "id": order_id,
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": concept,
            "dosageInstruction": list(dosage),
        }

    drafts = [
        draft("ir", {"coding": [rx("198378")]}, dose(1, "{capsule}", **every(1, 12, "h"))),
        draft("xr", {"text": "Envarsus XR 4 mg"}, dose(4, code={"coding": [{"code": "QD"}]})),
        draft("text", {"text": "tacrolimus 1 mg"}, {"text": "1 mg twice daily"}),
        draft("mmf", {"text": "mycophenolate mofetil 500 mg tablet"}, dose(500, **every(2, 1, "d"))),
    ]
    record = build_record(terminology=TERMS, now=datetime.now(UTC), patient=None, drafts=drafts)
    found = {m.id: (m.formulation, m.daily_dose_mg, m.administrations_per_day) for m in record.medications}
    assert found == {
        "ir": ("immediate-release", 10.0, 2.0),
        "xr": ("extended-release tablet", 4.0, 1.0),
        "text": ("unknown", None, None),
        "mmf": (None, None, None),  # formulation and dose are read for tacrolimus orders only
    }


def test_formulations_relate_as_the_catalog_says_and_a_regimen_sums_its_drafts():
    from cds_service.record import Medication
    from cds_service.rules.orders import ORAL_CHANGE, ROUTE, SAME, regimen_daily_dose, relation

    def order(formulation: str | None, mg: float | None = None) -> Medication:
        return Medication(
            "x",
            frozenset({"tacrolimus"}),
            "t",
            "draft",
            None,
            None,
            formulation=formulation,
            daily_dose_mg=mg,
        )

    ir, xr, iv, unknown = (
        order(f) for f in ("immediate-release", "extended-release tablet", "intravenous", "unknown")
    )
    assert relation(ir, ir) == SAME and relation(ir, unknown) == SAME and relation(unknown, iv) == SAME
    assert relation(ir, xr) == ORAL_CHANGE and relation(xr, iv) == ROUTE
    assert ir.oral and xr.oral and not iv.oral and not unknown.oral
    assert regimen_daily_dose([order("immediate-release", 10.0), order("immediate-release", 2.0)]) == 12.0
    assert regimen_daily_dose([order("immediate-release", 10.0), order("immediate-release")]) is None
