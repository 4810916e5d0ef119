"""The patients a simulation runs on, and the hook calls an EHR would send for each (``simulation``).

A patient is one FHIR Bundle: from a folder (one patient per file), the fixtures in ``fhir_fixtures/`` (a
source checkout only), or the synthetic reference population shipped in ``cds_service/data/`` (what
``/admin`` simulates a staged configuration on, since the production image has no fixtures).

The requests are built here, not by the sandbox's request builder, because the production image leaves the
sandbox out: the record goes in the prefetch, each key holding what its template asks for (the resource
type, the codes and statuses it names), the Medications of the Bundle included with the orders as a server's
``_include`` would. The whole record is sent: nothing is cut to a ``_count`` page.
"""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from cds_service.fixtures import ANCHOR, FIXTURES_DIR, load_bundle, manifest, shift_dates
from cds_service.hook_names import HOOKS_WITH_DRAFTS, ORDER_SELECT
from cds_service.prefetch import FHIR_ID, KEY_BY_NAME, substitute_tokens
from cds_service.terminology import Terminology
from cds_service.trigger import find_active_tacrolimus

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
DATA_DIR = Path(__file__).resolve().parent / "data"
REFERENCE_POPULATION = DATA_DIR / "reference-population.json.gz"
WATCHED_DRAFTS = DATA_DIR / "simulation-drafts.json"
SIMULATION_USER = "Practitioner/simulation"
NEW_TACROLIMUS = {"code": "198377", "display": "tacrolimus 1 MG Oral Capsule"}
"""The draft of a patient with no active tacrolimus order: 1 mg every 12 hours (issue 27)."""


class PopulationError(ValueError):
    """A population that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Patient:
    label: str
    """File or fixture name: how the report names the patient (never anything from the record)."""
    bundle: dict[str, Any]
    drafts: tuple[str, ...] = ()
    """``MedicationRequest/<id>`` of the Bundle's own draft orders (a fixture's scenario)."""
    selections: tuple[str, ...] | None = None
    hooks: tuple[str, ...] = field(default=())
    """Only these hooks (a fixture made for one hook); empty: every hook."""

    @property
    def patient_id(self) -> str:
        return str(next(r["id"] for r in resources(self.bundle) if r.get("resourceType") == "Patient"))


def resources(bundle: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry") or () if isinstance(e.get("resource"), dict)]


def _drafts_in(bundle: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(
        f"MedicationRequest/{r['id']}"
        for r in resources(bundle)
        if r.get("resourceType") == "MedicationRequest" and r.get("status") == "draft"
    )


def _checked(label: str, bundle: Any) -> Patient:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise PopulationError(f"{label}: not a FHIR Bundle")
    patients = [r for r in resources(bundle) if r.get("resourceType") == "Patient"]
    if len(patients) != 1:
        raise PopulationError(f"{label}: a Bundle must hold exactly one Patient, not {len(patients)}")
    if not isinstance(patients[0].get("id"), str) or not FHIR_ID.match(patients[0]["id"]):
        raise PopulationError(f"{label}: the Patient's id is missing or not a FHIR id")
    return Patient(label, bundle, _drafts_in(bundle))


def from_folder(folder: Path) -> Iterator[Patient]:
    """Every ``*.json`` Bundle in ``folder`` (sorted by name), one patient each."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise PopulationError(f"{folder}: no *.json FHIR Bundles in this folder")
    for file in files:
        if file.name == "manifest.json":
            continue
        try:
            bundle = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise PopulationError(f"{file}: not a readable JSON file: {error}") from None
        yield _checked(file.name, bundle)


def from_fixtures(today: date | None = None) -> Iterator[Patient]:
    """The fixture patients as their manifest sends them (dates moved to ``today``)."""
    if not (FIXTURES_DIR / "manifest.json").is_file():
        raise PopulationError(
            "`fixtures` needs a source checkout (fhir_fixtures/ is not in this installation)"
        )
    for name, entry in sorted(manifest().items()):
        bundle = load_bundle(name, today)
        drafts = tuple(entry.get("drafts") or ())
        selections = tuple(entry["selections"]) if entry.get("selections") is not None else None
        hooks = (entry["hook"],) if entry.get("hook") else ()
        yield Patient(name, bundle, drafts, selections, hooks)


