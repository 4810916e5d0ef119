"""Build the PatientRecord from FHIR R4 JSON.

Two passes keep it fast and safe:

1. Raw JSON is filtered by code: only resources whose codes belong to a value set the rules use go on
   (a patient's record is mostly irrelevant to tacrolimus; parsing all of it is 15-30x slower).
2. What is left is validated one resource at a time with ``fhir.resources`` (R4B models read R4 data). A
   resource that fails is skipped and reported; it never sinks the request. Observations are validated lazily,
   when a rule reads them (see ``LabSeries``).

Draft orders from ``context.draftOrders`` are read leniently from raw JSON: EHRs send them in older FHIR
shapes, and only their identity, drug and status matter.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance as FhirAllergy
from fhir.resources.R4B.condition import Condition as FhirCondition
from fhir.resources.R4B.medicationrequest import MedicationRequest as FhirMedicationRequest
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.patient import Patient as FhirPatient
from pydantic import ValidationError

from cds_service.record import (
    Allergy,
    Condition,
    LabSeries,
    LabValue,
    Medication,
    Patient,
    PatientRecord,
    Period,
    RawLab,
    Unusable,
)
from cds_service.terminology import Terminology
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
)
LAB_GROUP_SET = frozenset(LAB_GROUPS)
BP_PANEL = "blood-pressure"
BP_COMPONENT_GROUPS = ("systolic-bp", "diastolic-bp")
NOT_RESULTS = frozenset({"entered-in-error", "cancelled"})
NOT_EXPOSURE = frozenset({"entered-in-error", "cancelled", "draft"})
INACTIVE_CLINICAL = frozenset({"inactive", "remission", "resolved"})
NOT_CONFIRMED = frozenset({"refuted", "entered-in-error"})
POSITIVE_TEXT = re.compile(r"^\s*(positive|detected|reactive|pos|yes)\b", re.I)
NEGATIVE_TEXT = re.compile(r"^\s*(negative|not detected|non-?reactive|neg|no)\b", re.I)
# Breastfeeding status (63895-7) answered in words: "Yes", "Breastfeeding", "Exclusively breastfed"...
BREASTFEEDING_NO_TEXT = re.compile(r"\b(no|not|never|none|stopped|weaned|formula only)\b", re.I)
BREASTFEEDING_YES_TEXT = re.compile(r"\b(yes|breast-?\s?feeding|breast-?\s?fed|lactating|nursing)\b", re.I)
POSITIVE_INTERPRETATION = frozenset({"POS", "DET"})
NEGATIVE_INTERPRETATION = frozenset({"NEG", "ND"})


def parse_when(value: Any) -> datetime | None:
    """A FHIR date, dateTime or instant (also partial: ``2026``, ``2026-05``) as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, str) or len(value) < 4:
        return None
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
    if isinstance(concept, Mapping):
        for coding in concept.get("coding") or ():
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                return coding["code"]
    return None


def _name(concept: Any, fallback: str) -> str:
    if isinstance(concept, Mapping):
        if isinstance(concept.get("text"), str):
            return concept["text"]
        for coding in concept.get("coding") or ():
            if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
                return coding["display"]
    return fallback


def _reason(error: ValidationError) -> str:
    errors = error.errors()
    if not errors:
        return "not valid FHIR R4"
    where = ".".join(str(p) for p in errors[0]["loc"] if p != "__root__")
    return f"not valid FHIR R4: {where}: {errors[0]['msg']}" if where else "not valid FHIR R4"


MODELS = {
    m.__name__: m for m in (FhirAllergy, FhirCondition, FhirMedicationRequest, FhirObservation, FhirPatient)
}


def _uncached_problem(model: Any, raw: Any) -> str | None:
    """Why this resource is not valid FHIR R4, or None."""
    try:
        model.model_validate(raw)
    except ValidationError as error:
        return _reason(error)
    except (TypeError, ValueError) as error:  # fhir.resources raises these for some malformed primitives
        return f"not valid FHIR R4: {error}"[:200]
    return None


