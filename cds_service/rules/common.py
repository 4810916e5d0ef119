"""Helpers every rule family shares: time windows, exposure, pregnancy and lactation status, wording.

Windows are counted in calendar days so that "within 30 days" includes a result dated exactly 30 days ago,
whatever its time of day; months are calendar months counted back from ``now``.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from cds_service.record import Condition, LabSeries, LabValue, Medication, PatientRecord
from cds_service.rules.model import Evidence, Finding, Quiet, RuleInput, Suggestion

TOPIC_BY_FAMILY = {"P": "pregnancy", "S": "salvage-context", "N": "nephrotoxicity-monitoring"}

UNIT_DISPLAY = {"mL/min/{1.73_m2}": "mL/min/1.73 m²", "mm[Hg]": "mmHg"}

LAB_WORDS = {
    "creatinine": "creatinine",
    "egfr": "eGFR",
    "upcr": "UPCR",
    "tacrolimus-level": "tacrolimus level",
    "potassium": "potassium",
    "magnesium": "magnesium",
    "glucose": "glucose",
    "glucose-fasting": "fasting glucose",
    "hba1c": "HbA1c",
    "systolic-bp": "systolic blood pressure",
    "diastolic-bp": "diastolic blood pressure",
    "hcg-qualitative": "hCG (qualitative)",
    "hcg-quantitative": "hCG (quantitative)",
    "pregnancy-status": "pregnancy status",
    "edd": "estimated delivery date",
    "breastfeeding-status": "breastfeeding status",
    "igg": "IgG",
    "hbsag": "HBsAg",
}

RESOURCE_WORDS = {
    "Patient": "patient demographics",
    "Condition": "the problem list (Conditions)",
    "MedicationRequest": "medication orders",
    "Observation": "lab results and vital signs (Observations)",
    "AllergyIntolerance": "allergies",
}

# Pregnancy-status (82810-3) and breastfeeding-status (63895-7) answers. The record builder gives a coded
# answer as its SNOMED code, or "positive"/"negative" when the code is in a qualitative answer set.
PREGNANT_ANSWERS = frozenset({"77386006", "72892002", "255409004", "positive"})
NOT_PREGNANT_ANSWERS = frozenset({"60001007", "negative"})
LACTATING_ANSWERS = frozenset({"866041003", "169750002", "1260078007", "225604004", "positive"})
ANSWER_WORDS = {
    "77386006": "pregnant",
    "72892002": "normal pregnancy",
    "255409004": "pregnant woman",
    "60001007": "not pregnant",
    "261665006": "unknown",
    "positive": "positive",
    "negative": "negative",
}

PREGNANCY_NEEDS: dict[str, tuple[str, ...]] = {
    "Condition": ("pregnancy",),
    "Observation": ("pregnancy-status", "edd", "hcg-qualitative", "hcg-quantitative"),
}


# --- findings -----------------------------------------------------------------------------------------------
def finding(
    rule_id: str,
    indicator: str,
    summary: str,
    detail: str,
    citations: Sequence[str],
    evidence: Iterable[Evidence] = (),
    missing: Iterable[str] = (),
    suggestions: Iterable[Suggestion] = (),
) -> Finding:
    """A Finding with its topic taken from the id's family letter and duplicates dropped from lists."""
    return Finding(
        id=rule_id,
        topic=TOPIC_BY_FAMILY[rule_id[0]],
        indicator=indicator,
        summary=summary,
        detail=detail,
        citations=tuple(citations),
        evidence=unique(evidence),
        missing=unique(missing),
        suggestions=tuple(suggestions),
    )


def quiet(rule_id: str, reason: str, missing: Iterable[str] = ()) -> Quiet:
    """A Quiet whose reason also names any data that was missing or unusable."""
    gaps = unique(missing)
    return Quiet(rule_id, reason + (f" ({'; '.join(gaps)})" if gaps else ""))


def unique(items: Iterable[Any]) -> tuple:
    return tuple(dict.fromkeys(items))


def threshold(inp: RuleInput, key: str) -> Any:
    return inp.thresholds[key]


