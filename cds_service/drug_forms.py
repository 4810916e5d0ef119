"""Dose forms from words: is a medication local (skin, eye, ear, mucosa)? Which tacrolimus formulation is it?

rules.md v3 § Drug recognition. Both answers are read from the words of a drug name (an order's text, a
coding's display, a Medication's ``form``) against tables kept as data, with their published sources, in
``cds_service/data/``: ``drug-forms.json`` (RxNorm dose forms and the abbreviations pharmacies use for them)
and ``tacrolimus-formulations.json``. Every entry is matched as whole words, in any case; a text is split into
words once (see ``words``) and every run of words is one set lookup, so nothing is compiled per call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
"""A word of a drug name: letters and digits, an apostrophe inside (john's); anything else separates words."""

Words = tuple[str, ...]

IMMEDIATE_RELEASE = "immediate-release"
EXTENDED_RELEASE_TABLET = "extended-release tablet"
EXTENDED_RELEASE_CAPSULE = "extended-release capsule"
INTRAVENOUS = "intravenous"
UNKNOWN = "unknown"
FORMULATIONS = (IMMEDIATE_RELEASE, EXTENDED_RELEASE_TABLET, EXTENDED_RELEASE_CAPSULE, INTRAVENOUS, UNKNOWN)
"""Tacrolimus formulation classes (rules.md v3 § Tacrolimus formulation): not interchangeable mg for mg."""
ORAL_FORMULATIONS = frozenset({IMMEDIATE_RELEASE, EXTENDED_RELEASE_TABLET, EXTENDED_RELEASE_CAPSULE})


def words(text: str) -> Words:
    """The words of a text, lower case, for whole-word matching ("St. John’s Wort" -> st john's wort)."""
    return tuple(_WORD.findall(text.lower().replace("’", "'")))


class Phrases:
    """A set of phrases (runs of words); ``in_words`` says whether any occurs in a text's words."""

    def __init__(self, phrases: Iterable[str]):
        self.keys = frozenset(key for p in phrases if (key := words(p)))
        self.longest = max((len(k) for k in self.keys), default=0)

    def in_words(self, found: Words) -> bool:
        return not self.keys.isdisjoint(runs(found, self.longest))

    def in_runs(self, found_runs: frozenset[Words]) -> bool:
        """Like ``in_words``, on a text's runs made once (``runs``) for several phrase sets."""
        return not self.keys.isdisjoint(found_runs)


def runs(found: Words, longest: int) -> frozenset[Words]:
    """Every run of 1..``longest`` consecutive words of a text."""
    return frozenset(found[i : i + n] for n in range(1, longest + 1) for i in range(len(found) - n + 1))


def _read(name: str) -> dict[str, Any]:
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


class FormTable:
    """Which texts name a form for skin, eye, ear or mucosa (``drug-forms.json``, precedence as it says)."""

    def __init__(self, data: dict[str, Any]):
        self.systemic_names = Phrases(data["systemic_form_names"])
        self.systemic_by_ingredient = [
            (Phrases([ingredient]), Phrases(forms))
            for ingredient, forms in data["systemic_by_ingredient"].items()
        ]
        self.local_names = Phrases(data["local_form_names"])
        self.systemic_words = Phrases(data["systemic_words"])
        self.local_words = Phrases(data["local_words"])
        self.drop_words = Phrases(data["drop_words"])
        self.eye_ear_words = Phrases(data["eye_ear_words"])
        every = [
            self.systemic_names,
            self.local_names,
            self.systemic_words,
            self.local_words,
            self.drop_words,
        ]
        every += [self.eye_ear_words, *(p for pair in self.systemic_by_ingredient for p in pair)]
        self.longest = max(p.longest for p in every)

    def is_local(self, found: Words) -> bool:
        """Does this one text (its words) name a local form? Read together with no other text."""
        text = runs(found, self.longest)
        if self.systemic_names.in_runs(text):
            return False
        if any(i.in_runs(text) and f.in_runs(text) for i, f in self.systemic_by_ingredient):
            return False
        if self.local_names.in_runs(text):
            return True
        if self.systemic_words.in_runs(text):
            return False
        if self.local_words.in_runs(text):
            return True
        return self.drop_words.in_runs(text) and self.eye_ear_words.in_runs(text)


class FormulationTable:
    """A tacrolimus formulation class from words (``tacrolimus-formulations.json``, order as it says)."""

    BEFORE_RELEASE_WORDS = (
        ("intravenous", INTRAVENOUS),
        ("extended_release_tablet_brands", EXTENDED_RELEASE_TABLET),
        ("extended_release_capsule_brands", EXTENDED_RELEASE_CAPSULE),
    )
    """Checked first, in this order: the route, then a brand that is one extended-release class."""
    EXTENDED_RELEASE_FORMS = (
        ("tablet_words", EXTENDED_RELEASE_TABLET),
        ("capsule_words", EXTENDED_RELEASE_CAPSULE),
        ("extended_release_tablet_alone", EXTENDED_RELEASE_TABLET),
        ("extended_release_capsule_alone", EXTENDED_RELEASE_CAPSULE),
    )
    """Which extended-release class, once an extended-release word is there."""

    def __init__(self, data: dict[str, Any]):
        self._phrases = {
            key: Phrases(value) for key, value in data.items() if key != "sources" and isinstance(value, list)
        }

    def _first(self, found: Words, checks: Sequence[tuple[str, str]]) -> str | None:
        return next((formulation for key, formulation in checks if self._phrases[key].in_words(found)), None)

    def of_words(self, found: Words) -> str:
        if named := self._first(found, self.BEFORE_RELEASE_WORDS):
            return named
        if self._phrases["extended_release_words"].in_words(found):
            return self._first(found, self.EXTENDED_RELEASE_FORMS) or UNKNOWN
        return IMMEDIATE_RELEASE if self._phrases["immediate_release_words"].in_words(found) else UNKNOWN

    def of_texts(self, texts: Sequence[str]) -> str:
        """The class the texts say, read as one name (a Medication's ``form`` is part of its name); "unknown"
        when they say none."""
        return self.of_words(tuple(w for t in texts for w in (*words(t), "|")))


_STRENGTH = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)\s*mg\b(?!\s*/)", re.I)
"""A strength "N MG" in an RxNorm display, never a concentration ("5 MG/ML")."""


def strength_mg(display: str) -> float | None:
    """The product strength a published RxNorm display states ("tacrolimus 1 MG Oral Capsule" → 1.0)."""
    found = _STRENGTH.findall(display)
    return float(found[0]) if len(found) == 1 else None


@dataclass(frozen=True)
class Tables:
    forms: FormTable
    formulations: FormulationTable


@cache
def tables() -> Tables:
    """The shipped tables, read once per process."""
    return Tables(
        FormTable(_read("drug-forms.json")), FormulationTable(_read("tacrolimus-formulations.json"))
    )


@cache
def form_table_data() -> dict[str, Any]:
    """``drug-forms.json`` without its prose: what the course app (``smart/static/course.js``) reads."""
    data = _read("drug-forms.json")
    return {key: value for key, value in data.items() if key not in ("description", "sources")}
