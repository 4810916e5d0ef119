"""Writes the fixture patients of ``fhir_fixtures/`` (one Bundle per patient, plus ``manifest.json``).

Run ``.venv/bin/python fhir_fixtures/make_fixtures.py`` after editing; the JSON it writes is committed.
Why a script: sixty patients share the same building blocks (a monitoring panel, a renewal order...), and
writing them once keeps codes, units and id prefixes consistent. Dates are written as if today were
2026-11-01 (``cds_service.fixtures.ANCHOR``); ``load_bundle`` moves them to the real today.

Every code used here is one that the knowledge base ``clinical.md`` (copy: ``tests/data/knowledge/``) marks
verified. Each fixture's ``expected`` set was worked out by hand from ``rules.md`` and the interpretation
decisions in the project notes; its ``why`` says, per finding, what in the record makes it fire.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ANCHOR = date(2026, 11, 1)
OUT_DIR = Path(__file__).resolve().parent
FULL_URL_BASE = "http://example.org/fhir"

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


def coding(system: str, code: str, display: str) -> dict:
    return {"system": system, "code": code, "display": display}


# --- Codes (all marked verified in clinical.md) -------------------------------------------------------------

# Medications: (codings, text). Non-tacrolimus products carry the SCD *and* the ingredient, as EHRs that
# send several RxNorm term types do; drugs without a verified product code carry the ingredient only.
DRUGS: dict[str, tuple[list[dict], str]] = {
    "tacrolimus-0.5mg": (
        [coding(RXNORM, "313190", "tacrolimus 0.5 MG Oral Capsule")],
        "tacrolimus 0.5 mg capsule",
    ),
    "tacrolimus-1mg": ([coding(RXNORM, "198377", "tacrolimus 1 MG Oral Capsule")], "tacrolimus 1 mg capsule"),
    "tacrolimus-bx-1mg": (
        [coding(RXNORM, "2665162", "BX Rating tacrolimus 1 MG Oral Capsule")],
        "tacrolimus 1 mg capsule (BX-rated generic)",
    ),
    "prograf-1mg": (
        [coding(RXNORM, "108513", "tacrolimus 1 MG Oral Capsule [Prograf]")],
        "Prograf 1 mg capsule",
    ),
    "tacrolimus-xr-1mg": (
        [coding(RXNORM, "1664461", "24 HR tacrolimus 1 MG Extended Release Oral Tablet")],
        "tacrolimus XR 1 mg tablet",
    ),
    "tacrolimus-xr-4mg": (
        [coding(RXNORM, "1664434", "24 HR tacrolimus 4 MG Extended Release Oral Tablet")],
        "tacrolimus XR 4 mg tablet",
    ),
    "envarsus-1mg": (
        [coding(RXNORM, "1664463", "24 HR tacrolimus 1 MG Extended Release Oral Tablet [Envarsus]")],
        "Envarsus XR 1 mg tablet",
    ),
    "astagraf-1mg": (
        [coding(RXNORM, "1431982", "24 HR tacrolimus 1 MG Extended Release Oral Capsule [Astagraf]")],
        "Astagraf XL 1 mg capsule",
    ),
    "mmf-500mg": (
        [
            coding(RXNORM, "200060", "mycophenolate mofetil 500 MG Oral Tablet"),
            coding(RXNORM, "68149", "mycophenolate mofetil"),
        ],
        "mycophenolate mofetil 500 mg tablet",
    ),
    "mmf-250mg": (
        [
            coding(RXNORM, "199058", "mycophenolate mofetil 250 MG Oral Capsule"),
            coding(RXNORM, "68149", "mycophenolate mofetil"),
        ],
        "mycophenolate mofetil 250 mg capsule",
    ),
    "mpa-360mg": (
        [
            coding(RXNORM, "485023", "mycophenolic acid 360 MG Delayed Release Oral Tablet"),
            coding(RXNORM, "7145", "mycophenolic acid"),
        ],
        "mycophenolic acid (Myfortic) 360 mg delayed-release tablet",
    ),
    "cyclophosphamide-500mg": (
        [
            coding(RXNORM, "1734917", "cyclophosphamide 500 MG Injection"),
            coding(RXNORM, "3002", "cyclophosphamide"),
        ],
        "cyclophosphamide 500 mg IV (Euro-Lupus)",
    ),
    "rituximab-500mg": (
        [
            coding(RXNORM, "1657867", "50 ML rituximab 10 MG/ML Injection"),
            coding(RXNORM, "121191", "rituximab"),
        ],
        "rituximab 500 mg IV",
    ),
    "azathioprine-50mg": (
        [coding(RXNORM, "197388", "azathioprine 50 MG Oral Tablet"), coding(RXNORM, "1256", "azathioprine")],
        "azathioprine 50 mg tablet",
    ),
    "hydroxychloroquine": (
        [coding(RXNORM, "5521", "hydroxychloroquine")],
        "hydroxychloroquine 200 mg tablet",
    ),
    "methotrexate": ([coding(RXNORM, "6851", "methotrexate")], "methotrexate 2.5 mg tablet"),
    "cyclosporine-modified": (
        [coding(RXNORM, "236077", "cyclosporine, modified")],
        "cyclosporine (modified) 100 mg capsule",
    ),
    "clarithromycin": ([coding(RXNORM, "21212", "clarithromycin")], "clarithromycin 500 mg tablet"),
    "rifampin": ([coding(RXNORM, "9384", "rifampin")], "rifampin 300 mg capsule"),
    "naproxen": ([coding(RXNORM, "7258", "naproxen")], "naproxen 500 mg tablet"),
}

LN_ICD = coding(ICD10, "M32.14", "Glomerular disease in systemic lupus erythematosus")
WHO_CLASS = "Systemic lupus erythematosus glomerulonephritis syndrome, World Health Organization class"

CONDITIONS: dict[str, tuple[list[dict], str]] = {
    "sle": ([coding(SNOMED, "55464009", "Systemic lupus erythematosus")], "Systemic lupus erythematosus"),
    "sle-no-organ": (
        [
            coding(SNOMED, "55464009", "Systemic lupus erythematosus"),
            coding(ICD10, "M32.9", "Systemic lupus erythematosus, unspecified"),
        ],
        "Systemic lupus erythematosus (skin and joints)",
    ),
    "ln": (
        [coding(SNOMED, "68815009", "Systemic lupus erythematosus glomerulonephritis syndrome"), LN_ICD],
        "Lupus nephritis",
    ),
    "ln-class-iii": ([coding(SNOMED, "76521009", f"{WHO_CLASS} III"), LN_ICD], "Lupus nephritis, class III"),
    "ln-class-iv": ([coding(SNOMED, "36402006", f"{WHO_CLASS} IV"), LN_ICD], "Lupus nephritis, class IV"),
    "ln-class-v": (
        [coding(SNOMED, "52042003", f"{WHO_CLASS} V"), LN_ICD],
        "Lupus nephritis, class V (membranous)",
    ),
    "pregnancy": (
        [coding(SNOMED, "77386006", "Pregnancy"), coding(ICD10, "Z33.1", "Pregnant state, incidental")],
        "Pregnancy",
    ),
    "pre-eclampsia": ([coding(SNOMED, "398254007", "Pre-eclampsia")], "Pre-eclampsia"),
    "breastfeeding": ([coding(SNOMED, "866041003", "Mother currently breastfeeding")], "Breastfeeding"),
    "delivered": (
        [
            coding(ICD10, "O80", "Encounter for full-term uncomplicated delivery"),
            coding(ICD10, "Z37.0", "Single live birth"),
        ],
        "Spontaneous vaginal delivery, single live birth",
    ),
    "hepatitis-b": (
        [
            coding(SNOMED, "61977001", "Chronic type B viral hepatitis"),
            coding(ICD10, "B18.1", "Chronic viral hepatitis B without delta-agent"),
        ],
        "Chronic hepatitis B",
    ),
    "hypertension": (
        [
            coding(SNOMED, "38341003", "Hypertensive disorder, systemic arterial"),
            coding(ICD10, "I10", "Essential (primary) hypertension"),
        ],
        "Hypertension",
    ),
    "ckd-3": (
        [
            coding(SNOMED, "433144002", "Chronic kidney disease stage 3"),
            coding(ICD10, "N18.30", "Chronic kidney disease, stage 3 unspecified"),
        ],
        "Chronic kidney disease stage 3 (transplant kidney)",
    ),
    "kidney-transplant": ([], "Kidney transplant recipient (deceased donor, 2019)"),
}

# Observations: (LOINC, display, category).
TESTS: dict[str, tuple[str, str, str]] = {
    "creatinine": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "laboratory"),
    "creatinine-si": ("14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "laboratory"),
    "egfr": (
        "98979-8",
        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by "
        "Creatinine-based formula (CKD-EPI 2021)",
        "laboratory",
    ),
    "potassium": ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "laboratory"),
    "magnesium": ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "laboratory"),
    "magnesium-si": ("2601-3", "Magnesium [Moles/volume] in Serum or Plasma", "laboratory"),
    "glucose": ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "laboratory"),
    "hba1c": ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "laboratory"),
    "upcr": ("2890-2", "Protein/Creatinine [Mass Ratio] in Urine", "laboratory"),
    "tacrolimus-level": ("11253-2", "Tacrolimus [Mass/volume] in Blood", "laboratory"),
    "tacrolimus-level-lcms": ("74097-7", "Tacrolimus [Mass/volume] in Blood by LC/MS/MS", "laboratory"),
    "hcg": ("19080-1", "Choriogonadotropin [Units/volume] in Serum or Plasma", "laboratory"),
    "hcg-beta": (
        "21198-7",
        "Choriogonadotropin.beta subunit [Units/volume] in Serum or Plasma",
        "laboratory",
    ),
    "igg": ("2465-3", "IgG [Mass/volume] in Serum or Plasma", "laboratory"),
    "hbsag": (
        "5196-1",
        "Hepatitis B virus surface Ag [Presence] in Serum or Plasma by Immunoassay",
        "laboratory",
    ),
    "pregnancy-status": ("82810-3", "Pregnancy status", "social-history"),
    "breastfeeding-status": ("63895-7", "Breastfeeding status", "social-history"),
    "edd": ("11778-8", "Delivery date Estimated", "exam"),
    "bp": ("85354-9", "Blood pressure panel with all children optional", "vital-signs"),
    "height": ("8302-2", "Body height", "vital-signs"),
}

# How a unit is written (``unit``) and its UCUM code (``code``).
UNITS = {
    "mg/dL": "mg/dL",
    "µmol/L": "umol/L",
    "mL/min/1.73m2": "mL/min/{1.73_m2}",
    "mmol/L": "mmol/L",
    "%": "%",
    "g/g": "g/g",
    "mg/g": "mg/g",
    "mg/mmol": "mg/mmol",
    "ng/mL": "ng/mL",
    "IU/L": "[IU]/L",
    "mmHg": "mm[Hg]",
    "cm": "cm",
    "in": "[in_i]",
}

PREGNANT = coding(SNOMED, "77386006", "Pregnant")
YES_LOINC = coding(LOINC, "LA33-6", "Yes")
YES_SNOMED = coding(SNOMED, "373066001", "Yes")
NOT_PREGNANT = coding(SNOMED, "60001007", "Not pregnant")


# --- Dates --------------------------------------------------------------------------------------------------


def ago(days: int, time: str = "08:30") -> str:
    """A dateTime ``days`` before the anchor (never the anchor day itself, so nothing is in the future)."""
    assert days >= 1, "clinical data must predate the ordering session"
    return f"{(ANCHOR - timedelta(days=days)).isoformat()}T{time}:00Z"


def on(day: str, time: str = "08:30") -> str:
    return f"{day}T{time}:00Z"


# --- Building a chart ---------------------------------------------------------------------------------------


@dataclass
class Chart:
    """One fixture patient. Every id is ``<short>-<key>`` so all fixtures can share one FHIR server."""

    short: str
    resources: list[dict] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    _counts: Counter = field(default_factory=Counter)

    def rid(self, key: str) -> str:
        return f"{self.short}-{key}"

    def next_key(self, stem: str) -> str:
        self._counts[stem] += 1
        return f"{stem}-{self._counts[stem]}"

    @property
    def patient_ref(self) -> dict:
        return {"reference": f"Patient/{self.rid('pat')}"}

    def add(self, resource: dict) -> str:
        self.resources.append(resource)
        return f"{resource['resourceType']}/{resource['id']}"

    def patient(self, given: str, family: str, gender: str, birth: str) -> Chart:
        self.add(
            {
                "resourceType": "Patient",
                "id": self.rid("pat"),
                "identifier": [
                    {"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN-{self.short.upper()}"}
                ],
                "name": [{"use": "official", "family": family, "given": [given]}],
                "gender": gender,
                "birthDate": birth,
            }
        )
        return self

    def condition(
        self,
        concept: str,
        onset: str,
        *,
        clinical: str | None = "active",
        verification: str = "confirmed",
        category: str = "problem-list-item",
        abated: str | None = None,
        note: str | None = None,
    ) -> str:
        codings, text = CONDITIONS[concept]
        resource: dict[str, Any] = {"resourceType": "Condition", "id": self.rid(self.next_key(concept))}
        if clinical:
            resource["clinicalStatus"] = {"coding": [coding(CLINICAL, clinical, clinical.capitalize())]}
        resource["verificationStatus"] = {
            "coding": [coding(VERIFICATION, verification, verification.capitalize())]
        }
        cat_display = "Problem List Item" if category == "problem-list-item" else "Encounter Diagnosis"
        resource["category"] = [{"coding": [coding(CONDITION_CATEGORY, category, cat_display)]}]
        resource["code"] = {"coding": codings, "text": text} if codings else {"text": text}
        resource["subject"] = self.patient_ref
        resource["onsetDateTime"] = onset
        if abated:
            resource["abatementDateTime"] = abated
        resource["recordedDate"] = onset
        if note:
            resource["note"] = [{"text": note}]
        return self.add(resource)

    def order(
        self,
        drug: str | None,
        authored: str,
        *,
        status: str = "active",
        dosage: str,
        until: str | None = None,
        key: str | None = None,
        prior: str | None = None,
        medication: str | None = None,
        contained: bool = False,
        text_only: str | None = None,
        note: str | None = None,
        times_a_day: int | None = None,
    ) -> str:
        """A MedicationRequest. ``until`` closes it with a validity period; ``status='draft'`` makes it one of
        this session's draft orders; ``times_a_day`` adds a structured timing to the dosage text. The drug is
        inline, a contained Medication (``contained``), a Medication resource in the bundle (``medication`` =
        its reference) or free text only (``text_only``)."""
        resource: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "id": self.rid(key or self.next_key("mr")),
        }
        if contained:
            med_id = self.rid("med-" + drug)
            codings, text = DRUGS[drug]
            resource["contained"] = [
                {"resourceType": "Medication", "id": med_id, "code": {"coding": codings, "text": text}}
            ]
        resource["status"] = status
        resource["intent"] = "order"
        if text_only:
            resource["medicationCodeableConcept"] = {"text": text_only}
        elif contained:
            resource["medicationReference"] = {"reference": f"#{med_id}", "display": DRUGS[drug][1]}
        elif medication:
            resource["medicationReference"] = {"reference": medication, "display": DRUGS[drug][1]}
        else:
            codings, text = DRUGS[drug]
            resource["medicationCodeableConcept"] = {"coding": codings, "text": text}
        resource["subject"] = self.patient_ref
        resource["authoredOn"] = authored
        if prior:
            resource["priorPrescription"] = {"reference": prior}
        if note:
            resource["note"] = [{"text": note}]
        resource["dosageInstruction"] = [{"text": dosage}]
        if times_a_day:
            repeat = {"frequency": times_a_day, "period": 1, "periodUnit": "d"}
            resource["dosageInstruction"][0]["timing"] = {"repeat": repeat}
        if until:
            resource["dispenseRequest"] = {"validityPeriod": {"start": authored[:10], "end": until}}
        ref = self.add(resource)
        if status == "draft":
            self.drafts.append(ref)
        return ref

    def medication(self, drug: str) -> str:
        """A Medication resource of its own in the bundle, for orders that reference it."""
        codings, text = DRUGS[drug]
        return self.add(
            {
                "resourceType": "Medication",
                "id": self.rid("med-" + drug),
                "code": {"coding": codings, "text": text},
            }
        )

    def _observation(self, test: str, when: str, key: str | None = None) -> dict:
        code, display, category = TESTS[test]
        return {
            "resourceType": "Observation",
            "id": self.rid(key or self.next_key(test)),
            "status": "final",
            "category": [{"coding": [coding(OBS_CATEGORY, category, category.replace("-", " ").title())]}],
            "code": {"coding": [coding(LOINC, code, display)], "text": display},
            "subject": self.patient_ref,
            "effectiveDateTime": when,
        }

    def lab(self, test: str, value: float, unit: str, when: str, key: str | None = None) -> str:
        resource = self._observation(test, when, key)
        resource["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": UNITS[unit]}
        return self.add(resource)

    def bp(self, systolic: int, diastolic: int, when: str) -> str:
        resource = self._observation("bp", when)
        resource["component"] = [
            {
                "code": {"coding": [coding(LOINC, loinc, name)], "text": name},
                "valueQuantity": {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            }
            for loinc, name, value in (
                ("8480-6", "Systolic blood pressure", systolic),
                ("8462-4", "Diastolic blood pressure", diastolic),
            )
        ]
        return self.add(resource)

    def pregnancy_status(self, answer: dict, when: str) -> str:
        resource = self._observation("pregnancy-status", when)
        resource["valueCodeableConcept"] = {"coding": [answer], "text": answer["display"]}
        return self.add(resource)

    def due_date(self, edd: str, when: str) -> str:
        resource = self._observation("edd", when)
        resource["valueDateTime"] = edd
        return self.add(resource)

    def nonreactive(self, test: str, when: str) -> str:
        """A qualitative negative screening result (text answer plus the HL7 'NEG' interpretation)."""
        resource = self._observation(test, when)
        resource["valueCodeableConcept"] = {"text": "Non-reactive"}
        resource["interpretation"] = [{"coding": [coding(INTERPRETATION, "NEG", "Negative")]}]
        return self.add(resource)

    def answer(self, test: str, when: str, *, coded: dict | None = None, boolean: bool | None = None) -> str:
        """An Observation answered with a coding (e.g. LOINC LA33-6 'Yes') or a boolean."""
        resource = self._observation(test, when)
        if coded is not None:
            resource["valueCodeableConcept"] = {"coding": [coded], "text": coded["display"]}
        else:
            resource["valueBoolean"] = boolean
        return self.add(resource)

    def reactive(self, test: str, when: str) -> str:
        """A qualitative 'reactive' screening result (text answer plus the HL7 'POS' interpretation)."""
        resource = self._observation(test, when)
        resource["valueCodeableConcept"] = {"text": "Reactive"}
        resource["interpretation"] = [{"coding": [coding(INTERPRETATION, "POS", "Positive")]}]
        return self.add(resource)

    def allergy(self, drug: str, recorded: str, reaction: str) -> str:
        codings, text = DRUGS[drug]
        ingredient = [c for c in codings if c["code"] == "121191"] or codings
        return self.add(
            {
                "resourceType": "AllergyIntolerance",
                "id": self.rid(self.next_key("allergy")),
                "clinicalStatus": {"coding": [coding(ALLERGY_CLINICAL, "active", "Active")]},
                "verificationStatus": {"coding": [coding(ALLERGY_VERIFICATION, "confirmed", "Confirmed")]},
                "type": "allergy",
                "category": ["medication"],
                "criticality": "high",
                "code": {"coding": ingredient, "text": text.split(" ")[0]},
                "patient": self.patient_ref,
                "recordedDate": recorded,
                "reaction": [{"manifestation": [{"text": reaction}], "severity": "severe"}],
            }
        )

    def panel(
        self,
        when: str,
        *,
        creatinine: float | None = None,
        creatinine_umol: float | None = None,
        egfr: float | None = None,
        potassium: float | None = None,
        magnesium: float | None = None,
        magnesium_mmol: float | None = None,
        glucose: float | None = None,
        glucose_mmol: float | None = None,
        hba1c: float | None = None,
        bp: tuple[int, int] | None = None,
        upcr: float | None = None,
        upcr_unit: str = "g/g",
        tacrolimus: float | None = None,
    ) -> None:
        """One clinic visit's results, all at ``when``; ``None`` leaves a test out."""
        for test, value, unit in (
            ("creatinine", creatinine, "mg/dL"),
            ("creatinine-si", creatinine_umol, "µmol/L"),
            ("egfr", egfr, "mL/min/1.73m2"),
            ("potassium", potassium, "mmol/L"),
            ("magnesium", magnesium, "mg/dL"),
            ("magnesium-si", magnesium_mmol, "mmol/L"),
            ("glucose", glucose, "mg/dL"),
            ("glucose", glucose_mmol, "mmol/L"),
            ("hba1c", hba1c, "%"),
            ("upcr", upcr, upcr_unit),
            ("tacrolimus-level", tacrolimus, "ng/mL"),
        ):
            if value is not None:
                self.lab(test, value, unit, when)
        if bp is not None:
            self.bp(*bp, when)

    def bundle(self) -> dict:
        return {
            "resourceType": "Bundle",
            "id": self.rid("bundle"),
            "type": "collection",
            "timestamp": f"{ANCHOR.isoformat()}T00:00:00Z",
            "entry": [
                {"fullUrl": f"{FULL_URL_BASE}/{r['resourceType']}/{r['id']}", "resource": r}
                for r in self.resources
            ],
        }