@cache
def _reference_bundles() -> tuple[dict[str, Any], ...]:
    with gzip.open(REFERENCE_POPULATION, "rt", encoding="utf-8") as file:
        return tuple(json.load(file))


def reference_population(today: date | None = None) -> list[Patient]:
    """The synthetic reference population (``reference_population.py`` made it), dates moved to ``today``."""
    days = ((today or date.today()) - ANCHOR).days
    return [
        _checked(f"reference-{n:03d}", shift_dates(bundle, days))
        for n, bundle in enumerate(_reference_bundles(), start=1)
    ]


def load(source: str, today: date | None = None) -> list[Patient]:
    """``fixtures``, ``reference`` or a folder of Bundles."""
    if source == "fixtures":
        return list(from_fixtures(today))
    if source == "reference":
        return reference_population(today)
    folder = Path(source)
    if not folder.is_dir():
        raise PopulationError(f"{source}: neither a folder of FHIR Bundles nor `fixtures` or `reference`")
    return list(from_folder(folder))


# --- the drafts -------------------------------------------------------------------------------------------


def watched_drafts(file: Path | None = None) -> list[dict[str, str]]:
    """The drugs drafted for the co-prescribing services: ``[{"code", "display", "dosage", "system"}]``
    (RxNorm unless ``system`` says otherwise; ``code`` may be empty: recognised by name)."""
    path = file or WATCHED_DRAFTS
    try:
        drafts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PopulationError(f"{path}: not a readable JSON file: {error}") from None
    if not isinstance(drafts, list) or not all(
        isinstance(d, dict) and isinstance(d.get("code"), str) and isinstance(d.get("display"), str)
        for d in drafts
    ):
        raise PopulationError(f'{path}: expected a list of {{"code": RxNorm code, "display": name}}')
    return drafts


def _draft(patient_id: str, order_id: str, medication: Mapping[str, Any], dosage: list | None) -> dict:
    draft: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "requester": {"reference": SIMULATION_USER},
        **medication,
    }
    if dosage:
        draft["dosageInstruction"] = dosage
    return draft


def drug_draft(patient_id: str, order_id: str, drug: Mapping[str, str]) -> dict:
    """A draft of one watched drug, coded in RxNorm unless the entry names another ``system`` (a vaccine's
    CVX); an empty code drafts it by name alone, as an EHR does for a product whose code is not verified."""
    concept: dict[str, Any] = {"text": drug["display"]}
    if drug["code"]:
        concept["coding"] = [
            {"system": drug.get("system") or RXNORM, "code": drug["code"], "display": drug["display"]}
        ]
    dosage = [{"text": drug["dosage"]}] if drug.get("dosage") else None
    return _draft(patient_id, order_id, {"medicationCodeableConcept": concept}, dosage)


def tacrolimus_draft(patient: Patient, terminology: Terminology) -> tuple[dict, list[dict]]:
    """(the draft, Medications it references): a renewal of the patient's active systemic tacrolimus order
    (``priorPrescription``, same medication and dosage), else a new order of 1 mg every 12 hours."""
    pid = patient.patient_id
    records = resources(patient.bundle)
    medications = {_ref(r): r for r in records if r.get("resourceType") == "Medication"}
    stored = [r for r in records if _ref(r) not in set(patient.drafts)]
    active = [
        o for o in find_active_tacrolimus(stored, terminology, medications.get) if o.get("status") == "active"
    ]
    if active:
        renewed = active[0]  # the newest
        medication = {k: copy.deepcopy(v) for k, v in renewed.items() if k.startswith("medication")}
        draft = _draft(pid, "simulated-tacrolimus-draft", medication, renewed.get("dosageInstruction"))
        draft["priorPrescription"] = {"reference": f"MedicationRequest/{renewed['id']}"}
        reference = (renewed.get("medicationReference") or {}).get("reference")
        return draft, [medications[reference]] if reference in medications else []
    dosage = [
        {
            "text": "1 mg by mouth every 12 hours",
            "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006"}]},
            "timing": {"repeat": {"frequency": 1, "period": 12, "periodUnit": "h"}},
            "doseAndRate": [
                {
                    "doseQuantity": {
                        "value": 1,
                        "unit": "mg",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg",
                    }
                }
            ],
        }
    ]
    coding = {"system": RXNORM, **NEW_TACROLIMUS}
    return _draft(
        pid, "simulated-tacrolimus-draft", {"medicationCodeableConcept": {"coding": [coding]}}, dosage
    ), []