# --- time ---------------------------------------------------------------------------------------------------
def day_start(day: date, like: datetime) -> datetime:
    return datetime.combine(day, time.min, tzinfo=like.tzinfo)


def day_end(day: date, like: datetime) -> datetime:
    return datetime.combine(day, time.max, tzinfo=like.tzinfo)


def window_start(now: datetime, days: float) -> datetime:
    """Start of the calendar day ``days`` before now: results dated that day are "within ``days`` days"."""
    return day_start((now - timedelta(days=days)).date(), now)


def recent_since(inp: RuleInput) -> datetime:
    return window_start(inp.now, threshold(inp, "recent_lab_days"))


def months_before(day: date, months: int) -> date:
    """The same day of the month ``months`` calendar months earlier (clamped to the month's last day)."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def months_as_days(now: datetime, months: float) -> float:
    """How many days ``months`` calendar months are, counted back from now (6 months before 1 Nov = 184)."""
    if float(months).is_integer():
        return (now.date() - months_before(now.date(), int(months))).days
    return months * 365.25 / 12


def in_months(days: float) -> str:
    return f"{days / (365.25 / 12):.1f} months"


def day(when: datetime | date | None) -> str:
    if when is None:
        return "an unknown date"
    return (when.date() if isinstance(when, datetime) else when).isoformat()


# --- numbers and evidence -----------------------------------------------------------------------------------
def num(value: float | None) -> str:
    """A number as a clinician writes it: 1.6, 38, 148, 0.85 (never 1.6000001 or 1.48e+02)."""
    if value is None:  # never shown as a number: missing is not normal
        return "an unknown value"
    if float(value).is_integer():
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def unit_text(unit: str | None) -> str:
    return UNIT_DISPLAY.get(unit or "", unit or "")


def show(v: LabValue) -> str:
    """Value and unit, and the recorded original when converted: ``1.6 mg/dL (recorded 141 umol/L)``."""
    if v.value is None:
        return ANSWER_WORDS.get(v.answer or "", v.answer or v.original)
    unit = unit_text(v.unit)
    text = f"{num(v.value)}%" if unit == "%" else f"{num(v.value)} {unit}".strip()
    if _was_converted(v):
        text += f" (recorded {v.original})"
    return text


def _was_converted(v: LabValue) -> bool:
    """True when the recorded number differs from the canonical one (141 umol/L shown as 1.6 mg/dL)."""
    if not v.original or v.value is None:
        return False
    try:
        recorded = float(v.original.split()[0])
    except (ValueError, IndexError):
        return v.unit is not None and v.unit.replace(" ", "") not in v.original.replace(" ", "")
    return abs(recorded - v.value) > 1e-9 * max(1.0, abs(v.value))


def on(v: LabValue) -> str:
    return f"{show(v)} on {day(v.when)}"


def percent(fraction: float) -> str:
    """0.38 → ``38%``, 0.195 → ``19.5%`` (one decimal only when it matters)."""
    return f"{fraction * 100:.1f}".removesuffix(".0") + "%"


def lab_evidence(label: str, v: LabValue) -> Evidence:
    return Evidence(label, show(v), v.when, v.reference)


def condition_evidence(c: Condition) -> Evidence:
    return Evidence("Condition", c.name, c.onset or c.recorded, c.reference)


def medication_state(m: Medication) -> str:
    if m.is_draft:
        return "draft order in this session"
    if m.exposure is not None:
        end = "now" if m.active else day(m.exposure.end)
        return f"{m.status}, {day(m.exposure.start)} to {end}"
    return m.status


def medication_evidence(m: Medication) -> Evidence:
    """The order's state carries its own dates (``active, 2026-06-25 to now``); a draft has none."""
    return Evidence(m.name, medication_state(m), None, m.reference)


def names(meds: Sequence[Medication]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words([m.name for m in meds])


def capital(text: str) -> str:
    """First letter upper-case, except in words like eGFR or hCG that start lower-case on purpose."""
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].upper() + text[1:]