def normal_visit(c: Chart, days_ago: int = 6, hbsag_screened: bool = True, **overrides: Any) -> None:
    """A complete, unremarkable monitoring visit: every N1 lab present and inside every threshold.

    ``hbsag_screened`` adds a non-reactive HBsAg from the lupus nephritis work-up 60 days earlier (so N15,
    the hepatitis B screening reminder, stays quiet unless a fixture is about it)."""
    if hbsag_screened:
        c.nonreactive("hbsag", ago(days_ago + 60))
    values: dict[str, Any] = {
        "creatinine": 0.82,
        "egfr": 96,
        "potassium": 4.2,
        "magnesium": 2.0,
        "glucose": 92,
        "bp": (122, 76),
        "upcr": 1.2,
    }
    values.update(overrides)
    c.panel(ago(days_ago), **values)


# --- The fixtures -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    name: str
    description: str
    chart: Chart
    expected: dict[str, str]
    """Finding id -> why it fires (one line)."""
    selections: list[str] | None = None
    quiet: dict[str, str] | None = None
    """Finding id -> why a finding a reader might expect does *not* fire (one line)."""
    service: str | None = None
    """A service other than the order services (``tacrolimus-monitoring``): sent by that service's hook."""


FIXTURES: list[Callable[[], Fixture]] = []


def fixture(build: Callable[[], Fixture]) -> Callable[[], Fixture]:
    FIXTURES.append(build)
    return build


NEW_START = "No tacrolimus order before this one: a new start."

TAC_DOSE = "1 mg by mouth every 12 hours; trough in 1 week"
MMF_DOSE = "1000 mg by mouth twice daily"


@fixture
def complete_well_monitored() -> Fixture:
    c = Chart("cwm").patient("Alicia", "Moreno", "female", "1996-03-14")
    c.condition("sle", on("2019-05-02"))
    c.condition(
        "ln-class-iii", on("2026-06-05"), note="Biopsy 2026-06-03: ISN/RPS class III (A), activity 6/24."
    )
    c.order("hydroxychloroquine", on("2019-05-10"), dosage="200 mg by mouth twice daily")
    c.order("mmf-500mg", on("2026-06-20"), dosage=MMF_DOSE)
    c.panel(on("2026-06-10"), creatinine=0.74, upcr=3.1, egfr=104)
    c.panel(on("2026-08-15"), creatinine=0.76, upcr=2.0, egfr=103)
    c.lab("hcg", 1.2, "IU/L", ago(9))
    normal_visit(c, 7, creatinine=0.78, egfr=101, potassium=4.1, glucose=88, bp=(118, 74), upcr=1.4)
    c.lab("hba1c", 5.3, "%", ago(7))
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "complete-well-monitored",
        "Class III LN, 4.5 months of mycophenolate, all labs recent and normal, negative hCG: add-on",
        c,
        {"N11": NEW_START},
        quiet={
            "N1": "Creatinine, eGFR, potassium, magnesium, glucose, HbA1c, BP and UPCR are all 7 days old.",
            "P3": "Quantitative hCG 1.2 IU/L 9 days ago.",
            "S1": "Mycophenolate for 4.5 months only (< 6).",
        },
    )


@fixture
def sle_without_nephritis() -> Fixture:
    c = Chart("slenon").patient("Grace", "Okafor", "female", "1993-07-22")
    c.condition("sle-no-organ", on("2017-02-14"))
    c.condition(
        "ln",
        on("2026-04-02"),
        clinical=None,
        verification="refuted",
        category="encounter-diagnosis",
        note="Suspected nephritis; biopsy 2026-04-20 showed no lupus nephritis.",
    )
    c.order("hydroxychloroquine", on("2017-03-01"), dosage="200 mg by mouth twice daily")
    c.order(
        "rituximab-500mg", on("2025-09-04"), status="completed", until="2025-09-05", dosage="500 mg IV once"
    )
    c.allergy("rituximab-500mg", on("2025-09-04"), "Severe infusion reaction: hypotension and bronchospasm")
    normal_visit(c, 5, creatinine=None, creatinine_umol=62, egfr=110, upcr=95, upcr_unit="mg/g")
    c.order(
        "envarsus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage="1 mg by mouth once daily"
    )
    return Fixture(
        "sle-without-nephritis",
        "SLE, nephritis refuted by biopsy, rituximab allergy: only the monitoring family speaks",
        c,
        {"N11": NEW_START},
        quiet={"S3": "The rituximab allergy is a barrier, but salvage findings need active lupus nephritis."},
    )


@fixture
def transplant_tacrolimus_no_lupus() -> Fixture:
    c = Chart("ktx").patient("Harold", "Jensen", "male", "1970-01-30")
    c.condition("kidney-transplant", on("2019-03-11"))
    c.condition("ckd-3", on("2020-06-01"))
    c.condition("hypertension", on("2012-04-18"))
    tac = c.order("tacrolimus-1mg", on("2025-01-10"), key="mr-tac", dosage="3 mg by mouth every 12 hours")
    c.order("mmf-500mg", on("2019-03-12"), dosage="500 mg by mouth twice daily")
    c.panel(ago(4), creatinine=1.6, egfr=47, potassium=5.8, bp=(148, 92), tacrolimus=12.5)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2 mg by mouth every 12 hours (dose reduced for trough 12.5)",
    )
    return Fixture(
        "transplant-tacrolimus-no-lupus",
        "Kidney transplant recipient on tacrolimus, no lupus: outside the default `lupus` scope",
        c,
        {},
    )


@fixture
def topical_tacrolimus_ointment() -> Fixture:
    c = Chart("topical").patient("Mei", "Chen", "female", "1988-11-05")
    c.condition(
        "sle-no-organ", on("2021-08-19"), note="Predominantly cutaneous disease (malar and discoid lesions)."
    )
    c.order("hydroxychloroquine", on("2021-09-01"), dosage="200 mg by mouth twice daily")
    c.panel(on("2026-07-14"), creatinine=0.7, egfr=112, potassium=4.0, bp=(116, 72))
    c.order(
        None,
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        text_only="Protopic (tacrolimus) 0.1 % ointment",
        dosage="Apply a thin layer to the facial lesions twice daily",
    )
    return Fixture(
        "topical-tacrolimus-ointment",
        "SLE patient with a Protopic (topical tacrolimus) ointment draft coded by text only: no trigger",
        c,
        {},
    )


@fixture
def pregnant_ln_flare_on_mmf() -> Fixture:
    c = Chart("pregflare").patient("Sofia", "Ramirez", "female", "1995-02-09")
    c.condition("sle", on("2020-10-01"))
    c.condition("ln-class-iv", on("2026-05-20"), note="Biopsy 2026-05-18: class IV-G (A).")
    c.condition("pregnancy", on("2026-10-20"))
    c.order("hydroxychloroquine", on("2020-10-15"), dosage="200 mg by mouth twice daily")
    c.order("mmf-500mg", on("2026-06-01"), dosage=MMF_DOSE)
    c.panel(on("2026-08-20"), creatinine=0.82, egfr=94, potassium=4.1, magnesium=2.0, glucose=90, upcr=3.0)
    c.nonreactive("hbsag", on("2026-05-21"))  # screened when the nephritis was diagnosed
    c.lab("hcg-beta", 3250, "IU/L", ago(9))
    c.panel(ago(5), creatinine=0.9, egfr=85, potassium=4.4, bp=(128, 80), upcr=2.3)
    c.order("prograf-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "pregnant-ln-flare-on-mmf",
        "Class IV LN flare, newly pregnant (beta-hCG 3250 IU/L), on mycophenolate; no recent Mg or glucose",
        c,
        {
            "P1": "Active pregnancy Condition and a positive beta-hCG (3250 IU/L) 9 days ago.",
            "P2": "Mycophenolate is an active order during pregnancy.",
            "S3": "Pregnancy is a barrier to rituximab.",
            "N1": "No magnesium and no glucose/HbA1c in the last 30 days (last ones 2026-08-20).",
            "N11": NEW_START,
        },
    )


@fixture
def mmf_failure_hbv_rising_upcr() -> Fixture:
    c = Chart("mmfhbv").patient("Daniel", "Nguyen", "male", "1988-06-17")
    c.condition("sle", on("2018-01-22"))
    c.condition("ln-class-iv", on("2025-10-28"))
    c.condition("hepatitis-b", on("2015-03-03"), note="HBsAg positive, HBV DNA undetectable on entecavir.")
    c.reactive("hbsag", on("2025-11-01"))
    c.order("mmf-500mg", on("2025-11-20"), dosage="1500 mg by mouth twice daily")
    c.panel(on("2025-11-10"), creatinine=0.95, upcr=1.9)
    c.panel(on("2026-02-15"), creatinine=0.92, upcr=1.1)
    c.panel(on("2026-06-10"), creatinine=0.94, upcr=1.4)
    normal_visit(c, 5, creatinine=0.97, egfr=102, glucose=None, glucose_mmol=5.2, upcr=2.3)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "mmf-failure-hbv-rising-upcr",
        "11 months of mycophenolate, UPCR back up to 2.3 g/g (1.9 before it), chronic hepatitis B",
        c,
        {
            "S1": "Mycophenolate since 2025-11-20 (> 6 months); UPCR 2.3 g/g now, 1.9 g/g before it started.",
            "S3": "Active chronic hepatitis B Condition (and HBsAg reactive): a barrier to rituximab.",
            "N11": NEW_START,
            "N14": "Active chronic hepatitis B Condition and HBsAg reactive: antiviral prophylaxis warning.",
        },
        quiet={
            "N2": "No other creatinine in the last 90 days, so no baseline to compare with (N3 likewise)."
        },
    )


