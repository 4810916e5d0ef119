"""The card link that opens the course app: a CDS Hooks ``smart`` link with an ``appContext``.

The monitoring and salvage cards get it (beside their absolute links, for EHRs that do not launch SMART
apps). ``appContext`` travels EHR → app, never app → service: it names the card's findings (the app
highlights them) and carries the creatinine baseline and thresholds the rules used for this order, so the
app draws exactly the line the card speaks of rather than recomputing it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cds_service.cards import FINDINGS_EXTENSION
from cds_service.rules.model import Quiet, RuleInput
from cds_service.rules.monitoring import creatinine_rise
from cds_service.smart import COURSE_THRESHOLDS, DRUG_GROUPS

LINKED_TOPICS = ("nephrotoxicity-monitoring", "salvage-context")
LABEL = "Kidney and tacrolimus course (chart)"


def course_context(inp: RuleInput) -> dict[str, Any]:
    """What every course link of this answer shares: the rules' creatinine baseline and thresholds."""
    thresholds = {k: inp.thresholds[k] for k in COURSE_THRESHOLDS if k in inp.thresholds}
    context: dict[str, Any] = {"thresholds": thresholds}
    rise = creatinine_rise(inp)
    if not isinstance(rise, Quiet):
        context["baseline"] = {
            "value": rise.baseline.value,
            "unit": "mg/dL",
            "date": rise.baseline.when.date().isoformat(),
            "observation": f"Observation/{rise.baseline.resource_id}",
            "rule": rise.baseline_rule(thresholds.get("baseline_creatinine_days", 90)),
        }
    else:
        context["baselineMissing"] = rise.reason
    drafts = [
        {"name": m.name, "groups": [g for g in DRUG_GROUPS if g in m.concepts], "trigger": m.is_trigger}
        for m in inp.record.medications
        if m.is_draft and any(g in m.concepts for g in DRUG_GROUPS)
    ]
    if drafts:  # the orders of this session are not in the FHIR server yet: only the card can tell the app
        context["drafts"] = drafts
    return context


def add_course_links(cards: list[dict], launch_url: str, context: Mapping[str, Any]) -> list[dict]:
    """The cards, the monitoring and salvage ones with a ``smart`` link to ``launch_url`` appended."""
    for card in cards:
        topic = ((card.get("source") or {}).get("topic") or {}).get("code")
        if topic not in LINKED_TOPICS:
            continue
        findings = [item["id"] for item in (card.get("extension") or {}).get(FINDINGS_EXTENSION, [])]
        app_context = json.dumps({"findings": findings, **context}, separators=(",", ":"), default=str)
        link = {"label": LABEL, "url": launch_url, "type": "smart", "appContext": app_context}
        card["links"] = [*card.get("links", []), link]
    return cards
