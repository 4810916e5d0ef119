"""After the birth, and contraception (P9, P10; rule catalog version 3, topic ``pregnancy``).

P9: tacrolimus clearance rises in pregnancy (dose-normalised levels fall by about half) and falls back within
weeks of the birth, so a dose raised in pregnancy can become toxic post-partum unless a trough is checked.
P10: ACR 2020 prefers progestin-only or intrauterine contraception to oestrogen-containing methods while lupus
nephritis is active. rules.md v3 § Pregnancy and lactation status (Delivered) and the P rows; clinical.md
§6.2; interpretations 69-72.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from cds_service.record import Medication, PatientRecord
from cds_service.rules.common import (
    PREGNANCY_NEEDS,
    active_orders,
    capital,
    condition_evidence,
    continuing_because,
    day,
    exposure,
    finding,
    has_lupus_nephritis,
    lab_evidence,
    medication_evidence,
    merge_needs,
    names,
    num,
    on,
    percent,
    quiet,
    threshold,
    unavailable,
    unusable_in,
    window_start,
)
from cds_service.rules.model import Evidence, Finding, OrderLabs, Quiet, RuleInput
from cds_service.rules.pregnancy import PREGNANCY, TACROLIMUS_LEVEL
from cds_service.rules.registry import Wording, setting

CONCEPTION_DAYS = 266
"""Conception is dated 266 days (38 weeks) before the delivery (rules.md v3 P9)."""
CONTRACEPTIVES = "combined-hormonal-contraceptives"


# --- P9 -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Delivery:
    when: datetime
    said: str
    evidence: Evidence


def deliveries(record: PatientRecord) -> list[Delivery]:
    """Every dated delivery, newest first: a delivery Procedure (its ``performed[x]``) or a delivery Condition
    (ICD-10-CM O80, O82, Z37: its onset, else its recorded date). A Z39 post-partum care Condition ends a
    pregnancy but is dated at the visit, so it never dates a delivery (rules.md v3)."""
    found = [
        Delivery(
            p.performed,
            f"{p.name} (procedure) on {day(p.performed)}",
            Evidence("Delivery", p.name, p.performed, p.reference),
        )
        for p in record.procedures
        if "delivery-procedures" in p.concepts
    ]
    found += [
        Delivery(when, f"{c.name} on {day(when)}", condition_evidence(c))
        for c in record.confirmed_conditions("delivery")
        if (when := c.onset or c.recorded) is not None
    ]
    return sorted(found, key=lambda d: d.when, reverse=True)


def _dose(orders: list[Medication] | tuple[Medication, ...]) -> float | None:
    doses = [o.daily_dose_mg for o in orders]
    return None if not doses or any(d is None for d in doses) else sum(d for d in doses if d is not None)


def _dose_at(record: PatientRecord, when: date) -> tuple[float | None, list[Medication]]:
    """The summed daily dose of the stored tacrolimus orders whose exposure covers ``when``."""
    orders = [
        m
        for m in record.exposures("tacrolimus")
        if m.exposure is not None and m.exposure.start.date() <= when <= m.exposure.end.date()
    ]
    return _dose(orders), orders


def p9_postpartum_exposure(inp: RuleInput) -> Finding | Quiet:
    """Delivered within ``postpartum_days`` on tacrolimus taken during the pregnancy, with no tacrolimus level
    since the delivery; warning when the dose now is ≥ ``postpartum_dose_rise`` × the dose at conception
    (interpretations 69-71)."""
    record = inp.record
    days = threshold(inp, "postpartum_days")
    since = window_start(inp.now, days)
    recent = [d for d in deliveries(record) if since <= d.when <= inp.now]
    if not recent:
        return quiet(
            "P9",
            f"no delivery (delivery Procedure or O80, O82, Z37 Condition) in the last {num(days)} days",
            unavailable(record, "Condition", "Procedure"),
        )
    delivery = recent[0]
    continuing = continuing_because(inp)
    if continuing is None:
        return quiet("P9", f"delivered ({delivery.said}), but this is a new tacrolimus start")
    conception = delivery.when.date() - timedelta(days=CONCEPTION_DAYS)
    tacrolimus = exposure(record, "tacrolimus")
    during = [
        (start, end) for start, end in tacrolimus.spans if start <= delivery.when.date() and end >= conception
    ]
    if not during:
        return quiet(
            "P9",
            f"delivered ({delivery.said}), but no tacrolimus exposure on record between the estimated "
            f"conception ({conception.isoformat()}) and the delivery",
            unavailable(record, "MedicationRequest"),
        )
    series = record.lab("tacrolimus-level")
    level = series.newest(since=delivery.when)
    if level is not None:
        return quiet("P9", f"delivered ({delivery.said}); tacrolimus level {on(level)} is since the delivery")
    now_orders = list(inp.orders)  # the drafts of this request, or in patient-view the active order
    now_dose = _dose(now_orders)
    then_dose, then_orders = _dose_at(record, conception)
    rise = threshold(inp, "postpartum_dose_rise")
    ratio = round(now_dose / then_dose, 6) if now_dose is not None and then_dose else None
    raised = ratio is not None and ratio >= rise
    if ratio is not None:
        compared = (
            f"The daily dose now, {num(now_dose)} mg, is {percent(ratio)} of the {num(then_dose)} mg at the "
            f"estimated conception ({conception.isoformat()})"
            + (": it was raised in pregnancy." if raised else ".")
        )
    elif not then_orders:
        compared = (
            f"No tacrolimus order was active at the estimated conception ({conception.isoformat()}): it "
            "began during the pregnancy, so there is no earlier dose to compare."
        )
    else:
        compared = "The daily doses now and at conception could not both be computed from the orders."
    level_then = series.newest()
    last_text = f" (last: {on(level_then)})" if level_then else ""
    action = (
        "check a trough now and reduce the dose to the level"
        if inp.continuing or not any(o.is_draft for o in inp.orders)
        else "check a trough within 1–2 weeks and set this order's dose by it"
    )
    days_ago = (inp.now.date() - delivery.when.date()).days
    return finding(
        "P9",
        "warning" if raised else "info",
        f"Delivered {days_ago} days ago on tacrolimus"
        + (" at a dose raised in pregnancy" if raised else "")
        + ": check a trough",
        f"Delivered {days_ago} days ago ({delivery.said}), on tacrolimus during the pregnancy, and no "
        f"tacrolimus level since the delivery{last_text}. {compared} Tacrolimus clearance rises in "
        "pregnancy (dose-normalised levels fall by about half) and falls back within weeks to 3 months after "
        f"the birth, so a dose raised in pregnancy can become toxic post-partum: {action} (breastfeeding "
        "stays compatible).",
        ("versluis-2023", "hebert-2013"),
        evidence=[
            delivery.evidence,
            *(medication_evidence(o) for o in dict.fromkeys([*then_orders, *now_orders])),
            *([] if level_then is None else [lab_evidence("Tacrolimus level", level_then)]),
        ],
        missing=[
            "no tacrolimus level since the delivery",
            *(
                f"daily dose not computable from {o.name} ({o.reference})"
                for o in dict.fromkeys([*then_orders, *now_orders])
                if o.daily_dose_mg is None
            ),
            *unusable_in(series, delivery.when),
            *unavailable(record, "Observation"),
        ],
        suggestions=[OrderLabs((TACROLIMUS_LEVEL,), "Order a tacrolimus trough level")],
    )


# --- P10 ----------------------------------------------------------------------------------------------------
P10_NEW_START = "A new tacrolimus start for lupus nephritis counts as active nephritis (setting on)."
P10_CONTINUING = "The newest UPCR shows active nephritis."


def p10_oestrogen_contraceptive(inp: RuleInput) -> Finding | Quiet:
    """An active oestrogen-containing contraceptive order with active lupus nephritis: an active LN Condition
    and a UPCR ≥ ``active_nephritis_upcr`` within ``active_nephritis_upcr_days``, or a new tacrolimus start
    (``contraceptive_new_start_counts``) (interpretation 72)."""
    record = inp.record
    pills = active_orders(record, CONTRACEPTIVES)
    if not pills:
        return quiet(
            "P10",
            "no active oestrogen-containing contraceptive order",
            unavailable(record, "MedicationRequest"),
        )
    if not has_lupus_nephritis(record):
        return quiet("P10", f"{names(pills)} active, but no active lupus nephritis condition")
    days, limit = threshold(inp, "active_nephritis_upcr_days"), threshold(inp, "active_nephritis_upcr")
    series = record.lab("upcr")
    upcr = next((v for v in series.values(since=window_start(inp.now, days)) if v.value is not None), None)
    high = upcr is not None and upcr.value is not None and round(upcr.value, 6) >= limit
    new_start = continuing_because(inp) is None and threshold(inp, "contraceptive_new_start_counts")
    if not high and not new_start:
        newest = (
            f"newest UPCR {on(upcr)} is below {num(limit)} g/g" if upcr else f"no UPCR in {num(days)} days"
        )
        return quiet(
            "P10",
            f"{names(pills)} active with lupus nephritis, but {newest} and this is not a new tacrolimus "
            "start",
            [*unusable_in(series, window_start(inp.now, days)), *unavailable(record, "Observation")],
        )
    why = f"UPCR {on(upcr)} (≥ {num(limit)} g/g)" if high and upcr else "a new tacrolimus start"
    return finding(
        "P10",
        "info",
        "Oestrogen-containing contraceptive with active lupus nephritis",
        f"{capital(names(pills))} {'is' if len(pills) == 1 else 'are'} active with active lupus nephritis "
        f"({why}). {P10_CONTINUING if high else P10_NEW_START} ACR 2020 strongly recommends progestin-only "
        "or intrauterine contraception over combined oestrogen–progestin methods in SLE with moderate or "
        "severe activity, including nephritis (oestrogen adds thrombotic risk): discuss switching the "
        "method.",
        ("acr-2020-reproductive",),
        evidence=[
            *(medication_evidence(p) for p in pills),
            *(condition_evidence(c) for c in record.active_conditions("lupus-nephritis")),
            *([lab_evidence("UPCR", upcr)] if high and upcr else []),
        ],
        missing=unavailable(record, "MedicationRequest"),
    )


POSTPARTUM_READS = merge_needs(
    PREGNANCY_NEEDS,
    {
        "Patient": (),
        "Condition": ("delivery",),
        "MedicationRequest": ("tacrolimus",),
        "Observation": ("tacrolimus-level",),
    },
)

DECLARATIONS = (
    PREGNANCY.declare(
        "P9",
        p9_postpartum_exposure,
        ("info", "warning"),
        "Post-partum on tacrolimus, no level since birth",
        settings=(
            setting("postpartum_days", "integer", 1, 365, "P9: a delivery within this many days"),
            setting(
                "postpartum_dose_rise",
                "number",
                1,
                10,
                "P9: warning when the daily dose now is at least this multiple of the dose at conception",
            ),
        ),
        citations=("versluis-2023", "hebert-2013"),
        needs=POSTPARTUM_READS,
        course=("tacrolimus-level",),
        wording=Wording(
            continuing="check a trough now and reduce the dose to the level"
        ),  # never a new start
    ),
    PREGNANCY.declare(
        "P10",
        p10_oestrogen_contraceptive,
        ("info",),
        "Oestrogen contraceptive with active nephritis",
        settings=(
            setting("active_nephritis_upcr", "number", 0, 50, "P10: UPCR at or above, g/g"),
            setting("active_nephritis_upcr_days", "integer", 1, 3650, "P10: UPCR look-back"),
            setting(
                "contraceptive_new_start_counts",
                "boolean",
                about="P10: a new tacrolimus start counts as active nephritis",
            ),
        ),
        citations=("acr-2020-reproductive",),
        needs={
            "Condition": ("lupus-nephritis",),
            "MedicationRequest": (CONTRACEPTIVES, "tacrolimus"),
            "Observation": ("upcr",),
        },
        course=("upcr",),
        wording=Wording(new_start=P10_NEW_START, continuing=P10_CONTINUING),
    ),
)