@fixture
def tacrolimus_kidney_decline_clarithromycin() -> Fixture:
    c = Chart("tacclari").patient("Robert", "Kowalski", "male", "1974-09-03")
    c.condition("sle", on("2016-04-12"))
    c.condition("ln-class-iv", on("2025-11-15"))
    c.order("mmf-500mg", on("2025-12-01"), dosage=MMF_DOSE)
    tac = c.order("tacrolimus-1mg", on("2026-04-01"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2025-11-20"), creatinine=0.86, upcr=2.8)
    c.panel(on("2026-02-01"), creatinine=0.88, upcr=1.6)
    c.panel(on("2026-03-10"), creatinine=0.82, upcr=1.2)
    c.panel(on("2026-07-15"), creatinine=0.90, upcr=0.7, tacrolimus=6.8)
    c.panel(
        ago(2),
        creatinine=1.21,
        egfr=70,
        potassium=4.9,
        magnesium=1.8,
        glucose=101,
        hba1c=5.6,
        bp=(136, 84),
        upcr=0.42,
        tacrolimus=13.8,
    )
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="1 mg by mouth every 12 hours (reduced: trough 13.8, creatinine rising)",
    )
    c.order(
        "clarithromycin",
        ANCHOR.isoformat(),
        status="draft",
        key="clari-draft",
        dosage="500 mg by mouth twice daily for 7 days (community-acquired pneumonia)",
    )
    return Fixture(
        "tacrolimus-kidney-decline-clarithromycin",
        "On tacrolimus since April: creatinine 0.82 -> 1.21 mg/dL, trough 13.8; dose change + clarithromycin",
        c,
        {
            "N3": "Creatinine 1.21 mg/dL is 48 % above the 0.82 mg/dL baseline before tacrolimus started.",
            "N4": "Tacrolimus level 13.8 ng/mL (> 10; > 8 with mycophenolate).",
            "N9": "Clarithromycin (strong CYP3A4 inhibitor) drafted in the same session.",
        },
        selections=["MedicationRequest/tacclari-tac-draft"],
        quiet={"N12": "The tacrolimus draft's priorPrescription points to the active tacrolimus order."},
    )


@fixture
def class_v_egfr_40() -> Fixture:
    c = Chart("classv").patient("Marcus", "Bell", "male", "1979-12-01")
    c.condition("sle", on("2014-08-08"))
    c.condition("ln-class-v", on("2026-06-12"), note="Biopsy: pure class V, moderate chronicity.")
    c.order("mmf-500mg", on("2026-07-01"), dosage=MMF_DOSE)
    c.panel(on("2026-09-12"), creatinine_umol=162, upcr=420, upcr_unit="mg/mmol")
    normal_visit(
        c,
        6,
        creatinine=None,
        creatinine_umol=168,
        egfr=40,
        potassium=4.8,
        magnesium=1.9,
        glucose=None,
        glucose_mmol=5.6,
        bp=(134, 82),
        upcr=410,
        upcr_unit="mg/mmol",
    )
    c.order(
        "astagraf-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage="4 mg by mouth once daily"
    )
    return Fixture(
        "class-v-egfr-40",
        "Pure class V LN, eGFR 40, nephrotic-range UPCR (410 mg/mmol), 4 months of mycophenolate",
        c,
        {
            "S4": "Lupus nephritis class V (52042003) on the problem list.",
            "N13": "Newest eGFR 40 mL/min/1.73 m2 (<= 45).",
            "N11": NEW_START,
        },
    )


@fixture
def p1_pregnant_sle() -> Fixture:
    c = Chart("p1preg").patient("Hannah", "Schmidt", "female", "1992-04-27")
    c.condition("sle-no-organ", on("2015-09-30"))
    c.order("hydroxychloroquine", on("2015-10-10"), dosage="200 mg by mouth twice daily")
    c.order("azathioprine-50mg", on("2025-02-01"), dosage="100 mg by mouth once daily")
    c.pregnancy_status(PREGNANT, ago(42))
    normal_visit(c, 8, upcr=0.12)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "p1-pregnant-sle",
        "Pregnant SLE patient (pregnancy status 'Pregnant' 6 weeks ago), no nephritis, starting tacrolimus",
        c,
        {"P1": "Pregnancy status Observation answered 'Pregnant' 42 days ago.", "N11": NEW_START},
        quiet={"S3": "Pregnancy is a rituximab barrier, but there is no lupus nephritis."},
    )


@fixture
def p2_pregnant_on_methotrexate() -> Fixture:
    c = Chart("p2mtx").patient("Laura", "Bianchi", "female", "1990-10-12")
    c.condition("sle-no-organ", on("2018-03-05"), note="Inflammatory arthritis, photosensitive rash.")
    c.order("methotrexate", on("2025-09-15"), dosage="15 mg by mouth once weekly")
    c.order("hydroxychloroquine", on("2018-03-20"), dosage="200 mg by mouth twice daily")
    c.lab("hcg", 1840, "IU/L", ago(4))
    normal_visit(c, 4, upcr=0.08)
    c.order("tacrolimus-0.5mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "p2-pregnant-on-methotrexate",
        "Unplanned pregnancy (hCG 1840 IU/L) in SLE arthritis on weekly methotrexate",
        c,
        {
            "P1": "Quantitative hCG 1840 IU/L (> 25) 4 days ago, no later negative.",
            "P2": "Methotrexate is an active order during pregnancy.",
            "N11": NEW_START,
        },
    )


@fixture
def p3_mmf_no_pregnancy_test() -> Fixture:
    c = Chart("p3mmf").patient("Chloe", "Martin", "female", "1998-01-19")
    c.condition("sle", on("2022-06-06"))
    c.condition("ln-class-iii", on("2026-07-01"))
    c.order("mmf-250mg", on("2026-07-15"), dosage="1000 mg by mouth twice daily")
    normal_visit(c, 6)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "p3-mmf-no-pregnancy-test",
        "28-year-old woman on mycophenolate, no hCG and no pregnancy status on record",
        c,
        {
            "P3": "Woman aged 28, active mycophenolate, no hCG result in 30 days (pregnancy status unknown).",
            "N11": NEW_START,
        },
    )


@fixture
def p4_breastfeeding() -> Fixture:
    c = Chart("p4bf").patient("Amara", "Diallo", "female", "1994-08-30")
    c.condition("sle", on("2019-11-11"))
    c.condition("ln-class-iv", on("2023-12-20"))
    c.condition("pregnancy", on("2025-12-15"), clinical="resolved", abated=on("2026-08-30"))
    c.condition("breastfeeding", on("2026-08-30"))
    c.order(
        "cyclophosphamide-500mg",
        on("2024-01-05"),
        status="completed",
        until="2024-03-20",
        dosage="500 mg IV every 2 weeks, 6 doses",
    )
    c.order("azathioprine-50mg", on("2024-04-01"), dosage="100 mg by mouth once daily")
    c.pregnancy_status(PREGNANT, on("2026-03-15"))
    c.pregnancy_status(NOT_PREGNANT, ago(47))
    normal_visit(c, 5, upcr=1.3, bp=(126, 80))
    c.order(
        "tacrolimus-xr-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage="2 mg once daily"
    )
    return Fixture(
        "p4-breastfeeding",
        "Post-partum LN flare while breastfeeding; pregnancy resolved, newest status 'Not pregnant'",
        c,
        {"P4": "Active 'Mother currently breastfeeding' Condition.", "N11": NEW_START},
        quiet={
            "P1": "Pregnancy Condition resolved; the newest pregnancy status (47 days ago) is 'Not pregnant'."
        },
    )


@fixture
def p5_pregnant_preeclampsia() -> Fixture:
    c = Chart("p5pe").patient("Nadia", "Haddad", "female", "1989-05-21")
    c.condition("sle-no-organ", on("2016-02-02"))
    c.condition("pregnancy", on("2026-04-20"))
    c.condition("pre-eclampsia", on("2026-10-22"))
    c.order("hydroxychloroquine", on("2016-02-20"), dosage="200 mg by mouth twice daily")
    c.order("azathioprine-50mg", on("2025-06-01"), dosage="100 mg by mouth once daily")
    c.bp(150, 96, ago(10))
    c.bp(136, 86, ago(3))
    normal_visit(c, 1, bp=(134, 88), upcr=0.42)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "p5-pregnant-preeclampsia",
        "Pregnant (28 weeks) with pre-eclampsia on the problem list; BP now controlled below 140/90",
        c,
        {
            "P1": "Active pregnancy Condition.",
            "P5": "Active pre-eclampsia Condition (the last 7 days' BPs are below 140/90).",
            "N11": NEW_START,
        },
        quiet={"N7": "Newest BP 134/88 mmHg; the 150/96 reading is 10 days old."},
    )


@fixture
def p6_pregnant_on_tacrolimus_no_trough() -> Fixture:
    c = Chart("p6trough").patient("Elena", "Popescu", "female", "1991-12-08")
    c.condition("sle", on("2017-07-07"))
    c.condition("ln-class-iii", on("2024-12-20"))
    c.order("mmf-500mg", on("2025-01-15"), status="completed", until="2025-12-20", dosage=MMF_DOSE)
    tac = c.order("tacrolimus-xr-1mg", on("2026-01-10"), key="mr-tac", dosage="3 mg by mouth once daily")
    c.panel(on("2025-01-10"), creatinine=0.72, upcr=2.6)
    c.panel(on("2025-12-15"), creatinine=0.68, upcr=0.6)
    c.due_date("2027-02-10", on("2026-07-10"))
    c.lab("tacrolimus-level", 6.4, "ng/mL", ago(52))
    normal_visit(c, 9, creatinine=0.66, upcr=0.3)
    c.order(
        "tacrolimus-xr-4mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="4 mg by mouth once daily (increase for pregnancy)",
    )
    return Fixture(
        "p6-pregnant-on-tacrolimus-no-trough",
        "Pregnant (EDD 2027-02-10) on tacrolimus since January; last trough 52 days ago; dose increase",
        c,
        {
            "P1": "Estimated delivery date 2027-02-10 is in the future.",
            "P6": "Already on tacrolimus and no tacrolimus level in 28 days (last one 52 days ago).",
        },
        quiet={
            "S3": "Pregnancy is a rituximab barrier, but a dose change continues therapy: no salvage.",
            "N12": "The draft's priorPrescription points to the active tacrolimus order.",
        },
    )


@fixture
def s0_ln_first_agent() -> Fixture:
    c = Chart("s0new").patient("Kwame", "Mensah", "male", "1990-03-03")
    c.condition("sle", on("2023-01-18"))
    c.condition("ln-class-iv", on("2026-09-28"), note="Biopsy 2026-09-25: class IV-G (A), new diagnosis.")
    c.order("hydroxychloroquine", on("2023-02-01"), dosage="200 mg by mouth twice daily")
    normal_visit(c, 6, upcr=2.7, creatinine=1.0, egfr=98)
    c.order("tacrolimus-bx-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "s0-ln-first-agent",
        "New class IV LN, no mycophenolate or cyclophosphamide ever: BX-rated tacrolimus as first agent",
        c,
        {"S0": "Lupus nephritis with no mycophenolate or cyclophosphamide on record.", "N11": NEW_START},
    )


@fixture
def s1_mmf_inadequate_response() -> Fixture:
    c = Chart("s1mmf").patient("Priya", "Sharma", "female", "1992-09-14")
    c.condition("sle", on("2018-05-05"))
    c.condition("ln-class-iv", on("2026-01-08"))
    c.order("mmf-500mg", on("2026-01-15"), dosage="1500 mg by mouth twice daily")
    c.panel(on("2026-01-05"), creatinine=0.80, upcr=2.4)
    c.panel(on("2026-05-10"), creatinine=0.78, upcr=1.8)
    c.lab("hcg", 1.0, "IU/L", ago(10))
    normal_visit(c, 6, creatinine=0.8, upcr=1600, upcr_unit="mg/g")
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "s1-mmf-inadequate-response",
        "9.5 months of mycophenolate: UPCR 2.4 -> 1.6 g/g (33 % fall, still >= 0.5); negative hCG",
        c,
        {
            "S1": "Mycophenolate since 2026-01-15; UPCR 1600 mg/g (1.6 g/g) is 33 % below 2.4 g/g before it.",
            "N11": NEW_START,
        },
    )


@fixture
def s2_cyc_and_mmf_exposed() -> Fixture:
    c = Chart("s2both").patient("Thomas", "Walker", "male", "1985-04-04")
    c.condition("sle", on("2021-02-02"))
    c.condition("ln-class-iv", on("2022-12-15"))
    # A stored order naming its drug through a Medication resource. Hydroxychloroquine is in no value set, so
    # the expected findings do not depend on whether the service can fetch it (prefetch alone cannot).
    hcq = c.medication("hydroxychloroquine")
    c.order("hydroxychloroquine", on("2021-02-20"), medication=hcq, dosage="200 mg by mouth twice daily")
    c.order(
        "cyclophosphamide-500mg",
        on("2023-01-10"),
        status="completed",
        until="2023-04-30",
        dosage="500 mg IV every 2 weeks, 6 doses",
    )
    c.order("mmf-500mg", on("2023-05-10"), status="completed", until="2025-06-30", dosage=MMF_DOSE)
    c.order("azathioprine-50mg", on("2025-07-01"), dosage="150 mg by mouth once daily")
    c.panel(on("2023-01-05"), creatinine=1.1, upcr=4.1)
    c.panel(on("2023-05-01"), creatinine=0.98, upcr=3.5)
    c.panel(on("2025-06-01"), creatinine=0.92, upcr=0.3)
    normal_visit(c, 5, creatinine=0.95, upcr=1.1)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "s2-cyc-and-mmf-exposed",
        "Relapse on azathioprine after cyclophosphamide (2023) and 2 years of mycophenolate",
        c,
        {
            "S2": "Prior cyclophosphamide (2023) and prior mycophenolate (2023-2025).",
            "N11": NEW_START,
        },
        quiet={"S1": "UPCR 1.1 g/g is 69 % below the 3.5 g/g measured before mycophenolate started."},
    )


@fixture
def s3_rituximab_allergy() -> Fixture:
    c = Chart("s3rtx").patient("Victor", "Alvarez", "male", "1982-02-25")
    c.condition("sle", on("2019-09-09"))
    c.condition("ln-class-iv", on("2024-11-05"))
    c.order(
        "cyclophosphamide-500mg",
        on("2024-11-20"),
        status="completed",
        until="2025-02-05",
        dosage="500 mg IV every 2 weeks, 6 doses",
    )
    c.order(
        "rituximab-500mg", on("2025-09-04"), status="completed", until="2025-09-05", dosage="1000 mg IV once"
    )
    c.allergy("rituximab-500mg", on("2025-09-04"), "Anaphylaxis during the first rituximab infusion")
    c.order("azathioprine-50mg", on("2025-03-01"), dosage="150 mg by mouth once daily")
    normal_visit(c, 6, upcr=1.8)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "s3-rituximab-allergy",
        "LN after cyclophosphamide, anaphylaxis to rituximab recorded as an allergy",
        c,
        {"S3": "Active AllergyIntolerance to rituximab (RxNorm 121191).", "N11": NEW_START},
    )


@fixture
def s3_low_igg() -> Fixture:
    c = Chart("s3igg").patient("Margaret", "O'Brien", "female", "1968-06-11")
    c.condition("sle", on("2005-03-14"))
    c.condition("ln-class-iii", on("2026-07-20"))
    c.order("mmf-500mg", on("2026-08-01"), dosage=MMF_DOSE)
    c.lab("igg", 420, "mg/dL", ago(12))
    normal_visit(c, 6, upcr=1.5)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "s3-low-igg",
        "58-year-old woman with LN and IgG 420 mg/dL, 3 months of mycophenolate",
        c,
        {
            "S3": "Newest IgG 420 mg/dL (< 500): hypogammaglobulinaemia is a barrier to rituximab.",
            "N11": NEW_START,
        },
        quiet={"P3": "Aged 58, outside the 12-55 band."},
    )


