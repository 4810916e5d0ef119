"""Nephrotoxicity and safety monitoring (N1-N15): what tacrolimus needs checked, and what the checks show.

Thresholds mirror the Prograf and LUPKYNIS labels and LN trial practice; every number is an administrator
setting. A single lab finding reads only the newest result within the recent window (interpretation 6).
None of these needs lupus nephritis: N12 (duplicate calcineurin inhibitor) and N13 (low eGFR) were S5 and S6.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from cds_service.record import LabValue, Medication
from cds_service.rules.common import (
    LAB_WORDS,
    active_orders,
    bp_readings,
    capital,
    condition_evidence,
    continuing_because,
    day,
    day_end,
    day_start,
    egfr_now,
    exposure,
    finding,
    lab_evidence,
    medication_evidence,
    merge_needs,
    names,
    newest_number,
    newest_recent,
    num,
    number,
    on,
    percent,
    quiet,
    recent_since,
    screened_as_new_start,
    threshold,
    unavailable,
    unusable_in,
    window_start,
    words,
)
from cds_service.rules.model import Evidence, Finding, OrderLabs, Quiet, RuleInput, StopMedication
from cds_service.rules.orders import (
    CRITICAL_KINDS,
    STORED_KINDS,
    draft_overlaps,
    overlap_sentence,
    stored_overlap,
)
from cds_service.rules.other_prescriber import (
    ORDER_A_LEVEL,
    considered,
    speaks_to_other_prescriber,
    to_other_prescriber,
)
from cds_service.rules.registry import (
    NEW_START_ONLY,
    WITH_OTHER_PRESCRIBER,
    Family,
    Wording,
    choice_setting,
    pair_setting,
    setting,
)

HBSAG = ("5196-1", "Hepatitis B virus surface Ag [Presence] in Serum or Plasma by Immunoassay")

FASTING_GLUCOSE_LOINC = "1558-6"
POTASSIUM_LAB = ("2823-3", "Potassium [Moles/volume] in Serum or Plasma")


@dataclass(frozen=True)
class BaselineItem:
    label: str
    groups: tuple[str, ...]
    lab: tuple[str, str] | None
    """The lab to order when missing (LOINC code, display); None for blood pressure, which is not a lab."""


BASELINE = (
    BaselineItem(
        "creatinine or eGFR",
        ("creatinine", "egfr"),
        ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma"),
    ),
    BaselineItem("potassium", ("potassium",), POTASSIUM_LAB),
    BaselineItem("magnesium", ("magnesium",), ("19123-9", "Magnesium [Mass/volume] in Serum or Plasma")),
    # Glucose rather than HbA1c: it comes with the same serum draw, and HbA1c misleads in the anaemia and CKD
    # that active lupus nephritis often brings.
    BaselineItem(
        "glucose or HbA1c",
        ("glucose", "glucose-fasting", "hba1c"),
        ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
    ),
    BaselineItem("blood pressure", ("systolic-bp", "diastolic-bp"), None),
    BaselineItem("UPCR", ("upcr",), ("2890-2", "Protein/Creatinine [Mass Ratio] in Urine")),
)


def n1_baseline_missing(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    days = threshold(inp, "recent_lab_days")
    since = recent_since(inp)
    shown: list[str] = []
    evidence: list[Evidence] = []
    absent: list[BaselineItem] = []
    gaps: list[str] = []
    for item in BASELINE:
        if item.lab is None:  # blood pressure: a reading of two components
            readings, item_gaps = bp_readings(record, since)
            if readings:
                shown.append(f"blood pressure {readings[0].on()}")
                evidence += readings[0].evidence()
                continue
        else:
            newest = [(group, *newest_number(record.lab(group), since=since)) for group in item.groups]
            values = sorted(((g, v) for g, v, _ in newest if v is not None), key=lambda gv: gv[1].when)
            item_gaps = [gap for _, _, group_gaps in newest for gap in group_gaps]
            if values:
                group, value = values[-1]
                shown.append(f"{LAB_WORDS[group]} {on(value)}")
                evidence.append(lab_evidence(capital(LAB_WORDS[group]), value))
                continue
        absent.append(item)
        gaps += [f"no {item.label} in the last {num(days)} days", *item_gaps]
    if not absent:
        return quiet("N1", f"every baseline value is within the last {num(days)} days: " + "; ".join(shown))
    labs = tuple(item.lab for item in absent if item.lab)
    when = "" if continuing_because(inp) else " before the first dose"
    bp_text = f" Record a blood pressure{when}." if any(i.lab is None for i in absent) else ""
    return finding(
        "N1",
        "info",
        f"Baseline missing (last {num(days)} days): " + ", ".join(i.label for i in absent),
        f"Nothing is recorded in the last {num(days)} days for {words([i.label for i in absent])}. "
        "Tacrolimus needs recent kidney function, potassium, magnesium, glucose, blood pressure and "
        f"proteinuria values so that its effects can be judged later.{bp_text}",
        ("prograf-label", "lupkynis-label", "acr-2024-ln"),
        evidence=evidence,
        missing=[*gaps, *unavailable(record, "Observation")],
        suggestions=[OrderLabs(labs, "Order baseline labs: " + ", ".join(d for _, d in labs))]
        if labs
        else [],
    )


# --- creatinine rise (N2, N3) -------------------------------------------------------------------------------
HUNDREDTH = Decimal("0.01")


def mg_dl_2dp(v: LabValue) -> Decimal:
    """A creatinine in mg/dL rounded to 2 decimals (half up), as a Decimal: 1.20 − 0.90 is exactly 0.30."""
    return Decimal(repr(number(v))).quantize(HUNDREDTH, rounding=ROUND_HALF_UP)


def as_decimal(setting: float) -> Decimal:
    """A threshold from the settings, read as the decimal it was written as (0.3, never 0.2999…)."""
    return Decimal(str(setting))


@dataclass(frozen=True)
class Rise:
    """The newest creatinine against its baseline, both in mg/dL rounded to 2 decimals (rules.md § N3)."""

    newest: LabValue
    baseline: LabValue
    newest_mg_dl: Decimal
    baseline_mg_dl: Decimal
    tacrolimus_start: date | None
    """First tacrolimus exposure; None for a new start, when the baseline is the lowest other recent value."""
    gaps: tuple[str, ...]

    @property
    def absolute(self) -> Decimal:
        """The rise in mg/dL, exact on the rounded values (negative for a fall)."""
        return self.newest_mg_dl - self.baseline_mg_dl

    @property
    def fraction(self) -> Decimal:
        """The rise as a fraction of the baseline, exact on the rounded values."""
        return self.absolute / self.baseline_mg_dl

    def percent(self) -> str:
        return percent(float(abs(self.fraction)))

    def text(self) -> str:
        if self.absolute >= 0:
            size = f"{self.percent()} ({self.absolute:.2f} mg/dL) above"
        else:
            size = f"{self.percent()} below"
        return f"creatinine {on(self.newest)} is {size} the baseline {on(self.baseline)}"

    def baseline_rule(self, days: float) -> str:
        if self.tacrolimus_start:
            began = self.tacrolimus_start.isoformat()
            return f"lowest in the {num(days)} days before tacrolimus began on {began}"
        return f"lowest other value in the last {num(days)} days"

    def is_critical(self, inp: RuleInput) -> bool:
        """N3: at least ``creatinine_rise_critical`` **and** at least ``creatinine_rise_critical_mg_dl``."""
        return self.fraction >= as_decimal(threshold(inp, "creatinine_rise_critical")) and (
            self.absolute >= as_decimal(threshold(inp, "creatinine_rise_critical_mg_dl"))
        )


def creatinine_rise(inp: RuleInput) -> Rise | Quiet:
    """Newest recent creatinine against its baseline (interpretations 8, 47); Quiet (id "") if impossible."""
    record = inp.record
    newest, gaps = newest_recent(inp, "creatinine")
    if newest is None:
        return quiet("", "no creatinine to compare with a baseline", gaps)
    series = record.lab("creatinine")
    days = threshold(inp, "baseline_creatinine_days")
    tacrolimus = exposure(record, "tacrolimus")
    if tacrolimus.any:
        since = window_start(day_start(tacrolimus.first_day, inp.now), days)
        until = day_end(tacrolimus.first_day, inp.now)
        candidates = [v for v in series.values(since=since, until=until) if v.value is not None]
        where = f"in the {num(days)} days before tacrolimus began on {day(tacrolimus.start)}"
    else:
        since, until = window_start(inp.now, days), None
        candidates = [
            v
            for v in series.values(since=since)
            if v.value is not None and (v.resource_id, v.when) != (newest.resource_id, newest.when)
        ]
        where = f"in the last {num(days)} days other than the newest"
    gaps = [*gaps, *unusable_in(series, since, until=until)]
    if not candidates:
        return quiet("", f"no creatinine {where} to serve as a baseline", gaps)
    baseline = min(candidates, key=number)
    if mg_dl_2dp(baseline) <= 0:
        return quiet("", f"the baseline creatinine {on(baseline)} is not above 0 mg/dL", gaps)
    return Rise(
        newest,
        baseline,
        mg_dl_2dp(newest),
        mg_dl_2dp(baseline),
        tacrolimus.start if tacrolimus.any else None,
        tuple(dict.fromkeys(gaps)),
    )


def _rise_evidence(rise: Rise) -> list:
    return [
        lab_evidence("Creatinine (newest)", rise.newest),
        lab_evidence("Creatinine (baseline)", rise.baseline),
    ]


def _on_or_before(continuing: str | None) -> str:
    """Where the rise falls: "on tacrolimus" for continuing therapy, "before tacrolimus" for a new start."""
    return "on tacrolimus" if continuing else "before tacrolimus"


def n2_creatinine_rise(inp: RuleInput) -> Finding | Quiet:
    rise = creatinine_rise(inp)
    if isinstance(rise, Quiet):
        return Quiet("N2", rise.reason)
    low = threshold(inp, "creatinine_rise_warning")
    if rise.fraction < as_decimal(low):
        return quiet("N2", f"{rise.text()}: less than {percent(low)}", rise.gaps)
    if rise.is_critical(inp):
        floor = num(threshold(inp, "creatinine_rise_critical_mg_dl"))
        high = percent(threshold(inp, "creatinine_rise_critical"))
        return quiet(
            "N2", f"{rise.text()}: {high} or more and {floor} mg/dL or more, so N3 applies", rise.gaps
        )
    days = threshold(inp, "baseline_creatinine_days")
    continuing = continuing_because(inp)
    below_floor = ""
    if rise.fraction >= as_decimal(threshold(inp, "creatinine_rise_critical")):
        floor = num(threshold(inp, "creatinine_rise_critical_mg_dl"))
        below_floor = (
            f" The rise is less than {floor} mg/dL (the KDIGO acute kidney injury absolute criterion), so it "
            "is a warning rather than critical."
        )
    if continuing:
        detail = (
            f"{capital(rise.text())} ({rise.baseline_rule(days)}).{below_floor} This may be an early "
            "haemodynamic calcineurin-inhibitor effect, or nephritis activity, volume depletion or an "
            "interacting drug: check the tacrolimus trough, volume status and NSAIDs or interacting drugs, "
            "and recheck creatinine within 2 weeks. The thresholds are taken by analogy from the "
            "voclosporin label, which reduces the dose when eGFR is below 60 and has fallen by more than 20% "
            "but less than 30%, and rechecks within 2 weeks."
        )
    else:
        detail = (
            f"{capital(rise.text())} ({rise.baseline_rule(days)}), before tacrolimus has started."
            f"{below_floor} Look for lupus nephritis activity, volume depletion or nephrotoxic drugs and "
            "recheck within 2 weeks; a rising creatinine makes later calcineurin-inhibitor effects harder to "
            "judge."
        )
    return finding(
        "N2",
        "warning",
        f"Creatinine {rise.percent()} above baseline {_on_or_before(continuing)}",
        detail,
        ("lupkynis-label", "naesens-2009", *(("kdigo-aki-2012",) if below_floor else ())),
        evidence=_rise_evidence(rise),
        missing=rise.gaps,
    )


def n3_creatinine_rise_critical(inp: RuleInput) -> Finding | Quiet:
    """At least 30 % and at least 0.3 mg/dL above baseline (interpretations 39, 47)."""
    rise = creatinine_rise(inp)
    if isinstance(rise, Quiet):
        return Quiet("N3", rise.reason)
    high = threshold(inp, "creatinine_rise_critical")
    floor = threshold(inp, "creatinine_rise_critical_mg_dl")
    if rise.fraction < as_decimal(high):
        return quiet("N3", f"{rise.text()}: less than {percent(high)}", rise.gaps)
    if not rise.is_critical(inp):
        return quiet("N3", f"{rise.text()}: less than {num(floor)} mg/dL, so N2 applies", rise.gaps)
    days = threshold(inp, "baseline_creatinine_days")
    continuing = continuing_because(inp)
    if continuing:
        detail = (
            f"{capital(rise.text())} ({rise.baseline_rule(days)}), on continuing tacrolimus therapy. "
            "Consider a dose reduction or holding tacrolimus, and review promptly: the trough, volume "
            "status, interacting or nephrotoxic drugs and lupus nephritis activity can each raise "
            "creatinine. By analogy: the voclosporin label interrupts treatment when eGFR is below 60 and "
            "has fallen by 30% or more from baseline, rechecks within 2 weeks, and restarts at a lower dose "
            "only once eGFR is back to at least 80% of baseline. Chronic calcineurin-inhibitor damage is "
            "largely irreversible: the source article reports that about 17% of patients lose significant "
            "kidney function within 3 years."
        )
        cited: tuple[str, ...] = ("lupkynis-label", "kdigo-aki-2012", "mok-2016", "fomin-roberts-2016")
    else:
        detail = (
            f"{capital(rise.text())} ({rise.baseline_rule(days)}): creatinine has risen before tacrolimus. "
            "Find the cause before adding a calcineurin inhibitor: lupus nephritis activity (UPCR, urine "
            "sediment, complement and anti-dsDNA), volume depletion, and nephrotoxic or interacting drugs "
            "(NSAIDs, contrast, RAS blockers started recently); repeat creatinine within days. If tacrolimus "
            "goes ahead, use it with caution: a low starting dose, a trough and creatinine at 1 week, and "
            "the thresholds on this card against the new baseline."
        )
        cited = ("lupkynis-label", "kdigo-aki-2012", "mok-2016")
    return finding(
        "N3",
        "critical",
        f"Creatinine {rise.percent()} and {rise.absolute:.2f} mg/dL above baseline "
        f"{_on_or_before(continuing)}",
        detail,
        cited,
        evidence=_rise_evidence(rise),
        missing=rise.gaps,
    )


# --- single-lab thresholds (N4-N7) --------------------------------------------------------------------------
def n4_trough_high(inp: RuleInput) -> Finding | Quiet:
    level, gaps = newest_recent(inp, "tacrolimus-level")
    mycophenolate = active_orders(inp.record, "mycophenolate")
    key = "tacrolimus_level_max_with_mycophenolate" if mycophenolate else "tacrolimus_level_max"
    limit = threshold(inp, key)
    with_mmf = " with mycophenolate co-therapy" if mycophenolate else ""
    if level is None:
        return quiet("N4", "no tacrolimus level to compare", gaps)
    if level.value <= limit:
        return quiet(
            "N4", f"newest tacrolimus level {on(level)} is not above {num(limit)} ng/mL{with_mmf}", gaps
        )
    return finding(
        "N4",
        "warning",
        f"Tacrolimus level {num(level.value)} ng/mL above {num(limit)}",
        f"Tacrolimus level {on(level)} is above {num(limit)} ng/mL{with_mmf}. The ceiling comes from the "
        "trough ranges of the lupus nephritis trial regimens (about 5–10 ng/mL with tacrolimus alone, "
        "6–8 ng/mL combined with mycophenolate), not from the Prograf label, which sets no lupus target. "
        "Confirm it was a true trough (taken just before a dose), look for interacting drugs, and consider "
        "a dose reduction with a repeat level in about 1 week.",
        ("ln-trial-regimens", "liu-2015", "prograf-label"),
        evidence=[lab_evidence("Tacrolimus level", level), *(medication_evidence(m) for m in mycophenolate)],
        missing=gaps,
    )


def n5_potassium_high(inp: RuleInput) -> Finding | Quiet:
    potassium, gaps = newest_recent(inp, "potassium")
    limit = threshold(inp, "potassium_max")
    if potassium is None:
        return quiet("N5", "no potassium to compare", gaps)
    if potassium.value <= limit:
        return quiet("N5", f"newest potassium {on(potassium)} is not above {num(limit)}", gaps)
    return finding(
        "N5",
        "warning",
        f"Potassium {num(potassium.value)} mmol/L above {num(limit)}",
        f"Potassium {on(potassium)}. Tacrolimus raises potassium, more so with RAS blockers or "
        "potassium-sparing diuretics: repeat it, review those drugs and dietary potassium, and treat the "
        + (
            "hyperkalaemia; check the tacrolimus trough."
            if continuing_because(inp)
            else "hyperkalaemia before the first dose."
        ),
        ("prograf-label", "cni-electrolytes"),
        evidence=[lab_evidence("Potassium", potassium)],
        missing=gaps,
    )


def n6_magnesium_low(inp: RuleInput) -> Finding | Quiet:
    magnesium, gaps = newest_recent(inp, "magnesium")
    limit = threshold(inp, "magnesium_min")
    if magnesium is None:
        return quiet("N6", "no magnesium to compare", gaps)
    if magnesium.value >= limit:
        return quiet("N6", f"newest magnesium {on(magnesium)} is not below {num(limit)}", gaps)
    return finding(
        "N6",
        "info",
        f"Magnesium {num(magnesium.value)} mg/dL below {num(limit)}",
        f"Magnesium {on(magnesium)}. Calcineurin inhibitors cause renal magnesium wasting: consider oral "
        "supplementation and recheck with the next trough.",
        ("cni-electrolytes",),
        evidence=[lab_evidence("Magnesium", magnesium)],
        missing=gaps,
    )


def n7_blood_pressure(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    readings, gaps = bp_readings(record, recent_since(inp))
    days = threshold(inp, "recent_lab_days")
    if not readings:
        return quiet(
            "N7",
            f"no blood pressure in the last {num(days)} days",
            [*gaps, *unavailable(record, "Observation")],
        )
    reading = readings[0]
    tiers = {tier: threshold(inp, f"bp_{tier}") for tier in ("info", "warning", "critical")}

    def crossing(limit, strictly: bool) -> list[str]:
        """Which parts of the reading cross ``limit``: "systolic", "diastolic", both or none."""
        pairs = (("systolic", reading.sbp, limit[0]), ("diastolic", reading.dbp, limit[1]))
        return [part for part, v, lim in pairs if v is not None and (v > lim if strictly else v >= lim)]

    def over(limit, strictly: bool) -> bool:
        return bool(crossing(limit, strictly))

    def text(limit) -> str:
        return f"{num(limit[0])}/{num(limit[1])}"

    def against(limit, strictly: bool, relation: str) -> str:
        """The threshold as the reading crossed it: 148/102 is not "at or above 160/100", its diastolic is."""
        parts = crossing(limit, strictly)
        if len(parts) == 1:
            return f"{parts[0]} {relation} {num(limit[0] if parts[0] == 'systolic' else limit[1])}"
        return f"{relation} {text(limit)}"

    continuing = continuing_because(inp)
    if over(tiers["critical"], strictly=True) and continuing:
        indicator, relation, limit = "critical", "above", tiers["critical"]
        advice = (
            "On continuing tacrolimus therapy: control blood pressure promptly, exclude a hypertensive "
            "emergency, and check the tacrolimus trough (the voclosporin label sets this level as a bar to "
            "initiating a calcineurin inhibitor)."
        )
    elif over(tiers["critical"], strictly=True):
        indicator, relation, limit = "critical", "above", tiers["critical"]
        advice = (
            "The voclosporin label advises against starting a calcineurin inhibitor at this level: control "
            "blood pressure first and exclude a hypertensive emergency."
        )
    elif over(tiers["warning"], strictly=False):
        indicator, relation, limit = "warning", "at or above", tiers["warning"]
        advice = (
            "Tacrolimus can raise it further: bring it under control and recheck within days."
            if continuing
            else "Tacrolimus can raise it further: bring it under control before or as tacrolimus starts, "
            "and recheck within days."
        )
    elif over(tiers["info"], strictly=False):
        indicator, relation, limit = "info", "at or above", tiers["info"]
        advice = (
            "Tacrolimus can raise blood pressure: treat to target (KDIGO 2024 asks for blood-pressure "
            "control in lupus nephritis) and recheck at each visit."
        )
    else:
        return quiet("N7", f"newest blood pressure {reading.on()} is below {text(tiers['info'])}", gaps)
    crossed = against(limit, indicator == "critical", relation)
    return finding(
        "N7",
        indicator,
        f"Blood pressure {reading.text()}: {crossed}",
        f"Blood pressure {reading.on()}: {crossed}. {advice}",
        ("prograf-label", "lupkynis-label", "kdigo-2024"),
        evidence=reading.evidence(),
        missing=gaps,
    )


# --- since tacrolimus began (N8) ----------------------------------------------------------------------------
def n8_hyperglycaemia(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    tacrolimus = exposure(record, "tacrolimus")
    if not tacrolimus.any:
        return quiet("N8", "no earlier tacrolimus exposure, so no glucose since it began to judge")
    since = day_start(tacrolimus.first_day, inp.now)
    kinds: dict[str, list[LabValue]] = {"fasting glucose": [], "glucose": [], "HbA1c": []}
    seen: set[tuple[str, object]] = set()
    for group in ("glucose-fasting", "glucose"):
        for v in record.lab(group).values(since=since):
            if v.value is None or (v.resource_id, v.when) in seen:
                continue
            seen.add((v.resource_id, v.when))
            fasting = group == "glucose-fasting" or v.code == FASTING_GLUCOSE_LOINC
            kinds["fasting glucose" if fasting else "glucose"].append(v)
    kinds["fasting glucose"].sort(key=lambda v: v.when, reverse=True)
    kinds["glucose"].sort(key=lambda v: v.when, reverse=True)
    kinds["HbA1c"] = [v for v in record.lab("hba1c").values(since=since) if v.value is not None]
    limits = {
        "fasting glucose": threshold(inp, "fasting_glucose"),
        "glucose": threshold(inp, "random_glucose"),
        "HbA1c": threshold(inp, "hba1c"),
    }
    gaps = [r for g in ("glucose-fasting", "glucose", "hba1c") for r in unusable_in(record.lab(g), since)]
    hits = {kind: [v for v in values if v.value >= limits[kind]] for kind, values in kinds.items()}
    hits = {kind: values for kind, values in hits.items() if values}
    start = day(tacrolimus.start)
    if not hits:
        newest = [f"{kind} {on(values[0])}" for kind, values in kinds.items() if values]
        if not newest:
            return quiet("N8", f"no glucose or HbA1c since tacrolimus began on {start}", gaps)
        return quiet(
            "N8",
            f"no glucose or HbA1c at or above the thresholds since tacrolimus began on {start} (newest: "
            f"{'; '.join(newest)})",
            gaps,
        )
    newest_hits = [values[0] for values in hits.values()]
    shown = [f"{kind} {on(values[0])}" for kind, values in hits.items()]
    return finding(
        "N8",
        "info",
        f"New hyperglycaemia on tacrolimus: {shown[0]}",
        f"{capital(words(shown))}, since tacrolimus began on {start}. Tacrolimus, especially with "
        "glucocorticoids, can cause new-onset diabetes: confirm the result, check whether diabetes "
        "predated tacrolimus, and manage it.",
        ("prograf-label",),
        evidence=[lab_evidence(capital(k), v) for k, v in zip(hits, newest_hits, strict=True)],
        missing=gaps,
    )


# --- interacting drugs (N9, N10) ----------------------------------------------------------------------------
NIRMATRELVIR_RITONAVIR = "nirmatrelvir-ritonavir"
"""Paxlovid's ritonavir is a strong CYP3A4 inhibitor, but a finding of its own (rules.md v3) speaks for it."""


