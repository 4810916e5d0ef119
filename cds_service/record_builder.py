"""Build the PatientRecord from FHIR R4 JSON.

Two passes keep it fast and safe:

1. Raw JSON is filtered by code: only resources whose codes belong to a value set the rules use go on
   (a patient's record is mostly irrelevant to tacrolimus; parsing all of it is many times slower).
2. What is left is validated one resource at a time with ``fhir.resources`` (R4B models read R4 data), on the
   elements the record reads (``READ_FIELDS``): an older shape elsewhere must not hide an order. A resource
   that fails is skipped and reported; it never sinks the request. Observations are validated lazily,
   when a rule reads them (see ``LabSeries``).

Draft orders from ``context.draftOrders`` are read leniently from raw JSON: EHRs send them in older FHIR
shapes, and only their identity, drug and status matter.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance as FhirAllergy
from fhir.resources.R4B.condition import Condition as FhirCondition
from fhir.resources.R4B.medicationrequest import MedicationRequest as FhirMedicationRequest
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.patient import Patient as FhirPatient
from pydantic import ValidationError

from cds_service.card_text import shorten
from cds_service.dosage import administrations_per_day, daily_dose_mg, dosing_key
from cds_service.fhir_json import MAX_RESOURCE_DEPTH, is_object, nested_deeper_than, obj, objs, path, text
from cds_service.reading import read_polarity, read_quantity
from cds_service.record import (
    Allergy,
    Condition,
    Immunization,
    LabSeries,
    LabValue,
    Medication,
    Patient,
    PatientRecord,
    Period,
    Procedure,
    RawLab,
    Unusable,
)
from cds_service.rules.common import LAB_WORDS
from cds_service.terminology import Recognition, Terminology, canonical_system
from cds_service.trigger import DrugName, Resolver, codeable_name, drug_name, recognise
from cds_service.units import to_canonical

LAB_GROUPS = (
    "creatinine",
    "egfr",
    "upcr",
    "tacrolimus-level",
    "potassium",
    "magnesium",
    "glucose",
    "glucose-fasting",
    "hba1c",
    "systolic-bp",
    "diastolic-bp",
    "hcg-qualitative",
    "hcg-quantitative",
    "pregnancy-status",
    "edd",
    "breastfeeding-status",
    "igg",
    "hbsag",
    "anti-hbc",
    "body-height",
)
_GROUPS_OF: dict[frozenset[str], tuple[str, ...]] = {}


def _lab_groups(concepts: frozenset[str]) -> tuple[str, ...]:
    """The lab groups among ``concepts``, in ``LAB_GROUPS`` order; memoised (few distinct sets exist)."""
    groups = _GROUPS_OF.get(concepts)
    if groups is None:
        groups = tuple(g for g in LAB_GROUPS if g in concepts)
        if len(_GROUPS_OF) < 10_000:
            _GROUPS_OF[concepts] = groups
    return groups


BP_PANEL = "blood-pressure"
BP_COMPONENT_GROUPS = ("systolic-bp", "diastolic-bp")
NOT_RESULTS = frozenset({"entered-in-error", "cancelled"})
NOT_PERFORMED = frozenset({"entered-in-error", "not-done", "preparation", "stopped"})
"""Procedure statuses that say no delivery took place (a stopped one may not have delivered)."""
NOT_EXPOSURE = frozenset({"entered-in-error", "cancelled", "draft"})
DRAFT_SERVICE_CLASSES = frozenset({"live-vaccines"})
"""What a ServiceRequest in ``draftOrders`` can be an order of: a vaccine ordered as a service (N19)."""
INACTIVE_CLINICAL = frozenset({"inactive", "remission", "resolved"})
NOT_CONFIRMED = frozenset({"refuted", "entered-in-error"})
MAX_RESULTS_PER_LAB = 100
"""The newest results of one lab group the rules may read. A record with thousands of results of one lab
(or a hostile request) costs no more than this: the rest are never validated."""
DEFAULT_LOOKBACK_DAYS = 365
MAX_PER_CLASS = {"Condition": 20, "AllergyIntolerance": 20, "MedicationRequest": 100}
"""At most this many resources of one kind with the same concepts (value sets) are validated and used, the
newest first: enough for any record (100 orders of one drug class are eight years of monthly renewals), and a
request repeating one resource 30,000 times costs no more than that. A cut is named on the card."""
EARLIEST = datetime.min.replace(tzinfo=UTC)
MAX_RESOURCE_BYTES = 200_000
"""A resource larger than this is not validated but left out and named: validating 5 MB of one Patient's names
takes seconds, and no resource the rules read is near this size."""
MAX_SCANNED = 10_000
"""Conditions, orders (stored or draft) or allergies looked at, even on raw JSON: recognising a drug by its
name is a pattern search per text, and no patient's record holds ten thousand of them."""


