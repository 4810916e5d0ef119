"""Hyperkalaemia co-drugs beside tacrolimus (N16, rule catalog version 3).

Tacrolimus raises potassium; so do RAS blockers, potassium-sparing diuretics and trimethoprim. Most lupus
nephritis patients take a RAS blocker for proteinuria, so the finding is about the potassium, never about
stopping the RAS blocker: it speaks when the newest potassium is at or above ``potassium_codrug_min``, or when
a co-drug is drafted without a recent potassium. rules.md v3 § Nephrotoxicity and safety monitoring;
clinical.md §6.2 N16; interpretations 73-77.

The co-drug is read from the request's orders (a draft of this session counts, whether or not it triggered
the call), so the same rule serves the co-prescribing services, where the drafted co-drug is "the order" and
the stored tacrolimus order is the tacrolimus being taken.
"""

from __future__ import annotations

from cds_service.record import Medication
from cds_service.rules.common import (
    capital,
    continuing_because,
    day,
    finding,
    lab_evidence,
    medication_evidence,
    newest_recent,
    num,
    on,
    quiet,
    threshold,
    unavailable,
    words,
)
from cds_service.rules.model import Finding, OrderLabs, Quiet, RuleInput, StopMedication
from cds_service.rules.monitoring import MONITORING, POTASSIUM_LAB, POTASSIUM_MAX, RECENT, labs
from cds_service.rules.other_prescriber import taking
from cds_service.rules.registry import CO_PRESCRIBING, EVERY_TACROLIMUS_SERVICE, Wording, setting

RAS_BLOCKERS = "ras-inhibitors"
POTASSIUM_SPARING = "potassium-sparing-diuretics"
TRIMETHOPRIM = "trimethoprim"
HYPERKALAEMIA_CODRUGS = (RAS_BLOCKERS, POTASSIUM_SPARING, TRIMETHOPRIM)
"""The drug classes of N16 (value sets of the same names): what the co-prescribing services watch for it."""
DELETABLE = (POTASSIUM_SPARING, TRIMETHOPRIM)
"""Only these may be suggested for deletion when drafted: a RAS blocker treats the proteinuria (rules.md)."""
CLASS_WORDS = {
    RAS_BLOCKERS: "a RAS blocker",
    POTASSIUM_SPARING: "a potassium-sparing diuretic",
    TRIMETHOPRIM: "trimethoprim",
}
CITED = ("prograf-label", "rizk-2021-hyperkalaemia", "kdigo-2024")

WORDING = Wording(
    new_start="Check potassium again 3–7 days after the first tacrolimus dose.",
    continuing="Recheck potassium in 3–7 days, and after any dose change of tacrolimus or of these drugs.",
    co_prescribing=(
        "{taking} Tacrolimus raises potassium; the drug ordered here adds to it. If it goes ahead, recheck "
        "potassium in 3–7 days and let the tacrolimus prescriber know; do not change the tacrolimus order "
        "from here."
    ),
)
"""N16's closing advice, by who reads it (rules.md v3 § Card contract, Wording follows the situation)."""


def codrugs(inp: RuleInput) -> list[Medication]:
    """Active, on-hold or drafted co-drugs, in record order; a triggering draft counts (co-prescribing). The
    co-prescribing services discuss only the drafted drug (rules.md v3 § The other prescriber)."""
    found = [
        m for m in inp.record.medications if m.active and any(c in m.concepts for c in HYPERKALAEMIA_CODRUGS)
    ]
    if inp.service_kind == CO_PRESCRIBING:
        return [m for m in found if m.is_draft]
    return found


def _kinds(drugs: list[Medication]) -> str:
    return words([w for c, w in CLASS_WORDS.items() if any(c in m.concepts for m in drugs)])


def _state(m: Medication) -> str:
    return "drafted now" if m.is_draft else f"{m.status} since {day(m.authored)}"


def _advice(inp: RuleInput) -> str:
    if inp.service_kind == CO_PRESCRIBING:  # the tacrolimus line every co-prescribing card starts with
        assert WORDING.co_prescribing is not None
        return WORDING.co_prescribing.format(taking=taking(inp).sentence)
    wording = WORDING.continuing if continuing_because(inp) else WORDING.new_start
    assert wording is not None
    return wording