@fixture
def s4_class_v() -> Fixture:
    c = Chart("s4mem").patient("Julia", "Novak", "female", "1997-10-02")
    c.condition("sle", on("2021-04-04"))
    c.condition("ln-class-v", on("2026-07-28"))
    c.order("mmf-500mg", on("2026-08-10"), dosage=MMF_DOSE)
    c.lab("hcg", 1.0, "IU/L", ago(20))
    normal_visit(c, 7, egfr=92, upcr=2.1)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "s4-class-v",
        "Membranous (class V) LN with preserved eGFR, mycophenolate since August, negative hCG",
        c,
        {"S4": "Lupus nephritis class V (52042003) on the problem list.", "N11": NEW_START},
    )


@fixture
def n12_second_tacrolimus_draft() -> Fixture:
    c = Chart("n12dup").patient("Samuel", "Adeyemi", "male", "1987-07-07")
    c.condition("sle", on("2020-01-01"))
    c.condition("ln-class-iv", on("2026-07-10"))
    c.order("mmf-500mg", on("2026-07-20"), dosage=MMF_DOSE)
    normal_visit(c, 5, upcr=2.2)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        dosage=TAC_DOSE,
        note="Rheumatology",
    )
    c.order(
        "tacrolimus-xr-4mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft-2",
        dosage="4 mg by mouth once daily",
        note="Nephrology",
    )
    return Fixture(
        "n12-second-tacrolimus-draft",
        "Two tacrolimus drafts in one session (IR capsule and XR tablet, two prescribers)",
        c,
        {
            "N11": NEW_START,
            "N12": "A second tacrolimus order in the same draftOrders (a suggestion deletes that draft).",
        },
        selections=["MedicationRequest/n12dup-tac-draft"],
    )


@fixture
def n12_cyclosporine_active() -> Fixture:
    c = Chart("n12csa").patient("Ahmed", "Karimi", "male", "1980-11-23")
    c.condition("sle", on("2015-05-15"))
    c.condition("ln-class-iv", on("2024-10-01"))
    c.order(
        "cyclophosphamide-500mg",
        on("2024-10-10"),
        status="completed",
        until="2024-12-20",
        dosage="500 mg IV every 2 weeks, 6 doses",
    )
    c.order("cyclosporine-modified", on("2026-05-05"), dosage="100 mg by mouth twice daily")
    normal_visit(c, 6, upcr=1.1)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "n12-cyclosporine-active",
        "Switching cyclosporine to tacrolimus while the cyclosporine order is still active",
        c,
        {
            "N11": NEW_START,
            "N12": "Cyclosporine (another calcineurin inhibitor) is an active order; start >= 24 h after it.",
        },
    )


@fixture
def n13_egfr_low() -> Fixture:
    c = Chart("n13egfr").patient("George", "Papadopoulos", "male", "1968-02-17")
    c.condition("sle", on("2008-08-08"))
    c.condition("ln-class-iv", on("2024-03-01"))
    c.order(
        "cyclophosphamide-500mg",
        on("2024-03-10"),
        status="completed",
        until="2024-05-25",
        dosage="500 mg IV every 2 weeks, 6 doses",
    )
    c.order("azathioprine-50mg", on("2024-06-01"), dosage="100 mg by mouth once daily")
    c.panel(ago(45), creatinine=1.90, egfr=39)
    normal_visit(c, 5, creatinine=1.95, egfr=38, upcr=1.6)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "n13-egfr-low",
        "LN with eGFR 38 (stable creatinine 1.9 mg/dL) after cyclophosphamide",
        c,
        {"N11": NEW_START, "N13": "Newest eGFR 38 mL/min/1.73 m2 (<= 45)."},
    )


@fixture
def s7_long_term_tacrolimus() -> Fixture:
    c = Chart("s7long").patient("Brian", "Murphy", "male", "1983-05-30")
    c.condition("sle", on("2012-10-10"))
    c.condition("ln-class-iv", on("2024-02-10"))
    c.order("mmf-500mg", on("2024-03-01"), status="completed", until="2024-11-15", dosage=MMF_DOSE)
    c.order(
        "tacrolimus-1mg",
        on("2025-03-01"),
        status="completed",
        until="2025-12-31",
        key="mr-tac-1",
        dosage="2 mg by mouth every 12 hours",
    )
    tac = c.order("tacrolimus-1mg", on("2026-01-02"), key="mr-tac-2", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2024-02-20"), creatinine=1.0, upcr=3.0)
    c.panel(on("2024-11-01"), creatinine=0.98, upcr=1.4)
    c.panel(on("2025-02-15"), creatinine=0.95, upcr=1.3)
    c.panel(on("2025-06-10"), creatinine=1.0, upcr=0.9, tacrolimus=7.1)
    c.panel(on("2025-12-10"), creatinine=1.01, upcr=0.8, tacrolimus=6.5)
    c.panel(on("2026-05-10"), creatinine=1.0, upcr=0.7, hba1c=5.7)
    normal_visit(c, 6, creatinine=1.02, egfr=90, glucose=None, glucose_mmol=5.4, upcr=0.7, tacrolimus=6.2)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2 mg by mouth every 12 hours (renewal)",
    )
    return Fixture(
        "s7-long-term-tacrolimus",
        "20 months of tacrolimus with UPCR never below 0.5 g/g; renewal of the active order",
        c,
        {"S7": "Tacrolimus since 2025-03-01 (> 12 months) and no UPCR < 0.5 g/g since then (lowest 0.7)."},
        quiet={
            "S1": "UPCR 0.7 g/g is 77 % below the 3.0 g/g measured before mycophenolate started.",
            "N12": "The draft's priorPrescription points to the active tacrolimus order.",
        },
    )


@fixture
def n1_missing_baseline_labs() -> Fixture:
    c = Chart("n1miss").patient("Lucas", "Ferreira", "male", "1991-12-12")
    c.condition("sle", on("2021-07-07"))
    c.condition("ln-class-iii", on("2026-07-25"))
    c.order("mmf-500mg", on("2026-08-01"), dosage=MMF_DOSE)
    c.panel(on("2026-08-20"), creatinine=0.86, potassium=4.3, magnesium=2.1, glucose=95, upcr=1.9)
    c.panel(ago(4), creatinine=0.9, egfr=104, bp=(124, 78))
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "n1-missing-baseline-labs",
        "Only creatinine, eGFR and BP are recent; potassium, magnesium, glucose and UPCR are 73 days old",
        c,
        {
            "N1": "No potassium, magnesium, glucose/HbA1c or UPCR in the last 30 days.",
            "N11": NEW_START,
            "N15": "No HBsAg result and no hepatitis B condition on record at this new start.",
        },
    )


@fixture
def n2_creatinine_rise_25pct() -> Fixture:
    c = Chart("n2rise").patient("Oliver", "Lindqvist", "male", "1986-08-08")
    c.condition("sle", on("2019-04-04"))
    c.condition("ln-class-iv", on("2026-01-15"))
    c.order("mmf-500mg", on("2026-02-01"), dosage=MMF_DOSE)
    tac = c.order("tacrolimus-1mg", on("2026-06-15"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2026-01-20"), creatinine=0.86, upcr=1.9)
    c.panel(on("2026-04-10"), creatinine=0.84, upcr=0.9)
    c.panel(on("2026-05-20"), creatinine=0.80, upcr=0.7)
    c.panel(on("2026-08-10"), creatinine=0.88, upcr=0.5, tacrolimus=6.9)
    normal_visit(c, 5, creatinine=1.00, egfr=95, upcr=0.45, tacrolimus=7.4)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2 mg by mouth every 12 hours (renewal)",
    )
    return Fixture(
        "n2-creatinine-rise-25pct",
        "On tacrolimus since June: creatinine 0.80 -> 1.00 mg/dL (+25 %), trough 7.4 on mycophenolate",
        c,
        {"N2": "Creatinine 1.00 mg/dL is 25 % above the 0.80 mg/dL baseline before tacrolimus started."},
    )


@fixture
def n3_creatinine_rise_first_order() -> Fixture:
    c = Chart("n3rise").patient("Ivan", "Petrov", "male", "1984-01-09")
    c.condition("sle", on("2016-06-16"))
    c.condition("ln-class-iv", on("2024-01-20"))
    c.order(
        "cyclophosphamide-500mg",
        on("2024-02-01"),
        status="completed",
        until="2024-04-15",
        dosage="500 mg IV every 2 weeks, 6 doses",
    )
    c.order("azathioprine-50mg", on("2024-05-01"), dosage="150 mg by mouth once daily")
    c.lab("creatinine-si", 71, "µmol/L", ago(76))
    c.lab("creatinine-si", 76, "µmol/L", ago(40))
    normal_visit(c, 5, creatinine=None, creatinine_umol=104, egfr=74, upcr=1.7)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "n3-creatinine-rise-first-order",
        "LN flare before any tacrolimus: creatinine 71 -> 104 umol/L in 10 weeks (SI units)",
        c,
        {
            "N3": "Creatinine 104 umol/L (1.18 mg/dL) is 46 % above the lowest earlier one in 90 days (71).",
            "N11": NEW_START,
        },
    )


@fixture
def n4_high_trough_on_mmf() -> Fixture:
    c = Chart("n4lvl").patient("Paul", "Dubois", "male", "1979-03-21")
    c.condition("sle", on("2013-12-12"))
    c.condition("ln-class-iii", on("2025-12-15"))
    c.order("mmf-500mg", on("2026-01-05"), contained=True, dosage=MMF_DOSE)
    tac = c.order("tacrolimus-1mg", on("2026-05-12"), key="mr-tac", dosage="3 mg by mouth every 12 hours")
    c.panel(on("2025-12-20"), creatinine=0.95, upcr=2.2)
    c.panel(on("2026-04-20"), creatinine=0.92, upcr=0.9)
    c.lab("tacrolimus-level-lcms", 7.0, "ng/mL", on("2026-08-01"))
    normal_visit(c, 3, creatinine=0.98, upcr=0.35, tacrolimus=9.1)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="3 mg by mouth every 12 hours (renewal)",
    )
    return Fixture(
        "n4-high-trough-on-mmf",
        "Tacrolimus trough 9.1 ng/mL with mycophenolate co-therapy (ceiling 8); renewal",
        c,
        {"N4": "Tacrolimus level 9.1 ng/mL > 8, the ceiling with mycophenolate (a contained Medication)."},
    )


@fixture
def n5_hyperkalaemia() -> Fixture:
    c = Chart("n5k").patient("Stefan", "Horvat", "male", "1977-10-10")
    c.condition("sle", on("2010-02-02"))
    c.condition("ln-class-iv", on("2026-07-15"))
    c.order("mmf-500mg", on("2026-07-25"), dosage=MMF_DOSE)
    c.lab("potassium", 5.0, "mmol/L", ago(40))
    normal_visit(c, 4, potassium=5.9, upcr=2.0)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "n5-hyperkalaemia",
        "Potassium 5.9 mmol/L four days before a tacrolimus start",
        c,
        {"N5": "Newest potassium 5.9 mmol/L (> 5.5).", "N11": NEW_START},
    )


@fixture
def n6_low_magnesium_si() -> Fixture:
    c = Chart("n6mg").patient("Rosa", "Delgado", "female", "1981-04-15")
    c.condition("sle", on("2011-11-11"))
    c.condition("ln-class-iv", on("2025-02-20"))
    c.order(
        "cyclophosphamide-500mg",
        on("2025-03-01"),
        status="completed",
        until="2025-05-15",
        dosage="500 mg IV every 2 weeks, 6 doses",
    )
    tac = c.order("tacrolimus-1mg", on("2026-04-20"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2026-03-25"), creatinine=0.70, upcr=1.2)
    normal_visit(c, 5, creatinine=0.74, magnesium=None, magnesium_mmol=0.58, upcr=0.6, tacrolimus=6.8)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2 mg by mouth every 12 hours (renewal)",
    )
    return Fixture(
        "n6-low-magnesium-si",
        "On tacrolimus since April; serum magnesium 0.58 mmol/L (1.41 mg/dL); renewal",
        c,
        {"N6": "Newest magnesium 0.58 mmol/L = 1.41 mg/dL (< 1.6)."},
    )


@fixture
def n7_hypertension() -> Fixture:
    c = Chart("n7bp").patient("Frank", "Russo", "male", "1975-07-19")
    c.condition("sle", on("2009-09-09"))
    c.condition("ln-class-iv", on("2026-07-28"))
    c.condition("hypertension", on("2022-03-03"))
    c.order("mmf-500mg", on("2026-08-05"), dosage=MMF_DOSE)
    c.bp(150, 92, ago(20))
    normal_visit(c, 3, bp=(162, 98), upcr=2.5)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "n7-hypertension",
        "BP 162/98 three days before a tacrolimus start",
        c,
        {"N7": "Newest BP 162/98 mmHg (>= 160/100 tier by systolic: warning).", "N11": NEW_START},
    )


@fixture
def n8_hyperglycaemia_on_tacrolimus() -> Fixture:
    c = Chart("n8glu").patient("William", "Tanaka", "male", "1972-12-24")
    c.condition("sle", on("2011-01-01"))
    c.condition("ln-class-iii", on("2025-12-28"))
    c.order("mpa-360mg", on("2026-01-10"), dosage="720 mg by mouth twice daily")
    tac = c.order("tacrolimus-1mg", on("2026-03-01"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2026-01-05"), creatinine=0.92, upcr=2.0, hba1c=5.6)
    c.panel(on("2026-02-10"), creatinine=0.90, upcr=1.4)
    c.lab("hba1c", 6.9, "%", on("2026-09-15"))
    normal_visit(c, 6, creatinine=0.95, glucose=None, glucose_mmol=6.1, upcr=0.4, tacrolimus=6.5)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2 mg by mouth every 12 hours (renewal)",
    )
    return Fixture(
        "n8-hyperglycaemia-on-tacrolimus",
        "HbA1c 5.6 % before tacrolimus, 6.9 % six months into it; renewal",
        c,
        {"N8": "HbA1c 6.9 % on 2026-09-15, after tacrolimus started on 2026-03-01 (>= 6.5 %)."},
    )


@fixture
def n9_rifampin() -> Fixture:
    c = Chart("n9rif").patient("Diego", "Santos", "male", "1989-02-02")
    c.condition("sle", on("2020-06-06"))
    c.condition("ln-class-iv", on("2026-08-05"))
    c.order("mmf-500mg", on("2026-08-15"), dosage=MMF_DOSE)
    c.order("rifampin", on("2026-09-20"), dosage="600 mg by mouth once daily for 4 months (latent TB)")
    normal_visit(c, 6, upcr=1.9)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "n9-rifampin",
        "Latent TB on rifampin (strong CYP3A4 inducer) when tacrolimus is started",
        c,
        {"N9": "Rifampin, a strong CYP3A4 inducer, is an active order.", "N11": NEW_START},
    )


@fixture
def n10_nsaid() -> Fixture:
    c = Chart("n10nsaid").patient("Jack", "Thompson", "male", "1983-09-09")
    c.condition("sle", on("2017-03-17"))
    c.condition("ln-class-iii", on("2026-07-22"))
    c.order("mmf-500mg", on("2026-08-01"), dosage=MMF_DOSE)
    c.order("naproxen", on("2026-10-10"), dosage="500 mg by mouth twice daily as needed for arthralgia")
    normal_visit(c, 5, upcr=1.3)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "n10-nsaid",
        "Naproxen active for arthralgia when tacrolimus is started",
        c,
        {"N10": "Naproxen (NSAID) is an active order.", "N11": NEW_START},
    )


