"""How much of a drug an order gives a day, read from its ``dosageInstruction`` (clinical.md §6.1 item 2).

The total daily dose is the sum, over the instructions that are not "as needed", of the dose (mg, or a count
of tablets or capsules × the product's strength) × the times per day (``timing.repeat.frequency`` per
``period`` ``periodUnit``, else the number of ``when``/``timeOfDay`` entries, else ``timing.code`` BID, TID,
...). When any part cannot be read the daily dose is None: the card then says so, and no dose comparison is
made. Raw JSON is read through ``fhir_json``: a malformed dosage gives None, never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from cds_service.fhir_json import obj, objs

PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.0, "a": 365.25}
"""UCUM units of ``Timing.repeat.periodUnit`` in days."""

TIMING_CODES_PER_DAY = {
    "BID": 2.0, "TID": 3.0, "QID": 4.0, "QD": 1.0, "AM": 1.0, "PM": 1.0, "BED": 1.0, "QOD": 0.5,
    "Q12H": 2.0, "Q24H": 1.0, "Q8H": 3.0, "Q6H": 4.0, "Q4H": 6.0,
}  # fmt: skip
"""``Timing.code`` (HL7 v3 GTSAbbreviation and the Q…H codes EHRs send) → administrations per day."""

MG_PER_UNIT = {"mg": 1.0, "ug": 0.001, "mcg": 0.001, "g": 1000.0}
COUNT_UNITS = frozenset({
    "", "1", "{tbl}", "{tablet}", "{tablets}", "{capsule}", "{capsules}", "{cap}", "tablet", "tablets", "tab",
    "tabs", "capsule", "capsules", "cap", "caps",
})  # fmt: skip
"""Units that count tablets or capsules (UCUM annotations and the words EHRs put in ``unit``)."""


def _as_needed(dosage: Mapping[str, Any]) -> bool:
    return dosage.get("asNeededBoolean") is True or bool(obj(dosage.get("asNeededCodeableConcept")))


def _number(value: Any) -> float | None:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None
    )


def _dose_quantity(dosage: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The dose of one instruction: R4 ``doseAndRate[].doseQuantity``, or STU3's ``doseQuantity``."""
    for dose_and_rate in objs(dosage.get("doseAndRate")):
        if quantity := obj(dose_and_rate.get("doseQuantity")):
            return quantity
    return obj(dosage.get("doseQuantity")) or None


def dose_mg(dosage: Mapping[str, Any], strength_mg: float | None) -> float | None:
    """One administration in mg: a mass, or a count of tablets/capsules × the product strength."""
    quantity = _dose_quantity(dosage)
    value = _number(quantity.get("value")) if quantity else None
    if quantity is None or value is None:
        return None
    unit = str(quantity.get("code") or quantity.get("unit") or "").strip().lower()
    if unit in MG_PER_UNIT:
        return value * MG_PER_UNIT[unit]
    if unit in COUNT_UNITS and strength_mg is not None:
        return value * strength_mg
    return None


def times_per_day(timing: Any) -> float | None:
    """How many times a day a Timing gives the dose; None when it does not say."""
    repeat = obj(obj(timing).get("repeat"))
    frequency, period = _number(repeat.get("frequency")), _number(repeat.get("period"))
    unit = repeat.get("periodUnit")
    if period is not None and isinstance(unit, str) and unit in PERIOD_DAYS:
        return (frequency or 1.0) / (period * PERIOD_DAYS[unit])
    times = [t for t in (repeat.get("timeOfDay"), repeat.get("when")) if isinstance(t, list) and t]
    if times and frequency is None and period is None:
        return float(len(times[0]))
    for coding in objs(obj(obj(timing).get("code")).get("coding")):
        code = coding.get("code")
        if isinstance(code, str) and code.strip().upper() in TIMING_CODES_PER_DAY:
            return TIMING_CODES_PER_DAY[code.strip().upper()]
    return None


def daily_dose_mg(order: Mapping[str, Any], strength_mg: float | None) -> float | None:
    """The order's total daily dose in mg (clinical.md §6.1 item 2); None when it cannot be worked out."""
    total, counted = 0.0, False
    for dosage in objs(order.get("dosageInstruction")):
        if _as_needed(dosage):
            continue
        dose, per_day = dose_mg(dosage, strength_mg), times_per_day(dosage.get("timing"))
        if dose is None or per_day is None:
            return None
        total, counted = total + dose * per_day, True
    return round(total, 6) if counted else None


def dosing_key(order: Mapping[str, Any]) -> str:
    """What the order says about dose and timing, canonically: two orders with the same key give the same
    doses at the same times (rules.md: only such drafts of one product are a duplicate entry)."""
    parts = [
        [_dose_quantity(d), obj(d.get("timing")), d.get("text") if isinstance(d.get("text"), str) else None]
        for d in objs(order.get("dosageInstruction"))
    ]
    return orjson.dumps(parts, option=orjson.OPT_SORT_KEYS, default=str).decode()


def timings(dosing: str) -> frozenset[str]:
    """The timings a ``dosing_key`` holds, canonically: drafts of one regimen whose timings differ give their
    doses at different times of day (N18: a regimen of once-daily drafts, morning and evening)."""
    try:
        parts = orjson.loads(dosing)
    except orjson.JSONDecodeError:
        return frozenset()
    return frozenset(
        orjson.dumps(part[1], option=orjson.OPT_SORT_KEYS).decode()
        for part in parts
        if isinstance(part, list) and len(part) == 3 and part[1]
    )


def administrations_per_day(order: Mapping[str, Any]) -> float | None:
    """How many times a day the order gives a dose (N18 asks whether an extended-release order is given more
    than once a day); None when a timing cannot be read."""
    total = 0.0
    for dosage in objs(order.get("dosageInstruction")):
        if _as_needed(dosage):
            continue
        per_day = times_per_day(dosage.get("timing"))
        if per_day is None:
            return None
        total += per_day
    return total or None
