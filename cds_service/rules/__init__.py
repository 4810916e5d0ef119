"""The functional core: every finding of the rule catalog as a pure function of a RuleInput.

``evaluate`` runs every rule in catalog order; a rule that fires gives a Finding, one that does not gives a
Quiet with its reason in words. No clock, no I/O: ``inp.now`` is the request time. Configuration that turns
findings off or re-grades them is applied by the caller. Where the catalog needed a reading, the choice is in
``INTERPRETATIONS.md`` beside this file; docstrings cite it as "interpretation N".
"""

from __future__ import annotations

from cds_service.rules import (
    formulations,
    live_vaccines,
    monitoring,
    postpartum,
    pregnancy,
    release_and_paxlovid,
    salvage,
)
from cds_service.rules.common import has_lupus_nephritis, merge_needs, unavailable
from cds_service.rules.model import Evaluation, Finding, Quiet, RuleInput
from cds_service.rules.registry import ORDER, Registry, Rule

SCOPES = ("lupus", "any-indication")
SCOPE_NEEDS = {"Condition": ("lupus", "lupus-nephritis", "lupus-nephritis-class-v")}
"""What deciding whether the rules may speak at all reads (``in_scope``)."""

REGISTRY = Registry(
    (
        *pregnancy.DECLARATIONS,
        *postpartum.DECLARATIONS,
        *salvage.DECLARATIONS,
        *monitoring.DECLARATIONS,
        *formulations.DECLARATIONS,  # N17
        *release_and_paxlovid.DECLARATIONS[:1],  # N18
        *live_vaccines.DECLARATIONS,  # N19
        *release_and_paxlovid.DECLARATIONS[1:],  # N21
    )
)
"""Every finding of the catalog, declared in its family module, in catalog order."""

RULES: dict[str, Rule] = {finding_id: d.rule for finding_id, d in REGISTRY.items()}

FINDING_IDS: tuple[str, ...] = REGISTRY.ids
"""Every finding id of the catalog, in catalog order."""

RETIRED: dict[str, str] = REGISTRY.retired
"""Version-1 ids that no longer exist → the id that took their place. Configuration naming them is refused."""

FAMILIES: dict[str, tuple[str, ...]] = REGISTRY.families()


def retired_message(finding_id: str) -> str:
    """Why an id of version 1 is refused, naming the id that replaced it."""
    now = REGISTRY[RETIRED[finding_id]]
    return (
        f"{finding_id!r} is retired in rule catalog version 2: it is now {now.id} "
        f"({now.family} family, any scope)"
    )


def needs_of(kind: str) -> dict[str, tuple[str, ...]]:
    """What a kind of service's findings read, with the scope check: its prefetch templates come from it."""
    return merge_needs(SCOPE_NEEDS, *(REGISTRY[i].needs for i in REGISTRY.run_by(kind)))


NEEDS: dict[str, tuple[str, ...]] = needs_of(ORDER)
"""What the whole catalog reads (the tacrolimus order services run every finding)."""


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
    "REGISTRY",
    "RETIRED",
    "RULES",
    "Rule",
    "evaluate",
    "in_scope",
    "needs_of",
    "retired_message",
]