@fixture
def tacrolimus_contained_medication() -> Fixture:
    c = Chart("tacmed").patient("Noah", "Fischer", "male", "1986-05-05")
    c.condition("sle", on("2018-08-18"))
    c.condition("ln-class-iv", on("2026-06-20"))
    c.order("mmf-500mg", on("2026-07-01"), dosage=MMF_DOSE)
    normal_visit(c, 6, upcr=1.6)
    c.order(
        "envarsus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        contained=True,
        dosage="4 mg by mouth once daily",
    )
    return Fixture(
        "tacrolimus-contained-medication",
        "Tacrolimus draft whose drug is a contained Medication (Envarsus XR) behind medicationReference",
        c,
        {"N11": NEW_START + " (The trigger is found through the contained Medication.)"},
    )


@fixture
def tacrolimus_text_only_draft() -> Fixture:
    c = Chart("tactext").patient("Dorothy", "Evans", "female", "1966-03-08")
    c.condition("sle", on("2001-05-05"))
    c.condition("ln-class-iv", on("2026-09-15"))
    c.order("hydroxychloroquine", on("2001-06-01"), dosage="200 mg by mouth once daily")
    normal_visit(c, 6, upcr=1.9, creatinine=0.9, egfr=72)
    c.order(
        None,
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        text_only="Prograf 1 mg capsule",
        dosage=TAC_DOSE,
    )
    return Fixture(
        "tacrolimus-text-only-draft",
        "Tacrolimus draft with no coding, only the text 'Prograf 1 mg capsule'",
        c,
        {"S0": "Lupus nephritis with no mycophenolate or cyclophosphamide on record.", "N11": NEW_START},
    )


