"""The patient record the rules read: one typed, read-only view built from FHIR resources.

Rules never see FHIR JSON. They see conditions, medications and allergies tagged with the value-set names
their codes belong to (``"lupus-nephritis"``, ``"mycophenolate"``...), and lab series in canonical units.

Observations are the bulk of a record (a long-treated patient has thousands), so a series keeps its raw
entries sorted newest first and validates and converts an entry only when a rule reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import NamedTuple

from cds_service.drug_forms import ORAL_FORMULATIONS

ACTIVE_MEDICATION_STATUSES = frozenset({"active", "on-hold", "draft"})


@dataclass(frozen=True)
class Period:
    """A closed time span; ``end`` is the request time for an open-ended active order."""

    start: datetime
    end: datetime

    def overlaps(self, since: datetime, until: datetime) -> bool:
        return self.start <= until and self.end >= since

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / 86400


@dataclass(frozen=True)
class Patient:
    id: str
    gender: str | None = None
    birth_date: date | None = None

    def age_on(self, day: date) -> int | None:
        if self.birth_date is None:
            return None
        b = self.birth_date
        return day.year - b.year - ((day.month, day.day) < (b.month, b.day))


@dataclass(frozen=True)
class Condition:
    id: str
    concepts: frozenset[str]
    name: str
    active: bool
    """clinicalStatus active/recurrence/relapse or absent; verificationStatus not refuted/entered-in-error."""
    onset: datetime | None = None
    recorded: datetime | None = None
    clinical_status: str | None = None
    """The clinicalStatus code as recorded (``resolved``, ``inactive``...); None when absent."""
    confirmed: bool = True
    """False when verificationStatus is refuted or entered-in-error: such a condition means nothing."""
    abated: datetime | None = None
    last_updated: datetime | None = None
    """``meta.lastUpdated``: when a resolved condition without an abatement date was last changed."""

    @property
    def reference(self) -> str:
        return f"Condition/{self.id}"

    @property
    def resolved(self) -> bool:
        """Confirmed, but no longer active (clinicalStatus inactive, remission or resolved)."""
        return self.confirmed and not self.active

    @property
    def dated(self) -> datetime | None:
        """When the condition began, as best the record says (onset, else recorded, else last update)."""
        return self.onset or self.recorded or self.last_updated


@dataclass(frozen=True)
class Procedure:
    """A performed Procedure the rules read: a delivery, which ends a pregnancy (rules.md v3)."""

    id: str
    concepts: frozenset[str]
    name: str
    performed: datetime
    """``performedDateTime``, else the end (else the start) of ``performedPeriod``."""

    @property
    def reference(self) -> str:
        return f"Procedure/{self.id}"


@dataclass(frozen=True)
class Immunization:
    """A vaccine given (``Immunization``, status ``completed``) that the rules read: a live vaccine (N19)."""

    id: str
    concepts: frozenset[str]
    name: str
    occurred: datetime
    """``occurrenceDateTime``, else a date in ``occurrenceString``, else ``recorded``."""
    recognised_by_name: frozenset[str] = frozenset()
    """Classes it belongs to only by a name in its ``vaccineCode`` text (``name`` then says so)."""

    @property
    def reference(self) -> str:
        return f"Immunization/{self.id}"


@dataclass(frozen=True)
class Medication:
    """A MedicationRequest, stored or drafted in this ordering session."""

    id: str
    concepts: frozenset[str]
    name: str
    status: str
    authored: datetime | None
    exposure: Period | None
    """When the patient was exposed, per rules.md; None for non-exposure statuses (draft, cancelled)."""
    is_draft: bool = False
    """True for orders in ``context.draftOrders``."""
    is_trigger: bool = False
    """True for the tacrolimus order(s) this request is about."""
    prior_prescription: str | None = None
    """Id (without type) of the order this one renews or changes, from ``priorPrescription``."""
    recognised_by_name: frozenset[str] = frozenset()
    """Drug classes this order belongs to only because its text names them (rules.md § Drug recognition);
    ``name`` then says so, so every card citing the drug shows it, except for the order the answer is about,
    which every card names once instead (``rules.orders.order_notes``)."""
    formulation: str | None = None
    """A tacrolimus order's formulation class (``drug_forms.FORMULATIONS``: immediate-release,
    extended-release tablet, extended-release capsule, intravenous, unknown), from its product code, else
    its name, text and form (rules.md v3 § Tacrolimus formulation); None for other drugs. The classes are
    not interchangeable mg for mg (N12, N17, N18)."""
    daily_dose_mg: float | None = None
    """A tacrolimus order's total daily dose in mg from ``dosageInstruction`` (``dosage.daily_dose_mg``); None
    when it cannot be worked out (the card then says so and compares no dose)."""
    administrations_per_day: float | None = None
    """How many times a day a tacrolimus order gives a dose (``dosage.administrations_per_day``); None when
    unknown."""
    product: str = ""
    """What the order names as its product, canonically (its codes, else its name): with ``dosing``, tells two
    identical drafts (a duplicate entry) from one regimen ordered in several drafts."""
    dosing: str = ""
    """Its dose and timing, canonically (``dosage.dosing_key``)."""
    unresolved_reference: str = ""
    """A ``medicationReference`` that could not be resolved (the order was recognised by its text): the card
    names it."""
    resource_type: str = "MedicationRequest"
    """``ServiceRequest`` for a vaccine drafted as a service order (rules.md v3 N19): its delete names it."""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_MEDICATION_STATUSES

    @property
    def oral(self) -> bool:
        """An oral tacrolimus formulation (immediate or extended release)."""
        return self.formulation in ORAL_FORMULATIONS

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


@dataclass(frozen=True)
class Allergy:
    id: str
    concepts: frozenset[str]
    name: str
    active: bool
    recognised_by_name: frozenset[str] = frozenset()
    """Drug classes this allergy belongs to only by a name in its text (``name`` then says so)."""

    @property
    def reference(self) -> str:
        return f"AllergyIntolerance/{self.id}"


@dataclass(frozen=True)
class LabValue:
    """One usable result, converted to the group's canonical unit."""

    resource_id: str
    code: str
    """The LOINC code that put it in its group (tells fasting from random glucose)."""
    when: datetime
    value: float | None
    """Numeric value in ``unit``; None for a coded/qualitative result."""
    unit: str | None
    answer: str | None = None
    """For qualitative results (``cds_service.reading``): ``"positive"``/``"negative"``; for a pregnancy
    status ``"pregnant"``/``"not-pregnant"``/``"unknown"``/``"pregnancy-ended"``; an ISO date for a date."""
    original: str = ""
    """The value as recorded, e.g. ``"97 umol/L"``, ``"<5 IU/L"``, ``"Reactive"``, for the card."""
    flag_only: bool = False
    """The answer is known only from an interpretation flag A/N: it never starts or ends a pregnancy."""
    comparator: str | None = None
    """``<``, ``<=``, ``>=`` or ``>`` when the lab reported a bound ("<5 IU/L"), not a value."""

    @property
    def reference(self) -> str:
        return f"Observation/{self.resource_id}"

    def shown(self) -> str:
        """How a card shows it: canonical value with the original when it was converted."""
        if self.value is None:
            return self.answer or self.original
        text = f"{self.value:.3g} {self.unit}" if self.unit else f"{self.value:.3g}"
        text = (self.comparator or "") + text
        if self.original and self.original.replace(" ", "") != text.replace(" ", ""):
            text += f" (recorded {self.original})"
        return text