def parse_when(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant (also partial: ``2026``, ``2026-05``) as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, str) or len(value) < 4:
        return None
    if len(value) > 10:  # a dateTime or instant, the usual case: no partial date to complete
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    text = value.strip()
    if len(text) == 4 and text.isdigit():
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


DURATION_DAYS = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30, "month": 30,
                 "months": 30, "a": 365.25, "year": 365.25, "years": 365.25, "h": 1 / 24, "hour": 1 / 24,
                 "hours": 1 / 24}  # fmt: skip


def supply_days(dispense: Mapping) -> float | None:
    """Days a stopped order's dispenses cover: expectedSupplyDuration × (1 + numberOfRepeatsAllowed).

    None when the duration is absent or in a unit that is not a time (rules.md § Data rules).
    """
    duration = dispense.get("expectedSupplyDuration")
    if not isinstance(duration, Mapping) or not isinstance(duration.get("value"), int | float):
        return None
    unit = str(duration.get("code") or duration.get("unit") or "").strip().lower()
    per_day = DURATION_DAYS.get(unit)
    if per_day is None or duration["value"] <= 0:
        return None
    repeats = dispense.get("numberOfRepeatsAllowed")
    repeats = repeats if isinstance(repeats, int) and repeats >= 0 else 0
    return float(duration["value"]) * per_day * (1 + repeats)


def _code(concept: Any) -> str | None:
    """The first coding's code of a CodeableConcept dict (status fields)."""
    for coding in objs(obj(concept).get("coding")):
        if isinstance(coding.get("code"), str):
            return coding["code"]
    return None


def _malformed_concept(raw: Mapping, field: str) -> bool:
    """Is ``raw[field]`` there but not a CodeableConcept? Then what the resource records cannot be told."""
    concept = raw.get(field)
    if concept is None:
        return False
    if not is_object(concept):
        return True
    coding = concept.get("coding")
    return coding is not None and not (isinstance(coding, list) and all(map(is_object, coding)))


def _order_date(raw: Mapping) -> datetime | None:
    return parse_when(raw.get("authoredOn")) or parse_when(
        path(raw, "dispenseRequest", "validityPeriod", "start")
    )


def _condition_date(raw: Mapping) -> datetime | None:
    """When a condition or allergy was recorded (else its onset): what "newest" means for them."""
    return parse_when(raw.get("recordedDate")) or parse_when(raw.get("onsetDateTime"))


STATUS_SYSTEMS = {
    "Condition": ("condition-clinical", "condition-ver-status"),
    "AllergyIntolerance": ("allergyintolerance-clinical", "allergyintolerance-verification"),
}


def _r4_statuses(raw: Mapping) -> Mapping:
    """``raw`` with STU3/DSTU2 status codes (``"clinicalStatus": "active"``) written as R4 CodeableConcepts.

    EHRs still send Conditions and allergies this way (the HL7 PDDI CDS requests do): the code means the same,
    and leaving the resource out would hide a lupus or pregnancy Condition, and with it every card."""
    systems = STATUS_SYSTEMS.get(str(raw.get("resourceType")))
    if systems is None or not any(
        isinstance(raw.get(k), str) for k in ("clinicalStatus", "verificationStatus")
    ):
        return raw
    fixed = dict(raw)
    for key, system in zip(("clinicalStatus", "verificationStatus"), systems, strict=True):
        if isinstance(raw.get(key), str):
            url = f"http://terminology.hl7.org/CodeSystem/{system}"
            fixed[key] = {"coding": [{"system": url, "code": raw[key].strip()}]}
    return fixed


def _name(concept: Any, fallback: str) -> str:
    concept = obj(concept)
    if isinstance(concept.get("text"), str):
        return shorten(concept["text"])
    for coding in objs(concept.get("coding")):
        if isinstance(coding.get("display"), str):
            return shorten(coding["display"])
    return fallback


def _reason(error: ValidationError) -> str:
    errors = error.errors()
    if not errors:
        return "not valid FHIR R4"
    where = ".".join(str(p) for p in errors[0]["loc"] if p != "__root__")
    return f"not valid FHIR R4: {where}: {errors[0]['msg']}" if where else "not valid FHIR R4"


def _uncached_problem(model: Any, raw: Any) -> str | None:
    """Why this resource is not valid FHIR R4, or None."""
    if nested_deeper_than(raw, MAX_RESOURCE_DEPTH):  # validating it would exhaust Python's recursion
        return f"nested more than {MAX_RESOURCE_DEPTH} levels deep, too deep to read"
    try:
        model.model_validate(raw)
    except ValidationError as error:
        return _reason(error)
    except (TypeError, ValueError) as error:  # fhir.resources raises these for some malformed primitives
        return f"not valid FHIR R4: {error}"[:200]
    return None


