"""The synthetic reference population: deterministic lupus patients that ``/admin`` simulates a staged
configuration on (``population.reference_population``), and the bench generates 1,000 of.

Synthetic, never real: each patient is drawn from a seeded generator, with the labs the catalog reads spread
on both sides of the shipped thresholds (potassium 3.5–6.2 mmol/L, tacrolimus troughs 3–14 ng/mL, creatinine
rises of 0–50 %...), so a threshold moved either way changes some answers. Dates are relative to
``fixtures.ANCHOR`` and moved to today when loaded, as the fixtures' are.

Regenerate the shipped file (``tests/test_simulation.py`` checks it matches this code)::

    python -m cds_service.reference_population
"""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from cds_service.fixtures import ANCHOR

SIZE = 200
SEED = 27
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
NOW = datetime.combine(ANCHOR, time(9, 0), tzinfo=UTC)

# (RxNorm code, display, chance of an active order)
OTHER_DRUGS = [
    ("200060", "mycophenolate mofetil 500 MG Oral Tablet", 0.5),
    ("312615", "prednisone 20 MG Oral Tablet", 0.6),
    ("979492", "hydroxychloroquine sulfate 200 MG Oral Tablet", 0.7),
    ("314076", "lisinopril 10 MG Oral Tablet", 0.3),
    ("197517", "clarithromycin 500 MG Oral Tablet", 0.05),
    ("197806", "ibuprofen 600 MG Oral Tablet", 0.08),
]


def _when(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat(timespec="seconds")


def _category(code_system: str, code: str) -> list[dict]:
    return [{"coding": [{"system": f"http://terminology.hl7.org/CodeSystem/{code_system}", "code": code}]}]


def _lab(pid: str, n: int, code: str, display: str, value: float, unit: str, days_ago: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"{pid}-o{n}",
        "status": "final",
        "category": _category("observation-category", "laboratory"),
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": _when(days_ago),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
    }


def _blood_pressure(pid: str, n: int, systolic: int, diastolic: int, days_ago: float) -> dict:
    def component(code: str, display: str, value: int) -> dict:
        quantity = {"value": value, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}
        return {
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "valueQuantity": quantity,
        }

    return {
        "resourceType": "Observation",
        "id": f"{pid}-o{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": _when(days_ago),
        "component": [
            component("8480-6", "Systolic blood pressure", systolic),
            component("8462-4", "Diastolic blood pressure", diastolic),
        ],
    }


def _condition(pid: str, n: int, code: str, display: str, days_ago: float) -> dict:
    return {
        "resourceType": "Condition",
        "id": f"{pid}-c{n}",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "verificationStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
            ]
        },
        "category": _category("condition-category", "problem-list-item"),
        "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "recordedDate": _when(days_ago),
    }


def _order(pid: str, n: int, code: str, display: str, days_ago: float, dosage: list | None = None) -> dict:
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": f"{pid}-m{n}",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code, "display": display}]},
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": _when(days_ago),
    }
    if dosage:
        order["dosageInstruction"] = dosage
    return order


def tacrolimus_dosage(mg: float) -> list[dict]:
    return [
        {
            "text": f"{mg:g} mg by mouth every 12 hours",
            "timing": {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}},
            "doseAndRate": [{"doseQuantity": {"value": mg, "unit": "mg", "system": UCUM, "code": "mg"}}],
        }
    ]


def patient(number: int, seed: int = SEED) -> dict:
    """One patient's Bundle; the same ``number`` and ``seed`` always give the same patient."""
    rng = random.Random(seed * 1_000_003 + number)
    pid = f"ref-{seed}-{number:04d}"
    female = rng.random() < 0.85
    age_days = rng.randint(16 * 365, 62 * 365)
    records: list[dict] = [
        {
            "resourceType": "Patient",
            "id": pid,
            "gender": "female" if female else "male",
            "birthDate": (NOW - timedelta(days=age_days)).date().isoformat(),
        },
        _condition(pid, 0, "55464009", "Systemic lupus erythematosus", rng.randint(400, 3000)),
    ]
    if rng.random() < 0.9:
        records.append(
            _condition(pid, 1, "68815009", "Systemic lupus erythematosus glomerulonephritis syndrome", 300)
        )
    on_tacrolimus = rng.random() < 0.45
    if on_tacrolimus:
        mg = rng.choice([1, 2, 3, 4])
        records.append(
            _order(
                pid, 0, "198377", "tacrolimus 1 MG Oral Capsule", rng.randint(30, 600), tacrolimus_dosage(mg)
            )
        )
    for n, (code, display, chance) in enumerate(OTHER_DRUGS, start=1):
        if rng.random() < chance:
            records.append(_order(pid, n, code, display, rng.randint(5, 400)))
    labs: list[dict] = []

    def lab(code: str, display: str, value: float, unit: str, days_ago: float) -> None:
        labs.append(_lab(pid, len(labs), code, display, value, unit, days_ago))

    baseline = round(rng.uniform(0.6, 1.4), 2)
    lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", baseline, "mg/dL", rng.uniform(45, 80))
    recent = rng.uniform(1, 20)
    lab(
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        round(baseline * rng.uniform(0.9, 1.5), 2),
        "mg/dL",
        recent,
    )
    lab("98979-8", "eGFR CKD-EPI 2021", rng.randint(25, 110), "mL/min/{1.73_m2}", recent)
    potassium = "Potassium [Moles/volume] in Serum or Plasma"
    lab("2823-3", potassium, round(rng.uniform(3.5, 6.2), 1), "mmol/L", rng.uniform(40, 80))
    if rng.random() < 0.9:  # the others' newest potassium is too old to count
        lab("2823-3", potassium, round(rng.uniform(3.5, 6.2), 1), "mmol/L", rng.uniform(1, 25))
    lab(
        "19123-9",
        "Magnesium [Mass/volume] in Serum or Plasma",
        round(rng.uniform(1.3, 2.4), 1),
        "mg/dL",
        recent,
    )
    lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", rng.randint(70, 230), "mg/dL", recent)
    lab("2890-2", "Protein/Creatinine [Mass Ratio] in Urine", rng.randint(100, 3500), "mg/g", recent)
    if rng.random() < 0.3:
        lab(
            "4548-4",
            "Hemoglobin A1c/Hemoglobin.total in Blood",
            round(rng.uniform(5.0, 8.0), 1),
            "%",
            rng.uniform(5, 80),
        )
    if on_tacrolimus and rng.random() < 0.8:
        lab(
            "11253-2",
            "Tacrolimus [Mass/volume] in Blood",
            round(rng.uniform(3, 14), 1),
            "ng/mL",
            rng.uniform(1, 25),
        )
    labs.append(
        _blood_pressure(pid, len(labs), rng.randint(105, 175), rng.randint(60, 110), rng.uniform(1, 20))
    )
    records += labs
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in records]}


def generate(count: int = SIZE, seed: int = SEED) -> list[dict]:
    return [patient(n, seed) for n in range(1, count + 1)]


def write(path: Path, count: int = SIZE, seed: int = SEED) -> None:
    """The population as gzip'd JSON (mtime 0: the same bytes on every run)."""
    data = json.dumps(generate(count, seed), separators=(",", ":")).encode("utf-8")
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as file:
        file.write(data)


if __name__ == "__main__":
    from cds_service.population import REFERENCE_POPULATION

    write(REFERENCE_POPULATION)
    print(f"wrote {REFERENCE_POPULATION}")