@dataclass(frozen=True)
class Unusable:
    """A resource the record could not use, and why (bad JSON shape, unknown unit, no value...)."""

    reference: str
    reason: str


class RawLab(NamedTuple):
    """An Observation entry before validation: just what is needed to sort and filter it. A named tuple,
    as one is made per result (10,000 for a large record) and a tuple is made much faster than a dataclass."""

    when: datetime
    resource: Mapping


class LabSeries:
    """Results of one lab group, newest first; each is validated and converted on first read.

    ``parse`` turns a raw entry into a LabValue or an Unusable. Reads are memoised, so a value a rule
    skipped as unusable is reported once, in ``unusable``.
    """

    def __init__(
        self, group: str, raw: Iterable[RawLab], parse: Callable[[str, RawLab], LabValue | Unusable]
    ):
        self.group = group
        self._raw = sorted(raw, key=lambda r: r.when, reverse=True)
        self._parse = parse
        self._parsed: dict[int, LabValue | Unusable] = {}

    def __len__(self) -> int:
        return len(self._raw)

    def _entry(self, i: int) -> LabValue | Unusable:
        if i not in self._parsed:
            self._parsed[i] = self._parse(self.group, self._raw[i])
        return self._parsed[i]

    def _iter(self, since: datetime | None, until: datetime | None) -> Iterator[LabValue]:
        for i, raw in enumerate(self._raw):
            if until is not None and raw.when > until:
                continue
            if since is not None and raw.when < since:
                break
            entry = self._entry(i)
            if isinstance(entry, LabValue):
                yield entry

    def values(self, since: datetime | None = None, until: datetime | None = None) -> list[LabValue]:
        """Usable values in [since, until], newest first."""
        return list(self._iter(since, until))

    def newest(self, since: datetime | None = None, until: datetime | None = None) -> LabValue | None:
        """The newest usable value in [since, until] ("the newest value wins")."""
        return next(self._iter(since, until), None)

    def unusable_between(
        self, since: datetime | None = None, until: datetime | None = None, newer_than: datetime | None = None
    ) -> list[tuple[datetime, Unusable]]:
        """Unusable entries in [since, until] and after ``newer_than``, newest first, with their dates."""
        found = []
        for i, raw in enumerate(self._raw):
            if until is not None and raw.when > until:
                continue
            if (since is not None and raw.when < since) or (
                newer_than is not None and raw.when <= newer_than
            ):
                break
            entry = self._entry(i)
            if isinstance(entry, Unusable):
                found.append((raw.when, entry))
        return found

    @property
    def unusable(self) -> list[Unusable]:
        """Entries read so far that could not be used."""
        return [e for e in self._parsed.values() if isinstance(e, Unusable)]