class _ProblemCache:
    """Validation results keyed by a 128-bit BLAKE2b digest of the resource's canonical JSON: EHRs send the
    same resources again and again (order-select fires on every edit of an order, then order-sign), and
    validating one costs far more than a hash. A digest instead of the content keeps 20,000 entries small per
    worker (bench/README.md); a collision between two different resources is out of reach (2^-64).
    Oldest entries go first when it is full."""

    def __init__(self, size: int = 20_000):
        self.size = size
        self._results: dict[bytes, str | None] = {}
        self._lock = threading.Lock()

    def problem(self, model: Any, raw: Mapping, content: bytes) -> str | None:
        """Why ``raw`` (whose canonical JSON is ``content``) is not valid for ``model``, or None."""
        key = hashlib.blake2b(content, digest_size=16, person=model.__name__.encode()[:16]).digest()
        try:
            return self._results[key]
        except KeyError:
            pass
        found = _uncached_problem(model, raw)
        with self._lock:
            if len(self._results) >= self.size:
                del self._results[next(iter(self._results))]
            self._results[key] = found
        return found


_PROBLEMS = _ProblemCache()


READ_FIELDS = {
    "Patient": ("id", "gender", "birthDate"),
    "Condition": (
        "id", "subject", "code", "clinicalStatus", "verificationStatus", "onsetDateTime", "onsetPeriod",
        "recordedDate", "abatementDateTime", "abatementPeriod", "meta",
    ),
    "MedicationRequest": (
        "id", "status", "intent", "subject", "medicationCodeableConcept", "medicationReference", "authoredOn",
        "dispenseRequest", "priorPrescription",
    ),
    "Observation": (
        "id", "status", "code", "subject", "effectiveDateTime", "effectiveInstant", "effectivePeriod",
        "issued", "valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueDateTime",
        "component", "interpretation",
    ),
    "AllergyIntolerance": ("id", "patient", "code", "clinicalStatus", "verificationStatus"),
}  # fmt: skip
"""The elements the record reads, per resource type. Only these are validated: real EHR data in an older
FHIR shape (an STU3 ``category`` object, ``context`` instead of ``encounter``) in an element nobody reads must
not hide an active cyclosporine order or a pregnancy from the rules (seen in the HL7 PDDI CDS requests)."""


READ_DEFAULTS: dict[str, dict[str, str]] = {"MedicationRequest": {"intent": "order"}}
"""Required R4 elements an older shape leaves out, read as their meaning: a MedicationRequest without
``intent`` (STU3 and some EHRs' exports) is an order (rules.md v3, § Reading the record). Without this the
R4 model refuses it and the patient's earlier tacrolimus, teratogen or duplicate order is left out."""


def _read_part(model: Any, raw: Mapping) -> Mapping:
    fields = READ_FIELDS.get(model.__name__)
    if not fields:
        return raw
    part = {"resourceType": raw.get("resourceType"), **{k: raw[k] for k in fields if k in raw}}
    for key, value in READ_DEFAULTS.get(model.__name__, {}).items():
        part.setdefault(key, value)
    return part