# --- the request ------------------------------------------------------------------------------------------


def request(
    patient: Patient,
    hook: str,
    templates: Mapping[str, str],
    drafts: Sequence[dict] = (),
    selections: Sequence[str] | None = None,
    prefetch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The CDS Hooks request for ``hook``: ``drafts`` (resources) in ``context.draftOrders`` (order hooks)
    and the rest of the record in the prefetch, one key per template (``prefetch``: already built)."""
    context: dict[str, Any] = {"userId": SIMULATION_USER, "patientId": patient.patient_id}
    draft_refs = [
        f"MedicationRequest/{d['id']}" for d in drafts if d.get("resourceType") == "MedicationRequest"
    ]
    if hook == ORDER_SELECT:
        context["selections"] = list(selections if selections is not None else draft_refs)
    if hook in HOOKS_WITH_DRAFTS:
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": copy.deepcopy(d)} for d in drafts],
        }
    return {
        "hook": hook,
        "hookInstance": f"simulation-{patient.label}-{hook}",
        "context": context,
        "prefetch": prefetch if prefetch is not None else record_prefetch(patient, templates),
    }


def record_prefetch(patient: Patient, templates: Mapping[str, str]) -> dict[str, Any]:
    """The patient's record (without its own drafts) as the prefetch of ``templates``. Its resources are the
    Bundle's own objects: serialise it, or copy it, before handing it to code that may change it."""
    own_drafts = set(patient.drafts)
    record = [r for r in resources(patient.bundle) if _ref(r) not in own_drafts]
    context = {"patientId": patient.patient_id, "userId": SIMULATION_USER}
    return {key: _prefetch_value(key, template, record, context) for key, template in templates.items()}


def _ref(resource: Mapping) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _prefetch_value(key: str, template: str, record: Sequence[dict], context: Mapping) -> dict | None:
    query = substitute_tokens(template, context)
    resource_type = KEY_BY_NAME[key].resource_type if key in KEY_BY_NAME else template.split("?")[0]
    if query is None:
        return None
    path, _, query_string = query.partition("?")
    if "/" in path:  # a read: the patient
        wanted = path.split("/", 1)[1]
        return next(
            (r for r in record if r.get("resourceType") == resource_type and r.get("id") == wanted), None
        )
    params: dict[str, set[str]] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        params.setdefault(name, set()).update(value.split(","))
    matches = [r for r in record if r.get("resourceType") == resource_type and _matches(r, params)]
    entries = [{"fullUrl": _ref(r), "resource": r, "search": {"mode": "match"}} for r in matches]
    if resource_type == "MedicationRequest":
        entries += [
            {"fullUrl": _ref(r), "resource": r, "search": {"mode": "include"}}
            for r in record
            if r.get("resourceType") == "Medication"
        ]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(matches), "entry": entries}


def _matches(resource: Mapping, params: Mapping[str, set[str]]) -> bool:
    """The code and status parameters of a template (others, such as ``_sort``, select nothing)."""
    codes = params.get("code")
    if codes:
        codings = (resource.get("code") or {}).get("coding") or ()
        tokens = {f"{c.get('system')}|{c.get('code')}" for c in codings} | {
            str(c.get("code")) for c in codings
        }
        if not tokens & codes:
            return False
    statuses = params.get("status")
    return not statuses or resource.get("status") in statuses