EMPTY_SERIES = LabSeries("", (), lambda g, r: Unusable("", ""))


@dataclass
class PatientRecord:
    """Everything the rules know about the patient at request time ``now``."""

    now: datetime
    patient: Patient | None
    conditions: tuple[Condition, ...] = ()
    medications: tuple[Medication, ...] = ()
    allergies: tuple[Allergy, ...] = ()
    labs: Mapping[str, LabSeries] = field(default_factory=dict)
    procedures: tuple[Procedure, ...] = ()
    immunizations: tuple[Immunization, ...] = ()
    """Vaccines given (status ``completed``) that belong to a value set the rules read, newest first."""
    skipped: tuple[Unusable, ...] = ()
    """Resources that were malformed and left out."""
    unavailable: frozenset[str] = frozenset()
    """Resource types that could not be obtained at all (e.g. ``"AllergyIntolerance"``): rules must say so."""

    def lab(self, group: str) -> LabSeries:
        return self.labs.get(group, EMPTY_SERIES)

    def active_conditions(self, concept: str) -> list[Condition]:
        return [c for c in self.conditions if c.active and concept in c.concepts]

    def confirmed_conditions(self, concept: str) -> list[Condition]:
        """Conditions in the concept, active or not, unless refuted or entered in error."""
        return [c for c in self.conditions if c.confirmed and concept in c.concepts]

    def has_condition(self, concept: str) -> bool:
        return any(c.active and concept in c.concepts for c in self.conditions)

    def active_medications(self, concept: str) -> list[Medication]:
        """Active, on-hold or draft orders in the concept; the triggering order is included."""
        return [m for m in self.medications if m.active and concept in m.concepts]

    def exposures(self, concept: str) -> list[Medication]:
        """Orders in the concept with an exposure period, oldest first; never the triggering order."""
        found = [
            (m.exposure.start, index, m)
            for index, m in enumerate(self.medications)
            if concept in m.concepts and m.exposure is not None and not m.is_trigger
        ]
        return [m for _, _, m in sorted(found)]

    def active_allergies(self, concept: str) -> list[Allergy]:
        return [a for a in self.allergies if a.active and concept in a.concepts]

    @property
    def unusable(self) -> list[Unusable]:
        """Malformed resources plus lab values the rules read but could not use."""
        found = list(self.skipped)
        for series in self.labs.values():
            found.extend(series.unusable)
        return found