@lru_cache(maxsize=20_000)
def _problem(model_name: str, content: bytes) -> str | None:
    """``_uncached_problem``, keyed by content: EHRs send the same resources again and again (order-select
    fires on every edit of an order, then order-sign), and validating one costs ~250 µs. Bounded: about 8 MB
    per process."""
    return _uncached_problem(MODELS[model_name], orjson.loads(content))


def _validated(model: Any, raw: Mapping, skipped: list[Unusable]) -> bool:
    """Is ``raw`` valid for ``model``? If not, it is added to ``skipped`` with the reason."""
    try:
        content = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # e.g. an integer beyond 64 bits from a stdlib-parsed file: no cache key
        content = None
    problem = _problem(model.__name__, content) if content else _uncached_problem(model, raw)
    if problem:
        skipped.append(Unusable(f"{raw.get('resourceType')}/{raw.get('id')}", problem))
    return problem is None


BY_NAME_NOTE = " (recognised by its name; check the order)"


def _label(label: str, by_name: frozenset[str]) -> str:
    """The drug's name as cards show it: a drug recognised only by its name says so (rules.md)."""
    return label + BY_NAME_NOTE if by_name else label


class RecordBuilder:
    """Turns the gathered resources of one request into a PatientRecord."""

    def __init__(self, terminology: Terminology, now: datetime):
        self.terminology = terminology
        self.now = now
        self.skipped: list[Unusable] = []
        self._observation_problems: dict[int, Unusable | None] = {}

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
        found = []
        for raw in resources:
            concepts = self.terminology.concepts_of_concept(raw.get("code"))
            if not concepts or not _validated(FhirCondition, raw, self.skipped):
                continue
            clinical = _code(raw.get("clinicalStatus"))
            verification = _code(raw.get("verificationStatus"))
            found.append(
                Condition(
                    id=str(raw.get("id", "")),
                    concepts=concepts,
                    name=_name(raw.get("code"), "condition"),
                    active=clinical not in INACTIVE_CLINICAL and verification not in NOT_CONFIRMED,
                    onset=parse_when(raw.get("onsetDateTime") or (raw.get("onsetPeriod") or {}).get("start")),
                    recorded=parse_when(raw.get("recordedDate")),
                    clinical_status=clinical,
                    confirmed=verification not in NOT_CONFIRMED,
                    abated=parse_when(
                        raw.get("abatementDateTime") or (raw.get("abatementPeriod") or {}).get("end")
                    ),
                    last_updated=parse_when((raw.get("meta") or {}).get("lastUpdated")),
                )
            )
        return found

    # --- medications ---------------------------------------------------------------------------------------
    def _exposure(self, status: str, raw: Mapping) -> Period | None:
        if status in NOT_EXPOSURE:
            return None
        validity = (raw.get("dispenseRequest") or {}).get("validityPeriod") or {}
        start = parse_when(raw.get("authoredOn")) or parse_when(validity.get("start"))
        if start is None or start > self.now:
            return None
        end = parse_when(validity.get("end"))
        if end is None and status in ("active", "on-hold"):
            end = self.now
        if end is None:
            supply = supply_days(raw.get("dispenseRequest") or {})
            end = start + timedelta(days=supply) if supply else start
        return Period(start, max(start, min(end, self.now)))

    def medications(
        self, stored: Iterable[Mapping], drafts: Iterable[Mapping], trigger_ids: set[str], resolve: Resolver
    ) -> list[Medication]:
        found = []
        for raw, is_draft in [(r, False) for r in stored] + [(r, True) for r in drafts]:
            if raw.get("resourceType") not in ("MedicationRequest", "MedicationOrder"):
                continue
            name = drug_name(raw, resolve)
            recognised = recognise(name, self.terminology)  # rules.md § Drug recognition
            concepts = recognised.classes
            if not concepts:
                if name.unresolved and not is_draft:
                    self._report_unresolved(raw)
                continue
            if not is_draft and not _validated(FhirMedicationRequest, raw, self.skipped):
                continue
            status = raw["status"] if isinstance(raw.get("status"), str) else "unknown"
            if is_draft:
                status = "draft"  # a draft order of this session is active for the rules, whatever it says
            prior = (raw.get("priorPrescription") or {}).get("reference")
            found.append(
                Medication(
                    id=str(raw.get("id", "")),
                    concepts=concepts,
                    name=_label(name.label or self._ingredients_label(name), recognised.by_name),
                    status=status,
                    authored=parse_when(raw.get("authoredOn")),
                    exposure=None if is_draft else self._exposure(status, raw),
                    is_draft=is_draft,
                    is_trigger=is_draft and str(raw.get("id")) in trigger_ids,
                    prior_prescription=prior.rsplit("/", 1)[-1] if isinstance(prior, str) else None,
                    recognised_by_name=recognised.by_name,
                )
            )
        return found

    def _ingredients_label(self, name: DrugName) -> str:
        """A Medication known only by its ingredients: their names (published displays), else "medication"."""
        words = list(name.other_words) or [d for c in name.ingredients if (d := self.terminology.display(c))]
        return " / ".join(words) or "medication"

    def _report_unresolved(self, raw: Mapping) -> None:
        """An order whose drug we could not see cannot be checked: say so rather than skip it silently."""
        target = (raw.get("medicationReference") or {}).get("reference")
        if isinstance(target, str) and not target.startswith("#"):
            self.skipped.append(
                Unusable(
                    f"MedicationRequest/{raw.get('id')}",
                    f"its drug is only a reference to {target}, "
                    "which was not in the request and could not be read",
                )
            )

    # --- allergies -----------------------------------------------------------------------------------------
    def allergies(self, resources: Iterable[Mapping]) -> list[Allergy]:
        found = []
        for raw in resources:
            substance = codeable_name(raw.get("code")) or DrugName((), ())
            recognised = recognise(substance, self.terminology)  # a drug allergy: by code, else by name
            concepts = self.terminology.concepts_of_concept(raw.get("code")) | recognised.classes
            if not concepts or not _validated(FhirAllergy, raw, self.skipped):
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

    # --- observations --------------------------------------------------------------------------------------
    def lab_series(self, resources: Iterable[Mapping]) -> dict[str, LabSeries]:
        """Index Observations by lab group on raw JSON; validation waits until a rule reads a value."""
        raw_by_group: dict[str, list[RawLab]] = defaultdict(list)
        for raw in resources:
            if raw.get("status") in NOT_RESULTS:
                continue
            concepts = self.terminology.concepts_of_concept(raw.get("code"))
            groups = [g for g in LAB_GROUPS if g in concepts] if concepts & LAB_GROUP_SET else []
            if BP_PANEL in concepts or (not groups and raw.get("component")):
                groups += [g for g in BP_COMPONENT_GROUPS if g not in groups and self._component(raw, g)]
            if not groups:
                continue
            when = parse_when(
                raw.get("effectiveDateTime")
                or raw.get("effectiveInstant")
                or (raw.get("effectivePeriod") or {}).get("start")
                or raw.get("issued")
            )
            if when is None:
                self.skipped.append(Unusable(f"Observation/{raw.get('id')}", "no effective date"))
                continue
            for group in groups:
                raw_by_group[group].append(RawLab(when, raw))
        return {group: LabSeries(group, entries, self._parse_lab) for group, entries in raw_by_group.items()}

    def _observation_problem(self, raw: Mapping) -> Unusable | None:
        """Validate an Observation once, though a BP panel is read for two groups."""
        key = id(raw)
        if key not in self._observation_problems:
            skipped: list[Unusable] = []
            _validated(FhirObservation, raw, skipped)
            self._observation_problems[key] = skipped[0] if skipped else None
        return self._observation_problems[key]

    def _component(self, raw: Mapping, group: str) -> Mapping | None:
        for component in raw.get("component") or ():
            if isinstance(component, Mapping) and group in self.terminology.concepts_of_concept(
                component.get("code")
            ):
                return component
        return None

    def _parse_lab(self, group: str, entry: RawLab) -> LabValue | Unusable:
        raw = entry.resource
        reference = f"Observation/{raw.get('id')}"
        problem = self._observation_problem(raw)
        if problem is not None:
            return problem
        holder = raw
        concepts = self.terminology.concepts_of_concept(raw.get("code"))
        if group in BP_COMPONENT_GROUPS and group not in concepts:
            holder = self._component(raw, group) or {}
        code = self._group_code(holder.get("code"), group)
        day = entry.when.date().isoformat()
        quantity = holder.get("valueQuantity")
        if isinstance(quantity, Mapping) and quantity.get("value") is not None:
            value, unit = float(quantity["value"]), quantity.get("unit") or quantity.get("code")
            original = f"{quantity['value']} {unit or ''}".strip()
            converted = to_canonical(group, value, quantity.get("unit"), quantity.get("code"), loinc=code)
            if converted is None:
                return Unusable(reference, f"{group} on {day} in unit {unit or '(none)'!r} could not be used")
            return LabValue(
                raw.get("id", ""), code, entry.when, converted[0], converted[1], original=original
            )
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
        answer = self._answer(holder, group)
        if answer is None:
            return Unusable(reference, f"{group} on {day} has no usable value")
        return LabValue(raw.get("id", ""), code, entry.when, None, None, answer=answer, original=answer)

    @staticmethod
    def _breastfeeding_words(concept: Mapping) -> str | None:
        """A breastfeeding answer in words (its text or a coding's display): "Yes", "Breastfeeding"..."""
        texts = [concept.get("text")] + [
            c.get("display") for c in concept.get("coding") or () if isinstance(c, Mapping)
        ]
        for text in (t for t in texts if isinstance(t, str) and t.strip()):
            if BREASTFEEDING_NO_TEXT.search(text):
                return "negative"
            if BREASTFEEDING_YES_TEXT.search(text):
                return "positive"
        return None

    def _group_code(self, concept: Any, group: str) -> str:
        for coding in (concept or {}).get("coding") or ():
            if isinstance(coding, Mapping) and self.terminology.contains(
                group, str(coding.get("system")), str(coding.get("code"))
            ):
                return str(coding["code"])
        return ""

    def _answer(self, holder: Mapping, group: str = "") -> str | None:
        """A qualitative result: "positive", "negative", "pregnancy-ended", or the code of a coded answer.

        Yes/no answer codes (LOINC LA33-6 / LA32-8, SNOMED 373066001 / 373067005) read as positive/negative;
        a pregnancy outcome given as an answer (a delivery code) reads as "pregnancy-ended".
        """
        concept = holder.get("valueCodeableConcept")
        breastfeeding = group == "breastfeeding-status"
        if isinstance(concept, Mapping):
            concepts = self.terminology.concepts_of_concept(concept)
            if concepts & {"qualitative-positive", "yes-answer"}:
                return "positive"
            if concepts & {"qualitative-negative", "no-answer"}:
                return "negative"
            if breastfeeding and "lactation" in concepts:  # answered with a lactation finding
                return "positive"
            if group == "pregnancy-status" and "pregnancy-outcome" in concepts:
                return "pregnancy-ended"
            said = self._breastfeeding_words(concept) if breastfeeding else None
            code = _code(concept)
            if said or code:
                return said or code
        if breastfeeding and isinstance(holder.get("valueString"), str):
            said = self._breastfeeding_words({"text": holder["valueString"]})
            if said:
                return said
        text = holder.get("valueString") or (holder.get("valueCodeableConcept") or {}).get("text")
        if isinstance(text, str):
            if NEGATIVE_TEXT.match(text):
                return "negative"
            if POSITIVE_TEXT.match(text):
                return "positive"
        if isinstance(holder.get("valueBoolean"), bool):
            return "positive" if holder["valueBoolean"] else "negative"
        interpretations = {_code(i) for i in holder.get("interpretation") or () if isinstance(i, Mapping)}
        if interpretations & POSITIVE_INTERPRETATION:
            return "positive"
        if interpretations & NEGATIVE_INTERPRETATION:
            return "negative"
        return None


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
    resolve: Resolver | None = None,
    unavailable: Iterable[str] = (),
) -> PatientRecord:
    builder = RecordBuilder(terminology, now)
    return PatientRecord(
        now=now,
        patient=builder.patient(patient),
        conditions=tuple(builder.conditions(conditions)),
        medications=tuple(
            builder.medications(medications, drafts, set(trigger_ids), resolve or (lambda r: None))
        ),
        allergies=tuple(builder.allergies(allergies)),
        labs=builder.lab_series(observations),
        skipped=tuple(builder.skipped),
        unavailable=frozenset(unavailable),
    )