def words(items: Sequence[str], last: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {last} " + items[-1]


# --- missing and unusable data ------------------------------------------------------------------------------
def no_recent(group: str, days: float) -> str:
    return f"no {LAB_WORDS.get(group, group)} in the last {num(days)} days"


def unavailable(record: PatientRecord, *resource_types: str) -> list[str]:
    """Words for resource types the service could not obtain (so their absence means nothing)."""
    return [
        f"{RESOURCE_WORDS.get(t, t)} could not be retrieved"
        for t in resource_types
        if t in record.unavailable
    ]


def unusable_in(
    series: LabSeries,
    since: datetime | None,
    newer_than: LabValue | None = None,
    until: datetime | None = None,
) -> list[str]:
    """Why results in [since, until], newer than the value a rule used, could not be used."""
    newer = newer_than.when if newer_than is not None else None
    return [entry.reason for _, entry in series.unusable_between(since, until, newer_than=newer)]


def number(v: LabValue) -> float:
    """The number of a result already known to be numeric (from ``newest_number`` or a ``value`` filter)."""
    if v.value is None:
        raise ValueError(f"{v.reference} has no number")
    return v.value


def newest_number(
    series: LabSeries, since: datetime | None = None, until: datetime | None = None
) -> tuple[LabValue | None, list[str]]:
    """The newest numeric result in [since, until], and the newer results that could not be used, in words."""
    gaps: list[str] = []
    value = series.newest(since=since, until=until)
    while value is not None and value.value is None:
        gaps.append(
            f"{LAB_WORDS.get(series.group, series.group)} on {day(value.when)} has no number "
            f"({show(value)}) and was not used"
        )
        value = series.newest(since=since, until=value.when - timedelta(microseconds=1))
    return value, [*unusable_in(series, since, value, until), *gaps]


def newest_recent(inp: RuleInput, group: str) -> tuple[LabValue | None, list[str]]:
    """The newest numeric result of ``group`` within the recent window, and what was missing or unusable."""
    record = inp.record
    value, gaps = newest_number(record.lab(group), since=recent_since(inp))
    if value is None:
        days = threshold(inp, "recent_lab_days")
        gaps = [no_recent(group, days), *gaps, *unavailable(record, "Observation")]
    return value, gaps


# --- exposure -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exposure:
    """The union of a drug's exposure periods, in calendar days."""

    orders: tuple[Medication, ...]
    spans: tuple[tuple[date, date], ...]

    @property
    def any(self) -> bool:
        return bool(self.orders)

    @property
    def start(self) -> date:
        """The first day of exposure; only asked once ``any`` is true (every order has a period)."""
        if not self.spans:
            raise ValueError("an exposure without orders has no start")
        return self.spans[0][0]

    @property
    def days(self) -> int:
        return sum((end - start).days for start, end in self.spans)

    def covers(self, when: datetime) -> bool:
        return any(start <= when.date() <= end for start, end in self.spans)

    def evidence(self) -> list[Evidence]:
        return [medication_evidence(m) for m in self.orders]


def exposure(record: PatientRecord, *concepts: str) -> Exposure:
    """Union of the exposure periods of every stored order in the concepts (never the triggering order)."""
    orders = {m.id: m for concept in concepts for m in record.exposures(concept)}
    dated = sorted(
        ((m.exposure, m) for m in orders.values() if m.exposure is not None),
        key=lambda t: (t[0].start, t[1].id),
    )
    ordered = [m for _, m in dated]
    spans: list[list[date]] = []
    for period, _ in dated:
        start, end = period.start.date(), period.end.date()
        if spans and start <= spans[-1][1] + timedelta(days=1):
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return Exposure(tuple(ordered), tuple((s, e) for s, e in spans))


def active_orders(record: PatientRecord, *concepts: str) -> list[Medication]:
    """Active, on-hold or draft orders in any of the concepts, triggering orders excluded, in record order."""
    return [
        m
        for m in record.medications
        if m.active and not m.is_trigger and any(c in m.concepts for c in concepts)
    ]


# --- pregnancy and lactation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """Whether pregnancy (or lactation) is established, what shows it, and what was checked when it is not.

    ``present=False`` means "not established", never "not pregnant".
    """

    present: bool
    evidence: tuple[Evidence, ...]
    said: tuple[str, ...]
    """The evidence in words, for the card's detail: ``"positive hCG on 2026-10-25 (1200 IU/L)"``."""
    checked: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def text(self) -> str:
        return words(self.said)

    def why_not(self, what: str) -> str:
        return f"{what} is not documented: " + "; ".join(self.checked)


def _hcg_result(v: LabValue, positive_above: float) -> str | None:
    if v.value is not None:
        return "positive" if v.value > positive_above else "negative"
    if v.answer in ("positive", "negative"):
        return v.answer
    return None


def _edd(v: LabValue) -> date | None:
    for text in (v.answer, v.original):
        try:
            return date.fromisoformat((text or "")[:10])
        except ValueError:
            continue
    return None


def _condition_phrase(c: Condition) -> str:
    since = c.onset or c.recorded
    return f"{c.name} on the problem list" + (f" since {day(since)}" if since else "")


def pregnancy_status(record: PatientRecord, thresholds: Mapping[str, Any]) -> Status:
    """Pregnant per interpretation 4: condition, pregnancy status, future EDD or positive hCG."""
    now = record.now
    evidence: list[Evidence] = []
    said: list[str] = []
    checked: list[str] = []
    missing: list[str] = unavailable(record, "Condition", "Observation")

    conditions = record.active_conditions("pregnancy")
    evidence += [condition_evidence(c) for c in conditions]
    said += [_condition_phrase(c) for c in conditions]
    if not conditions:
        checked.append("no active pregnancy condition")

    status_days = thresholds["pregnancy_status_days"]
    since = window_start(now, status_days)
    series = record.lab("pregnancy-status")
    decisive = next(
        (v for v in series.values(since=since) if v.answer in PREGNANT_ANSWERS | NOT_PREGNANT_ANSWERS), None
    )
    missing += unusable_in(series, since, decisive)
    if decisive is not None and decisive.answer in PREGNANT_ANSWERS:
        evidence.append(lab_evidence("Pregnancy status", decisive))
        said.append(f"pregnancy status '{show(decisive)}' on {day(decisive.when)}")
    elif decisive is not None:
        checked.append(f"pregnancy status on {day(decisive.when)} was '{show(decisive)}'")
    else:
        checked.append(f"no pregnancy status in the last {num(status_days)} days")

    edd_series = record.lab("edd")
    edd_value = edd_series.newest()
    missing += unusable_in(edd_series, None, edd_value)
    edd = _edd(edd_value) if edd_value else None
    if edd_value is not None and edd is None:
        missing.append(f"estimated delivery date recorded on {day(edd_value.when)} could not be read")
    if edd is not None and edd_value is not None and edd >= now.date():
        evidence.append(
            Evidence("Estimated delivery date", edd.isoformat(), edd_value.when, edd_value.reference)
        )
        said.append(f"estimated delivery date {edd.isoformat()}")
    elif edd is not None:
        checked.append(f"the newest estimated delivery date {edd.isoformat()} has passed")
    else:
        checked.append("no estimated delivery date")

    hcg_days = thresholds["hcg_days"]
    cutoff = thresholds["hcg_positive_iu_per_l"]
    since = window_start(now, hcg_days)
    results = []
    for group in ("hcg-qualitative", "hcg-quantitative"):
        hcg_series = record.lab(group)
        results += [(v, _hcg_result(v, cutoff)) for v in hcg_series.values(since=since)]
        missing += unusable_in(hcg_series, since)
    # Newest first; on a tie a positive result wins (the safer reading).
    results = [r for r in results if r[1] is not None]
    results.sort(key=lambda r: (r[0].when, r[1] == "positive", r[0].resource_id), reverse=True)
    if results and results[0][1] == "positive":
        newest = results[0][0]
        evidence.append(lab_evidence("hCG", newest))
        said.append(f"positive hCG on {day(newest.when)} ({show(newest)})")
    elif results:
        checked.append(f"hCG on {day(results[0][0].when)} was negative ({show(results[0][0])})")
    else:
        checked.append(f"no hCG in the last {num(hcg_days)} days")

    return Status(bool(evidence), tuple(evidence), tuple(said), tuple(checked), unique(missing))


def lactation_status(record: PatientRecord, thresholds: Mapping[str, Any]) -> Status:
    """Lactating per interpretation 5: lactation condition, or newest breastfeeding status answering yes."""
    evidence: list[Evidence] = []
    said: list[str] = []
    checked: list[str] = []
    missing: list[str] = unavailable(record, "Condition", "Observation")

    conditions = record.active_conditions("lactation")
    evidence += [condition_evidence(c) for c in conditions]
    said += [_condition_phrase(c) for c in conditions]
    if not conditions:
        checked.append("no active lactation condition")

    status_days = thresholds["pregnancy_status_days"]
    since = window_start(record.now, status_days)
    series = record.lab("breastfeeding-status")
    newest = series.newest(since=since)
    missing += unusable_in(series, since, newest)
    if newest is not None and newest.answer in LACTATING_ANSWERS:
        evidence.append(lab_evidence("Breastfeeding status", newest))
        said.append(f"breastfeeding status '{show(newest)}' on {day(newest.when)}")
    elif newest is not None:
        checked.append(f"breastfeeding status on {day(newest.when)} was '{show(newest)}'")
    else:
        checked.append(f"no breastfeeding status in the last {num(status_days)} days")
    return Status(bool(evidence), tuple(evidence), tuple(said), tuple(checked), unique(missing))


@dataclass(frozen=True)
class BloodPressure:
    """One reading: the systolic and diastolic results dated at the same moment (either may be absent)."""

    systolic: LabValue | None
    diastolic: LabValue | None

    @property
    def when(self) -> datetime:
        return max(v.when for v in (self.systolic, self.diastolic) if v is not None)

    @property
    def sbp(self) -> float | None:
        return self.systolic.value if self.systolic else None

    @property
    def dbp(self) -> float | None:
        return self.diastolic.value if self.diastolic else None

    def text(self) -> str:
        if self.sbp is not None and self.dbp is not None:
            return f"{num(self.sbp)}/{num(self.dbp)} mmHg"
        if self.sbp is not None:
            return f"systolic {num(self.sbp)} mmHg"
        return f"diastolic {num(self.dbp)} mmHg"

    def on(self) -> str:
        return f"{self.text()} on {day(self.when)}"

    def evidence(self) -> list[Evidence]:
        found = []
        if self.systolic:
            found.append(lab_evidence("Systolic blood pressure", self.systolic))
        if self.diastolic:
            found.append(lab_evidence("Diastolic blood pressure", self.diastolic))
        return found


def bp_readings(record: PatientRecord, since: datetime) -> tuple[list[BloodPressure], list[str]]:
    """Blood-pressure readings dated on or after ``since``, newest first, and the unusable ones in words."""
    by_time: dict[datetime, dict[str, LabValue]] = {}
    gaps: list[str] = []
    for group in ("systolic-bp", "diastolic-bp"):
        series = record.lab(group)
        for v in series.values(since=since):
            if v.value is not None:
                by_time.setdefault(v.when, {}).setdefault(group, v)
        gaps += unusable_in(series, since)
    readings = [
        BloodPressure(parts.get("systolic-bp"), parts.get("diastolic-bp"))
        for _, parts in sorted(by_time.items(), key=lambda item: item[0], reverse=True)
    ]
    return readings, gaps


def has_lupus_nephritis(record: PatientRecord) -> bool:
    return record.has_condition("lupus-nephritis") or record.has_condition("lupus-nephritis-class-v")


def merge_needs(*needs: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Union of NEEDS dicts, keeping first-seen order so the prefetch templates are stable."""
    merged: dict[str, dict[str, None]] = {}
    for need in needs:
        for resource_type, sets in need.items():
            merged.setdefault(resource_type, {}).update(dict.fromkeys(sets))
    return {resource_type: tuple(sets) for resource_type, sets in merged.items()}
