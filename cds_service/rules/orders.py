"""Tacrolimus orders against each other: one regimen, a duplicate, a formulation change, IV beside oral.

rules.md v3 § Data rules. Drafts of one formulation class in one ``draftOrders`` are one regimen (split
strengths, morning and evening doses), whose daily dose is their sum; only two drafts of the same product,
dose and timing are a duplicate entry. Two drafts of different oral classes are a duplicate whose formulations
are not interchangeable mg for mg. A draft beside a stored order of another oral class is a formulation
change: N17 speaks about it (``rules.formulations``), so it is no overlap here. IV and oral both active are
checked at warning. An unknown formulation counts as the same as the other order's. Also: what every card of
an answer says about the order itself (``order_notes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cds_service.drug_forms import INTRAVENOUS, UNKNOWN
from cds_service.record import Medication
from cds_service.rules.common import capital, screened_as_new_start, unfound_priors
from cds_service.rules.model import RuleInput

SAME = "same formulation"
ORAL_CHANGE = "different oral formulations"
ROUTE = "intravenous and oral"

DUPLICATE_ENTRY = "duplicate entry"
"""Two drafts of the same product, dose and timing: the later one is the duplicate (N12, critical)."""
MIXED_DRAFTS = "mixed formulations"
"""Two drafts of different oral formulation classes: a duplicate, not interchangeable mg for mg (N12)."""
SECOND_ORDER = "second order"
"""A stored active order of the same formulation (N12, critical)."""
BOTH_ROUTES = "intravenous and oral both active"
"""An intravenous and an oral order, neither on hold: N12 at warning, no delete suggestion."""

CRITICAL_KINDS = frozenset({DUPLICATE_ENTRY, MIXED_DRAFTS, SECOND_ORDER})
STORED_KINDS = frozenset({SECOND_ORDER})
"""Overlaps with a stored order: linking the new order as its renewal (priorPrescription) would end them."""


@dataclass(frozen=True)
class Overlap:
    """A tacrolimus order that overlaps the one(s) this request is about, and how."""

    order: Medication
    """The duplicate: the later draft, or the stored order."""
    beside: Medication | None
    """The order it overlaps (the earlier draft, or this request's order)."""
    kind: str


def relation(a: Medication, b: Medication) -> str:
    """How two tacrolimus orders' formulations relate; "unknown" is the same as the other's (rules.md v3)."""
    first, second = a.formulation or UNKNOWN, b.formulation or UNKNOWN
    if UNKNOWN in (first, second) or first == second:
        return SAME
    return ROUTE if INTRAVENOUS in (first, second) else ORAL_CHANGE


def identical(a: Medication, b: Medication) -> bool:
    """The same product, dose and timing: a duplicate entry rather than part of one regimen."""
    return a.product == b.product and a.dosing == b.dosing


def draft_overlaps(drafts: Sequence[Medication]) -> list[Overlap]:
    """Tacrolimus drafts of one request that are not one regimen: each later draft with the first earlier
    one it duplicates (same product, dose and timing), mixes with (another oral class) or runs beside (IV)."""
    found = []
    for index, later in enumerate(drafts):
        for earlier in drafts[:index]:
            kind = relation(earlier, later)
            if kind == SAME and identical(earlier, later):
                found.append(Overlap(later, earlier, DUPLICATE_ENTRY))
            elif kind == ORAL_CHANGE:
                found.append(Overlap(later, earlier, MIXED_DRAFTS))
            elif kind == ROUTE:
                found.append(Overlap(later, earlier, BOTH_ROUTES))
            else:
                continue  # one regimen in several drafts
            break
    return found


def stored_overlap(stored: Medication, orders: Sequence[Medication]) -> Overlap | None:
    """A stored active or on-hold tacrolimus order beside this request's order(s), or None when it is not one:
    another oral formulation is a switch, which N17 reports instead (rules.md v3); IV beside oral with either
    on hold is a route change under way."""
    kinds = {relation(order, stored) for order in orders} or {SAME}
    beside = orders[0] if orders else None
    if SAME in kinds:
        return Overlap(stored, beside, SECOND_ORDER)
    if ORAL_CHANGE in kinds:
        return None
    if stored.status == "active" and all(o.status != "on-hold" for o in orders):
        return Overlap(stored, beside, BOTH_ROUTES)
    return None


def regimen_daily_dose(drafts: Sequence[Medication]) -> float | None:
    """The daily dose of one regimen ordered in several drafts: their sum; None if any is unknown."""
    doses = [d.daily_dose_mg for d in drafts]
    return None if not doses or any(d is None for d in doses) else sum(d for d in doses if d is not None)


def overlap_sentence(overlap: Overlap) -> str:
    """What the card says about one overlap."""
    order, beside = overlap.order, overlap.beside
    other = f" and {beside.name}" if beside is not None else ""
    if overlap.kind == DUPLICATE_ENTRY:
        earlier = beside.name if beside else "another draft"
        return capital(f"{order.name} repeats {earlier} (same product, dose and timing): a duplicate entry.")
    if overlap.kind == MIXED_DRAFTS:
        forms = f" ({order.formulation}; {beside.formulation})" if beside is not None else ""
        return capital(
            f"{order.name}{other} are different tacrolimus formulations{forms}, which are not "
            "interchangeable mg for mg."
        )
    if overlap.kind == BOTH_ROUTES:
        return (
            f"Intravenous and oral tacrolimus are both active ({order.name}{other}): check that one stops "
            "when the other starts."
        )
    return ""


def order_notes(inp: RuleInput) -> tuple[str, ...]:
    """What every card of the answer says once about the order it is about (rules.md v3 Card contract):
    recognised only by its name, a medication reference that could not be resolved, an earlier order it renews
    that is not in the record."""
    notes = []
    for order in inp.orders:
        if "tacrolimus" in order.recognised_by_name:
            notes.append(
                f"The tacrolimus order {order.name} was recognised by its name, not by a code: "
                "check the order."
            )
        if order.unresolved_reference:
            notes.append(
                f"The draft's medication reference {order.unresolved_reference} could not be resolved; "
                "the order was recognised by its text."
            )
    unfound = unfound_priors(inp)
    if unfound and not inp.continuing:
        listed = ", ".join(f"MedicationRequest/{i}" for i in unfound)
        screening = (
            ", and hepatitis B screening is checked as for a new start" if screened_as_new_start(inp) else ""
        )
        notes.append(
            f"The earlier order this one renews ({listed}) was not found in the record: it is read as "
            "continuing therapy (the patient may take tacrolimus from another prescriber or system)"
            f"{screening}."
        )
    return tuple(dict.fromkeys(notes))
