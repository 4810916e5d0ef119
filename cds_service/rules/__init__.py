"""The functional core: every finding of the rule catalog as a pure function of a RuleInput.

``evaluate`` runs every rule in catalog order; a rule that fires gives a Finding, one that does not gives a
Quiet with its reason in words. No clock, no I/O: ``inp.now`` is the request time. Configuration that turns
findings off or re-grades them is applied by the caller. Where the catalog needed a reading, the choice is in
``INTERPRETATIONS.md`` beside this file; docstrings cite it as "interpretation N".
"""

from __future__ import annotations

from collections.abc import Callable

from cds_service.rules import monitoring, pregnancy, salvage
from cds_service.rules.common import has_lupus_nephritis, merge_needs, unavailable
from cds_service.rules.model import Evaluation, Finding, Quiet, RuleInput

Rule = Callable[[RuleInput], Finding | Quiet]

SCOPES = ("lupus", "any-indication")
SCOPE_NEEDS = {"Condition": ("lupus", "lupus-nephritis", "lupus-nephritis-class-v")}

RULES: dict[str, Rule] = {**pregnancy.RULES, **salvage.RULES, **monitoring.RULES}

FINDING_IDS: tuple[str, ...] = tuple(RULES)
"""Every finding id of the catalog (version 2), in catalog order: P1-P7, S0-S4, S7, N1-N15."""

RETIRED: dict[str, str] = {"S5": "N12", "S6": "N13"}
"""Version-1 ids that no longer exist → the id that took their place. Configuration naming them is refused."""

FAMILIES: dict[str, tuple[str, ...]] = {
    family: tuple(rule_id for rule_id in RULES if rule_id.startswith(letter))
    for family, letter in (("pregnancy", "P"), ("salvage", "S"), ("monitoring", "N"))
}

PATIENT_VIEW: frozenset[str] = frozenset(
    (*FAMILIES["pregnancy"], "S7", *(i for i in FAMILIES["monitoring"] if i not in ("N11", "N15")))
)
"""What patient-view runs (rules.md § Patients already on tacrolimus), with ``RuleInput.continuing=True``."""


def retired_message(finding_id: str) -> str:
    """Why an id of version 1 is refused, naming the id that replaced it."""
    return (
        f"{finding_id!r} is retired in rule catalog version 2: it is now {RETIRED[finding_id]} "
        "(monitoring family, any scope)"
    )


NEEDS: dict[str, tuple[str, ...]] = merge_needs(SCOPE_NEEDS, pregnancy.NEEDS, salvage.NEEDS, monitoring.NEEDS)
"""What the rules read: resource type → value-set names. Discovery derives its prefetch templates from it."""

S7_NEEDS: dict[str, tuple[str, ...]] = {
    "Condition": ("lupus-nephritis", "lupus-nephritis-class-v"),
    "Observation": ("upcr",),
    "MedicationRequest": ("tacrolimus",),
}
"""What S7 reads (lupus nephritis, tacrolimus exposure, UPCR): the one salvage finding patient-view runs."""

PATIENT_VIEW_NEEDS: dict[str, tuple[str, ...]] = merge_needs(
    SCOPE_NEEDS, pregnancy.NEEDS, S7_NEEDS, monitoring.NEEDS
)
"""What ``PATIENT_VIEW`` reads: no allergies (only S3 reads them) and none of the salvage-only labs."""


def needs_for(hook: str) -> dict[str, tuple[str, ...]]:
    """What the rules a hook runs read: its prefetch templates are derived from it."""
    return PATIENT_VIEW_NEEDS if hook == "patient-view" else NEEDS


def in_scope(inp: RuleInput) -> Quiet | None:
    """None when the rules may speak; otherwise the Quiet that says why not."""
    if inp.scope not in SCOPES:
        raise ValueError(f"unknown scope {inp.scope!r}; expected one of {', '.join(SCOPES)}")
    record = inp.record
    if inp.scope == "any-indication" or record.has_condition("lupus") or has_lupus_nephritis(record):
        return None
    gaps = unavailable(record, "Condition")
    return Quiet(
        "scope",
        "out of scope: no active systemic lupus erythematosus or lupus nephritis condition"
        + (f" ({'; '.join(gaps)})" if gaps else ""),
    )


def evaluate(inp: RuleInput) -> Evaluation:
    """Run the rules (all, or ``inp.only``); findings and quiet reasons come out in catalog order."""
    out_of_scope = in_scope(inp)
    if out_of_scope is not None:
        return Evaluation(quiet=[out_of_scope])
    if inp.only is not None and not inp.only <= set(RULES):
        unknown = sorted(inp.only - set(RULES))
        raise ValueError(f"unknown finding ids {', '.join(unknown)}; known: {', '.join(RULES)}")
    evaluation = Evaluation()
    for rule_id, rule in RULES.items():
        if inp.only is not None and rule_id not in inp.only:
            continue
        result = rule(inp)
        if isinstance(result, Finding):
            evaluation.findings.append(result)
        else:
            evaluation.quiet.append(result)
    return evaluation


__all__ = [
    "FAMILIES",
    "FINDING_IDS",
    "NEEDS",
    "PATIENT_VIEW",
    "PATIENT_VIEW_NEEDS",
    "RETIRED",
    "RULES",
    "Rule",
    "evaluate",
    "in_scope",
    "needs_for",
    "retired_message",
]