def n16_hyperkalaemia_codrugs(inp: RuleInput) -> Finding | Quiet:
    """A co-drug with the newest recent potassium ≥ ``potassium_codrug_min`` (info 5.0–5.5 with every co-drug
    established; warning above ``potassium_max`` or with a co-drug drafted now), or a drafted co-drug and no
    recent potassium (info; interpretations 73-77)."""
    drugs = codrugs(inp)
    if not drugs:
        return quiet(
            "N16",
            "no active or drafted ACE inhibitor, ARB, ARNI, aliskiren, mineralocorticoid antagonist, "
            "potassium-sparing diuretic or trimethoprim",
            unavailable(inp.record, "MedicationRequest"),
        )
    potassium, gaps = newest_recent(inp, "potassium")
    drafted = [m for m in drugs if m.is_draft]
    listed = capital(words([f"{m.name} ({_state(m)})" for m in drugs]))
    evidence = [medication_evidence(m) for m in drugs]
    why = (
        "Tacrolimus raises potassium, and its label asks for careful consideration before adding other drugs "
        "that raise it (potassium-sparing diuretics, ACE inhibitors, ARBs); trimethoprim acts like amiloride."
    )
    if potassium is None:
        if not drafted:
            return quiet(
                "N16",
                f"no recent potassium, and every co-drug ({words([m.name for m in drugs])}) is established: "
                "N1 asks for the baseline potassium",
                gaps,
            )
        days = num(threshold(inp, "recent_lab_days"))
        return finding(
            "N16",
            "info",
            f"No potassium in {days} days with {_kinds(drafted)} drafted beside tacrolimus",
            f"{listed}. No potassium is recorded in the last {days} days. {why} Check potassium before or "
            f"soon after adding it. {_advice(inp)}",
            CITED,
            evidence=evidence,
            missing=gaps,
            suggestions=[OrderLabs((POTASSIUM_LAB,), "Order a potassium")],
        )
    floor, ceiling = threshold(inp, "potassium_codrug_min"), threshold(inp, "potassium_max")
    if potassium.value < floor:
        return quiet(
            "N16",
            f"newest potassium {on(potassium)} is below {num(floor)} with {words([m.name for m in drugs])}",
            gaps,
        )
    indicator = "warning" if potassium.value > ceiling or drafted else "info"
    ras = (
        " ACE inhibitors and ARBs treat the proteinuria of lupus nephritis (KDIGO 2024): manage the "
        "potassium (diet, a non-potassium-sparing diuretic, a binder) rather than stopping them by reflex."
        if any(RAS_BLOCKERS in m.concepts for m in drugs)
        else ""
    )
    deletable = [m for m in drafted if any(c in m.concepts for c in DELETABLE)]
    reconsider = f" Reconsider the drafted {words([m.name for m in deletable])}." if deletable else ""
    return finding(
        "N16",
        indicator,
        f"Potassium {num(potassium.value)} mmol/L with {_kinds(drugs)}: additive hyperkalaemia on tacrolimus",
        f"Potassium {on(potassium)}. {listed}. {why}{ras}{reconsider} {_advice(inp)}",
        CITED,
        evidence=[lab_evidence("Potassium", potassium), *evidence],
        missing=gaps,
        suggestions=[
            OrderLabs((POTASSIUM_LAB,), "Order a potassium (recheck in 3–7 days)"),
            *(
                StopMedication(
                    m,
                    f"Remove the draft {m.name} order",
                    reason="Additive hyperkalaemia with tacrolimus",
                    drafts_only=True,
                )
                for m in deletable
            ),
        ],
    )


DECLARATIONS = (
    MONITORING.declare(
        "N16",
        n16_hyperkalaemia_codrugs,
        ("info", "warning"),
        "Hyperkalaemia co-drug with high potassium",
        settings=(
            setting(
                "potassium_codrug_min",
                "number",
                2,
                10,
                "N16: mmol/L, at or above, with an ACE inhibitor, ARB, ARNI, aliskiren, potassium-sparing "
                "diuretic or trimethoprim",
            ),
            POTASSIUM_MAX,
            RECENT,
        ),
        citations=CITED,
        runs_in=EVERY_TACROLIMUS_SERVICE | {CO_PRESCRIBING},
        needs=labs("potassium", "tacrolimus-level", drugs=HYPERKALAEMIA_CODRUGS),
        course=("potassium",),
        wording=WORDING,
    ),
)
