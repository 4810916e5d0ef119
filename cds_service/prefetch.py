"""Prefetch templates, derived from what the rules read, and CDS Hooks 2.0 token substitution.

The templates use only what 2.0 allows: ``{{context.patientId}}`` tokens, reads, patient-reference
searches, token searches by equality, ``_sort`` and ``_count``. The Observation template asks only for the
LOINC codes in the value sets the rules declare in ``rules.NEEDS``, so the two cannot drift apart. The same
token substitution serves the service (fetching a missing key) and the sandbox (playing the EHR).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from cds_service.terminology import Terminology

LOINC = "http://loinc.org"


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
    PrefetchKey("procedures", "Procedure", required=False),
    PrefetchKey("immunizations", "Immunization", required=False),
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


def procedure_codes(needs: Mapping[str, tuple[str, ...]], terminology: Terminology) -> list[str]:
    """Every code of the Procedure value sets the rules read (delivery procedures only: the service reads
    Procedures for nothing else), sorted, unique, without its system: 122 ``system|code`` tokens make a
    4 KB query some proxies refuse, bare codes 1 KB. The record builder checks system and code again."""
    return sorted({code for name in needs.get("Procedure", ()) for _, code, _ in terminology.codes(name)})


def templates(needs: Mapping[str, tuple[str, ...]], terminology: Terminology) -> dict[str, str]:
    """One template per resource type the rules read (a service whose rules read no allergies asks none)."""
    patient = "{{context.patientId}}"
    codes = ",".join(observation_codes(needs, terminology))
    every = {
        "patient": f"Patient/{patient}",
        "conditions": f"Condition?patient={patient}",
        "medications": f"MedicationRequest?patient={patient}",
        "observations": f"Observation?patient={patient}&code={codes}&_sort=-date&_count=500",
        "allergies": f"AllergyIntolerance?patient={patient}",
        "procedures": f"Procedure?patient={patient}&code={','.join(procedure_codes(needs, terminology))}",
        # every completed vaccine, not only coded live ones: a vaccine recorded by its name alone counts (N19)
        "immunizations": f"Immunization?patient={patient}&status=completed",
    }
    return {key: query for key, query in every.items() if KEY_BY_NAME[key].resource_type in needs}


class TemplateError(ValueError):
    """A prefetch template or context value that no 2.0 client could substitute safely."""


# Prefetch tokens (CDS Hooks 2.0 §2.3): first-level primitive context fields, and the user tokens.
_TOKEN = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_USER_TYPES = {
    "Practitioner": "userPractitionerId",
    "PractitionerRole": "userPractitionerRoleId",
    "Patient": "userPatientId",
    "RelatedPerson": "userRelatedPersonId",
}
PREFETCH_CONTEXT_FIELDS = ("userId", "patientId", "encounterId")


def token_value(token: str, context: Mapping) -> str | None:
    """The value of one prefetch token (``context.patientId``, ``userPractitionerId``...) or None if absent.

    The value must be a FHIR id (``Type/id`` for userId), so a hostile context cannot inject query
    parameters or path segments into a substituted query. Raises TemplateError for a token CDS Hooks 2.0
    does not allow (``context.draftOrders``, FHIRPath) or a malformed value.
    """
    if token.startswith("context.") and token[len("context.") :] in PREFETCH_CONTEXT_FIELDS:
        name = token[len("context.") :]
        value = context.get(name)
        if value is None:
            return None
        valid = isinstance(value, str) and (
            _user_reference(value) is not None if name == "userId" else FHIR_ID.match(value) is not None
        )
        if not valid:
            raise TemplateError(f"context.{name} is malformed for a prefetch token")
        return value
    if token in _USER_TYPES.values():
        user = context.get("userId")
        parsed = _user_reference(user) if isinstance(user, str) else None
        if user is not None and parsed is None:
            raise TemplateError("context.userId is not a valid user reference")
        return parsed[1] if parsed and _USER_TYPES[parsed[0]] == token else None
    raise TemplateError(f"not a CDS Hooks 2.0 prefetch token: {{{{{token}}}}}")


def _user_reference(value: str) -> tuple[str, str] | None:
    user_type, _, user_id = value.partition("/")
    return (user_type, user_id) if user_type in _USER_TYPES and FHIR_ID.match(user_id) else None


def substitute_tokens(template: str, context: Mapping) -> str | None:
    """The template with its tokens filled, or None when a token has no value in this context."""
    missing = False

    def fill(match: re.Match) -> str:
        nonlocal missing
        value = token_value(match[1], context)
        missing = missing or value is None
        return value or ""

    filled = _TOKEN.sub(fill, template)
    return None if missing else filled
