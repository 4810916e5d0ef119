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

NEEDS: dict[str, tuple[str, ...]] = merge_needs(SCOPE_NEEDS, pregnancy.NEEDS, salvage.NEEDS, monitoring.NEEDS)
"""What the rules read: resource type → value-set names. Discovery derives its prefetch templates from it."""


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
    """Run every rule; findings and quiet reasons come out in catalog order (P1…P6, S0…S7, N1…N11)."""
    out_of_scope = in_scope(inp)
    if out_of_scope is not None:
        return Evaluation(quiet=[out_of_scope])
    evaluation = Evaluation()
    for rule in RULES.values():
        result = rule(inp)
        if isinstance(result, Finding):
            evaluation.findings.append(result)
        else:
            evaluation.quiet.append(result)
    return evaluation


__all__ = ["NEEDS", "RULES", "Rule", "evaluate", "in_scope"]
