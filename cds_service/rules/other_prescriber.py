"""The co-prescribing services' side of a finding: the clinician who drafts the *other* drug (rules.md v3 §
The other prescriber).

There the watched draft is "the order" (``RuleInput.orders``) and the patient's stored tacrolimus order is the
tacrolimus being taken. A finding is about the drafted drug only: an interacting drug already on record is the
tacrolimus services' business. Each finding's words for this clinician are the ``co_prescribing`` text of its
declaration (``registry.Wording``); what every such card says first (the tacrolimus order: product, dose,
since when, its prescriber to contact, the newest trough) and the alternatives ``clinical.md`` §6 names are
here, once. Nothing here ever suggests changing the tacrolimus order: it belongs to another prescriber.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cds_service.record import Medication
from cds_service.rules.common import (
    active_orders,
    capital,
    day,
    finding,
    medication_evidence,
    names,
    newest_number,
    on,
    unavailable,
)
from cds_service.rules.model import Evidence, Finding, OrderLabs, RuleInput, Suggestion
from cds_service.rules.registry import CO_PRESCRIBING, Wording

TAKEN = ("active", "on-hold")
"""Statuses of a stored tacrolimus order that mean the patient takes it (as the trigger reads them)."""
TACROLIMUS_LEVEL = ("11253-2", "Tacrolimus [Mass/volume] in Blood")
ORDER_A_LEVEL = OrderLabs((TACROLIMUS_LEVEL,), "Order a tacrolimus level (within 3 days)")
NEEDS: dict[str, tuple[str, ...]] = {
    "Patient": (),
    "MedicationRequest": ("tacrolimus",),
    "Observation": ("tacrolimus-level",),
}
"""What every co-prescribing card reads besides its finding: the tacrolimus order and the newest level."""

ALTERNATIVES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("clarithromycin", "erythromycin"),
        "Azithromycin is an alternative to weigh: it is not a strong or moderate CYP3A4 inhibitor, though "
        "raised tacrolimus levels are reported with it, so a level is still sensible.",
    ),
    (
        ("ketoconazole", "itraconazole", "posaconazole", "voriconazole", "fluconazole", "isavuconazole"),
        "If another antifungal fits, choose it with the label's interaction section (caspofungin, for one, "
        "lowers rather than raises tacrolimus levels).",
    ),
    (
        (
            "ibuprofen",
            "naproxen",
            "diclofenac",
            "ketorolac",
            "celecoxib",
            "meloxicam",
            "indomethacin",
            "ketoprofen",
            "nsaid",
        ),
        "Paracetamol (acetaminophen) is an alternative to weigh for pain or fever.",
    ),
)
"""Alternatives ``clinical.md`` §6 names for the co-prescribing services, by words of the drafted drug's name:
options to weigh, in words, never a substitution."""


def speaks_to_other_prescriber(inp: RuleInput) -> bool:
    """True when a co-prescribing service asks: the watched draft is "the order"."""
    return inp.service_kind == CO_PRESCRIBING


def considered(inp: RuleInput, *concepts: str) -> list[Medication]:
    """The orders of these drug classes a finding discusses: for the other prescriber only the watched
    draft(s); otherwise every active, on-hold or draft order except the tacrolimus order itself."""
    if speaks_to_other_prescriber(inp):
        return [o for o in inp.orders if any(c in o.concepts for c in concepts)]
    return active_orders(inp.record, *concepts)


def tacrolimus_taken(inp: RuleInput) -> Medication | None:
    """The stored active (or on-hold) tacrolimus order, newest first: the tacrolimus the patient takes."""
    stored = [
        m
        for m in inp.record.medications
        if not m.is_draft and m.status in TAKEN and "tacrolimus" in m.concepts
    ]
    return max(stored, key=lambda m: m.authored.isoformat() if m.authored else "", default=None)


@dataclass(frozen=True)
class Taking:
    """What a co-prescribing card says first: the tacrolimus being taken, and the data behind it."""

    sentence: str
    evidence: tuple[Evidence, ...]
    missing: tuple[str, ...]


def taking(inp: RuleInput) -> Taking:
    """``This patient takes tacrolimus (Prograf 1 MG capsule, 2 mg every 12 hours, active since 2026-03-02,
    prescribed by Dr A, Practitioner/p1; newest tacrolimus level 6.1 ng/mL on 2026-11-20).``"""
    order = tacrolimus_taken(inp)
    missing: list[str] = []
    evidence: list[Evidence] = []
    if order is None:  # the trigger found one; a record that lost it still says so rather than guess
        parts = ["no active tacrolimus order could be read"]
    else:
        dose = order.dose_text or "dose not given in the order"
        since = order.exposure.start if order.exposure else order.authored
        who = order.requester or "prescriber not recorded in the order"
        parts = [order.name, dose, f"{order.status} since {day(since)}", f"prescribed by {who}"]
        evidence.append(medication_evidence(order))
    level, gaps = newest_number(inp.record.lab("tacrolimus-level"))
    if level is not None:
        trough = f"newest tacrolimus level {on(level)}"
        evidence.append(Evidence("Tacrolimus level", on(level).split(" on ")[0], level.when, level.reference))
    else:
        trough = "no tacrolimus level on record"
        missing += ["no tacrolimus level on record", *gaps, *unavailable(inp.record, "Observation")]
    return Taking(
        f"This patient takes tacrolimus ({', '.join(parts)}; {trough}).", tuple(evidence), tuple(missing)
    )


def alternatives(drugs: Iterable[Medication]) -> str:
    """The alternative sentences for the drafted drugs, each with a trailing space; "" when none is named."""
    found = [
        sentence
        for words, sentence in ALTERNATIVES
        if any(word in d.name.lower() for d in drugs for word in words)
    ]
    return "".join(f"{s} " for s in dict.fromkeys(found))


def to_other_prescriber(
    inp: RuleInput,
    finding_id: str,
    indicator: str,
    summary: str,
    wording: Wording,
    drugs: Sequence[Medication],
    citations: Sequence[str],
    *,
    suggestions: Iterable[Suggestion] = (),
    evidence: Iterable[Evidence] = (),
    missing: Iterable[str] = (),
    **fields: str,
) -> Finding:
    """A finding worded for the clinician drafting ``drugs``: the tacrolimus being taken, then the finding's
    ``co_prescribing`` text with ``{drug}``, ``{Drug}``, ``{is}``, ``{alternative}`` and ``fields`` filled."""
    if wording.co_prescribing is None:
        raise ValueError(
            f"{finding_id} runs in the co-prescribing services but has no co_prescribing wording"
        )
    said = taking(inp)
    drug = names(drugs)
    text = wording.co_prescribing.format(
        drug=drug,
        Drug=capital(drug),
        is_="is" if len(drugs) == 1 else "are",
        alternative=alternatives(drugs),
        **fields,
    )
    return finding(
        finding_id,
        indicator,
        summary,
        f"{said.sentence} {text.strip()}",
        citations,
        evidence=[*(medication_evidence(d) for d in drugs), *said.evidence, *evidence],
        missing=[*said.missing, *missing],
        suggestions=suggestions,
    )
