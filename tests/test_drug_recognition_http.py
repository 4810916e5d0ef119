"""Drug recognition through the HTTP service, for every drug class (rules.md § Drug recognition, issue 9).

Generated from one table: for each class, the same patient is sent with the class's drug as an SCD-coded
order, an SBD-coded order, a text-only order, a Medication known only by its ingredient code, and a form for
skin, eye, ear or mucosa, each by prefetch and by FHIR callback (a real FHIR server on loopback). Every
recognised variant must give exactly the findings of the SCD-coded order, which include the class's finding;
the topical form must give exactly the findings of the same patient without the drug.

Where a class has no published SBD code the SBD row carries RxNorm's SBD display with a code the service does
not know (``NO_CODE``): it is then recognised by its name, and the card must say so. Rituximab matters to
the rules only as an allergy (S3): its rows are AllergyIntolerance codes, with no ingredient or topical row.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cds_service.protocol import check_response
from cds_service.rules import RULES
from cds_service.sandbox.requests import build_request_from_bundle
from tests.support import RXNORM, SNOMED, bundle, finding_ids, make_app, serving_records

TOKEN = "recognition-token-1"
NO_CODE = "0"  # an RxNorm code no value set holds: recognition then falls back to the name
BY_NAME = "recognised by its name"
DUPLICATE_CNI = "N12" if "N12" in RULES else "S5"  # S5 moved to N12 in rule catalog v2
NOW = datetime.now(UTC)


@dataclass(frozen=True)
class Drug:
    """How the order (or allergy) names its drug."""

    code: str | None = None
    display: str | None = None
    text: str | None = None
    ingredient: str | None = None  # a Medication known only by this ingredient code
    ingredient_display: str | None = None


# class: (finding, pregnant, {variant: Drug}); variants: scd, sbd, text, ingredient, topical
TABLE: dict[str, tuple[str, bool, dict[str, Drug]]] = {
    "tacrolimus": ("N11", False, {
        "scd": Drug("198377", "tacrolimus 1 MG Oral Capsule"),
        "sbd": Drug("108513", "tacrolimus 1 MG Oral Capsule [Prograf]"),
        "text": Drug(text="Prograf 1 mg capsule"),
        "ingredient": Drug(ingredient="42316"),
        "topical": Drug(text="tacrolimus 1 MG/ML Topical Ointment [Protopic]"),
    }),
    "mycophenolate": ("P2", True, {
        "scd": Drug("200060", "mycophenolate mofetil 500 MG Oral Tablet"),
        "sbd": Drug("616435", "mycophenolate mofetil 500 MG Oral Tablet [Cellcept]"),
        "text": Drug(text="CellCept 500 mg tablets"),
        "ingredient": Drug(ingredient="68149"),
        "topical": Drug(text="mycophenolate mofetil 2 % topical cream (compounded)"),
    }),
    "cyclophosphamide": ("P2", True, {
        "scd": Drug("197549", "cyclophosphamide 25 MG Oral Tablet"),
        "sbd": Drug("210570", "cyclophosphamide 25 MG Oral Tablet [Cytoxan]"),
        "text": Drug(text="Cyclophosphamide 50 mg PO daily"),
        "ingredient": Drug(ingredient="3002"),
        "topical": Drug(text="cyclophosphamide topical ointment (compounded)"),
    }),
    "methotrexate": ("P2", True, {
        "scd": Drug("105585", "methotrexate 2.5 MG Oral Tablet"),
        "sbd": Drug(NO_CODE, "methotrexate 5 MG Oral Tablet [Trexall]"),
        "text": Drug(text="Methotrexate 15 mg weekly"),
        "ingredient": Drug(ingredient="6851"),
        "topical": Drug(text="methotrexate 1 % gel (compounded)"),
    }),
    "leflunomide": ("P2", True, {
        "scd": Drug("205285", "leflunomide 20 MG Oral Tablet"),
        "sbd": Drug(NO_CODE, "leflunomide 20 MG Oral Tablet [Arava]"),
        "text": Drug(text="Arava 20 mg"),
        # the leflunomide ingredient code has no published source yet: recognised by the ingredient's name
        "ingredient": Drug(ingredient=NO_CODE, ingredient_display="leflunomide"),
        "topical": Drug(text="leflunomide topical cream (compounded)"),
    }),
    "other-calcineurin-inhibitors": (DUPLICATE_CNI, False, {
        "scd": Drug("328160", "cyclosporine 100 MG Oral Capsule"),
        "sbd": Drug("197552", "cyclosporine 100 MG Oral Capsule [Sandimmune]"),
        "text": Drug(text="Neoral 100 mg bid"),
        "ingredient": Drug(ingredient="3008"),
        "topical": Drug(text="cyclosporine 0.5 MG/ML Ophthalmic Emulsion [Restasis]"),
    }),
    "rituximab": ("S3", False, {
        "scd": Drug("1657862", "10 ML rituximab 10 MG/ML Injection"),
        "sbd": Drug("1657864", "10 ML rituximab 10 MG/ML Injection [Rituxan]"),
        "text": Drug(text="Rituxan (infusion reaction)"),
    }),
    "cyp3a4-strong-inhibitors": ("N9", False, {
        "scd": Drug("197517", "clarithromycin 500 MG Oral Tablet"),
        "sbd": Drug("900577", "ritonavir 100 MG Oral Tablet [Norvir]"),
        "text": Drug(text="itraconazole 100 mg capsule"),
        "ingredient": Drug(ingredient="21212"),
        "topical": Drug(text="ketoconazole 20 MG/ML Medicated Shampoo"),
    }),
    "cyp3a4-moderate-inhibitors": ("N9", False, {
        "scd": Drug("831054", "diltiazem hydrochloride 120 MG Oral Tablet"),
        "sbd": Drug(NO_CODE, "diltiazem hydrochloride 120 MG Oral Tablet [Cardizem]"),
        "text": Drug(text="fluconazole 150 mg tablet"),
        "ingredient": Drug(ingredient="4053"),
        "topical": Drug(text="erythromycin 5 MG/G Ophthalmic Ointment"),
    }),
    "cyp3a4-strong-inducers": ("N9", False, {
        "scd": Drug("198202", "rifampin 300 MG Oral Capsule"),
        "sbd": Drug(NO_CODE, "carbamazepine 200 MG Oral Tablet [Tegretol]"),
        "text": Drug(text="St. John's Wort 300 mg"),
        "ingredient": Drug(ingredient="9384"),
        "topical": Drug(text="phenytoin 1 % topical cream (compounded)"),
    }),
    "nephrotoxins": ("N10", False, {
        "scd": Drug("197806", "ibuprofen 600 MG Oral Tablet"),
        "sbd": Drug("206913", "Ibuprofen 600 MG Oral Tablet [Ibu]"),
        "text": Drug(text="vancomycin 1 g IV q12h"),
        "ingredient": Drug(ingredient="5640"),
        # a product code whose published display is a topical gel: never an NSAID, whatever the text says
        "topical": Drug("855635", "Voltaren", text="Voltaren"),
    }),
}  # fmt: skip
ROWS = [(name, variant) for name, (_, _, drugs) in TABLE.items() for variant in drugs]


def day(days_ago: int) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat(timespec="seconds")


def concept(drug: Drug) -> dict:
    found: dict = {}
    if drug.code is not None:
        found["coding"] = [{"system": RXNORM, "code": drug.code, "display": drug.display}]
    if drug.text:
        found["text"] = drug.text
    return found


def order(order_id: str, patient: str, status: str, drug: Drug, days_ago: int) -> tuple[dict, list[dict]]:
    """A MedicationRequest for ``drug`` and, when it is known by its ingredient, its Medication."""
    request: dict = {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{patient}"},
        "authoredOn": day(days_ago),
    }
    if drug.ingredient is None:
        request["medicationCodeableConcept"] = concept(drug)
        return request, []
    item = {"system": RXNORM, "code": drug.ingredient}
    if drug.ingredient_display:
        item["display"] = drug.ingredient_display
    medication = {
        "resourceType": "Medication",
        "id": f"{order_id}-medication",
        "ingredient": [{"itemCodeableConcept": {"coding": [item]}, "isActive": True}],
    }
    request["medicationReference"] = {"reference": f"Medication/{medication['id']}"}
    return request, [medication]


def patient_bundle(case: str, name: str, variant: str | None) -> dict:
    """The patient of ``case``; ``variant`` None: the same patient without the drug under test."""
    _, pregnant, drugs = TABLE[name]
    patient = f"{case}-patient"
    drug = drugs[variant] if variant else None
    resources: list[dict] = [
        {"resourceType": "Patient", "id": patient, "gender": "female", "birthDate": "1994-03-01"},
        condition(
            f"{case}-ln", patient, "68815009", "Systemic lupus erythematosus glomerulonephritis syndrome"
        ),
    ]
    if pregnant:
        resources.append(condition(f"{case}-pregnancy", patient, "77386006", "Pregnancy", days_ago=60))
    trigger = drug if name == "tacrolimus" and drug else Drug("198377", "tacrolimus 1 MG Oral Capsule")
    draft, medications = order(f"{case}-draft", patient, "draft", trigger, 0)
    resources += [draft, *medications]
    if drug and name == "rituximab":
        resources.append(
            {
                "resourceType": "AllergyIntolerance",
                "id": f"{case}-allergy",
                "patient": {"reference": f"Patient/{patient}"},
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": concept(drug),
            }
        )
    elif drug and name != "tacrolimus":
        stored, medications = order(f"{case}-stored", patient, "active", drug, 10)
        resources += [stored, *medications]
    return bundle(resources)


def condition(cid: str, patient: str, code: str, display: str, days_ago: int = 400) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{patient}"},
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
        "onsetDateTime": day(days_ago),
        "recordedDate": day(days_ago),
    }


def case_id(name: str, variant: str | None) -> str:
    return f"{name}-{variant or 'none'}".replace("cyp3a4-", "c")


BUNDLES = {
    case_id(name, variant): patient_bundle(case_id(name, variant), name, variant)
    for name, (_, _, drugs) in TABLE.items()
    for variant in [None, *drugs]
}


@pytest.fixture(scope="module")
def apps(tmp_path_factory):
    """The shipped configuration; and one that also warns for moderate CYP3A4 inhibitors (N9 cfg)."""
    return {
        "default": make_app(tmp_path_factory.mktemp("recognition")),
        "moderate": make_app(
            tmp_path_factory.mktemp("recognition-moderate"), thresholds={"include_moderate_cyp3a4": True}
        ),
    }


@pytest.fixture(scope="module")
def fhir_base():
    with serving_records(BUNDLES, TOKEN) as base:
        yield base


def call(apps, fhir_base, name: str, variant: str | None, via: str) -> dict:
    app = apps["moderate" if name == "cyp3a4-moderate-inhibitors" else "default"]
    case = case_id(name, variant)
    bundle = BUNDLES[case]
    body = build_request_from_bundle(
        bundle,
        [f"MedicationRequest/{case}-draft"],
        hook="order-sign",
        via=via,
        fhir_base=fhir_base if via == "fhir" else None,
        prefetch_templates=app.extensions["cds_runtime"]().prefetch_templates,
        token=TOKEN,
    )
    if via == "prefetch":  # what `_include=MedicationRequest:medication` adds: the stored orders' Medications
        included = [
            e["resource"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Medication"
            and not e["resource"]["id"].startswith(f"{case}-draft")
        ]
        medications = body["prefetch"]["medications"]
        medications.setdefault("entry", []).extend(
            {"resource": copy.deepcopy(m), "search": {"mode": "include"}} for m in included
        )
    response = app.test_client().post("/cds-services/tacrolimus-order-sign", json=body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()
    assert check_response(cards) == []
    return cards


def card_text(cards: dict) -> str:
    return " ".join(f"{c.get('summary', '')} {c.get('detail', '')}" for c in cards["cards"])


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
@pytest.mark.parametrize(("name", "variant"), ROWS, ids=[f"{n}-{v}" for n, v in ROWS])
def test_every_drug_class_is_recognised_in_every_form_and_topical_forms_never_count(
    apps, fhir_base, name, variant, via
):
    finding = TABLE[name][0]
    reference = finding_ids(call(apps, fhir_base, name, "scd", via))
    assert finding in reference
    cards = call(apps, fhir_base, name, variant, via)
    if variant == "topical":
        if name == "tacrolimus":
            assert cards == {"cards": []}  # topical tacrolimus never triggers
        else:
            assert finding_ids(cards) == finding_ids(call(apps, fhir_base, name, None, via))
            assert finding not in finding_ids(cards)
        return
    assert finding_ids(cards) == reference
    drug = TABLE[name][2][variant]
    by_name = drug.code in (None, NO_CODE) and (drug.ingredient in (None, NO_CODE))
    if by_name and name != "tacrolimus":  # the trigger's name is not cited in a card of its own
        assert BY_NAME in card_text(cards), card_text(cards)
    elif not by_name:
        assert BY_NAME not in card_text(cards)


@pytest.mark.parametrize("via", ["prefetch", "fhir"])
@pytest.mark.parametrize(
    ("name", "finding"),
    [("methotrexate", "P2"), ("other-calcineurin-inhibitors", DUPLICATE_CNI), ("nephrotoxins", "N10")],
)
def test_the_three_real_orders_the_service_missed_now_give_their_findings(
    apps, fhir_base, name, finding, via
):
    # issue 9: methotrexate 2.5 MG Oral Tablet (105585) in pregnancy, cyclosporine 100 MG Oral Capsule,
    # ibuprofen 600 MG Oral Tablet (197806): the SCD rows of the table
    assert finding in finding_ids(call(apps, fhir_base, name, "scd", via))
    assert finding not in finding_ids(call(apps, fhir_base, name, None, via))
