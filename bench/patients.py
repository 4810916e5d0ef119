"""Deterministic synthetic patients for the benchmark: a typical lupus-nephritis patient and a large one.

Typical (≈ 50 KB): 20 conditions, 30 medication requests, 200 observations over two years, of which about
half are labs the rules read and half are not (blood counts, complement, anti-dsDNA). Large: the same with
10,000 observations.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"

# (code, display, unit, low, high): rule labs first, then labs the rules do not read.
LABS = [
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.7, 1.3),
    ("98979-8", "eGFR CKD-EPI 2021", "mL/min/{1.73_m2}", 55, 95),
    ("2890-2", "Protein/Creatinine [Mass Ratio] in Urine", "mg/g", 200, 1800),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.6, 5.2),
    ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma", "mg/dL", 1.7, 2.3),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 75, 140),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 10.5, 13.5),
    ("6690-2", "Leukocytes [#/volume] in Blood", "10*3/uL", 3.5, 9.0),
    ("777-3", "Platelets [#/volume] in Blood", "10*3/uL", 140, 380),
    ("4485-9", "Complement C3 [Mass/volume] in Serum or Plasma", "mg/dL", 60, 140),
]
IRRELEVANT_CONDITIONS = [
    ("40930008", "Hypothyroidism"),
    ("35489007", "Depressive disorder"),
    ("195967001", "Asthma"),
    ("68566005", "Urinary tract infection"),
    ("84229001", "Fatigue"),
    ("57676002", "Joint pain"),
    ("271807003", "Skin rash"),
    ("386661006", "Fever"),
    ("25064002", "Headache"),
    ("267036007", "Dyspnea"),
    ("44054006", "Diabetes mellitus type 2"),
    ("230690007", "Stroke"),
    ("22298006", "Myocardial infarction"),
    ("254837009", "Breast cancer"),
    ("73211009", "Diabetes mellitus"),
    ("49436004", "Atrial fibrillation"),
]
IRRELEVANT_DRUGS = [
    ("979492", "hydroxychloroquine sulfate 200 MG Oral Tablet"),
    ("312615", "prednisone 20 MG Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("308136", "amlodipine 2.5 MG Oral Tablet"),
    ("849574", "cholecalciferol 1000 UNT Oral Tablet"),
    ("197319", "calcium carbonate 500 MG Oral Tablet"),
]


def _when(days_ago: float, now: datetime) -> str:
    return (now - timedelta(days=days_ago)).isoformat(timespec="seconds")


def _observation(pid: str, oid: str, code: str, display: str, unit: str, value: float, when: str) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def _bp(pid: str, oid: str, systolic: int, diastolic: int, when: str) -> dict:
    def component(code: str, display: str, value: int) -> dict:
        return {
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "valueQuantity": {
                "value": value,
                "unit": "mm[Hg]",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }

    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "component": [
            component("8480-6", "Systolic blood pressure", systolic),
            component("8462-4", "Diastolic blood pressure", diastolic),
        ],
    }


def _condition(pid: str, cid: str, system: str, code: str, display: str, when: str) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "code": {"coding": [{"system": system, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "recordedDate": when,
    }


def _order(pid: str, mid: str, code: str, display: str, status: str, start: str, end: str | None) -> dict:
    order = {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": start,
    }
    if end:
        order["dispenseRequest"] = {"validityPeriod": {"start": start, "end": end}}
    return order


def lupus_patient(
    pid: str, observations: int = 200, now: datetime | None = None, seed: int = 7
) -> list[dict]:
    """Resources of a lupus-nephritis patient with ``observations`` results spread over two years."""
    now = now or datetime.now(UTC)
    rng = random.Random(seed)
    resources: list[dict] = [
        {
            "resourceType": "Patient",
            "id": pid,
            "gender": "female",
            "birthDate": (now - timedelta(days=34 * 365)).date().isoformat(),
        }
    ]
    resources.append(
        _condition(pid, f"{pid}-c0", SNOMED, "55464009", "Systemic lupus erythematosus", _when(900, now))
    )
    resources.append(
        _condition(
            pid, f"{pid}-c1", SNOMED, "36402006", "SLE glomerulonephritis, WHO class IV", _when(700, now)
        )
    )
    resources.append(
        _condition(pid, f"{pid}-c2", SNOMED, "38341003", "Hypertensive disorder", _when(600, now))
    )
    for i in range(17):
        code, display = IRRELEVANT_CONDITIONS[i % len(IRRELEVANT_CONDITIONS)]
        resources.append(
            _condition(pid, f"{pid}-c{i + 3}", SNOMED, code, display, _when(rng.randint(30, 2000), now))
        )
    resources.append(
        _order(
            pid,
            f"{pid}-m0",
            "199058",
            "mycophenolate mofetil 250 MG Oral Capsule",
            "completed",
            _when(500, now),
            _when(280, now),
        )
    )
    for i in range(29):
        code, display = IRRELEVANT_DRUGS[i % len(IRRELEVANT_DRUGS)]
        start = rng.randint(20, 700)
        status = "active" if i < 6 else "completed"
        end = None if status == "active" else _when(max(1, start - 90), now)
        resources.append(_order(pid, f"{pid}-m{i + 1}", code, display, status, _when(start, now), end))
    span = 730.0
    for i in range(observations):
        days_ago = span * i / max(1, observations)
        oid = f"{pid}-o{i}"
        if i % 11 == 0:
            resources.append(_bp(pid, oid, rng.randint(112, 138), rng.randint(68, 88), _when(days_ago, now)))
            continue
        code, display, unit, low, high = LABS[i % len(LABS)]
        value = round(rng.uniform(low, high), 2)
        resources.append(_observation(pid, oid, code, display, unit, value, _when(days_ago, now)))
    return resources


def tacrolimus_draft(pid: str, order_id: str = "bench-tac-draft") -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "198377", "display": "tacrolimus 1 MG Oral Capsule"}]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "dosageInstruction": [{"text": "1 mg by mouth twice daily"}],
    }


def other_draft(pid: str, order_id: str = "bench-other-draft") -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "308182", "display": "amoxicillin 250 MG Oral Capsule"}]
        },
        "subject": {"reference": f"Patient/{pid}"},
    }


def clarithromycin_draft(pid: str, order_id: str = "bench-clari-draft") -> dict:
    """A drug the co-prescribing services watch (strong CYP3A4 inhibitor)."""
    return {
        **other_draft(pid, order_id),
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "197517", "display": "clarithromycin 500 MG Oral Tablet"}]
        },
        "dosageInstruction": [{"text": "500 mg by mouth every 12 hours for 7 days"}],
    }
