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

from cds_service.reading import hcg_meaning
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
    "anti-hbc": "anti-HBc",
    "body-height": "body height",
}

RESOURCE_WORDS = {
    "Patient": "patient demographics",
    "Condition": "the problem list (Conditions)",
    "MedicationRequest": "medication orders",
    "Observation": "lab results and vital signs (Observations)",
    "AllergyIntolerance": "allergies",
    "Procedure": "procedures (Procedure)",
    "Immunization": "vaccines given (Immunization)",
}

# Pregnancy-status (82810-3) and breastfeeding-status (63895-7) answers, as ``cds_service.reading`` gives them
# whatever the coding (a SNOMED or LOINC answer, a yes/no, words).
PREGNANT_ANSWERS = frozenset({"pregnant"})
NOT_PREGNANT_ANSWERS = frozenset({"not-pregnant", "pregnancy-ended"})
LACTATING_ANSWERS = frozenset({"positive"})
ANSWER_WORDS = {
    "pregnant": "pregnant",
    "not-pregnant": "not pregnant",
    "pregnancy-ended": "pregnancy ended",
    "unknown": "unknown",
    "positive": "positive",
    "negative": "negative",
}
HCG_REPEAT = "repeat in 48–72 hours"

PREGNANCY_NEEDS: dict[str, tuple[str, ...]] = {
    "Condition": ("pregnancy", "pregnancy-outcome"),
    "Observation": ("pregnancy-status", "edd", "hcg-qualitative", "hcg-quantitative"),
    "Procedure": ("delivery-procedures",),
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
    """Value and unit, and the recorded original when converted: ``1.6 mg/dL (recorded 141 umol/L)``; a
    coded answer in words, with how it was recorded when that differs (``positive (recorded Reactive)``)."""
    if v.value is None:
        said = ANSWER_WORDS.get(v.answer or "", v.answer or v.original)
        if v.flag_only:
            return f"{said} (only flagged {v.original.removeprefix('interpretation ')})"
        recorded = v.original.strip()
        if recorded and recorded.lower() not in (said.lower(), (v.answer or "").lower()):
            return f"{said} (recorded {recorded!r})"
        return said
    unit = unit_text(v.unit)
    text = f"{num(v.value)}%" if unit == "%" else f"{num(v.value)} {unit}".strip()
    text = (v.comparator or "") + text
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
    def start(self) -> date | None:
        return self.spans[0][0] if self.spans else None

    @property
    def first_day(self) -> date:
        """``start`` where ``any`` is already known to be true (every order of an exposure has a period)."""
        if not self.spans:
            raise ValueError("an exposure without orders has no first day")
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
    """The evidence in words, with its date: ``"positive hCG on 2026-10-25 (1200 IU/L)"``; an hCG older than
    ``hcg_unconfirmed_days`` that nothing later confirms says so."""
    checked: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def text(self) -> str:
        return words(self.said)

    def why_not(self, what: str) -> str:
        return f"{what} is not documented: " + "; ".join(self.checked)


@dataclass(frozen=True)
class _Sign:
    """One datum that says "pregnant"; ``when`` None (an undated active Condition) cannot be ended by time."""

    kind: str
    """``condition``, ``status``, ``edd`` or ``hcg``."""
    when: datetime | None
    said: str
    evidence: Evidence


@dataclass(frozen=True)
class _End:
    """One datum that says the pregnancy is over (delivery, outcome, "not pregnant", negative hCG...)."""

    when: datetime
    said: str


def hcg_result(v: LabValue, thresholds: Mapping[str, Any]) -> str | None:
    """``positive``, ``negative``, ``indeterminate`` or None (a flag only) for one hCG result (rules.md v3:
    only POS/DET start and only NEG/ND end a pregnancy; 5–25 IU/L is indeterminate; A/N flags are neither)."""
    if v.value is not None:
        band = thresholds.get("hcg_indeterminate_iu_per_l", DEFAULT_HCG_BAND)
        return hcg_meaning(v.value, v.comparator, (band[0], band[1]), thresholds["hcg_positive_iu_per_l"])
    if v.answer in ("positive", "negative") and not v.flag_only:
        return v.answer
    return None


DEFAULT_HCG_BAND = (5, 25)


def flag_only_hcg(v: LabValue) -> str:
    """An hCG known only from an A/N flag: named, as it neither starts nor ends a pregnancy (E5)."""
    return f"hCG on {day(v.when)} is {show(v)}: neither a positive nor a negative test"


def hcg_indeterminate(v: LabValue) -> str:
    return f"hCG {show(v)} on {day(v.when)} is indeterminate: {HCG_REPEAT}"


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


def _pregnancy_signs_and_ends(
    record: PatientRecord, thresholds: Mapping[str, Any]
) -> tuple[list[_Sign], list[_End], list[str], list[str]]:
    """Every sign of pregnancy within its look-back, every event that ends one, what was looked for, gaps."""
    now = record.now
    signs: list[_Sign] = []
    ends: list[_End] = []
    checked: list[str] = []
    missing: list[str] = unavailable(record, "Condition", "Observation")

    # Conditions: an active pregnancy is a sign; a resolved one ends at its abatement, else its last update;
    # a delivery or pregnancy outcome ends what came before it.
    for c in record.active_conditions("pregnancy"):
        signs.append(_Sign("condition", c.dated, _condition_phrase(c), condition_evidence(c)))
    if not signs:
        checked.append("no active pregnancy condition")
    for c in record.confirmed_conditions("pregnancy"):
        if c.resolved:
            ended = c.abated or c.last_updated or c.recorded or c.onset
            if ended is not None:
                how = "abated" if c.abated else "last updated"
                ends.append(_End(ended, f"{c.name} {c.clinical_status or 'inactive'} ({how} {day(ended)})"))
    for c in record.confirmed_conditions("pregnancy-outcome"):
        if c.dated is not None:
            ends.append(_End(c.dated, f"{c.name} on {day(c.dated)}"))
    for p in record.procedures:  # a delivery Procedure ends a pregnancy as the outcome Condition does (v3)
        if "delivery-procedures" in p.concepts:
            ends.append(_End(p.performed, f"{p.name} (procedure) on {day(p.performed)}"))

    # Pregnancy status (82810-3): "pregnant" within the look-back is a sign; "not pregnant" or an outcome
    # answer at any time ends what came before it; "unknown" neither starts nor ends.
    status_days = thresholds["pregnancy_status_days"]
    status_since = window_start(now, status_days)
    series = record.lab("pregnancy-status")
    answers = series.values()
    missing += unusable_in(series, None)
    for v in answers:
        if v.flag_only:  # an A/N flag alone neither starts nor ends a pregnancy (rules.md v3)
            continue
        if v.answer in PREGNANT_ANSWERS and v.when >= status_since:
            said = f"pregnancy status '{show(v)}' on {day(v.when)}"
            signs.append(_Sign("status", v.when, said, lab_evidence("Pregnancy status", v)))
        elif v.answer in NOT_PREGNANT_ANSWERS:
            ends.append(_End(v.when, f"pregnancy status '{show(v)}' on {day(v.when)}"))
    if not any(s.kind == "status" for s in signs):
        checked.append(f"no 'pregnant' pregnancy status in the last {num(status_days)} days")

    # Estimated delivery date (11778-8), the newest recorded: today or later is a sign; more than
    # ``edd_overdue_days`` past ends the pregnancy at that point (post-term rarely passes 42 weeks).
    edd_series = record.lab("edd")
    edd_value = edd_series.newest()
    missing += unusable_in(edd_series, None, edd_value)
    edd = _edd(edd_value) if edd_value else None
    overdue = thresholds["edd_overdue_days"]
    if edd_value is not None and edd is None:
        missing.append(f"estimated delivery date recorded on {day(edd_value.when)} could not be read")
    if edd_value is not None and edd is not None and edd >= now.date():
        signs.append(
            _Sign(
                "edd",
                edd_value.when,
                f"estimated delivery date {edd.isoformat()} (recorded {day(edd_value.when)})",
                Evidence("Estimated delivery date", edd.isoformat(), edd_value.when, edd_value.reference),
            )
        )
    elif edd is not None and (now.date() - edd).days > overdue:
        ended = day_end(edd + timedelta(days=overdue), now)
        past = f"estimated delivery date {edd.isoformat()}, more than {num(overdue)} days past"
        ends.append(_End(ended, past))
        checked.append(f"the {past}")
    elif edd is not None:
        checked.append(
            f"the estimated delivery date {edd.isoformat()} has passed (by {num(overdue)} days or less)"
        )
    else:
        checked.append("no estimated delivery date")

    # hCG: positive within ``hcg_days`` is a sign; a negative result at any time ends what came before it.
    hcg_days = thresholds["hcg_days"]
    hcg_since = window_start(now, hcg_days)
    newest_read: tuple[datetime, str, LabValue] | None = None
    for group in ("hcg-qualitative", "hcg-quantitative"):
        hcg_series = record.lab(group)
        missing += unusable_in(hcg_series, None)
        for v in hcg_series.values():
            result = hcg_result(v, thresholds)
            if result is not None and (newest_read is None or v.when > newest_read[0]):
                newest_read = (v.when, result, v)
            if result == "positive" and v.when >= hcg_since:
                said = f"positive hCG {show(v)} on {day(v.when)}"
                signs.append(_Sign("hcg", v.when, said, lab_evidence("hCG", v)))
            elif result == "negative":
                ends.append(_End(v.when, f"negative hCG {show(v)} on {day(v.when)}"))
            elif v.flag_only and v.when >= hcg_since:
                missing.append(flag_only_hcg(v))
    if newest_read is not None and newest_read[1] == "indeterminate" and newest_read[0] >= hcg_since:
        missing.append(hcg_indeterminate(newest_read[2]))
    if not any(s.kind == "hcg" for s in signs):
        checked.append(f"no positive hCG in the last {num(hcg_days)} days")
    return signs, ends, checked, missing


def pregnancy_status(record: PatientRecord, thresholds: Mapping[str, Any]) -> Status:
    """Pregnant per rules.md v2: a sign (condition, status, EDD, positive hCG) that nothing later has ended.

    A sign is ended by a later delivery/outcome, resolved pregnancy condition, "not pregnant" answer,
    negative hCG or an estimated delivery date long past (interpretations 4 and 29-32).
    """
    signs, ends, checked, missing = _pregnancy_signs_and_ends(record, thresholds)

    def ended_by(sign: _Sign) -> _End | None:
        if sign.when is None:
            return None
        later = [e for e in ends if e.when > sign.when]
        return min(later, key=lambda e: e.when) if later else None

    live: list[_Sign] = []
    for sign in sorted(signs, key=lambda s: s.when.timestamp() if s.when else float("inf"), reverse=True):
        end = ended_by(sign)
        if end is None:
            live.append(sign)
        else:
            checked.append(f"{sign.said} was ended by {end.said}")
    said = [s.said for s in live]
    if live:  # a delivery recorded as a Procedure would have ended it: say that they could not be read
        missing += unavailable(record, "Procedure")
    hcg = [s for s in live if s.kind == "hcg" and s.when is not None]
    if hcg and hcg[0].when is not None:
        newest, newest_when = hcg[0], hcg[0].when
        confirming = [
            s
            for s in live
            if s.kind in ("condition", "edd")
            or (s.kind == "status" and s.when is not None and s.when > newest_when)
        ]
        age = (record.now.date() - newest_when.date()).days
        if not confirming and age > thresholds["hcg_unconfirmed_days"]:
            said[said.index(newest.said)] = (
                f"{newest.said}, {age} days ago, and no later result confirms the pregnancy"
            )
            missing.append(f"no result after the positive hCG of {day(newest_when)} confirms the pregnancy")
    return Status(
        bool(live),
        unique(s.evidence for s in live),
        tuple(said),
        tuple(checked),
        unique(missing),
    )


def lactation_status(record: PatientRecord, thresholds: Mapping[str, Any]) -> Status:
    """Lactating: a lactation condition, or the newest breastfeeding status (63895-7) answering yes."""
    evidence: list[Evidence] = []
    said: list[str] = []
    checked: list[str] = []
    missing: list[str] = unavailable(record, "Condition", "Observation")

    conditions = record.active_conditions("lactation")
    evidence += [condition_evidence(c) for c in conditions]
    said += [_condition_phrase(c) for c in conditions]
    if not conditions:
        checked.append("no active lactation condition")

    status_days = thresholds["breastfeeding_status_days"]
    since = window_start(record.now, status_days)
    series = record.lab("breastfeeding-status")
    newest = series.newest(since=since)
    missing += unusable_in(series, since, newest)
    if newest is not None and newest.answer in LACTATING_ANSWERS and not newest.flag_only:
        evidence.append(lab_evidence("Breastfeeding status", newest))
        said.append(f"breastfeeding status '{show(newest)}' on {day(newest.when)}")
    elif newest is not None:
        checked.append(f"breastfeeding status on {day(newest.when)} was '{show(newest)}'")
    else:
        checked.append(f"no breastfeeding status in the last {num(status_days)} days")
    return Status(bool(evidence), tuple(evidence), tuple(said), tuple(checked), unique(missing))


# --- new start or continuing therapy ------------------------------------------------------------------------
def is_new_start(inp: RuleInput) -> bool:
    """A new start: no earlier tacrolimus exposure and no renewal of an earlier order (interpretation 33)."""
    return continuing_because(inp) is None


def continuing_because(inp: RuleInput) -> str | None:
    """Why the triggering order continues therapy, in words; None for a new start."""
    if inp.continuing:
        return "the active tacrolimus order is treated as continuing therapy"
    tacrolimus = exposure(inp.record, "tacrolimus")
    if tacrolimus.start is not None:
        return f"continuing therapy: earlier tacrolimus exposure from {tacrolimus.start.isoformat()}"
    renewed = sorted({o.prior_prescription for o in inp.orders if o.prior_prescription})
    if renewed and unfound_priors(inp) == renewed:  # rules.md v3 § Data rules, New start
        return (
            f"continuing therapy: this order renews MedicationRequest/{', '.join(renewed)}, which was not "
            "found in the record (the patient may take tacrolimus from another prescriber or system)"
        )
    if renewed:
        return f"continuing therapy: this order renews or changes MedicationRequest/{', '.join(renewed)}"
    return None


def unfound_priors(inp: RuleInput) -> list[str]:
    """Ids of the orders this request's order(s) renew (``priorPrescription``) that the record lacks."""
    known = {m.id for m in inp.record.medications if not m.is_draft}
    return sorted({o.prior_prescription for o in inp.orders if o.prior_prescription} - known)


def screened_as_new_start(inp: RuleInput) -> bool:
    """N15 runs for a new start, and for a renewal of an order the record does not hold (rules.md v3: the
    patient is not known to have been screened here); never for earlier exposure on record or patient-view."""
    if inp.continuing or exposure(inp.record, "tacrolimus").start is not None:
        return False
    renewed = sorted({o.prior_prescription for o in inp.orders if o.prior_prescription})
    return unfound_priors(inp) == renewed


# --- eGFR, reported or calculated ---------------------------------------------------------------------------
CKD_EPI = "CKD-EPI 2021"
SCHWARTZ = "bedside Schwartz"
NO_HEIGHT = "eGFR not calculated (under 18, no recent height)"


def ckd_epi_2021(creatinine_mg_dl: float, age: float, female: bool) -> float:
    """eGFR (mL/min/1.73 m²) by the race-free CKD-EPI 2021 creatinine equation (Inker, NEJM 2021)."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_mg_dl / kappa
    egfr = 142 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938**age
    return egfr * 1.012 if female else egfr


def bedside_schwartz(creatinine_mg_dl: float, height_cm: float) -> float:
    """eGFR (mL/min/1.73 m²) under 18: 0.413 × height (cm) / creatinine (mg/dL) (Schwartz, JASN 2009)."""
    return 0.413 * height_cm / creatinine_mg_dl


@dataclass(frozen=True)
class Egfr:
    """The eGFR a rule judges: the lab's newest recent one, else one calculated from the newest creatinine."""

    value: float
    when: datetime
    reported: LabValue | None = None
    creatinine: LabValue | None = None
    age: int | None = None
    sex: str | None = None
    height: LabValue | None = None
    """The body height a bedside Schwartz eGFR used (under 18 years); None for CKD-EPI 2021."""

    @property
    def calculated(self) -> bool:
        return self.reported is None

    @property
    def method(self) -> str:
        return SCHWARTZ if self.height is not None else CKD_EPI

    @property
    def citation(self) -> str:
        """The citation key of the equation (``schwartz-2009`` or ``ckd-epi-2021``)."""
        return "schwartz-2009" if self.height is not None else "ckd-epi-2021"

    def _inputs(self) -> str:
        if self.height is not None:
            return f"height {on(self.height)}, {self.age} years"
        return f"{self.sex}, {self.age} years"

    def on(self) -> str:
        if self.reported is not None or self.creatinine is None:
            return on(self.reported) if self.reported else f"{num(round(self.value))} mL/min/1.73 m²"
        return (
            f"{num(round(self.value))} mL/min/1.73 m² calculated ({self.method}) from creatinine "
            f"{on(self.creatinine)} ({self._inputs()})"
        )

    def evidence(self) -> list[Evidence]:
        if self.reported is not None:
            return [lab_evidence("eGFR", self.reported)]
        if self.creatinine is None:
            return []
        return [
            Evidence(
                f"eGFR, calculated ({self.method})",
                f"{num(round(self.value))} mL/min/1.73 m² ({self._inputs()})",
                self.when,
                None,
            ),
            lab_evidence("Creatinine", self.creatinine),
            *([lab_evidence("Body height", self.height)] if self.height is not None else []),
        ]


def egfr_now(inp: RuleInput) -> tuple[Egfr | None, list[str]]:
    """The newest recent reported eGFR; if none, one calculated from the newest recent creatinine.

    From 18 years (age on the creatinine's date): CKD-EPI 2021, which needs a recorded sex of female or male
    (interpretation 34). Under 18, CKD-EPI does not apply: the bedside Schwartz equation with the newest body
    height within ``body_height_days``; without one, no eGFR, and the gap says so (interpretation 48).
    """
    reported, gaps = newest_recent(inp, "egfr")
    if reported is not None and reported.value is not None:
        return Egfr(reported.value, reported.when, reported=reported), gaps
    creatinine, creatinine_gaps = newest_recent(inp, "creatinine")
    if creatinine is None or creatinine.value is None:
        return None, [*gaps, *creatinine_gaps]
    patient = inp.record.patient
    sex = patient.gender if patient else None
    age = patient.age_on(creatinine.when.date()) if patient else None
    none_reported = no_recent("egfr", threshold(inp, "recent_lab_days"))
    kept = [gap for gap in gaps if gap != none_reported]
    if age is None:
        return None, [
            *gaps,
            f"eGFR not calculated from creatinine {on(creatinine)}: the birth date is not recorded",
        ]
    if age < 18:
        days = threshold(inp, "body_height_days")
        height, height_gaps = newest_number(inp.record.lab("body-height"), since=window_start(inp.now, days))
        if height is not None and (number(height) <= 0 or creatinine.value <= 0):
            height_gaps.append(f"body height {on(height)} with creatinine {on(creatinine)} gives no eGFR")
            height = None
        if height is None:
            return None, [
                *gaps,
                f"{NO_HEIGHT}: the patient was {age}, and no body height in the last {num(days)} days",
                *height_gaps,
            ]
        value = bedside_schwartz(creatinine.value, number(height))
        egfr = Egfr(value, creatinine.when, creatinine=creatinine, age=age, height=height)
        return egfr, [*kept, *creatinine_gaps, *height_gaps]
    if sex not in ("female", "male"):
        why_not = "sex is not recorded as female or male"
        return None, [*gaps, f"eGFR not calculated from creatinine {on(creatinine)}: {why_not}"]
    value = ckd_epi_2021(creatinine.value, age, sex == "female")
    return Egfr(value, creatinine.when, creatinine=creatinine, age=age, sex=sex), [*kept, *creatinine_gaps]


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