def _validated(model: Any, raw: Mapping, skipped: list[Unusable]) -> bool:
    """Are the elements of ``raw`` that the record reads valid for ``model``? If not, it is added to
    ``skipped`` with the reason."""
    raw_read = _read_part(model, raw)
    try:
        content = orjson.dumps(raw_read, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits from a stdlib-parsed file, or too deep: no key
        content = None
    too_large = content is not None and len(content) > MAX_RESOURCE_BYTES
    if too_large and not nested_deeper_than(raw_read, MAX_RESOURCE_DEPTH):  # its codes count, not its novel
        raw_read = _long_strings_cut(raw_read)
        content = orjson.dumps(raw_read, option=orjson.OPT_SORT_KEYS)
    if content is not None and len(content) > MAX_RESOURCE_BYTES:
        problem: str | None = f"{len(content)} bytes, too large to read (at most {MAX_RESOURCE_BYTES})"
    elif content is not None:
        problem = _PROBLEMS.problem(model, raw_read, content)
    else:
        problem = _uncached_problem(model, raw_read)
    if problem:
        skipped.append(Unusable(f"{raw.get('resourceType')}/{raw.get('id')}", problem))
    return problem is None


LONG_STRING = 1_000
"""A string in a resource too large to read is cut to this many characters before it is checked again."""


def _long_strings_cut(value: Any) -> Any:
    """``value`` with every string longer than ``LONG_STRING`` cut (only the name is shown, and shortened)."""
    if isinstance(value, str):
        return value[:LONG_STRING]
    if is_object(value):
        return {key: _long_strings_cut(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_long_strings_cut(item) for item in value]
    return value


BY_NAME_NOTE = " (recognised by its name; check the order)"


def _label(label: str, by_name: frozenset[str]) -> str:
    """The drug's name as cards show it: a drug recognised only by its name says so (rules.md)."""
    label = shorten(label)  # a name from the record: one line, no control characters, not overlong
    return label + BY_NAME_NOTE if by_name else label


class RecordBuilder:
    """Turns the gathered resources of one request into a PatientRecord."""

    def __init__(self, terminology: Terminology, now: datetime, lookback_days: int = DEFAULT_LOOKBACK_DAYS):
        self.terminology = terminology
        self.now = now
        self.lookback_days = lookback_days
        """The longest look-back window of the rules: results dropped by the cap before it are named."""
        self.skipped: list[Unusable] = []
        self._observation_problems: dict[int, Unusable | None] = {}

    def _unreadable(self, raw: Mapping, field: str) -> bool:
        """Report a resource whose coded field is malformed (it is skipped, and named on the card)."""
        if not _malformed_concept(raw, field):
            return False
        reason = f"its {field} is not a valid CodeableConcept, so what it records cannot be told"
        self.skipped.append(Unusable(f"{text(raw.get('resourceType'))}/{raw.get('id')}", reason))
        return True

    def scanned(self, kind: str, resources: Sequence[Mapping]) -> Sequence[Mapping]:
        """The first ``MAX_SCANNED`` resources of a kind (no real record comes near it); a cut is named."""
        if len(resources) <= MAX_SCANNED:
            return resources
        reason = f"only the first {MAX_SCANNED} of {len(resources)} were read"
        self.skipped.append(Unusable(f"{kind} (all)", reason))
        return resources[:MAX_SCANNED]

    def _newest_per_class(
        self,
        kind: str,
        candidates: list[tuple[frozenset[str], Mapping]],
        when: Callable[[Mapping], datetime | None],
    ) -> set[int]:
        """Indexes of the candidates to use: at most ``MAX_PER_CLASS[kind]`` per concept set, the newest by
        ``when(raw)``, chosen on raw JSON before any is validated."""
        cap = MAX_PER_CLASS[kind]
        by_class: dict[frozenset[str], list[int]] = defaultdict(list)
        for index, (concepts, _) in enumerate(candidates):
            by_class[concepts].append(index)
        chosen: set[int] = set()
        for concepts, indexes in by_class.items():
            if len(indexes) > cap:
                indexes.sort(key=lambda i: when(candidates[i][1]) or EARLIEST, reverse=True)
                reason = f"only the newest {cap} of {len(indexes)} with the same codes were read"
                self.skipped.append(Unusable(f"{kind} ({', '.join(sorted(concepts))})", reason))
            chosen.update(indexes[:cap])
        return chosen

    # --- patient -------------------------------------------------------------------------------------------
    def patient(self, raw: Mapping | None) -> Patient | None:
        if not isinstance(raw, Mapping) or raw.get("resourceType") != "Patient":
            return None
        if not _validated(FhirPatient, raw, self.skipped):
            return Patient(id=str(raw.get("id", "")))
        born = parse_when(raw.get("birthDate")) if len(str(raw.get("birthDate", ""))) == 10 else None
        gender = raw.get("gender") if isinstance(raw.get("gender"), str) else None
        return Patient(id=str(raw.get("id", "")), gender=gender, birth_date=born.date() if born else None)

    # --- conditions ----------------------------------------------------------------------------------------
    def conditions(self, resources: Iterable[Mapping]) -> list[Condition]:
        candidates = []
        for raw in resources:
            concepts = self.terminology.concepts_of_concept(raw.get("code"))
            if concepts:
                candidates.append((concepts, _r4_statuses(raw)))
            else:
                self._unreadable(raw, "code")
        chosen = self._newest_per_class("Condition", candidates, _condition_date)
        found = []
        for index, (concepts, raw) in enumerate(candidates):
            if index not in chosen or not _validated(FhirCondition, raw, self.skipped):
                continue
            clinical = _code(raw.get("clinicalStatus"))
            verification = _code(raw.get("verificationStatus"))
            found.append(
                Condition(
                    id=str(raw.get("id", "")),
                    concepts=concepts,
                    name=_name(raw.get("code"), "condition"),
                    active=clinical not in INACTIVE_CLINICAL and verification not in NOT_CONFIRMED,
                    onset=parse_when(raw.get("onsetDateTime") or path(raw, "onsetPeriod", "start")),
                    recorded=parse_when(raw.get("recordedDate")),
                    clinical_status=clinical,
                    confirmed=verification not in NOT_CONFIRMED,
                    abated=parse_when(raw.get("abatementDateTime") or path(raw, "abatementPeriod", "end")),
                    last_updated=parse_when(path(raw, "meta", "lastUpdated")),
                )
            )
        return found

    # --- medications ---------------------------------------------------------------------------------------
    def _exposure(self, status: str, raw: Mapping) -> Period | None:
        if status in NOT_EXPOSURE:
            return None
        validity = obj(path(raw, "dispenseRequest", "validityPeriod"))
        start = parse_when(raw.get("authoredOn")) or parse_when(validity.get("start"))
        if start is None or start > self.now:
            return None
        end = parse_when(validity.get("end"))
        if end is None and status in ("active", "on-hold"):
            end = self.now
        if end is None:
            supply = supply_days(obj(raw.get("dispenseRequest")))
            end = start + timedelta(days=supply) if supply else start
        return Period(start, max(start, min(end, self.now)))

    def medications(
        self,
        stored: Iterable[Mapping],
        drafts: Iterable[Mapping],
        trigger_ids: set[str],
        resolve: Resolver,
        answer_order_ids: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> list[Medication]:
        """``answer_order_ids``: the stored order(s) a patient-view answer is about (the triggering drafts are
        the order hooks'): a card names their recognition by name once, not in every mention of them."""
        candidates: list[tuple[Mapping, bool, DrugName, Recognition]] = []
        for raw, is_draft in [(r, False) for r in stored] + [(r, True) for r in drafts]:
            if is_draft and raw.get("resourceType") == "ServiceRequest":
                self._service_draft(raw, candidates)
                continue
            if raw.get("resourceType") not in ("MedicationRequest", "MedicationOrder"):
                continue  # an Immunization in draftOrders is not an order (rules.md v3)
            name = drug_name(raw, resolve)
            recognised = recognise(name, self.terminology)  # rules.md § Drug recognition
            if recognised.classes:
                candidates.append((raw, is_draft, name, recognised))
            elif not self._unreadable(raw, "medicationCodeableConcept"):
                self._report_unresolved(raw, name.unresolved, is_draft)
        stored_candidates = [(c[3].classes, c[0]) for c in candidates if not c[1]]
        chosen = self._newest_per_class("MedicationRequest", stored_candidates, _order_date)
        stored_index = -1
        found = []
        for raw, is_draft, name, recognised in candidates:
            concepts = recognised.classes
            if not is_draft:
                stored_index += 1
                if stored_index not in chosen or not _validated(FhirMedicationRequest, raw, self.skipped):
                    continue
            status = raw["status"] if isinstance(raw.get("status"), str) else "unknown"
            if is_draft:
                status = "draft"  # a draft order of this session is active for the rules, whatever it says
            prior = path(raw, "priorPrescription", "reference")
            order_id = str(raw.get("id", ""))
            is_trigger = is_draft and order_id in trigger_ids
            named_once = is_trigger or (not is_draft and order_id in answer_order_ids)
            label = name.label or self._ingredients_label(name)
            found.append(
                Medication(
                    id=order_id,
                    concepts=concepts,
                    name=label if named_once else _label(label, recognised.by_name),
                    status=status,
                    authored=parse_when(raw.get("authoredOn")),
                    exposure=None if is_draft else self._exposure(status, raw),
                    is_draft=is_draft,
                    is_trigger=is_trigger,
                    prior_prescription=prior.rsplit("/", 1)[-1] if isinstance(prior, str) else None,
                    recognised_by_name=recognised.by_name,
                    unresolved_reference=name.reference if name.unresolved else "",
                    resource_type="ServiceRequest"
                    if raw.get("resourceType") == "ServiceRequest"
                    else "MedicationRequest",
                    **(self._tacrolimus(raw, name) if "tacrolimus" in concepts else {}),
                )
            )
        return found

    def _service_draft(
        self, raw: Mapping, candidates: list[tuple[Mapping, bool, DrugName, Recognition]]
    ) -> None:
        """A ServiceRequest in ``draftOrders`` counts only as a vaccine order (its ``code``, by code or name):
        EHRs order vaccines as services; a lab order naming a drug is not an order of that drug."""
        name = codeable_name(raw.get("code")) or DrugName((), ())
        recognised = recognise(name, self.terminology)
        classes = recognised.classes & DRAFT_SERVICE_CLASSES
        if classes:
            candidates.append((raw, True, name, recognised._replace(classes=classes)))
        else:
            self._unreadable(raw, "code")

    def _tacrolimus(self, raw: Mapping, name: DrugName) -> dict[str, Any]:
        """A tacrolimus order's formulation class, daily dose, and what tells identical drafts apart."""
        strength = self.terminology.strength_mg(name.codings)
        codes = sorted(
            f"{canonical_system(c.get('system'))}|{c['code'].strip()}"
            for c in name.codings
            if isinstance(c.get("code"), str) and canonical_system(c.get("system"))
        )
        return {
            "formulation": self.terminology.formulation(name.codings, name.names + name.other_words),
            "daily_dose_mg": daily_dose_mg(raw, strength),
            "administrations_per_day": administrations_per_day(raw),
            "product": " ".join(codes) or name.text.lower(),
            "dosing": dosing_key(raw),
        }

    def _ingredients_label(self, name: DrugName) -> str:
        """A Medication known only by its ingredients: their names (published displays), else "medication"."""
        words = list(name.other_words) or [d for c in name.ingredients if (d := self.terminology.display(c))]
        return " / ".join(words) or "medication"

    def _report_unresolved(self, raw: Mapping, unresolved: bool, is_draft: bool = False) -> None:
        """An order whose drug we could not see cannot be checked: say so rather than skip it silently
        (a draft too: rules.md v3 § Reading the record, References)."""
        reference = raw.get("medicationReference")
        target = path(reference, "reference")
        where = f"MedicationRequest/{raw.get('id')}"
        if reference is not None and not isinstance(target, str):
            why = "its medicationReference is malformed, so its drug cannot be told"
            self.skipped.append(Unusable(where, why))
        elif unresolved and isinstance(target, str) and is_draft:
            why = (
                f"the draft's medication reference {target} could not be resolved, so its drug cannot be told"
            )
            self.skipped.append(Unusable(where, why))
        elif unresolved and isinstance(target, str) and not target.startswith("#"):
            self.skipped.append(
                Unusable(
                    where,
                    f"its drug is only a reference to {target}, "
                    "which was not in the request and could not be read",
                )
            )

    # --- allergies -----------------------------------------------------------------------------------------
    def allergies(self, resources: Iterable[Mapping]) -> list[Allergy]:
        candidates, recognitions = [], []
        for raw in resources:
            substance = codeable_name(raw.get("code")) or DrugName((), ())
            recognised = recognise(substance, self.terminology)  # a drug allergy: by code, else by name
            concepts = self.terminology.concepts_of_concept(raw.get("code")) | recognised.classes
            if concepts:
                candidates.append((concepts, _r4_statuses(raw)))
                recognitions.append(recognised)
            else:
                self._unreadable(raw, "code")
        chosen = self._newest_per_class("AllergyIntolerance", candidates, _condition_date)
        found = []
        for index, ((concepts, raw), recognised) in enumerate(zip(candidates, recognitions, strict=True)):
            if index not in chosen or not _validated(FhirAllergy, raw, self.skipped):
                continue
            clinical = _code(raw.get("clinicalStatus"))
            verification = _code(raw.get("verificationStatus"))
            found.append(
                Allergy(
                    id=str(raw.get("id", "")),
                    concepts=concepts,
                    name=_label(_name(raw.get("code"), "allergy"), recognised.by_name),
                    active=clinical not in ("inactive", "resolved") and verification not in NOT_CONFIRMED,
                    recognised_by_name=recognised.by_name,
                )
            )
        return found

    # --- procedures ----------------------------------------------------------------------------------------
    def procedures(self, resources: Iterable[Mapping]) -> list[Procedure]:
        """Delivery Procedures that were done, dated by ``performed[x]`` (rules.md v3: they end a pregnancy).

        Read on raw JSON: only the code, the status and the date matter. One in the value set whose date
        cannot be read is named on the card, as it might have ended a pregnancy.
        """
        found = []
        for raw in resources:
            status = raw.get("status")
            if raw.get("resourceType") != "Procedure" or (
                isinstance(status, str) and status in NOT_PERFORMED
            ):
                continue
            concepts = self.terminology.concepts_of_concept(raw.get("code"))
            if not concepts:
                self._unreadable(raw, "code")
                continue
            period = obj(raw.get("performedPeriod"))
            when = (
                parse_when(raw.get("performedDateTime"))
                or parse_when(period.get("end"))
                or parse_when(period.get("start"))
            )
            if when is None:
                why = "a delivery procedure with no performedDateTime or performedPeriod, so when it ended a "
                self.skipped.append(Unusable(f"Procedure/{raw.get('id')}", why + "pregnancy cannot be told"))
                continue
            name = _name(raw.get("code"), "delivery procedure")
            found.append(Procedure(str(raw.get("id", "")), concepts, name, when))
        return found

    # --- immunizations -------------------------------------------------------------------------------------
    def immunizations(self, resources: Iterable[Mapping]) -> list[Immunization]:
        """Vaccines given (status ``completed``) whose ``vaccineCode`` is in a value set the rules read, by
        code or by name, newest first. Read on raw JSON, leniently (R4 ``occurrenceDateTime`` or
        ``occurrenceString``, STU3 ``date`` and ``notGiven``): only the vaccine, the status and the date
        matter. One whose date cannot be read is named on the card (it might be a live vaccine given last
        week)."""
        found = []
        for raw in resources:
            if raw.get("resourceType") != "Immunization" or raw.get("status") != "completed":
                continue  # not-done, entered-in-error: no vaccine was given (rules.md v3 N19)
            if raw.get("notGiven") is True:
                continue  # STU3's "not done": status completed with notGiven true
            vaccine = codeable_name(raw.get("vaccineCode")) or DrugName((), ())
            recognised = recognise(vaccine, self.terminology)
            if not recognised.classes:
                self._unreadable(raw, "vaccineCode")
                continue
            when = (
                parse_when(raw.get("occurrenceDateTime"))
                or parse_when(raw.get("occurrenceString"))
                or parse_when(raw.get("date"))
                or parse_when(raw.get("recorded"))
            )
            reference = f"Immunization/{raw.get('id')}"
            if when is None:
                why = "a vaccine given on a date that cannot be read (no occurrenceDateTime), so when it "
                self.skipped.append(Unusable(reference, why + "was given cannot be told"))
                continue
            label = _label(_name(raw.get("vaccineCode"), "vaccine"), recognised.by_name)
            found.append(
                Immunization(str(raw.get("id", "")), recognised.classes, label, when, recognised.by_name)
            )
        return sorted(found, key=lambda i: i.occurred, reverse=True)

    # --- observations --------------------------------------------------------------------------------------
    def lab_series(self, resources: Iterable[Mapping]) -> dict[str, LabSeries]:
        """Index Observations by lab group on raw JSON; validation waits until a rule reads a value.

        The one loop that runs per Observation (10,000 for a large record), so it does the least it can:
        one value-set look-up per coding, the groups of a set of concepts memoised.
        """
        raw_by_group: dict[str, list[RawLab]] = defaultdict(list)
        concepts_of = self.terminology.concepts_of_concept
        for raw in resources:
            status = raw.get("status")
            if type(status) is str and status in NOT_RESULTS:
                continue
            concepts = concepts_of(raw.get("code"))
            groups = _lab_groups(concepts)
            if BP_PANEL in concepts or (not groups and raw.get("component")):
                groups += self._component_groups(raw, groups)
            if not groups:
                self._unreadable(raw, "code")
                continue
            when = parse_when(
                raw.get("effectiveDateTime")
                or raw.get("effectiveInstant")
                or path(raw, "effectivePeriod", "start")
                or raw.get("issued")
            )
            if when is None:
                self.skipped.append(Unusable(f"Observation/{raw.get('id')}", "no effective date"))
                continue
            entry = RawLab(when, raw)
            for group in groups:
                raw_by_group[group].append(entry)
        return {
            group: LabSeries(group, self._newest(group, entries), self._parse_lab)
            for group, entries in raw_by_group.items()
        }

    def _component_groups(self, raw: Mapping, already: tuple[str, ...]) -> tuple[str, ...]:
        """The blood-pressure groups (systolic, diastolic) a panel's components hold, beyond ``already``."""
        found: frozenset[str] = frozenset()
        for component in objs(raw.get("component")):
            found |= self.terminology.concepts_of_concept(component.get("code"))
        return tuple(g for g in BP_COMPONENT_GROUPS if g in found and g not in already)

    def _newest(self, group: str, entries: list[RawLab]) -> list[RawLab]:
        """The newest ``MAX_RESULTS_PER_LAB`` entries, chosen before any is validated; the cut is named on the
        card when it drops results inside the rules' look-back windows."""
        if len(entries) <= MAX_RESULTS_PER_LAB:
            return entries
        entries = sorted(entries, key=lambda r: r.when, reverse=True)
        kept, dropped = entries[:MAX_RESULTS_PER_LAB], entries[MAX_RESULTS_PER_LAB:]
        if dropped[0].when >= self.now - timedelta(days=self.lookback_days):
            reason = (
                f"only the newest {MAX_RESULTS_PER_LAB} of {len(entries)} results were read; "
                f"the {len(dropped)} older ones (from {dropped[0].when.date().isoformat()} back) were not"
            )
            self.skipped.append(Unusable(f"Observation ({group})", reason))
        return kept

    def _observation_problem(self, raw: Mapping) -> Unusable | None:
        """Validate an Observation once, though a BP panel is read for two groups."""
        key = id(raw)
        if key not in self._observation_problems:
            skipped: list[Unusable] = []
            _validated(FhirObservation, raw, skipped)
            self._observation_problems[key] = skipped[0] if skipped else None
        return self._observation_problems[key]

    def _component(self, raw: Mapping, group: str) -> Mapping | None:
        for component in objs(raw.get("component")):
            if group in self.terminology.concepts_of_concept(component.get("code")):
                return component
        return None

    def _parse_lab(self, group: str, entry: RawLab) -> LabValue | Unusable:
        """One result as the rules read it (``cds_service.reading``); what cannot be read names the element
        at fault and the resource, so the card can say it (rules.md v3 § Reading, unreadable data)."""
        raw = entry.resource
        reference = f"Observation/{raw.get('id')}"
        day = entry.when.date().isoformat()
        problem = self._observation_problem(raw)
        if problem is not None:  # the rules quote the reason alone: it names the resource
            return Unusable(reference, f"{group} on {day} ({reference}) is {problem.reason}")
        holder = raw
        concepts = self.terminology.concepts_of_concept(raw.get("code"))
        if group in BP_COMPONENT_GROUPS and group not in concepts:
            holder = self._component(raw, group) or {}
        code = self._group_code(holder.get("code"), group)
        words = LAB_WORDS.get(group, group)
        kind = POLARITY_KIND.get(group)
        quantity = read_quantity(holder)
        if group == "hcg-quantitative" and quantity is not None:
            kind = None  # its number, judged against the band by the rules, wins over a flag
        if kind is not None:
            said = read_polarity(holder, self.terminology, kind)
            if said.answer is not None:
                return LabValue(
                    raw.get("id", ""), code, entry.when, None, None, answer=said.answer,
                    original=said.said or said.answer, flag_only=said.flag_only,
                )  # fmt: skip
            if said.fault is not None:
                return Unusable(
                    reference, f"{words} result on {day} could not be read: {said.fault} ({reference})"
                )
        if quantity is not None and (kind is None or group in HCG_GROUPS):
            unit = quantity.unit or quantity.code
            original = f"{quantity.comparator or ''}{num_text(quantity.value)} {unit or ''}".strip()
            converted = to_canonical(
                "hcg-quantitative" if group in HCG_GROUPS else group,
                quantity.value, quantity.unit, quantity.code, loinc=code,
            )  # fmt: skip
            if converted is None:
                via = "" if quantity.source == "valueQuantity" else f" (read from valueString {original!r})"
                return Unusable(
                    reference,
                    f"{group} on {day} in unit {unit or '(none)'!r}{via} could not be used ({reference})",
                )
            return LabValue(
                raw.get("id", ""), code, entry.when, converted[0], converted[1], original=original,
                comparator=quantity.comparator,
            )  # fmt: skip
        if isinstance(holder.get("valueDateTime"), str):
            return LabValue(
                raw.get("id", ""),
                code,
                entry.when,
                None,
                None,
                answer=holder["valueDateTime"][:10],
                original=holder["valueDateTime"],
            )
        return Unusable(
            reference, f"{words} result on {day} could not be read: {_value_element(holder)} ({reference})"
        )

    def _group_code(self, concept: Any, group: str) -> str:
        for coding in objs(obj(concept).get("coding")):
            if self.terminology.contains(group, str(coding.get("system")), str(coding.get("code"))):
                return str(coding["code"])
        return ""


HCG_GROUPS = ("hcg-qualitative", "hcg-quantitative")
POLARITY_KIND = {
    "hcg-qualitative": "qualitative",
    "hcg-quantitative": "qualitative",  # "Negative" or a LOINC answer where a number was expected
    "hbsag": "qualitative",
    "anti-hbc": "qualitative",
    "breastfeeding-status": "lactation",
    "pregnancy-status": "pregnancy",
}
"""Lab groups answered positive/negative (pregnant or not, breast milk or not), and how to read them."""


def num_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _value_element(holder: Mapping) -> str:
    """The value element that said nothing the rules can use, in words (``valueString 'see comment'``)."""
    for key, shown in holder.items():
        if key.startswith("value") and key != "valueQuantity":
            if isinstance(shown, str):
                return f"{key} {shown[:60]!r} states no result"
            return f"{key} states no result"
    if "valueQuantity" in holder:
        return "valueQuantity where a positive or negative result was expected"
    return "no value[x] and no interpretation"


def build_record(
    *,
    terminology: Terminology,
    now: datetime,
    patient: Mapping | None,
    conditions: Sequence[Mapping] = (),
    medications: Sequence[Mapping] = (),
    drafts: Sequence[Mapping] = (),
    trigger_ids: Iterable[str] = (),
    allergies: Sequence[Mapping] = (),
    observations: Sequence[Mapping] = (),
    procedures: Sequence[Mapping] = (),
    immunizations: Sequence[Mapping] = (),
    resolve: Resolver | None = None,
    unavailable: Iterable[str] = (),
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
    answer_order_ids: Iterable[str] = (),
) -> PatientRecord:
    builder = RecordBuilder(terminology, now, lookback_days)
    return PatientRecord(
        now=now,
        patient=builder.patient(patient),
        conditions=tuple(builder.conditions(builder.scanned("Condition", conditions))),
        medications=tuple(
            builder.medications(
                builder.scanned("MedicationRequest", medications),
                builder.scanned("draft order", drafts),
                set(trigger_ids),
                resolve or (lambda r: None),
                set(answer_order_ids),
            )
        ),
        allergies=tuple(builder.allergies(builder.scanned("AllergyIntolerance", allergies))),
        labs=builder.lab_series(observations),
        procedures=tuple(builder.procedures(builder.scanned("Procedure", procedures))),
        immunizations=tuple(builder.immunizations(builder.scanned("Immunization", immunizations))),
        skipped=tuple(builder.skipped),
        unavailable=frozenset(unavailable),
    )
