"""Prefetch templates, derived from what the rules read, and CDS Hooks 2.0 token substitution.

The templates use only what 2.0 allows: ``{{context.patientId}}`` tokens, reads, patient-reference searches,
token searches by equality, ``_sort`` and ``_count``. The Observation template asks only for the LOINC codes in
the value sets the rules declare in ``rules.NEEDS``, so the two cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cds_service.terminology import Terminology

LOINC = "http://loinc.org"
TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")


@dataclass(frozen=True)
class PrefetchKey:
    key: str
    resource_type: str
    required: bool
    """Without it the rules cannot run honestly: the service answers 412 when it cannot be had."""
    is_read: bool = False


KEYS = (
    PrefetchKey("patient", "Patient", required=True, is_read=True),
    PrefetchKey("conditions", "Condition", required=True),
    PrefetchKey("medications", "MedicationRequest", required=True),
    PrefetchKey("observations", "Observation", required=True),
    PrefetchKey("allergies", "AllergyIntolerance", required=False),
)
KEY_BY_NAME = {k.key: k for k in KEYS}


def observation_codes(needs: Mapping[str, tuple[str, ...]], terminology: Terminology) -> list[str]:
    """``system|code`` of every LOINC code in the Observation value sets the rules read, sorted, unique."""
    codes = {
        f"{system}|{code}"
        for name in needs.get("Observation", ())
        for system, code, _ in terminology.codes(name)
        if system == LOINC
    }
    return sorted(codes)


def templates(needs: Mapping[str, tuple[str, ...]], terminology: Terminology) -> dict[str, str]:
    patient = "{{context.patientId}}"
    codes = ",".join(observation_codes(needs, terminology))
    return {
        "patient": f"Patient/{patient}",
        "conditions": f"Condition?patient={patient}",
        "medications": f"MedicationRequest?patient={patient}",
        "observations": f"Observation?patient={patient}&code={codes}&_sort=-date&_count=500",
        "allergies": f"AllergyIntolerance?patient={patient}",
    }


def render(template: str, context: Mapping) -> str | None:
    """Fill ``{{context.x}}`` tokens with first-level primitive context values; None if one is missing."""
    missing = False

    def value(match: re.Match) -> str:
        nonlocal missing
        path = match.group(1)
        if not path.startswith("context."):
            missing = True
            return ""
        found = context.get(path.removeprefix("context."))
        if not isinstance(found, str | int) or isinstance(found, bool) or found == "":
            missing = True
            return ""
        return str(found)

    rendered = TOKEN.sub(value, template)
    return None if missing else rendered
