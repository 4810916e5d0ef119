"""Nephrotoxicity monitoring (N1-N11): what tacrolimus needs checked, and what the checks already show.

Thresholds mirror the Prograf and LUPKYNIS labels and LN trial practice; every number is an administrator
setting. A single lab finding reads only the newest result within the recent window (interpretation 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from cds_service.record import LabValue, Medication
from cds_service.rules.common import (
    LAB_WORDS,
    active_orders,
    bp_readings,
    capital,
    day_end,
    day_start,
    exposure,
    finding,
    lab_evidence,
    medication_evidence,
    names,
    newest_number,
    newest_recent,
    num,
    number,
    on,
    percent,
    quiet,
    recent_since,
    threshold,
    unavailable,
    unusable_in,
    window_start,
    words,
)
from cds_service.rules.model import Evidence, Finding, OrderLabs, Quiet, RuleInput

NEEDS: dict[str, tuple[str, ...]] = {
    "Observation": (
        "creatinine", "egfr", "potassium", "magnesium", "glucose", "glucose-fasting", "hba1c",
        "blood-pressure", "systolic-bp", "diastolic-bp", "upcr", "tacrolimus-level",
    ),
    "MedicationRequest": (
        "tacrolimus", "mycophenolate", "cyp3a4-strong-inhibitors", "cyp3a4-moderate-inhibitors",
        "cyp3a4-strong-inducers", "nephrotoxins",
    ),
}  # fmt: skip

FASTING_GLUCOSE_LOINC = "1558-6"


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
    BaselineItem("potassium", ("potassium",), ("2823-3", "Potassium [Moles/volume] in Serum or Plasma")),
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
    bp_text = " Record a blood pressure before the first dose." if any(i.lab is None for i in absent) else ""
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
@dataclass(frozen=True)
class Rise:
    newest: LabValue
    baseline: LabValue
    fraction: float
    tacrolimus_start: date | None
    """First tacrolimus exposure; None for a new start, when the baseline is the lowest other recent value."""
    gaps: tuple[str, ...]

    def text(self) -> str:
        size = f"{percent(self.fraction)} above" if self.fraction >= 0 else f"{percent(-self.fraction)} below"
        return f"creatinine {on(self.newest)} is {size} the baseline {on(self.baseline)}"

    def baseline_rule(self, days: float) -> str:
        if self.tacrolimus_start:
            began = self.tacrolimus_start.isoformat()
            return f"lowest in the {num(days)} days before tacrolimus began on {began}"
        return f"lowest other value in the last {num(days)} days"


def creatinine_rise(inp: RuleInput) -> Rise | Quiet:
    """Newest recent creatinine against its baseline (interpretation 8); a Quiet (id "") when impossible."""
    record = inp.record
    newest, gaps = newest_recent(inp, "creatinine")
    if newest is None:
        return quiet("", "no creatinine to compare with a baseline", gaps)
    series = record.lab("creatinine")
    days = threshold(inp, "baseline_creatinine_days")
    tacrolimus = exposure(record, "tacrolimus")
    if tacrolimus.any:
        since = window_start(day_start(tacrolimus.start, inp.now), days)
        until = day_end(tacrolimus.start, inp.now)
        candidates = [v for v in series.values(since=since, until=until) if v.value is not None]
        where = f"in the {num(days)} days before tacrolimus began on {tacrolimus.start.isoformat()}"
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
    fraction = round((number(newest) - number(baseline)) / number(baseline), 6)
    return Rise(
        newest, baseline, fraction, tacrolimus.start if tacrolimus.any else None, tuple(dict.fromkeys(gaps))
    )


def _rise_evidence(rise: Rise) -> list:
    return [
        lab_evidence("Creatinine (newest)", rise.newest),
        lab_evidence("Creatinine (baseline)", rise.baseline),
    ]


def n2_creatinine_rise(inp: RuleInput) -> Finding | Quiet:
    rise = creatinine_rise(inp)
    if isinstance(rise, Quiet):
        return Quiet("N2", rise.reason)
    low, high = threshold(inp, "creatinine_rise_warning"), threshold(inp, "creatinine_rise_critical")
    if rise.fraction < low:
        return quiet("N2", f"{rise.text()}: less than {percent(low)}", rise.gaps)
    if rise.fraction >= high:
        return quiet("N2", f"{rise.text()}: {percent(high)} or more, so N3 applies", rise.gaps)
    days = threshold(inp, "baseline_creatinine_days")
    if rise.tacrolimus_start:
        detail = (
            f"{capital(rise.text())} ({rise.baseline_rule(days)}). This may be an early haemodynamic "
            "calcineurin-inhibitor effect: check the tacrolimus trough, volume status and NSAIDs or "
            "interacting drugs, and recheck creatinine within 2 weeks (thresholds by analogy with the "
            "voclosporin label)."
        )
    else:
        detail = (
            f"{capital(rise.text())} ({rise.baseline_rule(days)}), before tacrolimus has started. Look for "
            "lupus nephritis activity, volume depletion or nephrotoxic drugs and recheck within 2 weeks; a "
            "rising creatinine makes later calcineurin-inhibitor effects harder to judge."
        )
    return finding(
        "N2",
        "warning",
        f"Creatinine {percent(rise.fraction)} above baseline "
        + ("on tacrolimus" if rise.tacrolimus_start else "before tacrolimus"),
        detail,
        ("lupkynis-label", "naesens-2009"),
        evidence=_rise_evidence(rise),
        missing=rise.gaps,
    )


def n3_creatinine_rise_critical(inp: RuleInput) -> Finding | Quiet:
    rise = creatinine_rise(inp)
    if isinstance(rise, Quiet):
        return Quiet("N3", rise.reason)
    high = threshold(inp, "creatinine_rise_critical")
    if rise.fraction < high:
        return quiet("N3", f"{rise.text()}: less than {percent(high)}", rise.gaps)
    days = threshold(inp, "baseline_creatinine_days")
    if rise.tacrolimus_start:
        detail = (
            f"{capital(rise.text())} ({rise.baseline_rule(days)}). Consider reducing or holding tacrolimus "
            "and review promptly (trough, volume, interacting drugs); the voclosporin label stops "
            "treatment at a 30% fall in eGFR. Chronic calcineurin-inhibitor damage is largely "
            "irreversible: the source article reports that about 17% of patients lose significant kidney "
            "function within 3 years."
        )
        cited: tuple[str, ...] = ("lupkynis-label", "mok-2016", "fomin-roberts-2016")
    else:
        detail = (
            f"{capital(rise.text())} ({rise.baseline_rule(days)}), before tacrolimus has started. Review "
            "the kidney before starting a calcineurin inhibitor: look for lupus nephritis activity, volume "
            "depletion or nephrotoxic drugs, and consider waiting until creatinine is stable."
        )
        cited = ("lupkynis-label", "mok-2016")
    return finding(
        "N3",
        "critical",
        f"Creatinine {percent(rise.fraction)} above baseline "
        + ("on tacrolimus" if rise.tacrolimus_start else "before tacrolimus"),
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
        f"Tacrolimus level {on(level)} is above the {num(limit)} ng/mL upper target used in lupus "
        f"nephritis{with_mmf}. Confirm it was a true trough (taken just before a dose), look for "
        "interacting drugs, and consider a dose reduction with a repeat level in about 1 week.",
        ("prograf-label",),
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
        "hyperkalaemia before starting or continuing.",
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

    def over(limit, strictly: bool) -> bool:
        pairs = ((reading.sbp, limit[0]), (reading.dbp, limit[1]))
        return any(v is not None and (v > lim if strictly else v >= lim) for v, lim in pairs)

    def text(limit) -> str:
        return f"{num(limit[0])}/{num(limit[1])}"

    if over(tiers["critical"], strictly=True):
        indicator, relation, limit = "critical", "above", tiers["critical"]
        advice = (
            "The voclosporin label advises against starting a calcineurin inhibitor at this level: control "
            "blood pressure first and exclude a hypertensive emergency."
        )
    elif over(tiers["warning"], strictly=False):
        indicator, relation, limit = "warning", "at or above", tiers["warning"]
        advice = (
            "Tacrolimus can raise it further: bring it under control before or as tacrolimus starts, and "
            "recheck within days."
        )
    elif over(tiers["info"], strictly=False):
        indicator, relation, limit = "info", "at or above", tiers["info"]
        advice = (
            "Tacrolimus can raise blood pressure: treat to target (KDIGO 2024 asks for blood-pressure "
            "control in lupus nephritis) and recheck at each visit."
        )
    else:
        return quiet("N7", f"newest blood pressure {reading.on()} is below {text(tiers['info'])}", gaps)
    return finding(
        "N7",
        indicator,
        f"Blood pressure {reading.text()} {relation} {text(limit)}",
        f"Blood pressure {reading.on()}, {relation} {text(limit)}. {advice}",
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
    since = day_start(tacrolimus.start, inp.now)
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
    start = tacrolimus.start.isoformat()
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
def n9_cyp3a4(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    moderate_on = bool(threshold(inp, "include_moderate_cyp3a4"))
    classes = [("cyp3a4-strong-inhibitors", "strong CYP3A4 inhibitor", "raise")]
    if moderate_on:
        classes.append(("cyp3a4-moderate-inhibitors", "moderate CYP3A4 inhibitor", "raise"))
    classes.append(("cyp3a4-strong-inducers", "strong CYP3A4 inducer", "lower"))
    found: dict[str, tuple[Medication, str, str]] = {}
    for concept, kind, direction in classes:
        for m in active_orders(record, concept):
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
    return finding(
        "N9",
        "warning",
        f"Interacting drug: {listed[0]}" + (f" and {len(listed) - 1} more" if len(listed) > 1 else ""),
        f"{capital(words(listed))} {'is' if len(drugs) == 1 else 'are'} active and can sharply {effect}. "
        "Adjust the tacrolimus dose and check a trough within about 1 week of starting or stopping "
        f"{'it' if len(drugs) == 1 else 'them'}.",
        ("prograf-label", "lupkynis-label"),
        evidence=[medication_evidence(m) for m in drugs],
    )


def n10_nephrotoxins(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    drugs = active_orders(record, "nephrotoxins")
    if not drugs:
        return quiet(
            "N10",
            "no active NSAID, aminoglycoside, amphotericin B or vancomycin order",
            unavailable(record, "MedicationRequest"),
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
    )


# --- new start (N11) ----------------------------------------------------------------------------------------
def n11_new_start(inp: RuleInput) -> Finding | Quiet:
    record = inp.record
    tacrolimus = exposure(record, "tacrolimus")
    if tacrolimus.any:
        return quiet(
            "N11",
            f"earlier tacrolimus exposure on record from {tacrolimus.start.isoformat()}: not a new start",
        )
    return finding(
        "N11",
        "info",
        "New tacrolimus start: monitoring schedule",
        "No earlier tacrolimus is on record, so this is a new start. Check the trough and creatinine every "
        "2 weeks in month 1, every 4 weeks to month 3, then every 3 months, and UPCR every 3 months until "
        "complete response. Plan it as a bridge, not a destination: the source article reports that about "
        "17% of patients lose significant kidney function within 3 years.",
        ("lupkynis-label", "acr-2024-ln", "fomin-roberts-2016"),
        missing=unavailable(record, "MedicationRequest"),
    )


RULES = {
    "N1": n1_baseline_missing,
    "N2": n2_creatinine_rise,
    "N3": n3_creatinine_rise_critical,
    "N4": n4_trough_high,
    "N5": n5_potassium_high,
    "N6": n6_magnesium_low,
    "N7": n7_blood_pressure,
    "N8": n8_hyperglycaemia,
    "N9": n9_cyp3a4,
    "N10": n10_nephrotoxins,
    "N11": n11_new_start,
}
