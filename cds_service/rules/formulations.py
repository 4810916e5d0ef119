"""A tacrolimus formulation switch or mix (N17, rule catalog version 3).

Immediate-release tacrolimus, Envarsus XR (extended-release tablet) and Astagraf XL (extended-release
capsule) are not interchangeable mg for mg: Envarsus is started at 80 % of the immediate-release daily dose,
and the other directions have no labelled ratio. A draft of one oral class beside a stored active, on-hold or
renewed order of another is a switch (or, if the old order was not meant to stop, a mix); N17 reports it
instead of N12 and compares the two daily doses. rules.md v3 § Data rules and N17; clinical.md §6.2;
interpretations 63-67.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.drug_forms import EXTENDED_RELEASE_CAPSULE, EXTENDED_RELEASE_TABLET, IMMEDIATE_RELEASE
from cds_service.record import Medication
from cds_service.rules.common import (
    capital,
    finding,
    medication_evidence,
    names,
    num,
    percent,
    quiet,
    threshold,
    unavailable,
)
from cds_service.rules.model import Evidence, Finding, OrderLabs, Quiet, RuleInput, StopMedication
from cds_service.rules.monitoring import MONITORING, TACROLIMUS
from cds_service.rules.registry import Wording, choice_setting, setting

TACROLIMUS_LEVEL = ("11253-2", "Tacrolimus [Mass/volume] in Blood")
SWITCHED_FROM_STATUSES = frozenset({"active", "on-hold"})
"""A stored order the patient may still take: a switch from it leaves it to be stopped."""
CLASS_WORDS = {
    IMMEDIATE_RELEASE: "immediate release",
    EXTENDED_RELEASE_TABLET: "extended-release tablet",
    EXTENDED_RELEASE_CAPSULE: "extended-release capsule",
}
"""The oral formulation classes N17 compares (intravenous ↔ oral is out of scope: no verified conversion)."""
SHORT_WORDS = {
    IMMEDIATE_RELEASE: "immediate release",
    EXTENDED_RELEASE_TABLET: "Envarsus XR",
    EXTENDED_RELEASE_CAPSULE: "Astagraf XL",
}

TROUGH = "check a trough at least twice in the first week after the switch (steady state takes about 7 days)."
ORDER_WORDING = f"Check the new daily dose against the label before signing, stop the old order, and {TROUGH}"
MG_FOR_MG_WORDING = (
    "This dose risks a higher exposure than intended: re-enter the new order at the labelled conversion dose "
    f"before signing, keep the old order until then, and {TROUGH}"
)
CONTINUING_WORDING = (
    "Check with the patient and the pharmacy which product and dose the patient takes now, stop the order "
    f"that no longer applies, and {TROUGH}"
)


@dataclass(frozen=True)
class Switch:
    """Orders of one oral class switched from (stored) and of another switched to (the order)."""

    old: tuple[Medication, ...]
    new: tuple[Medication, ...]

    @property
    def from_class(self) -> str:
        return self.old[0].formulation or ""

    @property
    def to_class(self) -> str:
        return self.new[0].formulation or ""

    @property
    def old_dose(self) -> float | None:
        return _total(self.old)

    @property
    def new_dose(self) -> float | None:
        return _total(self.new)

    @property
    def ratio(self) -> float | None:
        """The new daily dose as a fraction of the old one, rounded so that 3.8 / 4 is 0.95 exactly."""
        old, new = self.old_dose, self.new_dose
        return None if old is None or new is None or old <= 0 else round(new / old, 6)


def _total(orders: tuple[Medication, ...]) -> float | None:
    """The daily dose of one regimen ordered in several orders: their sum; None if any is unknown."""
    doses = [o.daily_dose_mg for o in orders]
    return None if any(d is None for d in doses) else round(sum(d for d in doses if d is not None), 6)


def _by_class(orders: list[Medication]) -> dict[str, tuple[Medication, ...]]:
    grouped: dict[str, list[Medication]] = {}
    for order in orders:
        if order.formulation in CLASS_WORDS:
            grouped.setdefault(order.formulation, []).append(order)
    return {form: tuple(group) for form, group in grouped.items()}


def switches(inp: RuleInput) -> list[Switch]:
    """Each (switched from, switched to) pair of different oral classes (interpretations 63 and 64).

    Order hooks: the triggering drafts of one class are the new regimen; the stored orders (active, on hold,
    or pointed to by ``priorPrescription`` whatever their status, unless never exposed) of another class the
    old one. Patient-view: the stored active and on-hold orders, the class of the newest order (by
    ``authoredOn``) being the one switched to."""
    renewed = {o.prior_prescription for o in inp.orders if o.prior_prescription}
    stored = [
        m
        for m in inp.record.medications
        if "tacrolimus" in m.concepts
        and not m.is_draft
        and (m.status in SWITCHED_FROM_STATUSES or (m.id in renewed and m.exposure is not None))
    ]
    drafts = [o for o in inp.orders if o.is_draft]
    if drafts:
        new_groups = _by_class(drafts)
        old_groups = _by_class([m for m in stored if not m.is_trigger])
    else:  # patient-view: the stored orders among themselves, older → newer
        groups = _by_class(stored)
        if len(groups) < 2:
            return []
        newest = max(groups, key=lambda form: max(_when(o) for o in groups[form]))
        new_groups = {newest: groups[newest]}
        old_groups = {form: group for form, group in groups.items() if form != newest}
    return [
        Switch(old, new)
        for new_form, new in new_groups.items()
        for old_form, old in old_groups.items()
        if old_form != new_form
    ]


def _when(order: Medication) -> float:
    return order.authored.timestamp() if order.authored else float("-inf")


def _mg_for_mg(switch: Switch, inp: RuleInput) -> bool:
    """Immediate release → Envarsus at or above ``formulation_mg_for_mg_ratio`` of the daily dose."""
    ratio = switch.ratio
    return (
        ratio is not None
        and switch.from_class == IMMEDIATE_RELEASE
        and switch.to_class == EXTENDED_RELEASE_TABLET
        and ratio >= threshold(inp, "formulation_mg_for_mg_ratio")
    )


def _too_high(switch: Switch, inp: RuleInput) -> bool:
    ratio = switch.ratio
    return ratio is not None and ratio >= threshold(inp, "formulation_switch_high_ratio")


def _direction(switch: Switch) -> str:
    """What the labels say about this direction (clinical.md §6.2 N17)."""
    if switch.from_class == IMMEDIATE_RELEASE and switch.to_class == EXTENDED_RELEASE_TABLET:
        return (
            "Envarsus XR is started at 80% of the total immediate-release daily dose, once daily (Envarsus "
            "label)."
        )
    if switch.from_class == IMMEDIATE_RELEASE and switch.to_class == EXTENDED_RELEASE_CAPSULE:
        return (
            "Astagraf XL has no labelled conversion from immediate release; a same-mg conversion lowered "
            "troughs in several series (about 127% of the immediate-release dose was needed at 12 weeks)."
        )
    return "The labels give no conversion ratio for this direction: the products are not interchangeable."


def _dose_text(orders: tuple[Medication, ...]) -> str:
    dose = _total(orders)
    return f"{num(dose)} mg/day" if dose is not None else "daily dose not computable from the order"


def _describe(switch: Switch) -> str:
    ratio = switch.ratio
    share = f": the new daily dose is {percent(ratio)} of the old one" if ratio is not None else ""
    return (
        f"{capital(names(switch.old))} ({CLASS_WORDS[switch.from_class]}, {_dose_text(switch.old)}) → "
        f"{names(switch.new)} ({CLASS_WORDS[switch.to_class]}, {_dose_text(switch.new)}){share}. "
        f"{_direction(switch)}"
    )


def _unreferenced_active(switch: Switch, inp: RuleInput) -> list[Medication]:
    renewed = {o.prior_prescription for o in inp.orders if o.prior_prescription}
    return [o for o in switch.old if o.status == "active" and o.id not in renewed]


def _suggestions(
    found: list[Switch], critical: list[Switch], inp: RuleInput
) -> list[StopMedication | OrderLabs]:
    trough: list[StopMedication | OrderLabs] = [
        OrderLabs((TACROLIMUS_LEVEL,), "Order a tacrolimus trough level (5–7 days after the switch)")
    ]
    if critical:  # the draft is re-entered at the labelled dose; the old order stays until then
        drafts = list(dict.fromkeys(o for s in critical for o in s.new if o.is_draft))
        if not drafts:
            return trough
        label = "Remove the draft " + (
            f"{drafts[0].name} order" if len(drafts) == 1 else f"{names(drafts)} orders (one regimen)"
        )
        delete = StopMedication(
            drafts[0],
            f"{label} and re-enter it at the labelled conversion dose",
            reason="Tacrolimus formulation switch at a mg-for-mg or higher dose",
            drafts_only=True,
            together=tuple(drafts[1:]),
        )
        return [delete, *trough]
    if not any(o.is_draft for s in found for o in s.new):
        return trough  # patient-view: which order to stop is the clinician's call
    stops: list[StopMedication | OrderLabs] = [
        StopMedication(
            old, f"Stop {old.name} (switched to {names(s.new)})", reason=f"switched to {names(s.new)}"
        )
        for s in found
        for old in s.old
        if old.status in SWITCHED_FROM_STATUSES
    ]
    return [*stops, *trough]


def n17_formulation_switch(inp: RuleInput) -> Finding | Quiet:
    """A tacrolimus order beside a stored one of another oral formulation class; critical (setting
    ``formulation_switch_dose_indicator``) when immediate release → Envarsus is at ≥ 95 % of the daily dose
    or any switch at ≥ 150 % (interpretations 63-67)."""
    found = switches(inp)
    if not found:
        told = sorted({o.formulation or "unknown" for o in inp.orders}) or ["no tacrolimus order"]
        return quiet(
            "N17",
            "no stored tacrolimus order of another oral formulation class beside this order "
            f"(formulation: {', '.join(told)})",
            unavailable(inp.record, "MedicationRequest"),
        )
    critical = [s for s in found if _mg_for_mg(s, inp) or _too_high(s, inp)]
    first = critical[0] if critical else found[0]
    ratio = first.ratio
    route = f"{SHORT_WORDS[first.from_class]} → {SHORT_WORDS[first.to_class]}"
    if critical and _mg_for_mg(first, inp) and ratio is not None:
        summary = f"Tacrolimus {route} at {percent(ratio)} of the daily dose; the label converts at 80%"
    elif critical and ratio is not None:
        summary = f"Tacrolimus {route} at {percent(ratio)} of the daily dose: check the dose"
    else:
        summary = f"Tacrolimus formulation switch ({route}): not interchangeable mg for mg"
    drafted = any(o.is_draft for s in found for o in s.new)
    detail = " ".join(_describe(s) for s in found)
    duplicates = [o for s in found for o in _unreferenced_active(s, inp)]
    if duplicates and drafted:
        detail += (
            f" {capital(names(duplicates))} is still active and this order does not name it as the order it "
            "replaces: if this is not a switch, it is duplicate tacrolimus therapy."
        )
    if not drafted:
        detail += " " + CONTINUING_WORDING
    else:
        detail += " " + (MG_FOR_MG_WORDING if critical else ORDER_WORDING)
    astagraf = any(EXTENDED_RELEASE_CAPSULE in (s.from_class, s.to_class) for s in found)
    missing = [
        f"daily dose not computable from {o.name} ({o.reference}): compare the doses by hand"
        for s in found
        for o in (*s.old, *s.new)
        if o.daily_dose_mg is None
    ]
    evidence: list[Evidence] = []
    for s in found:
        for o in (*s.old, *s.new):
            evidence.append(medication_evidence(o))
            if o.daily_dose_mg is not None:
                evidence.append(
                    Evidence(f"Daily dose of {o.name}", f"{num(o.daily_dose_mg)} mg/day", None, o.reference)
                )
    indicator = threshold(inp, "formulation_switch_dose_indicator") if critical else "warning"
    return finding(
        "N17",
        indicator,
        summary,
        detail,
        ("envarsus-label", "prograf-label", *(("advagraf-conversion-2013",) if astagraf else ())),
        evidence=evidence,
        missing=[*missing, *unavailable(inp.record, "MedicationRequest")],
        suggestions=_suggestions(found, critical, inp),
    )


DECLARATIONS = (
    MONITORING.declare(
        "N17",
        n17_formulation_switch,
        ("warning", "critical"),
        "Tacrolimus formulation switch or mix",
        settings=(
            setting(
                "formulation_mg_for_mg_ratio",
                "number",
                0,
                10,
                "N17: immediate release → Envarsus at or above this fraction of the daily dose is critical",
            ),
            setting(
                "formulation_switch_high_ratio",
                "number",
                0,
                10,
                "N17: any formulation switch at or above this fraction of the daily dose is critical",
            ),
            choice_setting(
                "formulation_switch_dose_indicator",
                ("warning", "critical"),
                "N17's indicator when the switch dose reaches one of its two ratios",
            ),
        ),
        citations=("envarsus-label", "prograf-label", "advagraf-conversion-2013"),
        needs=TACROLIMUS,
        course=("tacrolimus-level",),
        wording=Wording(new_start=ORDER_WORDING, continuing=CONTINUING_WORDING),
    ),
)