@fixture
def tacrolimus_renewal_no_duplicate() -> Fixture:
    c = Chart("tacrenew").patient("Ethan", "Clarke", "male", "1980-06-26")
    c.condition("sle", on("2014-04-14"))
    c.condition("ln-class-iv", on("2026-01-10"))
    c.order("mmf-500mg", on("2026-01-20"), dosage=MMF_DOSE)
    tac = c.order("tacrolimus-1mg", on("2026-07-01"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2026-01-15"), creatinine=0.9, upcr=2.0)
    c.panel(on("2026-06-20"), creatinine=0.88, upcr=0.8, magnesium=2.0)
    normal_visit(c, 4, creatinine=0.93, magnesium=None, upcr=0.4, tacrolimus=6.0)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2.5 mg by mouth every 12 hours (dose change)",
    )
    return Fixture(
        "tacrolimus-renewal-no-duplicate",
        "Dose change whose priorPrescription points to the active tacrolimus order (not a duplicate)",
        c,
        {"N1": "No magnesium in the last 30 days (last one 2026-06-20)."},
        quiet={"N12": "The draft's priorPrescription points to the active tacrolimus order."},
    )


@fixture
def tacrolimus_active_duplicate() -> Fixture:
    c = Chart("tacdup").patient("Henry", "Larsen", "male", "1978-08-14")
    c.condition("sle", on("2012-12-12"))
    c.condition("ln-class-iv", on("2026-05-05"))
    c.order("mmf-500mg", on("2026-06-10"), dosage=MMF_DOSE)
    c.order("tacrolimus-1mg", on("2026-06-01"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2026-05-10"), creatinine=0.9, upcr=2.1)
    normal_visit(c, 5, creatinine=0.92, upcr=0.9, tacrolimus=6.5)
    c.order(
        "envarsus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage="4 mg by mouth once daily"
    )
    return Fixture(
        "tacrolimus-active-duplicate",
        "New Envarsus XR order while the tacrolimus capsule order is still active and not referenced",
        c,
        {
            "N17": "Stored active immediate-release order beside an Envarsus draft (not referenced): a "
            "switch or a mix; the daily doses are text only, so not compared (warning)."
        },
        quiet={"N12": "A stored order of another oral formulation is N17's (rules.md v3), not N12's."},
    )


@fixture
def malformed_observation_skipped() -> Fixture:
    c = Chart("malobs").patient("Leo", "Wagner", "male", "1985-10-31")
    c.condition("sle", on("2016-10-16"))
    c.condition("ln-class-iv", on("2026-07-01"))
    c.order("mmf-500mg", on("2026-07-10"), dosage=MMF_DOSE)
    normal_visit(c, 6, potassium=4.3, upcr=1.4)
    bad = c.lab("potassium", 4.0, "mmol/L", ago(2), key="potassium-bad")
    c.resources[-1]["valueQuantity"]["value"] = "abc"
    c.malformed.append(bad)
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return Fixture(
        "malformed-observation-skipped",
        "Newest potassium has valueQuantity.value 'abc': skipped, the valid 4.3 mmol/L is used",
        c,
        {"N11": NEW_START},
        quiet={"N1": "Malformed potassium (2 days ago) skipped; the valid 4.3 mmol/L 6 days ago is recent."},
    )


# --- Rule catalog version 2: pregnancy that ends, breastfeeding answers, new starts, eGFR, hepatitis B ------


def _ln_woman(short: str, given: str, family: str, birth: str) -> Chart:
    c = Chart(short).patient(given, family, "female", birth)
    c.condition("sle", on("2019-03-03"))
    c.condition("ln-class-iii", on("2026-06-01"))
    return c


def _tacrolimus_start(c: Chart) -> None:
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)


@fixture
def delivered_old_pregnant_answer() -> Fixture:
    c = _ln_woman("deliv", "Maya", "Johansson", "1995-05-05")
    c.condition("pregnancy", on("2026-01-20"))  # never resolved on the problem list
    c.pregnancy_status(PREGNANT, ago(200))
    c.condition("delivered", ago(30), clinical="resolved", category="encounter-diagnosis")
    c.order("mmf-500mg", ago(25), dosage=MMF_DOSE)
    normal_visit(c, 6)
    _tacrolimus_start(c)
    return Fixture(
        "delivered-old-pregnant-answer",
        "Delivered 30 days ago (O80/Z37.0); an old 'Pregnant' answer and a stale pregnancy problem remain",
        c,
        {
            "P3": "Woman aged 31 on mycophenolate, no negative hCG in 30 days; the pregnancy has ended.",
            "N11": NEW_START,
        },
        quiet={
            "P1": "The 'Pregnant' answer (200 days ago) and the pregnancy Condition predate the delivery.",
            "P2": "Not pregnant since the delivery: no teratogen alarm for mycophenolate.",
            "P9": "Delivered 30 days ago, but tacrolimus is a new start: P9 never fires for one.",
        },
    )


@fixture
def hcg_20_days_on_mmf() -> Fixture:
    c = _ln_woman("hcg20", "Ines", "Moreau", "1996-02-14")
    c.order("mmf-500mg", on("2026-07-01"), dosage=MMF_DOSE)
    c.lab("hcg", 850, "IU/L", ago(20))
    normal_visit(c, 5)
    _tacrolimus_start(c)
    return Fixture(
        "hcg-20-days-on-mmf",
        "Positive hCG (850 IU/L) 20 days ago, nothing later; on mycophenolate",
        c,
        {
            "P1": "Positive hCG 20 days ago and no later result: it still counts (no later result confirms).",
            "P2": "Mycophenolate is active while the pregnancy is not ended.",
            "S3": "Pregnancy is a barrier to rituximab.",
            "N11": NEW_START,
        },
        quiet={"P3": "Pregnancy is documented; P1/P2 apply instead."},
    )


def _ln_man_after_cyclophosphamide(
    short: str, given: str, family: str, birth: str, sex: str = "male"
) -> Chart:
    c = Chart(short).patient(given, family, sex, birth)
    c.condition("sle", on("2012-02-02"))
    c.condition("ln-class-iv", on("2024-03-01"))
    c.order(
        "cyclophosphamide-500mg",
        on("2024-03-10"),
        status="completed",
        until="2024-05-25",
        dosage="500 mg IV every 2 weeks, 6 doses",
    )
    c.order("azathioprine-50mg", on("2024-06-01"), dosage="100 mg by mouth once daily")
    return c


@fixture
def n13_creatinine_only_egfr() -> Fixture:
    c = _ln_man_after_cyclophosphamide("crcalc", "Karen", "Whitfield", "1976-10-01", sex="female")
    c.lab("creatinine", 1.9, "mg/dL", ago(50))
    normal_visit(c, 5, creatinine=2.0, egfr=None, upcr=1.4)
    _tacrolimus_start(c)
    return Fixture(
        "n13-creatinine-only-egfr",
        "Woman aged 50, creatinine 2.0 mg/dL and no reported eGFR: eGFR calculated (CKD-EPI 2021) = 30",
        c,
        {"N11": NEW_START, "N13": "eGFR calculated (CKD-EPI 2021) from creatinine 2.0 mg/dL: 30 (<= 45)."},
        quiet={"N2": "Creatinine 2.0 mg/dL is 5 % above the 1.9 mg/dL 50 days ago."},
    )


@fixture
def n13_egfr_45() -> Fixture:
    c = _ln_man_after_cyclophosphamide("egfr45", "Peter", "Holm", "1970-04-04")
    normal_visit(c, 5, creatinine=1.7, egfr=45, upcr=1.2)
    _tacrolimus_start(c)
    return Fixture(
        "n13-egfr-45",
        "Reported eGFR exactly 45: at the threshold",
        c,
        {"N11": NEW_START, "N13": "Reported eGFR 45 (at or below 45)."},
    )


@fixture
def n13_egfr_46() -> Fixture:
    c = _ln_man_after_cyclophosphamide("egfr46", "Martin", "Krause", "1970-04-04")
    normal_visit(c, 5, creatinine=1.7, egfr=46, upcr=1.2)
    _tacrolimus_start(c)
    return Fixture(
        "n13-egfr-46",
        "Reported eGFR 46: just above the threshold (the reported value wins over a calculated one)",
        c,
        {"N11": NEW_START},
        quiet={"N13": "Reported eGFR 46 is above 45."},
    )


def _sle_woman(short: str, given: str, family: str) -> Chart:
    c = Chart(short).patient(given, family, "female", "1993-03-03")
    c.condition("sle-no-organ", on("2016-06-06"))
    c.order("hydroxychloroquine", on("2016-07-01"), dosage="200 mg by mouth twice daily")
    return c


@fixture
def p1_hcg_280_days() -> Fixture:
    c = _sle_woman("hcg280", "Olga", "Ivanova")
    c.lab("hcg", 5200, "IU/L", ago(280))
    normal_visit(c, 5, upcr=0.1)
    _tacrolimus_start(c)
    return Fixture(
        "p1-hcg-280-days",
        "Positive hCG exactly 280 days ago and nothing since: still counts (hcg_days 280)",
        c,
        {
            "P1": "Positive hCG 280 days ago, no later result (nothing confirms it).",
            "N11": NEW_START,
        },
    )


@fixture
def p1_hcg_281_days() -> Fixture:
    c = _sle_woman("hcg281", "Vera", "Sokolova")
    c.lab("hcg", 5200, "IU/L", ago(281))
    normal_visit(c, 5, upcr=0.1)
    _tacrolimus_start(c)
    return Fixture(
        "p1-hcg-281-days",
        "Positive hCG 281 days ago and nothing since: no longer counts",
        c,
        {"N11": NEW_START},
        quiet={"P1": "The positive hCG is older than 280 days."},
    )


@fixture
def pregnancy_edd_14_days_past() -> Fixture:
    c = _sle_woman("edd14", "Zara", "Ali")
    c.pregnancy_status(PREGNANT, ago(250))
    c.due_date((ANCHOR - timedelta(days=14)).isoformat(), ago(240))
    normal_visit(c, 5, upcr=0.1)
    _tacrolimus_start(c)
    return Fixture(
        "pregnancy-edd-14-days-past",
        "'Pregnant' 250 days ago; estimated delivery date 14 days ago, no delivery recorded",
        c,
        {"P1": "'Pregnant' answer 250 days ago; an EDD 14 days past does not end it.", "N11": NEW_START},
    )


@fixture
def pregnancy_edd_15_days_past() -> Fixture:
    c = _sle_woman("edd15", "Leila", "Nasser")
    c.pregnancy_status(PREGNANT, ago(250))
    c.due_date((ANCHOR - timedelta(days=15)).isoformat(), ago(240))
    normal_visit(c, 5, upcr=0.1)
    _tacrolimus_start(c)
    return Fixture(
        "pregnancy-edd-15-days-past",
        "'Pregnant' 250 days ago; estimated delivery date 15 days ago: the pregnancy has ended",
        c,
        {"N11": NEW_START},
        quiet={"P1": "An estimated delivery date more than 14 days past ends the pregnancy."},
    )


@fixture
def pregnancy_resolved_condition() -> Fixture:
    c = _ln_woman("pregres", "Anna", "Berg", "1994-09-09")
    c.lab("hcg-beta", 2300, "IU/L", ago(200))
    c.condition("pregnancy", ago(190), clinical="resolved", abated=ago(20))
    c.order("mmf-500mg", ago(15), dosage=MMF_DOSE)
    normal_visit(c, 5)
    _tacrolimus_start(c)
    return Fixture(
        "pregnancy-resolved-condition",
        "Positive hCG 200 days ago; the pregnancy Condition resolved (abated 20 days ago); mycophenolate",
        c,
        {"P3": "Not pregnant any more, on mycophenolate, no negative hCG in 30 days.", "N11": NEW_START},
        quiet={"P1": "The resolved pregnancy Condition (abated 20 days ago) ends the hCG of 200 days ago."},
    )


@fixture
def p7_breastfeeding_on_mmf() -> Fixture:
    c = _ln_woman("p7bf", "Grace", "Mwangi", "1993-12-12")
    c.answer("breastfeeding-status", ago(10), boolean=True)
    c.lab("hcg", 1.0, "IU/L", ago(10))
    c.order("mmf-500mg", on("2026-08-15"), dosage=MMF_DOSE)
    normal_visit(c, 5)
    _tacrolimus_start(c)
    return Fixture(
        "p7-breastfeeding-on-mmf",
        "Breastfeeding status answered true 10 days ago while on mycophenolate",
        c,
        {
            "P4": "Breastfeeding status (63895-7) valueBoolean true 10 days ago.",
            "P7": "Mycophenolate is not compatible with breastfeeding (a suggestion stops it).",
            "N11": NEW_START,
        },
        quiet={"P3": "Negative hCG (1.0 IU/L) 10 days ago."},
    )


@fixture
def p4_breastfeeding_answer_280_days() -> Fixture:
    c = _sle_woman("bf280", "Lina", "Haug")
    c.answer("breastfeeding-status", ago(280), coded=YES_LOINC)
    normal_visit(c, 5, upcr=0.1)
    _tacrolimus_start(c)
    return Fixture(
        "p4-breastfeeding-answer-280-days",
        "Breastfeeding status answered LOINC LA33-6 'Yes' exactly 280 days ago",
        c,
        {"P4": "Breastfeeding status 'Yes' (LA33-6) within 280 days.", "N11": NEW_START},
    )


@fixture
def p4_breastfeeding_answer_281_days() -> Fixture:
    c = _sle_woman("bf281", "Mira", "Voss")
    c.answer("breastfeeding-status", ago(281), coded=YES_SNOMED)
    normal_visit(c, 5, upcr=0.1)
    _tacrolimus_start(c)
    return Fixture(
        "p4-breastfeeding-answer-281-days",
        "Breastfeeding status answered SNOMED 373066001 'Yes' 281 days ago: too old",
        c,
        {"N11": NEW_START},
        quiet={"P4": "The newest breastfeeding status is older than 280 days."},
    )


@fixture
def p3_negative_hcg_30_days() -> Fixture:
    c = _ln_woman("p3neg30", "Eva", "Lund", "1997-07-07")
    c.order("mmf-500mg", on("2026-08-01"), dosage=MMF_DOSE)
    c.lab("hcg", 1.0, "IU/L", ago(30))
    normal_visit(c, 5)
    _tacrolimus_start(c)
    return Fixture(
        "p3-negative-hcg-30-days",
        "Mycophenolate; negative hCG exactly 30 days ago",
        c,
        {"N11": NEW_START},
        quiet={"P3": "Negative hCG within 30 days."},
    )


@fixture
def p3_negative_hcg_31_days() -> Fixture:
    c = _ln_woman("p3neg31", "Ida", "Strand", "1997-07-07")
    c.order("mmf-500mg", on("2026-08-01"), dosage=MMF_DOSE)
    c.lab("hcg", 1.0, "IU/L", ago(31))
    normal_visit(c, 5)
    _tacrolimus_start(c)
    return Fixture(
        "p3-negative-hcg-31-days",
        "Mycophenolate; the only negative hCG is 31 days old",
        c,
        {"P3": "No negative hCG in the last 30 days (the last one is 31 days old).", "N11": NEW_START},
    )


def _stopped_tacrolimus_with_supply(c: Chart, refills: int) -> None:
    ref = c.order(
        "tacrolimus-1mg",
        ago(500),
        status="stopped",
        key="mr-tac-old",
        dosage="2 mg by mouth every 12 hours",
    )
    order = next(r for r in c.resources if f"{r['resourceType']}/{r['id']}" == ref)
    order["dispenseRequest"] = {
        "numberOfRepeatsAllowed": refills,
        "expectedSupplyDuration": {"value": 30, "unit": "days", "system": UCUM, "code": "d"},
    }


def _ln_on_azathioprine(short: str, given: str, family: str) -> Chart:
    c = Chart(short).patient(given, family, "male", "1982-08-08")
    c.condition("sle", on("2014-04-04"))
    c.condition("ln-class-iv", on("2025-01-10"))
    c.order("azathioprine-50mg", on("2025-01-20"), dosage="100 mg by mouth once daily")
    c.panel(ago(520), creatinine=0.9, upcr=2.2)
    c.panel(ago(300), creatinine=0.92, upcr=1.2)
    return c


@fixture
def s7_stopped_order_supply_duration() -> Fixture:
    c = _ln_on_azathioprine("s7supply", "Erik", "Nilsen")
    _stopped_tacrolimus_with_supply(c, refills=13)
    normal_visit(c, 6, creatinine=0.95, upcr=0.9)
    _tacrolimus_start(c)
    return Fixture(
        "s7-stopped-order-supply-duration",
        "Stopped tacrolimus order, no validity period: 30 days x (1 + 13 repeats) = 420 days of exposure",
        c,
        {"S7": "Exposure 420 days (> 12 months, from expectedSupplyDuration) and no UPCR < 0.5 g/g."},
        quiet={"N11": "Earlier tacrolimus exposure: a restart continues therapy, not a new start."},
    )


@fixture
def s7_stopped_order_short_supply() -> Fixture:
    c = _ln_on_azathioprine("s7short", "Lars", "Dahl")
    _stopped_tacrolimus_with_supply(c, refills=11)
    normal_visit(c, 6, creatinine=0.95, upcr=0.9)
    _tacrolimus_start(c)
    return Fixture(
        "s7-stopped-order-short-supply",
        "Stopped tacrolimus order: 30 days x (1 + 11 repeats) = 360 days, just under 12 months",
        c,
        {},
        quiet={
            "S7": "Exposure 360 days: not > 12 months.",
            "N11": "Earlier exposure: not a new start.",
        },
    )


@fixture
def n10_nsaid_draft() -> Fixture:
    c = Chart("n10draft").patient("Adam", "Novak", "male", "1985-05-15")
    c.condition("sle", on("2017-03-17"))
    c.condition("ln-class-iii", on("2026-07-22"))
    c.order("mmf-500mg", on("2026-08-01"), dosage=MMF_DOSE)
    normal_visit(c, 5, upcr=1.3)
    _tacrolimus_start(c)
    c.order("naproxen", ANCHOR.isoformat(), status="draft", key="naproxen-draft", dosage="500 mg twice daily")
    return Fixture(
        "n10-nsaid-draft",
        "Naproxen drafted in the same session as tacrolimus: a suggestion deletes the draft",
        c,
        {"N10": "Naproxen (NSAID) is a draft of this session.", "N11": NEW_START},
        selections=["MedicationRequest/n10draft-tac-draft"],
    )


@fixture
def n12_cyclosporine_sle_no_nephritis() -> Fixture:
    c = _sle_woman("n12sle", "Ruth", "Keller")
    c.order("cyclosporine-modified", on("2026-04-04"), dosage="100 mg by mouth twice daily")
    normal_visit(c, 5, upcr=0.1)
    _tacrolimus_start(c)
    return Fixture(
        "n12-cyclosporine-sle-no-nephritis",
        "SLE without nephritis, cyclosporine still active: the duplicate check needs no lupus nephritis",
        c,
        {"N11": NEW_START, "N12": "Cyclosporine is active (N12 does not need lupus nephritis)."},
    )


@fixture
def n14_hbsag_positive_renewal() -> Fixture:
    c = Chart("n14hbv").patient("Minh", "Tran", "male", "1980-01-20")
    c.condition("sle", on("2015-05-05"))
    c.condition("ln-class-iv", on("2026-01-10"))
    c.order("mmf-500mg", on("2026-01-20"), dosage=MMF_DOSE)
    tac = c.order("tacrolimus-1mg", on("2026-05-01"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2026-01-15"), creatinine=0.9, upcr=2.0)
    c.reactive("hbsag", ago(10))
    normal_visit(c, 5, hbsag_screened=False, creatinine=0.92, upcr=0.4, tacrolimus=6.0)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2 mg by mouth every 12 hours (renewal)",
    )
    return Fixture(
        "n14-hbsag-positive-renewal",
        "HBsAg reactive 10 days ago, no hepatitis B on the problem list; renewal of tacrolimus",
        c,
        {"N14": "HBsAg positive: antiviral prophylaxis before or with immunosuppression."},
        quiet={"S3": "Continuing therapy: the salvage questions are not asked."},
    )


@fixture
def n15_no_hbsag_new_start() -> Fixture:
    c = Chart("n15scr").patient("Tariq", "Aziz", "male", "1990-10-10")
    c.condition("sle", on("2020-02-02"))
    c.condition("ln-class-iii", on("2026-07-01"))
    c.order("mmf-500mg", on("2026-07-10"), dosage=MMF_DOSE)
    normal_visit(c, 5, hbsag_screened=False, upcr=1.5)
    _tacrolimus_start(c)
    return Fixture(
        "n15-no-hbsag-new-start",
        "New tacrolimus start with no HBsAg result and no hepatitis B condition on record",
        c,
        {"N11": NEW_START, "N15": "No HBsAg and no hepatitis B condition on record: screen first."},
    )


@fixture
def s4_class_v_renewal() -> Fixture:
    c = Chart("s4renew").patient("Nora", "Engel", "female", "1970-02-02")
    c.condition("sle", on("2014-04-14"))
    c.condition("ln-class-v", on("2026-03-01"))
    tac = c.order("tacrolimus-1mg", on("2026-04-01"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(on("2026-03-10"), creatinine=0.8, upcr=3.2)
    normal_visit(c, 5, creatinine=0.82, upcr=0.4, tacrolimus=6.0)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2.5 mg by mouth every 12 hours (dose change)",
    )
    return Fixture(
        "s4-class-v-renewal",
        "Class V lupus nephritis on tacrolimus since April: a dose change gets no salvage lecture",
        c,
        {},
        quiet={"S4": "Class V is on record, but a dose change continues therapy: S0-S4 are for new starts."},
    )


# --- Patients already on tacrolimus (patient-view, service tacrolimus-monitoring) ---------------------------
#
# No draft orders: the EHR calls patient-view when the chart is opened. Each patient has an active tacrolimus
# order stored for months; ``expected`` is what the service shows with its bundled settings (warning and
# critical only), and ``quiet`` names the info findings that fire but are not shown.

MONITORING = "tacrolimus-monitoring"
PV_TAC_DOSE = "2 mg by mouth every 12 hours"
OTHER_PRESCRIBER = {"reference": "Practitioner/urgent-care-prescriber", "display": "Urgent care clinic"}


def _on_tacrolimus(c: Chart, since: str, *, mmf: bool = True) -> str:
    """Lupus nephritis, class IV, treated with tacrolimus (and mycophenolate) since ``since``."""
    c.condition("sle", on("2015-09-09"))
    c.condition("ln-class-iv", on("2026-01-12"))
    if mmf:
        c.order("mmf-500mg", on("2026-01-20"), dosage=MMF_DOSE)
    return c.order("tacrolimus-1mg", since, key="mr-tac", dosage=PV_TAC_DOSE)


def _requested_by(c: Chart, ref: str, requester: dict) -> None:
    """Record who ordered ``ref`` (a prescriber outside the team that manages tacrolimus)."""
    resource = next(r for r in c.resources if f"{r['resourceType']}/{r['id']}" == ref)
    resource["requester"] = requester


@fixture
def pv_creatinine_rise_45pct() -> Fixture:
    c = Chart("pvcrea").patient("Samuel", "Osei", "male", "1985-02-14")
    _on_tacrolimus(c, on("2026-05-04"))
    c.panel(on("2026-01-15"), creatinine=0.86, upcr=2.4)
    c.panel(on("2026-04-20"), creatinine=0.80, upcr=1.1)
    c.panel(on("2026-07-01"), creatinine=0.92, upcr=0.6, tacrolimus=6.8)
    normal_visit(c, 5, creatinine=1.16, egfr=77, upcr=0.4, tacrolimus=7.2)
    return Fixture(
        "pv-creatinine-rise-45pct",
        "Six months on tacrolimus: creatinine 0.80 -> 1.16 mg/dL (+45 %) since it started",
        c,
        {"N3": "Creatinine 1.16 mg/dL is 45 % above the 0.80 mg/dL baseline before tacrolimus started."},
        quiet={
            "N2": "The rise is 30 % or more: N3 (critical), not N2.",
            "N4": "Trough 7.2 ng/mL is under 8, the ceiling with mycophenolate.",
        },
        service=MONITORING,
    )


@fixture
def pv_high_trough() -> Fixture:
    c = Chart("pvtrough").patient("Teresa", "Lopes", "female", "1979-06-30")
    _on_tacrolimus(c, on("2026-03-02"), mmf=False)
    c.order("azathioprine-50mg", on("2026-03-02"), dosage="100 mg by mouth once daily")
    c.panel(on("2026-02-20"), creatinine=0.70, upcr=2.8)
    c.panel(on("2026-06-15"), creatinine=0.72, upcr=0.8, tacrolimus=8.4)
    normal_visit(c, 4, creatinine=0.75, egfr=98, upcr=0.4, tacrolimus=14.0)
    c.lab("hcg", 1.0, "IU/L", ago(4))
    return Fixture(
        "pv-high-trough",
        "Eight months on tacrolimus (with azathioprine): trough 14 ng/mL, creatinine stable",
        c,
        {"N4": "Tacrolimus level 14 ng/mL is above 10 ng/mL (no mycophenolate)."},
        quiet={"N2": "Creatinine 0.75 mg/dL is 7 % above the 0.70 mg/dL baseline."},
        service=MONITORING,
    )


@fixture
def pv_new_clarithromycin() -> Fixture:
    c = Chart("pvclari").patient("Daniel", "Kowalski", "male", "1990-11-03")
    _on_tacrolimus(c, on("2026-04-06"))
    c.panel(on("2026-03-25"), creatinine=0.95, upcr=1.9)
    normal_visit(c, 9, creatinine=0.97, egfr=101, upcr=0.45, tacrolimus=6.6)
    clarithromycin = c.order(
        "clarithromycin", ago(1, "17:40"), dosage="500 mg by mouth every 12 hours for 7 days"
    )
    _requested_by(c, clarithromycin, OTHER_PRESCRIBER)
    return Fixture(
        "pv-new-clarithromycin",
        "Seven months on tacrolimus; clarithromycin ordered yesterday by an urgent care clinic",
        c,
        {"N9": "Clarithromycin, a strong CYP3A4 inhibitor, is an active order (another prescriber's)."},
        quiet={"N4": "The last trough (6.6 ng/mL, 9 days ago) predates the clarithromycin."},
        service=MONITORING,
    )


@fixture
def pv_duplicate_calcineurin_inhibitor() -> Fixture:
    c = Chart("pvcni").patient("Leila", "Haddad", "female", "1987-04-19")
    _on_tacrolimus(c, on("2026-02-09"))
    c.panel(on("2026-01-25"), creatinine=0.74, upcr=2.2)
    normal_visit(c, 12, creatinine=0.78, egfr=99, upcr=0.5, tacrolimus=6.1)
    c.lab("hcg", 1.0, "IU/L", ago(12))
    cyclosporine = c.order("cyclosporine-modified", ago(3), dosage="100 mg by mouth every 12 hours")
    _requested_by(c, cyclosporine, OTHER_PRESCRIBER)
    return Fixture(
        "pv-duplicate-calcineurin-inhibitor",
        "Nine months on tacrolimus; cyclosporine ordered 3 days ago by another prescriber",
        c,
        {"N12": "Cyclosporine is active next to the active tacrolimus order: two calcineurin inhibitors."},
        service=MONITORING,
    )


@fixture
def pv_new_pregnancy() -> Fixture:
    c = Chart("pvpreg").patient("Amara", "Nwosu", "female", "1995-08-08")
    _on_tacrolimus(c, on("2026-03-16"))
    c.panel(on("2026-03-01"), creatinine=0.68, upcr=2.6)
    normal_visit(c, 6, creatinine=0.70, egfr=112, upcr=0.35, tacrolimus=6.4)
    c.lab("hcg-beta", 1460, "IU/L", ago(6))
    c.condition("pregnancy", ago(5))
    return Fixture(
        "pv-new-pregnancy",
        "Seven and a half months on tacrolimus and mycophenolate; beta-hCG 1460 IU/L 6 days ago",
        c,
        {"P2": "Mycophenolate is an active order during pregnancy (critical)."},
        quiet={
            "P1": "Pregnant: P1 fires but is info, below the service's min_indicator (warning).",
            "P6": "A trough 6 days ago.",
        },
        service=MONITORING,
    )


@fixture
def pv_stable_well_monitored() -> Fixture:
    c = Chart("pvstable").patient("Rosa", "Jimenez", "female", "1982-12-01")
    _on_tacrolimus(c, on("2026-02-02"))
    c.panel(on("2026-01-22"), creatinine=0.76, upcr=2.0)
    c.panel(on("2026-05-04"), creatinine=0.78, upcr=0.6, tacrolimus=6.9)
    c.panel(on("2026-08-03"), creatinine=0.79, upcr=0.3, tacrolimus=6.2)
    normal_visit(c, 8, creatinine=0.80, egfr=94, upcr=0.25, tacrolimus=6.0)
    c.lab("hcg", 1.0, "IU/L", ago(8))
    return Fixture(
        "pv-stable-well-monitored",
        "Nine months on tacrolimus and mycophenolate, every lab recent and in range: no card",
        c,
        {},
        quiet={
            "N2": "Creatinine 0.80 mg/dL is 5 % above the 0.76 mg/dL baseline.",
            "N4": "Trough 6.0 ng/mL is under 8 (with mycophenolate).",
        },
        service=MONITORING,
    )


# --- Rule catalog version 3: the N3 absolute floor, eGFR under 18, N13 on continuing therapy ----------------


def _ln_flare_before_tacrolimus(short: str, given: str, family: str, newest_umol: float) -> Chart:
    """A man with lupus nephritis after cyclophosphamide, creatinine 80 µmol/L (0.90 mg/dL) 40 days ago and
    ``newest_umol`` 5 days ago, starting tacrolimus: the N3 absolute floor on values rounded to 2 decimals."""
    c = _ln_man_after_cyclophosphamide(short, given, family, "1981-07-07")
    c.lab("creatinine-si", 80, "µmol/L", ago(40))
    normal_visit(c, 5, creatinine=None, creatinine_umol=newest_umol, egfr=72, upcr=1.5)
    _tacrolimus_start(c)
    return c


@fixture
def n3_absolute_rise_at_floor() -> Fixture:
    return Fixture(
        "n3-absolute-rise-at-floor",
        "Creatinine 80 -> 106 umol/L (0.90 -> 1.20 mg/dL rounded): +33 %, exactly +0.30 mg/dL, new start",
        _ln_flare_before_tacrolimus("n3floor", "Tomas", "Novak", 106),
        {
            "N3": "Rounded to 2 decimals, 0.90 -> 1.20 mg/dL: +33 % and +0.30 mg/dL, at the absolute floor.",
            "N11": NEW_START,
        },
        quiet={"N2": "The rise is >= 30 % and >= 0.3 mg/dL: N3 (critical), not N2."},
    )


@fixture
def n2_absolute_rise_below_floor() -> Fixture:
    return Fixture(
        "n2-absolute-rise-below-floor",
        "Creatinine 80 -> 105 umol/L (0.90 -> 1.19 mg/dL rounded): +32 % but only +0.29 mg/dL before a start",
        _ln_flare_before_tacrolimus("n2floor", "Lukas", "Horak", 105),
        {
            "N2": "0.90 -> 1.19 mg/dL: +32 %, but +0.29 mg/dL is below the 0.3 mg/dL floor of N3, so N2.",
            "N11": NEW_START,
        },
        quiet={"N3": "+32 % but only +0.29 mg/dL: below the absolute floor (0.3 mg/dL)."},
    )


def _teenager_with_nephritis(short: str, given: str, family: str) -> Chart:
    """A girl aged 17 with lupus nephritis after cyclophosphamide, creatinine 1.6 mg/dL, no reported eGFR."""
    c = _ln_man_after_cyclophosphamide(short, given, family, "2009-04-01", sex="female")
    normal_visit(c, 5, creatinine=1.6, egfr=None, upcr=1.8)
    _tacrolimus_start(c)
    return c


@fixture
def n13_under_18_schwartz() -> Fixture:
    c = _teenager_with_nephritis("teenh", "Sofia", "Lindqvist")
    c.lab("height", 160, "cm", ago(60))
    return Fixture(
        "n13-under-18-schwartz",
        "Girl aged 17, creatinine 1.6 mg/dL, height 160 cm: bedside Schwartz eGFR 41 (CKD-EPI is for adults)",
        c,
        {"N11": NEW_START, "N13": "Bedside Schwartz 0.413 x 160 / 1.6 = 41 (<= 45); height 60 days old."},
    )


@fixture
def n13_under_18_no_height() -> Fixture:
    c = _teenager_with_nephritis("teenx", "Emma", "Karlsson")
    c.lab("height", 63, "in", ago(200))  # older than 180 days: not recent
    return Fixture(
        "n13-under-18-no-height",
        "Girl aged 17, creatinine 1.6 mg/dL, last height 200 days ago: no eGFR can be calculated",
        c,
        {"N11": NEW_START},
        quiet={"N13": "eGFR not calculated (under 18, no recent height): the height is 200 days old."},
    )


@fixture
def n13_egfr_low_renewal() -> Fixture:
    c = _ln_man_after_cyclophosphamide("n13cont", "Henrik", "Dahl", "1966-09-09")
    c.panel(on("2026-05-20"), creatinine=1.85, egfr=40)
    tac = c.order("tacrolimus-1mg", on("2026-06-01"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.panel(ago(45), creatinine=1.9, egfr=39, tacrolimus=6.1)
    normal_visit(c, 5, creatinine=1.92, egfr=38, upcr=0.9, tacrolimus=6.4)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=tac,
        dosage="2 mg by mouth every 12 hours (renewal)",
    )
    return Fixture(
        "n13-egfr-low-renewal",
        "Renewal of tacrolimus (since June) with a stable eGFR 38: N13 is info on continuing therapy",
        c,
        {"N13": "Newest eGFR 38 (<= 45) on continuing therapy: info (egfr_cni_caution_continuing)."},
        quiet={
            "N2": "Creatinine 1.92 mg/dL is 4 % above the 1.85 mg/dL before tacrolimus began.",
            "N11": "A renewal: continuing therapy, no new-start schedule.",
        },
    )


# --- Extended release more than once a day (N18) and nirmatrelvir/ritonavir (N21), catalog version 3 ------


def _envarsus_start(short: str, given: str, times_a_day: int) -> Chart:
    """A new Envarsus XR start, 4 mg a day, ordered with a structured timing of ``times_a_day``."""
    c = Chart(short).patient(given, "Lindqvist", "female", "1991-10-21")
    c.condition("sle", on("2019-02-11"))
    c.condition("ln-class-iv", on("2026-07-02"))
    c.order("mmf-500mg", on("2026-07-12"), dosage=MMF_DOSE)
    normal_visit(c, 5, upcr=1.7)
    c.lab("hcg", 1.0, "IU/L", ago(5))
    dose = "2 mg by mouth every 12 hours" if times_a_day == 2 else "4 mg by mouth every morning"
    c.order(
        "envarsus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        dosage=dose,
        times_a_day=times_a_day,
    )
    return c


@fixture
def n18_envarsus_twice_daily() -> Fixture:
    return Fixture(
        "n18-envarsus-twice-daily",
        "New Envarsus XR start ordered 2 mg every 12 hours (an immediate-release regimen on it)",
        _envarsus_start("n18bid", "Karin", 2),
        {
            "N11": NEW_START,
            "N18": "Envarsus XR (extended-release tablet) ordered twice a day (timing frequency 2 per day).",
        },
    )


@fixture
def n18_envarsus_once_daily() -> Fixture:
    return Fixture(
        "n18-envarsus-once-daily",
        "New Envarsus XR start ordered 4 mg every morning, once daily as labelled",
        _envarsus_start("n18qd", "Maja", 1),
        {"N11": NEW_START},
        quiet={"N18": "Envarsus XR ordered once a day (timing frequency 1 per day), as the label asks."},
    )


PAXLOVID_TEXT = "Paxlovid (nirmatrelvir 150 mg / ritonavir 100 mg) dose pack"
PAXLOVID_DOSE = "nirmatrelvir 300 mg with ritonavir 100 mg by mouth twice daily for 5 days"


def _paxlovid_chart(short: str, given: str, authored_days_ago: int, status: str, ended_days_ago: int | None):
    """Seven months on tacrolimus; an urgent care clinic ordered Paxlovid ``authored_days_ago`` days ago."""
    c = Chart(short).patient(given, "Brennan", "male", "1984-06-30")
    _on_tacrolimus(c, on("2026-05-11"))
    c.panel(on("2026-04-28"), creatinine=0.90, upcr=2.0)
    normal_visit(c, 25, creatinine=0.92, egfr=99, upcr=0.5, tacrolimus=6.4)
    paxlovid = c.order(
        None,
        ago(authored_days_ago, "16:10"),
        status=status,
        text_only=PAXLOVID_TEXT,
        dosage=PAXLOVID_DOSE,
        until=ago(ended_days_ago)[:10] if ended_days_ago else None,
    )
    _requested_by(c, paxlovid, OTHER_PRESCRIBER)
    return c


@fixture
def pv_paxlovid_ended_10_days_ago() -> Fixture:
    return Fixture(
        "pv-paxlovid-ended-10-days-ago",
        "On tacrolimus; a Paxlovid course (completed) ended 10 days ago: CYP3A inhibition may persist",
        _paxlovid_chart("pvpax10", "Owen", 15, "completed", 10),
        {"N21": "A completed Paxlovid order whose validity period ended 10 days ago (window 10 days)."},
        quiet={"N9": "Paxlovid's ritonavir is shown by N21 instead of N9."},
        service=MONITORING,
    )


@fixture
def pv_paxlovid_ended_11_days_ago() -> Fixture:
    return Fixture(
        "pv-paxlovid-ended-11-days-ago",
        "On tacrolimus; a Paxlovid course (completed) ended 11 days ago: outside the 10-day window",
        _paxlovid_chart("pvpax11", "Rhys", 16, "completed", 11),
        {},
        quiet={"N21": "The Paxlovid course ended 11 days ago, outside the 10-day window."},
        service=MONITORING,
    )


@fixture
def n21_paxlovid_ended_10_days_renewal() -> Fixture:
    c = _paxlovid_chart("n21pax", "Liam", 15, "stopped", 10)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        dosage=PV_TAC_DOSE,
        prior=f"MedicationRequest/{c.rid('mr-tac')}",
    )
    return Fixture(
        "n21-paxlovid-ended-10-days-renewal",
        "Tacrolimus renewal; a Paxlovid order (stopped) whose course ended 10 days ago",
        c,
        {"N21": "A stopped Paxlovid order whose validity period ended 10 days ago (window 10 days)."},
        quiet={"N9": "Paxlovid's ritonavir is shown by N21 instead of N9."},
    )


@fixture
def pv_paxlovid_active_20_days() -> Fixture:
    return Fixture(
        "pv-paxlovid-active-20-days",
        "On tacrolimus; a Paxlovid order authored 20 days ago is still active (never closed)",
        _paxlovid_chart("pvpax20", "Evan", 20, "active", None),
        {"N21": "An active Paxlovid order counts whatever its date (authored 20 days ago)."},
        quiet={"N9": "Paxlovid's ritonavir is shown by N21 instead of N9."},
        service=MONITORING,
    )


# --- Formulation switch or mix (N17), catalog version 3 ----------------------------------------------------
#
# Immediate release 2 mg every 12 hours (4 mg/day) stored since June; the draft is an extended-release product
# ordered in mg with a structured once-daily timing, so that both daily doses can be computed.


def _dosed(c: Chart, ref: str, mg: float, times_a_day: int) -> None:
    """Give ``ref`` a structured dose in mg and a timing (the daily dose N17 compares)."""
    resource = next(r for r in c.resources if f"{r['resourceType']}/{r['id']}" == ref)
    instruction = resource["dosageInstruction"][0]
    instruction["timing"] = {"repeat": {"frequency": times_a_day, "period": 1, "periodUnit": "d"}}
    instruction["doseAndRate"] = [{"doseQuantity": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}}]


def _switch_chart(short: str, given: str, drug: str, mg: float, *, renewal: bool) -> Chart:
    """Class IV LN on mycophenolate and immediate-release tacrolimus 4 mg/day; a once-daily ``drug`` draft of
    ``mg`` mg, pointing to the old order as the one it replaces when ``renewal``."""
    c = Chart(short).patient(given, "Okafor", "male", "1983-03-17")
    c.condition("sle", on("2016-05-05"))
    c.condition("ln-class-iv", on("2026-05-05"))
    c.order("mmf-500mg", on("2026-05-20"), dosage=MMF_DOSE)
    old = c.order("tacrolimus-1mg", on("2026-06-01"), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    _dosed(c, old, 2, 2)
    c.panel(on("2026-05-10"), creatinine=0.9, upcr=2.1)
    normal_visit(c, 5, creatinine=0.92, upcr=0.9, tacrolimus=6.5)
    draft = c.order(
        drug,
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        prior=old if renewal else None,
        dosage=f"{mg:g} mg by mouth every morning",
    )
    _dosed(c, draft, mg, 1)
    return c


@fixture
def n17_envarsus_95pct() -> Fixture:
    return Fixture(
        "n17-envarsus-95pct",
        "Immediate release 4 mg/day still active; Envarsus XR drafted at 3.8 mg/day (95%, mg for mg)",
        _switch_chart("n17e95", "Tobias", "envarsus-1mg", 3.8, renewal=False),
        {
            "N17": "Immediate release → Envarsus at 95% of the daily dose (critical at ≥ 95%; the label "
            "converts at 80%)."
        },
        quiet={"N12": "A stored order of another oral formulation is N17's, not a duplicate (N12)."},
    )


@fixture
def n17_envarsus_below_95pct() -> Fixture:
    return Fixture(
        "n17-envarsus-below-95pct",
        "Switch to Envarsus XR 3.75 mg/day (93.75% of 4 mg/day immediate release) replacing the old order",
        _switch_chart("n17e94", "Jonas", "envarsus-1mg", 3.75, renewal=True),
        {"N17": "Immediate release → Envarsus at 93.75% of the daily dose: a switch (warning), below 95%."},
        quiet={"N12": "The draft's priorPrescription points to the immediate-release order."},
    )


@fixture
def n17_astagraf_150pct() -> Fixture:
    return Fixture(
        "n17-astagraf-150pct",
        "Switch to Astagraf XL 6 mg/day from immediate release 4 mg/day (150% of the daily dose)",
        _switch_chart("n17a150", "Felix", "astagraf-1mg", 6, renewal=True),
        {"N17": "Any formulation switch at 150% of the daily dose or more is critical."},
    )


@fixture
def n17_astagraf_below_150pct() -> Fixture:
    return Fixture(
        "n17-astagraf-below-150pct",
        "Switch to Astagraf XL 5.5 mg/day from immediate release 4 mg/day (137.5% of the daily dose)",
        _switch_chart("n17a137", "Lukas", "astagraf-1mg", 5.5, renewal=True),
        {"N17": "Immediate release → Astagraf XL at 137.5%: no labelled ratio, a warning below 150%."},
    )


@fixture
def pv_formulation_mix() -> Fixture:
    c = Chart("pvmix").patient("Nadia", "Petrov", "female", "1986-12-02")
    old = _on_tacrolimus(c, on("2026-04-14"))
    _dosed(c, old, 2, 2)
    c.panel(on("2026-01-25"), creatinine=0.74, upcr=2.2)
    normal_visit(c, 12, creatinine=0.78, egfr=99, upcr=0.5, tacrolimus=6.1)
    c.lab("hcg", 1.0, "IU/L", ago(12))
    new = c.order("envarsus-1mg", ago(9), key="mr-envarsus", dosage="4 mg by mouth every morning")
    _dosed(c, new, 4, 1)
    return Fixture(
        "pv-formulation-mix",
        "Immediate release 4 mg/day since April and Envarsus XR 4 mg/day since 9 days ago, both active",
        c,
        {"N17": "Two active orders of different oral classes, older → newer: Envarsus at 100% (critical)."},
        quiet={"N12": "Different oral formulations are N17's, not a duplicate."},
        service=MONITORING,
    )


# --- After the birth (P9) and oestrogen contraception with active nephritis (P10), catalog version 3 -------
#
# P9: class III LN treated with tacrolimus from 330 days before the request (before the estimated conception,
# delivery - 266 days), 2.5 mg every 12 hours (5 mg/day) at conception, raised in pregnancy; no tacrolimus
# level since the delivery (the last one is a week before it). The delivery is an O80/Z37 Condition (the
# metamorphic suite re-encodes it as a delivery Procedure).

DRUGS["ethinyl-estradiol-levonorgestrel"] = (
    [coding(RXNORM, "238019", "ethinyl estradiol 0.03 MG / levonorgestrel 0.15 MG Oral Tablet")],
    "ethinyl estradiol 30 mcg / levonorgestrel 150 mcg tablet",
)


def _postpartum_chart(
    short: str, given: str, delivered_days_ago: int, mg_now: float, *, renew: bool
) -> Chart:
    """Delivered ``delivered_days_ago`` days ago; 5 mg/day at conception, ``mg_now`` mg/day since 150 days ago
    (the same order when unchanged); a renewal draft of the current dose when ``renew``."""
    c = _ln_woman(short, given, "Achterberg", "1993-09-14")
    first = c.order("tacrolimus-1mg", ago(330), key="mr-tac-1", dosage="2.5 mg by mouth every 12 hours")
    _dosed(c, first, 2.5, 2)
    current = first
    if mg_now != 5:
        resource = next(r for r in c.resources if f"{r['resourceType']}/{r['id']}" == first)
        resource["status"] = "stopped"
        resource["dispenseRequest"] = {"validityPeriod": {"start": ago(330)[:10], "end": ago(150)[:10]}}
        current = c.order(
            "tacrolimus-1mg", ago(150), key="mr-tac-2", dosage=f"{mg_now / 2:g} mg by mouth every 12 hours"
        )
        _dosed(c, current, mg_now / 2, 2)
    c.condition("delivered", ago(delivered_days_ago), clinical="resolved", category="encounter-diagnosis")
    c.lab("tacrolimus-level", 6.2, "ng/mL", ago(delivered_days_ago + 7))
    normal_visit(c, 5, upcr=0.4)
    if renew:
        draft = c.order(
            "tacrolimus-1mg",
            ANCHOR.isoformat(),
            status="draft",
            key="tac-draft",
            prior=current,
            dosage=f"{mg_now / 2:g} mg by mouth every 12 hours",
        )
        _dosed(c, draft, mg_now / 2, 2)
    return c


@fixture
def p9_delivered_42_days_dose_raised() -> Fixture:
    return Fixture(
        "p9-delivered-42-days-dose-raised",
        "Delivered 42 days ago; tacrolimus raised from 5 to 6 mg/day in pregnancy (1.2x), no level since",
        _postpartum_chart("p9d42", "Lotte", 42, 6, renew=True),
        {"P9": "Delivered 42 days ago (window 42), dose now 6 mg/day = 1.2 x the 5 mg/day at conception."},
    )


@fixture
def p9_delivered_43_days() -> Fixture:
    return Fixture(
        "p9-delivered-43-days",
        "Delivered 43 days ago; tacrolimus raised from 5 to 6 mg/day in pregnancy, no level since",
        _postpartum_chart("p9d43", "Merel", 43, 6, renew=True),
        {},
        quiet={"P9": "The delivery was 43 days ago, outside the 42-day window."},
    )


@fixture
def p9_delivered_dose_unchanged() -> Fixture:
    return Fixture(
        "p9-delivered-dose-unchanged",
        "Delivered 20 days ago on the same 5 mg/day as at conception, no tacrolimus level since",
        _postpartum_chart("p9same", "Sanne", 20, 5, renew=True),
        {"P9": "Delivered 20 days ago; dose now 5 mg/day = 1.0 x the dose at conception (below 1.2): info."},
    )


@fixture
def pv_postpartum_dose_raised() -> Fixture:
    return Fixture(
        "pv-postpartum-dose-raised",
        "Chart opened 12 days after the birth; tacrolimus raised from 5 to 7 mg/day in pregnancy, no level",
        _postpartum_chart("pvpost", "Fleur", 12, 7, renew=False),
        {"P9": "Delivered 12 days ago, 7 mg/day now = 1.4 x the dose at conception: warning."},
        service=MONITORING,
    )


def _contraceptive_chart(short: str, given: str, upcr: float, *, new_start: bool = False) -> Chart:
    """Class III LN, the combined pill since a year, UPCR ``upcr`` g/g 5 days ago; a renewal of tacrolimus
    (on it since 200 days) or a new start."""
    c = _ln_woman(short, given, "Rasmussen", "1997-01-23")
    c.order("ethinyl-estradiol-levonorgestrel", ago(365), dosage="1 tablet by mouth daily")
    normal_visit(c, 5, upcr=upcr)
    if new_start:
        _tacrolimus_start(c)
        return c
    tac = c.order("tacrolimus-1mg", ago(200), key="mr-tac", dosage="2 mg by mouth every 12 hours")
    c.lab("tacrolimus-level", 6.0, "ng/mL", ago(5))
    c.order(
        "tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", prior=tac, dosage=PV_TAC_DOSE
    )
    return c


@fixture
def p10_contraceptive_upcr_0_5() -> Fixture:
    return Fixture(
        "p10-contraceptive-upcr-0-5",
        "Combined pill active; class III LN with UPCR 0.5 g/g 5 days ago; tacrolimus renewal",
        _contraceptive_chart("p10u50", "Ingrid", 0.5),
        {"P10": "Ethinyl estradiol product active and UPCR 0.5 g/g (at the 0.5 threshold) within 90 days."},
    )


@fixture
def p10_contraceptive_upcr_0_49() -> Fixture:
    return Fixture(
        "p10-contraceptive-upcr-0-49",
        "Combined pill active; class III LN with UPCR 0.49 g/g 5 days ago; tacrolimus renewal",
        _contraceptive_chart("p10u49", "Astrid", 0.49),
        {},
        quiet={"P10": "UPCR 0.49 g/g is below 0.5 and this is not a new tacrolimus start."},
    )


@fixture
def p10_contraceptive_new_start() -> Fixture:
    return Fixture(
        "p10-contraceptive-new-start",
        "Combined pill active; class III LN, UPCR 0.3 g/g; a new tacrolimus start (active nephritis)",
        _contraceptive_chart("p10new", "Sigrid", 0.3, new_start=True),
        {
            "P10": "Ethinyl estradiol product active and a new tacrolimus start (setting on).",
            "S0": "New start for lupus nephritis with no mycophenolate or cyclophosphamide exposure.",
            "N11": NEW_START,
        },
    )


# --- Live vaccines (N19), catalog version 3 ------------------------------------------------------------
#
# A live vaccine drafted (MedicationRequest or ServiceRequest), given within 28 days before a new start, or
# given on tacrolimus within 42 days (patient-view). Shingrix (recombinant) and a not-done Immunization never
# count; an Immunization placed in draftOrders is not an order.

CVX = "http://hl7.org/fhir/sid/cvx"
MMR_CVX = coding(CVX, "03", "measles, mumps and rubella virus vaccine")


def _immunization(c: Chart, vaccine: dict, text: str, when: str, status: str = "completed") -> str:
    """An Immunization (R4): the vaccine given on ``when`` (``status`` completed, or not-done)."""
    resource: dict[str, Any] = {
        "resourceType": "Immunization",
        "id": c.rid(c.next_key("imm")),
        "status": status,
        "vaccineCode": {"coding": [vaccine], "text": text},
        "patient": c.patient_ref,
        "occurrenceDateTime": when,
        "primarySource": True,
    }
    if status == "not-done":
        resource["statusReason"] = {"text": "patient declined"}
    return c.add(resource)


def _vaccine_order(c: Chart, text: str, vaccine: dict | None = None) -> str:
    """A vaccine drafted in this session as a ServiceRequest (how some EHRs order vaccines)."""
    code: dict[str, Any] = {"text": text}
    if vaccine:
        code["coding"] = [vaccine]
    ref = c.add(
        {
            "resourceType": "ServiceRequest",
            "id": c.rid(c.next_key("sr")),
            "status": "draft",
            "intent": "order",
            "code": code,
            "subject": c.patient_ref,
            "authoredOn": ANCHOR.isoformat(),
        }
    )
    c.drafts.append(ref)
    return ref


def _vaccine_start(short: str, given: str) -> Chart:
    """A well-monitored new tacrolimus start (only N11 fires): the vaccines are added by each fixture."""
    c = Chart(short).patient(given, "Okafor", "female", "1990-03-14")
    c.condition("sle", on("2018-05-02"))
    c.condition("ln-class-iv", on("2026-07-06"))
    c.order("mmf-500mg", on("2026-07-15"), dosage=MMF_DOSE)
    normal_visit(c, 5, upcr=1.6)
    c.lab("hcg", 1.0, "IU/L", ago(5))
    c.order("tacrolimus-1mg", ANCHOR.isoformat(), status="draft", key="tac-draft", dosage=TAC_DOSE)
    return c


def _tacrolimus_selected(c: Chart) -> list[str]:
    return [f"MedicationRequest/{c.rid('tac-draft')}"]


@fixture
def n19_mmr_given_28_days_before_start() -> Fixture:
    c = _vaccine_start("n19mmr28", "Adaeze")
    _immunization(c, MMR_CVX, "MMR", ago(28, "10:15"))
    return Fixture(
        "n19-mmr-given-28-days-before-start",
        "New tacrolimus start; MMR (CVX 03) given 28 days ago",
        c,
        {
            "N11": NEW_START,
            "N19": "A live vaccine (MMR) given 28 days before a new start (window 28 days): info.",
        },
        selections=_tacrolimus_selected(c),
    )


@fixture
def n19_mmr_given_29_days_before_start() -> Fixture:
    c = _vaccine_start("n19mmr29", "Chioma")
    _immunization(c, MMR_CVX, "MMR", ago(29, "10:15"))
    return Fixture(
        "n19-mmr-given-29-days-before-start",
        "New tacrolimus start; MMR (CVX 03) given 29 days ago",
        c,
        {"N11": NEW_START},
        selections=_tacrolimus_selected(c),
        quiet={"N19": "MMR was given 29 days before the start, outside the 28-day window."},
    )


@fixture
def n19_zoster_live_draft() -> Fixture:
    c = _vaccine_start("n19zos", "Ngozi")
    c.order(None, ANCHOR.isoformat(), status="draft", text_only="Zostavax (zoster vaccine live) injection",
            dosage="0.65 mL subcutaneously once")  # fmt: skip
    return Fixture(
        "n19-zoster-live-draft",
        "New tacrolimus start; live zoster vaccine (Zostavax) drafted as a MedicationRequest, by name only",
        c,
        {
            "N11": NEW_START,
            "N19": "A live vaccine drafted while tacrolimus is being started (by name): warning.",
        },
        selections=_tacrolimus_selected(c),
    )


@fixture
def n19_varicella_service_request_draft() -> Fixture:
    c = _vaccine_start("n19var", "Amara")
    _vaccine_order(
        c, "Varicella virus vaccine live (Varivax) 0.5 mL SC", coding(CVX, "21", "varicella virus vaccine")
    )
    return Fixture(
        "n19-varicella-service-request-draft",
        "New tacrolimus start; varicella vaccine drafted as a ServiceRequest coded CVX 21",
        c,
        {"N11": NEW_START, "N19": "A live vaccine ordered as a service in this session: warning."},
        selections=_tacrolimus_selected(c),
    )


@fixture
def n19_shingrix_not_live() -> Fixture:
    c = _vaccine_start("n19shx", "Ifeoma")
    recombinant = coding(CVX, "187", "zoster vaccine recombinant")
    _immunization(c, recombinant, "Shingrix (zoster vaccine recombinant, adjuvanted)", ago(10, "11:00"))
    shingrix = "Shingrix (zoster vaccine recombinant, adjuvanted)"
    c.order(
        None, ANCHOR.isoformat(), status="draft", text_only=shingrix, dosage="0.5 mL intramuscularly once"
    )
    return Fixture(
        "n19-shingrix-not-live",
        "New tacrolimus start; recombinant zoster vaccine (Shingrix) given 10 days ago and drafted again",
        c,
        {"N11": NEW_START},
        selections=_tacrolimus_selected(c),
        quiet={
            "N19": "Shingrix (CVX 187) is recombinant, not live: the advised zoster vaccine on tacrolimus."
        },
    )


@fixture
def n19_mmr_not_done() -> Fixture:
    c = _vaccine_start("n19nd", "Zainab")
    _immunization(c, MMR_CVX, "MMR", ago(10, "11:00"), status="not-done")
    mmr_in_drafts = _immunization(c, MMR_CVX, "MMR", ago(3, "09:00"))
    c.drafts.append(mmr_in_drafts)
    return Fixture(
        "n19-mmr-not-done",
        "New tacrolimus start; an MMR not given (status not-done); an MMR Immunization sent in draftOrders",
        c,
        {"N11": NEW_START},
        selections=_tacrolimus_selected(c),
        quiet={
            "N19": "A not-done Immunization gave no vaccine; an Immunization in draftOrders is not an order "
            "(and is not in the record)."
        },
    )


def _on_tacrolimus_given_yellow_fever(short: str, given: str, days_ago: int) -> Chart:
    c = Chart(short).patient(given, "Mensah", "male", "1986-02-19")
    _on_tacrolimus(c, on("2026-05-11"))
    c.panel(on("2026-04-28"), creatinine=0.90, upcr=2.0)
    normal_visit(c, 25, creatinine=0.92, egfr=99, upcr=0.5, tacrolimus=6.4)
    _immunization(
        c, coding(CVX, "37", "yellow fever vaccine"), "YF-Vax (yellow fever vaccine)", ago(days_ago)
    )
    return c


@fixture
def pv_live_vaccine_given_42_days_ago() -> Fixture:
    return Fixture(
        "pv-live-vaccine-given-42-days-ago",
        "On tacrolimus since May; yellow fever vaccine (CVX 37) given 42 days ago, before travel",
        _on_tacrolimus_given_yellow_fever("pvyf42", "Kwame", 42),
        {"N19": "A live vaccine given on tacrolimus 42 days ago (window 42 days): warning."},
        service=MONITORING,
    )


@fixture
def pv_live_vaccine_given_43_days_ago() -> Fixture:
    return Fixture(
        "pv-live-vaccine-given-43-days-ago",
        "On tacrolimus since May; yellow fever vaccine (CVX 37) given 43 days ago",
        _on_tacrolimus_given_yellow_fever("pvyf43", "Kofi", 43),
        {},
        quiet={"N19": "The yellow fever vaccine was given 43 days ago, outside the 42-day window."},
        service=MONITORING,
    )


@fixture
def n19_yellow_fever_30_days_renewal() -> Fixture:
    c = _on_tacrolimus_given_yellow_fever("n19yfr", "Yaw", 30)
    c.order(
        "tacrolimus-1mg",
        ANCHOR.isoformat(),
        status="draft",
        key="tac-draft",
        dosage=PV_TAC_DOSE,
        prior=f"MedicationRequest/{c.rid('mr-tac')}",
    )
    return Fixture(
        "n19-yellow-fever-30-days-renewal",
        "Tacrolimus renewal; yellow fever vaccine (CVX 37) given 30 days ago, on tacrolimus",
        c,
        {"N19": "A live vaccine given on tacrolimus 30 days ago (continuing, 42-day window): warning."},
    )


# --- Writing ------------------------------------------------------------------------------------------------


def manifest_entry(f: Fixture) -> dict:
    entry = {
        "description": f.description,
        "drafts": f.chart.drafts,
        "selections": f.selections or f.chart.drafts,
        "expected": sorted(f.expected, key=finding_order),
        "why": {k: f.expected[k] for k in sorted(f.expected, key=finding_order)},
    }
    if f.quiet:
        entry["quiet"] = f.quiet
    if f.chart.malformed:
        entry["malformed"] = f.chart.malformed
    if f.service:
        entry["service"] = f.service
        entry["hook"] = "patient-view"
    return entry


def finding_order(finding_id: str) -> tuple[int, int]:
    return ("PSN".index(finding_id[0]), int(finding_id[1:]))


def write(out_dir: Path = OUT_DIR) -> list[str]:
    """Write every bundle and the manifest into ``out_dir``; returns the fixture names."""
    fixtures = [build() for build in FIXTURES]
    names = [f.name for f in fixtures]
    assert len(set(names)) == len(names), "fixture names must be unique"
    manifest = {}
    for f in fixtures:
        (out_dir / f"{f.name}.json").write_text(_dump(f.chart.bundle()))
        manifest[f.name] = manifest_entry(f)
    (out_dir / "manifest.json").write_text(_dump(manifest))
    return names


def _dump(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(f"wrote {len(write())} fixtures to {OUT_DIR}")