def n9_cyp3a4(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    moderate_on = bool(threshold(inp, "include_moderate_cyp3a4"))
    classes = [("cyp3a4-strong-inhibitors", "strong CYP3A4 inhibitor", "raise")]
    if moderate_on:
        classes.append(("cyp3a4-moderate-inhibitors", "moderate CYP3A4 inhibitor", "raise"))
    classes.append(("cyp3a4-strong-inducers", "strong CYP3A4 inducer", "lower"))
    found: dict[str, tuple[Medication, str, str]] = {}
    for concept, kind, direction in classes:
        for m in considered(inp, concept):
            if NIRMATRELVIR_RITONAVIR not in m.concepts:  # its own finding says more (interpretation 61)
                found.setdefault(m.id, (m, kind, direction))
    if not found:
        reason = "no active strong CYP3A4 inhibitor or inducer"
        moderate = active_orders(record, "cyp3a4-moderate-inhibitors")
        if moderate and not moderate_on:
            reason += (
                f"; {names(moderate)} (moderate inhibitor) is not flagged: include_moderate_cyp3a4 is off"
            )
        return quiet("N9", reason, unavailable(record, "MedicationRequest"))
    listed = [f"{m.name} ({kind})" for m, kind, _ in found.values()]
    directions = sorted({direction for _, _, direction in found.values()}, reverse=True)
    effect = " or ".join(f"{d} tacrolimus levels" for d in directions)
    drugs = [m for m, _, _ in found.values()]
    if speaks_to_other_prescriber(inp):
        return to_other_prescriber(
            inp,
            "N9",
            "warning",
            f"{drugs[0].name} with tacrolimus: can sharply {effect}",
            N9_WORDING,
            drugs,
            ("prograf-label", "lupkynis-label"),
            suggestions=[ORDER_A_LEVEL, *remove_drafts(drugs, "Interacts with tacrolimus (CYP3A4)")],
            kind=words(sorted({kind for _, kind, _ in found.values()})),
            effect=effect,
            harm=" (kidney injury, high potassium, tremor)"
            if "raise" in directions
            else " (too little immunosuppression, a lupus nephritis flare)",
        )
    return finding(
        "N9",
        "warning",
        f"Interacting drug: {listed[0]}" + (f" and {len(listed) - 1} more" if len(listed) > 1 else ""),
        f"{capital(words(listed))} {'is' if len(drugs) == 1 else 'are'} active and can sharply {effect}. "
        "Avoid the combination where an alternative exists; otherwise adjust the tacrolimus dose and check "
        "a trough within about 1 week whenever "
        f"{'it is' if len(drugs) == 1 else 'they are'} added or stopped.",
        ("prograf-label", "lupkynis-label"),
        evidence=[medication_evidence(m) for m in drugs],
        suggestions=remove_drafts(drugs, "Interacts with tacrolimus (CYP3A4)"),
    )


def n10_nephrotoxins(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    drugs = considered(inp, "nephrotoxins")
    if not drugs:
        return quiet(
            "N10",
            "no active NSAID, aminoglycoside, amphotericin B or vancomycin order",
            unavailable(record, "MedicationRequest"),
        )
    if speaks_to_other_prescriber(inp):
        return to_other_prescriber(
            inp,
            "N10",
            "warning",
            f"{drugs[0].name} with tacrolimus: additive kidney toxicity",
            N10_WORDING,
            drugs,
            ("naesens-2009",),
            suggestions=remove_drafts(drugs, "Additive nephrotoxicity with tacrolimus"),
        )
    return finding(
        "N10",
        "warning",
        f"Additive nephrotoxicity: {drugs[0].name}"
        + (f" and {len(drugs) - 1} more" if len(drugs) > 1 else ""),
        f"{capital(names(drugs))} {'is' if len(drugs) == 1 else 'are'} active. NSAIDs, aminoglycosides, "
        "amphotericin B and vancomycin add to calcineurin-inhibitor nephrotoxicity: avoid the combination "
        "where possible, otherwise check creatinine more often.",
        ("naesens-2009",),
        evidence=[medication_evidence(m) for m in drugs],
        suggestions=remove_drafts(drugs, "Additive nephrotoxicity with tacrolimus"),
    )


# --- new start (N11) ----------------------------------------------------------------------------------------
def n11_new_start(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    continuing = continuing_because(inp)
    if continuing:
        return quiet("N11", f"{continuing}: not a new start")
    return finding(
        "N11",
        "info",
        "New tacrolimus start: monitoring schedule",
        "No earlier tacrolimus is on record, so this is a new start. Check the first trough at 5–7 days "
        "(the labels ask for troughs at least twice in the first week; steady state takes about a week), "
        "then the trough and creatinine every 2 weeks in month 1, every 4 weeks to month 3, then every 3 "
        "months, and UPCR every 3 months until complete response. Plan it as a bridge, not a destination: "
        "the source article reports that about 17% of patients lose significant kidney function within 3 "
        "years.",
        ("prograf-label", "lupkynis-label", "acr-2024-ln", "fomin-roberts-2016"),
        missing=unavailable(record, "MedicationRequest"),
    )


# --- duplicate calcineurin inhibitor, eGFR (N12, N13; S5 and S6 in version 1) ------------------------------
def n12_duplicate_cni(inp: RuleInput) -> Finding | Quiet:
    """Another calcineurin inhibitor, or a tacrolimus order that is neither this one, a renewal, nor part of
    one regimen in several drafts (rules.md v3 § Data rules; interpretations 17, E44-E47); a stored order of
    another oral formulation is N17's (interpretation 63)."""
    record = inp.record
    others = considered(inp, "other-calcineurin-inhibitors")
    if speaks_to_other_prescriber(inp):
        if not others:
            return quiet("N12", "no cyclosporine or voclosporin is drafted")
        return to_other_prescriber(
            inp,
            "N12",
            "critical",
            f"{others[0].name} with tacrolimus: duplicate calcineurin inhibitor",
            N12_WORDING,
            others,
            ("prograf-label", "lupkynis-label"),
            suggestions=remove_drafts(others, "Duplicate calcineurin-inhibitor therapy"),
        )
    renewed = {o.prior_prescription for o in inp.orders if o.prior_prescription}
    this_order = inp.orders[0].id if inp.orders else None
    tacrolimus = record.active_medications("tacrolimus")
    overlaps = draft_overlaps([m for m in tacrolimus if m.is_draft])
    stored = [
        m
        for m in tacrolimus
        if not m.is_draft
        and not m.is_trigger
        and m.status in ("active", "on-hold")
        and m.id not in renewed
        and m.id != this_order
    ]
    overlaps += [overlap for m in stored if (overlap := stored_overlap(m, inp.orders))]
    if not others and not overlaps:
        return quiet(
            "N12",
            "no other calcineurin inhibitor and no second tacrolimus order is active (tacrolimus drafts "
            "of one formulation are one regimen)"
            + (f" (this order renews {', '.join(sorted(renewed))})" if renewed else ""),
            unavailable(record, "MedicationRequest"),
        )
    critical = bool(others) or any(o.kind in CRITICAL_KINDS for o in overlaps)
    duplicates = [o.order for o in overlaps if o.kind in CRITICAL_KINDS]
    found = [*others, *dict.fromkeys(o.order for o in overlaps)]
    detail_renewal = (
        " If this order replaces the earlier tacrolimus order, link it as a renewal or change "
        "(priorPrescription) or stop the old order."
        if any(o.kind in STORED_KINDS for o in overlaps)
        else ""
    )
    if not others:
        cyclosporine = ""
    elif continuing_because(inp):
        cyclosporine = (
            " When one replaces the other, the Prograf label leaves at least 24 hours between the last "
            "cyclosporine dose and tacrolimus, longer if cyclosporine levels are high."
        )
    else:
        cyclosporine = (
            " When switching from cyclosporine, start tacrolimus no sooner than 24 hours after the last "
            "cyclosporine dose, later if cyclosporine levels are high (Prograf label)."
        )
    how = "".join(f" {sentence}" for o in overlaps if (sentence := overlap_sentence(o)))
    if not critical:
        return finding(
            "N12",
            "warning",
            f"Intravenous and oral tacrolimus both active: {found[0].name}",
            f"{how.strip()} Overlapping them adds to the tacrolimus exposure.",
            ("prograf-label",),
            evidence=[medication_evidence(m) for m in found],
            missing=unavailable(record, "MedicationRequest"),
        )
    return finding(
        "N12",
        "critical",
        f"Duplicate calcineurin-inhibitor therapy: {found[0].name}",
        f"{capital(names(found))} {'is' if len(found) == 1 else 'are'} active alongside this tacrolimus "
        "order: duplicate calcineurin-inhibitor therapy, with additive nephrotoxicity. Keep one "
        f"calcineurin inhibitor.{how}{detail_renewal}{cyclosporine}",
        ("prograf-label", "lupkynis-label"),
        evidence=[medication_evidence(m) for m in found],
        missing=unavailable(record, "MedicationRequest"),
        suggestions=remove_drafts([*others, *duplicates], "Duplicate calcineurin-inhibitor therapy"),
    )


def n13_low_egfr(inp: RuleInput) -> Finding | Quiet:
    """eGFR at or below the calcineurin-inhibitor caution threshold, reported or calculated.

    A warning for a new start; ``egfr_cni_caution_continuing`` (info) on continuing therapy (interpretation
    49).
    """
    egfr, gaps = egfr_now(inp)
    limit = threshold(inp, "egfr_cni_caution")
    if egfr is None:
        return quiet("N13", "no eGFR, reported or calculated, to compare with the threshold", gaps)
    if round(egfr.value, 6) > limit:
        return quiet("N13", f"newest eGFR {egfr.on()} is above {num(limit)}", gaps)
    how = f" calculated ({egfr.method})" if egfr.calculated else ""
    if continuing_because(inp):
        indicator = threshold(inp, "egfr_cni_caution_continuing")
        detail = (
            f"eGFR {egfr.on()}, on continuing tacrolimus therapy. The eGFR above {num(limit)} that KDIGO "
            "2024 and the voclosporin label ask for is a condition for initiating a calcineurin-inhibitor "
            "regimen; "
            "on continuing therapy, follow kidney function closely and act on a creatinine rise (N2 and N3 "
            "carry that action)."
        )
    else:
        indicator = "warning"
        detail = (
            f"eGFR {egfr.on()}. KDIGO 2024 offers calcineurin-inhibitor regimens only when eGFR is above "
            f"{num(limit)}, and the voclosporin label does not recommend starting at {num(limit)} or below "
            "unless the benefit outweighs the risk. Weigh the benefit against nephrotoxicity and follow "
            "kidney function closely if tacrolimus goes ahead."
        )
    return finding(
        "N13",
        indicator,
        f"eGFR {num(round(egfr.value))}{how} is at or below {num(limit)}: calcineurin-inhibitor caution",
        detail,
        ("kdigo-2024", "lupkynis-label", *((egfr.citation,) if egfr.calculated else ())),
        evidence=egfr.evidence(),
        missing=gaps,
    )


# --- hepatitis B (N14, N15) ---------------------------------------------------------------------------------
def n14_hepatitis_b(inp: RuleInput) -> Finding | Quiet:
    """Hepatitis B on record: prophylaxis before or with immunosuppression (interpretation 35)."""
    record = inp.record
    found: list[str] = []
    evidence: list[Evidence] = []
    gaps: list[str] = unavailable(record, "Condition", "Observation")
    conditions = record.confirmed_conditions("hepatitis-b")
    for c in conditions:
        found.append(f"{c.name} on the problem list" + (" (resolved)" if c.resolved else ""))
        evidence.append(condition_evidence(c))
    for group, label in (("hbsag", "HBsAg"), ("anti-hbc", "anti-HBc")):
        series = record.lab(group)
        newest = next((v for v in series.values() if v.answer in ("positive", "negative")), None)
        gaps += unusable_in(series, None, newest)
        if newest is not None and newest.answer == "positive":
            found.append(f"{label} positive on {day(newest.when)}")
            evidence.append(lab_evidence(label, newest))
    if not found:
        hbsag = record.lab("hbsag").newest()
        seen = f"newest HBsAg {on(hbsag)}" if hbsag else "no HBsAg result"
        return quiet("N14", f"no hepatitis B condition and no positive HBsAg or anti-HBc ({seen})", gaps)
    hbsag_positive = any(f.startswith("HBsAg positive") for f in found)
    active = any(c.active for c in conditions) or hbsag_positive
    advice = (
        "Start antiviral prophylaxis (entecavir or tenofovir) before or with the immunosuppression and "
        "continue it after, with hepatology input"
        if active
        else "Past or occult infection can reactivate under immunosuppression: arrange antiviral "
        "prophylaxis or HBV DNA and ALT monitoring according to risk, with hepatology input"
    )
    return finding(
        "N14",
        "warning",
        f"Hepatitis B: {found[0]}",
        f"Hepatitis B is on record: {words(found)}. {advice} (KDIGO 2024). Tacrolimus is not a "
        "hepatitis B-safe choice: any immunosuppression can reactivate the virus.",
        ("kdigo-2024", "livertox-rituximab"),
        evidence=evidence,
        missing=gaps,
    )


def n15_hepatitis_b_screen(inp: RuleInput) -> Finding | Quiet:
    """A new start with no hepatitis B status on record at all: screen first."""
    record = inp.record
    if not screened_as_new_start(inp):
        return quiet("N15", f"{continuing_because(inp)}: the screening reminder is for a new start")
    conditions = record.confirmed_conditions("hepatitis-b")
    if conditions:
        return quiet("N15", f"a hepatitis B condition is on record ({conditions[0].name}); N14 applies")
    series = record.lab("hbsag")
    results = series.values()
    if results:
        return quiet("N15", f"HBsAg {on(results[0])} is on record")
    unreadable = unusable_in(series, None)  # never a screen: named on the card (rules.md v3 § Reading)
    none_read = "no readable HBsAg result" if unreadable else "no HBsAg result"
    return finding(
        "N15",
        "info",
        "No hepatitis B screening on record before a new immunosuppressant",
        f"{capital(none_read)} and no hepatitis B condition is on record. KDIGO 2024 asks for hepatitis B "
        "screening (HBsAg and anti-HBc) before immunosuppression, because tacrolimus, like any "
        "immunosuppressant, can reactivate the virus.",
        ("kdigo-2024", "livertox-rituximab"),
        missing=[
            f"{none_read} on record",
            *unreadable,
            *unavailable(record, "Condition", "Observation"),
        ],
        suggestions=[OrderLabs((HBSAG,), "Order hepatitis B surface antigen (HBsAg)")],
    )


def remove_drafts(drugs: list[Medication], reason: str) -> list[StopMedication]:
    """Delete suggestions for the drugs that are drafts of this session (never for stored orders)."""
    return [
        StopMedication(m, f"Remove the draft {m.name} order", reason=reason, drafts_only=True)
        for m in drugs
        if m.is_draft
    ]


RECENT = setting("recent_lab_days", "integer", 1, 3650, "a lab value is recent within this many days")
BASELINE_DAYS = setting(
    "baseline_creatinine_days", "integer", 1, 3650, "window for the baseline (lowest) creatinine"
)
POTASSIUM_MAX = setting("potassium_max", "number", 2, 10, "N5: mmol/L")
RISE_WARNING = setting("creatinine_rise_warning", "number", 0, 1, "N2: fraction above baseline (0.20 = 20 %)")
RISE_CRITICAL = setting(
    "creatinine_rise_critical", "number", 0, 1, "N3: fraction above baseline (0.30 = 30 %)"
)
RISE_FLOOR = setting(
    "creatinine_rise_critical_mg_dl",
    "number",
    0,
    10,
    "N3: and at least this rise above baseline, mg/dL (KDIGO acute kidney injury: 0.3 mg/dL = 26.5 umol/L)",
)
TACROLIMUS = {"Patient": (), "MedicationRequest": ("tacrolimus",)}
CREATININE = merge_needs(TACROLIMUS, {"Observation": ("creatinine",)})
BLOOD_PRESSURE = ("blood-pressure", "systolic-bp", "diastolic-bp")
CYP3A4 = ("cyp3a4-strong-inhibitors", "cyp3a4-moderate-inhibitors", "cyp3a4-strong-inducers")


def labs(*value_sets: str, drugs: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """What a monitoring finding reads: the tacrolimus orders, these Observations and these drugs."""
    return merge_needs(TACROLIMUS, {"Observation": value_sets, "MedicationRequest": drugs})


N9_WORDING = Wording(
    co_prescribing=(
        "{Drug} {is_} a {kind} and can sharply {effect}{harm}. {alternative}If it goes ahead, order a "
        "tacrolimus level within 3 days of starting it (and again once it stops), and tell the "
        "tacrolimus prescriber, who decides any change to the tacrolimus dose."
    )
)
N10_WORDING = Wording(
    co_prescribing=(
        "NSAIDs, aminoglycosides, amphotericin B and vancomycin add to the kidney toxicity of "
        "tacrolimus. {alternative}If {drug} goes ahead, keep the course short, check creatinine and a "
        "tacrolimus level within 3 days, and tell the tacrolimus prescriber."
    )
)
N12_WORDING = Wording(
    co_prescribing=(
        "{Drug} {is_} a calcineurin inhibitor, like tacrolimus: together they are duplicate "
        "calcineurin-inhibitor therapy, with additive nephrotoxicity, and the labels advise against it. "
        "Do not add {drug} to tacrolimus. If it is meant to replace tacrolimus, that switch is for the "
        "tacrolimus prescriber to plan (the Prograf label leaves at least 24 hours between the two)."
    )
)
MONITORING = Family("monitoring", "nephrotoxicity-monitoring")

DECLARATIONS = (
    MONITORING.declare(
        "N1",
        n1_baseline_missing,
        ("info",),
        "Baseline labs missing",
        settings=(RECENT,),
        citations=("acr-2024-ln", "lupkynis-label", "prograf-label"),
        needs=labs(*(g for item in BASELINE for g in item.groups), *BLOOD_PRESSURE),
        course=("creatinine", "egfr", "potassium", "magnesium", "systolic-bp", "upcr"),
    ),
    MONITORING.declare(
        "N2",
        n2_creatinine_rise,
        ("warning",),
        "Creatinine 20–30 % above baseline",
        settings=(RISE_WARNING, RISE_CRITICAL, RISE_FLOOR, BASELINE_DAYS, RECENT),
        citations=("lupkynis-label", "naesens-2009", "kdigo-aki-2012"),
        needs=CREATININE,
        course=("creatinine",),
    ),
    MONITORING.declare(
        "N3",
        n3_creatinine_rise_critical,
        ("critical",),
        "Creatinine ≥ 30 % above baseline",
        settings=(RISE_CRITICAL, RISE_FLOOR, BASELINE_DAYS, RECENT),
        citations=("fomin-roberts-2016", "kdigo-aki-2012", "lupkynis-label", "mok-2016"),
        needs=CREATININE,
        course=("creatinine",),
    ),
    MONITORING.declare(
        "N4",
        n4_trough_high,
        ("warning",),
        "Tacrolimus level too high",
        settings=(
            setting("tacrolimus_level_max", "number", 0, 100, "N4: ng/mL"),
            setting(
                "tacrolimus_level_max_with_mycophenolate",
                "number",
                0,
                100,
                "N4 with active mycophenolate: ng/mL",
            ),
            RECENT,
        ),
        citations=("liu-2015", "ln-trial-regimens", "prograf-label"),
        needs=labs("tacrolimus-level", drugs=("mycophenolate",)),
        course=("tacrolimus-level",),
    ),
    MONITORING.declare(
        "N5",
        n5_potassium_high,
        ("warning",),
        "High potassium",
        settings=(POTASSIUM_MAX, RECENT),
        citations=("cni-electrolytes", "prograf-label"),
        needs=labs("potassium"),
        course=("potassium",),
    ),
    MONITORING.declare(
        "N6",
        n6_magnesium_low,
        ("info",),
        "Low magnesium",
        settings=(setting("magnesium_min", "number", 0, 5, "N6: mg/dL"), RECENT),
        citations=("cni-electrolytes",),
        needs=labs("magnesium"),
        course=("magnesium",),
    ),
    MONITORING.declare(
        "N7",
        n7_blood_pressure,
        ("info", "warning", "critical"),
        "High blood pressure",
        settings=(
            pair_setting("bp_info", "number", 0, 400, "N7 info tier [systolic, diastolic], at or above"),
            pair_setting(
                "bp_warning", "number", 0, 400, "N7 warning tier [systolic, diastolic], at or above"
            ),
            pair_setting(
                "bp_critical", "number", 0, 400, "N7 critical tier [systolic, diastolic], strictly above"
            ),
            RECENT,
        ),
        citations=("kdigo-2024", "lupkynis-label", "prograf-label"),
        needs=labs(*BLOOD_PRESSURE),
        course=("systolic-bp", "diastolic-bp"),
    ),
    MONITORING.declare(
        "N8",
        n8_hyperglycaemia,
        ("info",),
        "High glucose or HbA1c on tacrolimus",
        settings=(
            setting("fasting_glucose", "number", 50, 500, "N8: mg/dL"),
            setting("random_glucose", "number", 50, 800, "N8: mg/dL"),
            setting("hba1c", "number", 3, 20, "N8: %"),
        ),
        citations=("prograf-label",),
        needs=labs("glucose", "glucose-fasting", "hba1c"),
    ),
    MONITORING.declare(
        "N9",
        n9_cyp3a4,
        ("warning",),
        "Strong CYP3A4 inhibitor or inducer",
        settings=(
            setting(
                "include_moderate_cyp3a4", "boolean", about="N9: also warn for moderate CYP3A4 inhibitors"
            ),
        ),
        citations=("lupkynis-label", "prograf-label"),
        needs=labs(drugs=CYP3A4),
        course=CYP3A4,
        runs_in=WITH_OTHER_PRESCRIBER,
        wording=N9_WORDING,
    ),
    MONITORING.declare(
        "N10",
        n10_nephrotoxins,
        ("warning",),
        "Nephrotoxic drug active",
        citations=("naesens-2009",),
        needs=labs(drugs=("nephrotoxins",)),
        course=("nephrotoxins",),
        runs_in=WITH_OTHER_PRESCRIBER,
        wording=N10_WORDING,
    ),
    MONITORING.declare(
        "N11",
        n11_new_start,
        ("info",),
        "Monitoring schedule for a new start",
        citations=("acr-2024-ln", "fomin-roberts-2016", "lupkynis-label", "prograf-label"),
        runs_in=NEW_START_ONLY,
        needs=TACROLIMUS,
    ),
    MONITORING.declare(
        "N12",
        n12_duplicate_cni,
        ("critical",),
        "Duplicate calcineurin-inhibitor therapy",
        citations=("lupkynis-label", "prograf-label"),
        needs=labs(drugs=("other-calcineurin-inhibitors",)),
        course=("tacrolimus",),
        replaces={"S5": "Duplicate calcineurin inhibitor"},
        runs_in=WITH_OTHER_PRESCRIBER,
        wording=N12_WORDING,
    ),
    MONITORING.declare(
        "N13",
        n13_low_egfr,
        ("warning", "info", "critical"),
        "eGFR 45 or lower",
        settings=(
            setting(
                "egfr_cni_caution",
                "number",
                0,
                200,
                "N13: eGFR (reported or calculated) at or below, mL/min/1.73 m2",
            ),
            choice_setting(
                "egfr_cni_caution_continuing",
                ("info", "warning", "critical"),
                "N13's indicator on continuing therapy (a new start is a warning)",
            ),
            setting(
                "body_height_days",
                "integer",
                1,
                3650,
                "eGFR under 18 years (bedside Schwartz): the newest body height within this many days",
            ),
            RECENT,
        ),
        citations=("ckd-epi-2021", "kdigo-2024", "lupkynis-label", "schwartz-2009"),
        needs=labs("egfr", "creatinine", "body-height"),
        course=("egfr",),
        replaces={"S6": "eGFR 45 or lower"},
    ),
    MONITORING.declare(
        "N14",
        n14_hepatitis_b,
        ("warning",),
        "Hepatitis B",
        citations=("kdigo-2024", "livertox-rituximab"),
        needs=merge_needs(labs("hbsag", "anti-hbc"), {"Condition": ("hepatitis-b",)}),
    ),
    MONITORING.declare(
        "N15",
        n15_hepatitis_b_screen,
        ("info",),
        "Hepatitis B screening missing",
        citations=("kdigo-2024", "livertox-rituximab"),
        runs_in=NEW_START_ONLY,
        needs=merge_needs(labs("hbsag"), {"Condition": ("hepatitis-b",)}),
    ),
)
RULES = {d.id: d.rule for d in DECLARATIONS}
NEEDS = merge_needs(*(d.needs for d in DECLARATIONS))
