"""Helpers shared by the HTTP-level tests: a service on a temporary configuration, a small patient."""

from __future__ import annotations

import copy
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from cds_service.app import create_app

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
FINDINGS_KEY = "org.example.tacrolimus-cds.findings"


def config_copy(tmp_path: Path, **settings_changes) -> Path:
    """A copy of hooks/ with its database in tmp_path and ``section={key: value}`` changes applied."""
    target = tmp_path / "hooks"
    shutil.copytree(ROOT / "hooks", target)
    path = target / "settings.yaml"
    settings = yaml.safe_load(path.read_text())
    settings["feedback"]["database_url"] = f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    for section, changes in settings_changes.items():
        if isinstance(changes, dict):
            settings.setdefault(section, {}).update(changes)
        else:
            settings[section] = changes
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return target


def make_app(tmp_path: Path, dev: bool = True, **settings_changes):
    return create_app(config_dir=config_copy(tmp_path, **settings_changes), dev=dev)


def when(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(timespec="seconds")


def lab(pid: str, oid: str, code: str, value: float, unit: str, days_ago: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when(days_ago),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def small_patient(pid: str = "http-p1", observations: int = 3) -> list[dict]:
    """A woman of 30 with lupus nephritis, a completed mycophenolate course and a few recent labs."""
    resources = [
        {
            "resourceType": "Patient",
            "id": pid,
            "gender": "female",
            "birthDate": (datetime.now(UTC) - timedelta(days=30 * 366)).date().isoformat(),
        },
        {
            "resourceType": "Condition",
            "id": f"{pid}-ln",
            "subject": {"reference": f"Patient/{pid}"},
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                ]
            },
            "code": {
                "coding": [
                    {
                        "system": SNOMED,
                        "code": "68815009",
                        "display": "Systemic lupus erythematosus glomerulonephritis syndrome",
                    }
                ]
            },
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"{pid}-mmf",
            "status": "completed",
            "intent": "order",
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": when(400)[:10],
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "68149"}]},
            "dispenseRequest": {"validityPeriod": {"start": when(400)[:10], "end": when(100)[:10]}},
        },
        {
            "resourceType": "AllergyIntolerance",
            "id": f"{pid}-alg",
            "patient": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": RXNORM, "code": "121191", "display": "rituximab"}]},
        },
    ]
    codes = [("2160-0", 0.9, "mg/dL"), ("2823-3", 4.4, "mmol/L"), ("19123-9", 2.0, "mg/dL")]
    for i in range(observations):
        code, value, unit = codes[i % len(codes)]
        resources.append(lab(pid, f"{pid}-o{i}", code, value, unit, 3 + i))
    return resources


def tacrolimus_draft(pid: str, order_id: str = "tac-draft", code: str = "198377") -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}], "text": "tacrolimus"},
    }


def bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def searchset(resources: list[dict]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }


def hook_request(
    pid: str, resources: list[dict] | None, hook: str = "order-sign", draft: dict | None = None
) -> dict:
    """A CDS Hooks request for ``pid`` with a full prefetch built from ``resources`` (None: no prefetch)."""
    draft = draft or tacrolimus_draft(pid)
    body = {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": pid, "draftOrders": bundle([draft])},
    }
    if hook == "order-select":
        body["context"]["selections"] = [f"MedicationRequest/{draft['id']}"]
    if resources is not None:
        by_type = {}
        for r in resources:
            by_type.setdefault(r["resourceType"], []).append(r)
        body["prefetch"] = {
            "patient": copy.deepcopy((by_type.get("Patient") or [None])[0]),
            "conditions": searchset(by_type.get("Condition", [])),
            "medications": searchset(by_type.get("MedicationRequest", [])),
            "observations": searchset(by_type.get("Observation", [])),
            "allergies": searchset(by_type.get("AllergyIntolerance", [])),
        }
    return body


def finding_ids(response_json: dict) -> set[str]:
    return {item["id"] for card in response_json["cards"] for item in card["extension"][FINDINGS_KEY]}
