"""What a result says: one reading of an Observation's value, however the chart codes it (rules.md v3
§ Reading the record however it is coded).

The same fact reaches the service as a LOINC answer code, a SNOMED CT qualifier value, a text, a boolean or
only an interpretation flag. This module turns each into the meanings the rules use, and says which element it
could not read:

* :func:`read_polarity` — positive / negative of a qualitative result (hCG, HBsAg, anti-HBc), of a
  breastfeeding status (kind ``lactation``: any breast milk is yes) and of a pregnancy status (kind
  ``pregnancy``: "pregnant" / "not pregnant" / "unknown" / an outcome). Code, text and interpretation that
  state opposite polarities make it unreadable; a polarity known only from an A/N flag is ``flag_only``.
* :func:`read_quantity` — a ``valueQuantity`` or a ``valueString`` holding a number and a unit, with its
  comparator kept ("<5 IU/L").
* :func:`hcg_meaning` — a quantitative hCG against the indeterminate band (negative, indeterminate, positive).

Codes come from the value sets (``valuesets/*.json``, each with its published source); the word lists below
are module constants. All is pure and compiled once at import: it runs per Observation a rule reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cds_service.fhir_json import is_object, obj, objs
from cds_service.terminology import Terminology, canonical_system

POSITIVE = "positive"
NEGATIVE = "negative"
PREGNANT = "pregnant"
NOT_PREGNANT = "not-pregnant"
UNKNOWN = "unknown"
PREGNANCY_ENDED = "pregnancy-ended"

POSITIVE_SETS = frozenset({"qualitative-positive", "yes-answer"})
NEGATIVE_SETS = frozenset({"qualitative-negative", "no-answer"})
"""Value sets whose codes answer positive / negative (LOINC answers, SNOMED qualifier values, HL7 v3
ObservationInterpretation POS/DET/NEG/ND; each code's source is in the file's description)."""

INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
FLAG_POLARITY = {(INTERPRETATION, "A"): POSITIVE, (INTERPRETATION, "N"): NEGATIVE}
"""HL7 v3 ObservationInterpretation A (Abnormal) and N (Normal): for a qualitative test they agree with a
positive and a negative (rules.md v3), but alone they are only a flag (``Polarity.flag_only``): they never
start or end a pregnancy. Codes from the HL7 terminology's v3-ObservationInterpretation code system, as the
FHIR R4 examples use them (observation-example-f001-glucose.json: H; A and N are its siblings)."""

UNKNOWN_ANSWER = ("http://snomed.info/sct", "261665006")
"""SNOMED CT 261665006 Unknown, the pregnancy-status answer that neither starts nor ends a pregnancy (IPS and
WHO SMART pregnancy-status value sets; see valuesets/pregnancy-status.json)."""

# --- words ----------------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")
POSITIVE_WORDS = frozenset({"positive", "pos", "detected", "reactive", "present", "yes"})
NEGATIVE_WORDS = frozenset({"negative", "neg", "nonreactive", "undetected", "absent"})
NEGATORS = frozenset({"not", "non", "no", "never"})
"""Qualitative result words, as laboratories print them (LOINC answer list displays LL2206-2 "Positive /
Negative", LL1055-4 "Detected / Not detected"; the HL7 COVID-19 library IG's "Reactive / Non-Reactive").
A negator flips only the polarity word directly after it: "not detected", "non-reactive" are negative;
"no" or "none" alone is a negative answer, "no further testing" says nothing."""

BREASTFEEDING_YES = frozenset({
    ("breastfeeding",), ("breastfed",), ("breast", "feeding"), ("breast", "fed"), ("breast", "milk"),
    ("lactating",), ("nursing",), ("mixed", "feeding"), ("partial",), ("partially",), ("pumping",),
    ("expressing",), ("yes",),
})  # fmt: skip
BREASTFEEDING_NO = frozenset({("formula", "only"), ("exclusively", "formula"), ("weaned",)})
BREASTFEEDING_NEGATORS = frozenset({"not", "never", "stopped", "no", "non", "ceased"})
"""Breastfeeding status (63895-7) in words (rules.md v3 § Reading: any breast milk is yes, exclusive or not;
"not breastfeeding", "formula only", "No" are no). A negator counts only directly before the word it negates:
"breastfeeding, not exclusively" is yes; "no" or "none" alone is no. Runs of one or two words, as charted."""

PREGNANT_WORDS = frozenset({("pregnant",), ("pregnancy", "confirmed")})
UNKNOWN_WORDS = frozenset({("unknown",), ("unsure",), ("not", "known"), ("possible", "pregnancy")})
"""Pregnancy status (82810-3) in words: read like the coded answers (rules.md v3 § Reading, details)."""


@dataclass(frozen=True)
class Polarity:
    """What a qualitative value says, or why it could not be read."""

    answer: str | None
    """``positive``/``negative``; for a pregnancy status ``pregnant``/``not-pregnant``/``unknown``/
    ``pregnancy-ended``; None when unreadable or silent."""
    flag_only: bool = False
    """Known only from an interpretation A/N: a flag, not the answer a pregnancy decision needs."""
    fault: str | None = None
    """The element that could not be read: ``valueCodeableConcept http://loinc.org|LA9999-9``."""
    said: str = ""
    """The value as recorded, for the card: ``Positive``, ``interpretation A``."""


SILENT = Polarity(None)


def _runs(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def text_polarity(text: str) -> str | None:
    """``positive``, ``negative``, ``conflict`` (both stated) or None for a qualitative result in words."""
    words = _runs(text)
    if words in (["no"], ["none"]):
        return NEGATIVE
    found: set[str] = set()
    for i, word in enumerate(words):
        negated = i > 0 and words[i - 1] in NEGATORS
        if word in POSITIVE_WORDS:
            found.add(NEGATIVE if negated else POSITIVE)
        elif word in NEGATIVE_WORDS:
            found.add(POSITIVE if negated else NEGATIVE)
    return _one(found)


def _one(found: set[str]) -> str | None:
    if len(found) > 1:
        return "conflict"
    return next(iter(found), None)


def _has(words: list[str], runs: frozenset[tuple[str, ...]], negators: frozenset[str]) -> tuple[bool, bool]:
    """(stated, negated-where-stated) for the word runs ``runs`` in ``words``."""
    stated = negated = False
    for size in (1, 2):
        for i in range(len(words) - size + 1):
            if tuple(words[i : i + size]) in runs:
                if i > 0 and words[i - 1] in negators:
                    negated = True
                else:
                    stated = True
    return stated, negated


def breastfeeding_polarity(text: str) -> str | None:
    """Does this breastfeeding answer say the infant receives breast milk? ``conflict`` when it says both."""
    words = _runs(text)
    if words in (["no"], ["none"]):
        return NEGATIVE
    yes, negated_yes = _has(words, BREASTFEEDING_YES, BREASTFEEDING_NEGATORS)
    no, _ = _has(words, BREASTFEEDING_NO, frozenset())
    found = ({POSITIVE} if yes else set()) | ({NEGATIVE} if no or negated_yes else set())
    return _one(found)


def pregnancy_text(text: str) -> str | None:
    """``pregnant`` / ``not-pregnant`` / ``unknown`` / ``conflict`` for a pregnancy status in words, else the
    qualitative polarity of the text (a "positive" pregnancy status)."""
    words = _runs(text)
    found: set[str] = set()
    unknown, _ = _has(words, UNKNOWN_WORDS, frozenset())
    if unknown:
        found.add(UNKNOWN)
    pregnant, negated = _has(words, PREGNANT_WORDS, NEGATORS)
    if pregnant:
        found.add(PREGNANT)
    if negated:
        found.add(NOT_PREGNANT)
    if not found:
        polar = text_polarity(text)
        return {POSITIVE: PREGNANT, NEGATIVE: NOT_PREGNANT}.get(polar or "", polar)
    return _one(found)


# --- codes ----------------------------------------------------------------------------------------------
def _coding_key(coding: Mapping) -> str:
    return f"{coding.get('system') or '(no system)'}|{coding.get('code') or '(no code)'}"


def _coded(coding: Mapping, terminology: Terminology, kind: str) -> str | None:
    """The answer one coding gives, or None when it is not a code this service knows."""
    concepts = terminology.concepts([coding])
    if kind == "pregnancy":
        if "pregnant-answer" in concepts:
            return PREGNANT
        if "not-pregnant-answer" in concepts:
            return NOT_PREGNANT
        if "pregnancy-outcome" in concepts:
            return PREGNANCY_ENDED
        system, code = canonical_system(coding.get("system")), coding.get("code")
        if (system, code.strip() if isinstance(code, str) else code) == UNKNOWN_ANSWER:
            return UNKNOWN
    if kind == "lactation" and "lactation" in concepts:
        return POSITIVE
    polar = POSITIVE if concepts & POSITIVE_SETS else NEGATIVE if concepts & NEGATIVE_SETS else None
    if kind == "pregnancy" and polar:
        return PREGNANT if polar == POSITIVE else NOT_PREGNANT
    return polar


def _words_of(text: str, kind: str) -> str | None:
    if kind == "lactation":
        return breastfeeding_polarity(text)
    if kind == "pregnancy":
        return pregnancy_text(text)
    return text_polarity(text)


_OPPOSITE = {POSITIVE: NEGATIVE, NEGATIVE: POSITIVE, PREGNANT: NOT_PREGNANT, NOT_PREGNANT: PREGNANT}
_AS_POLARITY = {PREGNANT: POSITIVE, NOT_PREGNANT: NEGATIVE, PREGNANCY_ENDED: NEGATIVE}


def read_polarity(holder: Mapping[str, Any], terminology: Terminology, kind: str = "qualitative") -> Polarity:
    """What a qualitative value says (``kind``: ``qualitative``, ``lactation`` or ``pregnancy``).

    Every coding of the value and of each interpretation is read, the value's text and ``valueString`` as
    words, ``valueBoolean`` as yes/no. Sources that state opposite polarities make the value unreadable; a
    text that states none agrees with anything (rules.md v3). A code this service does not know, with no other
    source to read, is the element at fault.
    """
    stated: list[tuple[str, str, str]] = []  # (answer, source, how it was recorded)
    unknown_codes: list[str] = []
    if is_object(holder.get("valueCodeableConcept")):
        concept = obj(holder.get("valueCodeableConcept"))
        for coding in objs(concept.get("coding")):
            answer = _coded(coding, terminology, kind)
            display = coding.get("display") if isinstance(coding.get("display"), str) else None
            if answer is not None:
                stated.append((answer, "code", display or str(coding.get("code"))))
                continue
            unknown_codes.append(_coding_key(coding))
            said = _words_of(display, kind) if display else None  # a local code's display, read as words
            if said:
                stated.append((said, "text", display or ""))
        if isinstance(concept.get("text"), str) and concept["text"].strip():
            said = _words_of(concept["text"], kind)
            if said:
                stated.append((said, "text", concept["text"]))
    if isinstance(holder.get("valueString"), str) and holder["valueString"].strip():
        said = _words_of(holder["valueString"], kind)
        if said:
            stated.append((said, "text", holder["valueString"]))
    if isinstance(holder.get("valueBoolean"), bool):
        yes = holder["valueBoolean"]
        answer = (
            (PREGNANT if yes else NOT_PREGNANT) if kind == "pregnancy" else (POSITIVE if yes else NEGATIVE)
        )
        stated.append((answer, "code", "yes" if yes else "no"))
    flags: list[tuple[str, str, str]] = []
    for interpretation in objs(holder.get("interpretation")):
        for coding in objs(interpretation.get("coding")):
            answer = _coded(coding, terminology, "qualitative")
            code = str(coding.get("code"))
            if answer is not None:
                stated.append((_in_kind(answer, kind), "interpretation", f"interpretation {code}"))
                continue
            key = (canonical_system(coding.get("system")), code.strip())
            if key in FLAG_POLARITY:
                flags.append((_in_kind(FLAG_POLARITY[key], kind), "flag", f"interpretation {code}"))
    if any(answer == "conflict" for answer, _, _ in stated):
        said = next(how for answer, _, how in stated if answer == "conflict")
        return Polarity(None, fault=f"text {said!r} states both polarities")
    answers = {answer for answer, _, _ in stated}
    every = answers | {answer for answer, _, _ in flags}
    polar = {_AS_POLARITY.get(a, a) for a in every} & {POSITIVE, NEGATIVE}
    if len(answers) > 1 or len(polar) > 1:
        shown = "; ".join(f"{source} {how!r}" for _, source, how in [*stated, *flags])
        return Polarity(None, fault=f"code, text and interpretation disagree ({shown})")
    if answers:
        answer = next(iter(answers))
        return Polarity(answer, said=stated[0][2])
    if flags:
        return Polarity(flags[0][0], flag_only=True, said=flags[0][2])
    if unknown_codes:
        return Polarity(None, fault=f"valueCodeableConcept {', '.join(unknown_codes[:3])}")
    return SILENT


def _in_kind(answer: str, kind: str) -> str:
    if kind == "pregnancy":
        return {POSITIVE: PREGNANT, NEGATIVE: NOT_PREGNANT}.get(answer, answer)
    return answer


# --- quantities -----------------------------------------------------------------------------------------
COMPARATORS = ("<=", ">=", "<", ">")
_QUANTITY_TEXT = re.compile(
    r"^\s*(<=|>=|<|>|≤|≥)?\s*([-+]?\d+(?:[.,]\d+)?)\s*([^\d\s]\S*(?:\s+[^\d\s]\S*)*)?\s*$"
)
"""One number and a unit, as interfaces send a ``valueString``: "5.2 mmol/L", "<5 IU/L", "> 1000". Every word
of the unit starts with a non-digit ("mL/min/1.73 m2"), so "5 to 10" is not a quantity."""
_WIDE = {"≤": "<=", "≥": ">="}


@dataclass(frozen=True)
class Quantity:
    value: float
    unit: str | None
    code: str | None
    comparator: str | None = None
    source: str = "valueQuantity"


def read_quantity(holder: Mapping[str, Any]) -> Quantity | None:
    """The value's number and unit from ``valueQuantity``, else from a ``valueString`` that holds one."""
    quantity = obj(holder.get("valueQuantity"))
    if isinstance(quantity.get("value"), int | float):
        if isinstance(quantity["value"], bool):
            return None
        comparator = quantity.get("comparator")
        return Quantity(
            float(quantity["value"]),
            quantity.get("unit") if isinstance(quantity.get("unit"), str) else None,
            quantity.get("code") if isinstance(quantity.get("code"), str) else None,
            comparator if comparator in COMPARATORS else None,
        )
    words = holder.get("valueString")
    if not isinstance(words, str) or len(words) > 64:
        return None
    match = _QUANTITY_TEXT.match(words)
    if match is None:
        return None
    comparator = _WIDE.get(match[1], match[1])
    unit = match[3].strip() if match[3] else None
    return Quantity(float(match[2].replace(",", ".")), unit, None, comparator, source="valueString")


def hcg_meaning(
    value: float, comparator: str | None, band: tuple[float, float], positive_above: float
) -> str:
    """A quantitative hCG (IU/L): ``negative`` below the band, ``positive`` above it (and above
    ``positive_above``), ``indeterminate`` in it (rules.md v3: 5–25 IU/L, repeat in 48–72 hours).

    A comparator gives a range of possible values: "<5" is negative, ">1000" positive, "<25" or ">10" cannot
    be told apart from the band and is indeterminate.
    """
    low, high = band
    top = max(high, positive_above)

    def meaning(v: float, strict_below: bool = False, strict_above: bool = False) -> str:
        if v < low or (strict_below and v <= low):
            return "negative"
        if v > top or (strict_above and v >= top):
            return "positive"
        return "indeterminate"

    if comparator in ("<", "<="):
        return "negative" if meaning(value, strict_below=comparator == "<") == "negative" else "indeterminate"
    if comparator in (">", ">="):
        return "positive" if meaning(value, strict_above=comparator == ">") == "positive" else "indeterminate"
    return meaning(value)
