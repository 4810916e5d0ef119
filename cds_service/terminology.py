"""Which value sets a code belongs to, answered from the FHIR ValueSets in ``cds_service/valuesets/``.

Every resource of every request passes through here, so the value sets are read once into dictionaries keyed
by ``(system, code)`` and a lookup is a handful of dict hits.

Matching rules (the same for every value set):

* A Coding matches on ``system`` and ``code`` only; ``display`` and ``text`` are never read.
* System URLs are compared exactly after trimming whitespace. Only aliases seen in real data are accepted:
  the OIDs ``urn:oid:2.16.840.1.113883.6.88`` (RxNorm), ``.6.1`` (LOINC), ``.6.96`` (SNOMED CT) and ``.6.90``
  (ICD-10-CM) are the identifiers HL7 Terminology (THO) CodeSystem/NamingSystem resources give these systems,
  and public FHIR and CDS code sends them as ``Coding.system`` (seen through the project's code search);
  ``http://snomed.info/id`` is the SNOMED system of a PDDI CDS Hooks request in
  ``tests/data/corpora/cds-hooks/pddi-cds/request-digoxin-cyclosporine-scenario-03.json`` (HL7/PDDI-CDS).
* Codes are trimmed. ICD-10-CM codes are also upper-cased and compared without their dot, and an ICD-10-CM
  entry matches every descendant by prefix (entry ``O09`` matches ``O09.511``; ``O14.0`` matches ``O14.00``).
  No other system is hierarchical: RxNorm, LOINC and SNOMED CT codes must be listed.

Drug classes (rules.md § Drug recognition) are the value sets that carry name extensions (``NAME_EXTENSION``):
:meth:`Terminology.recognise` says which classes a medication belongs to, by code, by ingredient code or by
name, and refuses forms for skin, eye, ear or mucosa. A product's form is read from its published display at
load time: such codes are kept aside (``local_form``) and never count for a class.

The verified sets are the ``*.json`` files of the directory. ``include`` adds the extra codes of a
sub-folder (``unverified``); ``local_codes`` adds an organisation's own codes. Codes added to a member of
``teratogens`` are teratogens too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from cds_service.drug_forms import UNKNOWN, strength_mg, tables, words

DEFAULT_DIR = Path(__file__).resolve().parent / "valuesets"

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"

SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "http://snomed.info/id": SNOMED,
}

PROFILE = "https://example.org/tacrolimus-cds/StructureDefinition/"
NAME_EXTENSION = PROFILE + "drug-class-name"
"""ValueSet extension (valueString): an ingredient or brand name of the class, matched as a whole word."""
SOURCE_EXTENSION = PROFILE + "code-source"
"""compose.include extension: the published source of the include (key, reference, version, title, origin)."""
SOURCE_KEY_EXTENSION = PROFILE + "code-source-key"
"""expansion.contains extension (valueString): the key of a source that lists this code; one per source."""

_FORMS = tables()
"""Dose forms for skin, eye, ear or mucosa (``cds_service/data/drug-forms.json``): never in a drug class."""
TACROLIMUS = "tacrolimus"

FORM_FREE_CLASSES = frozenset({"live-vaccines"})
"""Drug classes that count whatever the form: a live vaccine given in the nose (FluMist) or the mouth
(Vivotif, Rotarix) immunises all the same. The rule for skin, eye, ear or mucosa forms is about drug
exposure, not immunisation (interpretation 84)."""

COMPOSITES = {"teratogens": ("mycophenolate", "cyclophosphamide", "methotrexate", "leflunomide")}
"""Value sets defined as the union of others; extension and local codes of a member flow into them."""

_EMPTY: frozenset[str] = frozenset()
_MEMO_LIMIT = 200_000  # bounds memory against a stream of novel codes; enough for every code a site uses
_ICD_MIN_LENGTH = 3  # an ICD-10-CM category has three characters; nothing shorter is a code


def canonical_system(system: object) -> str | None:
    """The canonical URL for a Coding.system (aliases resolved), or None when it is not a string."""
    if not isinstance(system, str):
        return None
    system = system.strip()
    return SYSTEM_ALIASES.get(system, system)


def _icd_key(code: str) -> str:
    return code.strip().upper().replace(".", "")


class Recognition(NamedTuple):
    """Which drug classes a medication belongs to, and how."""

    classes: frozenset[str]
    """Every value set the medication belongs to (drug classes and their unions)."""
    by_name: frozenset[str] = frozenset()
    """The classes recognised only by a name in its text or displays (the card says so)."""
    local_form: bool = False
    """True when it is a form for skin, eye, ear or mucosa: then ``classes`` is empty."""


NOT_RECOGNISED = Recognition(frozenset())
LOCAL_FORM_DRUG = Recognition(frozenset(), local_form=True)


class Terminology:
    """Value-set membership of codes. Build with :meth:`load`; instances are read-only."""

    def __init__(
        self,
        expansions: Mapping[str, Sequence[tuple[str, str, str]]],
        names: Mapping[str, Sequence[str]] | None = None,
    ):
        names = names or {}
        self.drug_classes: frozenset[str] = frozenset(names)
        self.local_forms: dict[tuple[str, str], tuple[str, str]] = {}
        """(system, code) -> (class, published display) of products for skin, eye, ear or mucosa."""
        kept: dict[str, list[tuple[str, str, str]]] = {}
        for name, rows in expansions.items():
            kept[name] = []
            for row in rows:
                if (
                    name in self.drug_classes
                    and name not in FORM_FREE_CLASSES
                    and _FORMS.forms.is_local(words(row[2]))
                ):
                    self.local_forms.setdefault((row[0], row[1].strip()), (name, row[2]))
                else:
                    kept[name].append(row)
        expansions = kept
        self._codes = {name: tuple(rows) for name, rows in expansions.items()}
        self.names_of: dict[str, tuple[str, ...]] = {name: tuple(found) for name, found in names.items()}
        by_words: dict[tuple[str, ...], set[str]] = {}
        for name, class_words in self.names_of.items():
            for word in class_words:
                if key := words(word):
                    by_words.setdefault(key, set()).add(name)
        self._classes_of_words = {key: frozenset(found) for key, found in by_words.items()}
        self._longest = max((len(k) for k in by_words), default=0)
        self.names: frozenset[str] = frozenset(self._codes)
        exact: dict[tuple[str, str], set[str]] = {}
        icd: dict[str, set[str]] = {}
        self._displays: dict[tuple[str, str], str] = {}
        for name, rows in self._codes.items():
            for system, code, display in rows:
                if system == ICD10CM:
                    icd.setdefault(_icd_key(code), set()).add(name)
                else:
                    exact.setdefault((system, code.strip()), set()).add(name)
                    if display and name in self.drug_classes:
                        self._displays.setdefault((system, code.strip()), display)
        self._exact = {key: frozenset(names) for key, names in exact.items()}
        self.formulations: dict[tuple[str, str], str] = {
            (system, code.strip()): _FORMS.formulations.of_texts([display])
            for system, code, display in self._codes.get(TACROLIMUS, ())
        }
        """(system, code) -> tacrolimus formulation class, from each code's published display."""
        self._icd = {key: frozenset(names) for key, names in icd.items()}
        self._memo: dict[tuple[object, object], frozenset[str]] = {}
        self._text_memo: dict[str, frozenset[str] | None] = {}

    @classmethod
    def load(
        cls,
        include: Sequence[str] = (),
        local_codes: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
        directory: Path = DEFAULT_DIR,
    ) -> Terminology:
        """Read the verified sets in ``directory``, plus the ``include`` sub-folders and ``local_codes``.

        Raises ValueError naming the culprit for an unknown folder, file or value-set name, and for a local
        code without a system or code.
        """
        directory = Path(directory)
        resources = {path.stem: _read(path) for path in sorted(directory.glob("*.json"))}
        expansions = {name: _expansion(path, resource) for name, (path, resource) in resources.items()}
        names = {
            name: found for name, (_, resource) in resources.items() if (found := _class_names(resource))
        }
        for folder in include:
            extra_dir = directory / folder
            if not folder or Path(folder).name != folder or folder.startswith(".") or not extra_dir.is_dir():
                raise ValueError(f"unknown value-set folder {folder!r} in valuesets.include")
            for path in sorted(extra_dir.glob("*.json")):
                if path.stem not in expansions:
                    raise ValueError(
                        f"{path}: unknown value set {path.stem!r} (no {path.stem}.json to extend)"
                    )
                expansions[path.stem] += _expansion(*_read(path))
        for name, codings in (local_codes or {}).items():
            if name not in expansions:
                raise ValueError(f"unknown value set {name!r} in valuesets.local_codes")
            expansions[name] += [_local_row(name, coding) for coding in codings]
        for composite, members in COMPOSITES.items():
            if composite in expansions:
                for member in members:
                    expansions[composite] += expansions.get(member, [])
        return cls({name: _unique(rows) for name, rows in expansions.items()}, names)

    @classmethod
    def from_settings(cls, valuesets: Mapping[str, Any] | None, directory: Path = DEFAULT_DIR) -> Terminology:
        """Build from the ``valuesets`` section of hooks/settings.yaml (``include``, ``local_codes``)."""
        valuesets = valuesets or {}
        return cls.load(valuesets.get("include") or (), valuesets.get("local_codes") or {}, directory)

    def concepts(self, codings: Iterable[Mapping]) -> frozenset[str]:
        """Names of every value set that any of these FHIR Coding dicts belongs to."""
        found = _EMPTY
        for coding in codings or ():
            if isinstance(coding, (dict, Mapping)):  # dict first: no ABC check for the usual case
                hit = self._match(coding.get("system"), coding.get("code"))
                if hit:
                    found = found | hit if found else hit
        return found

    def concepts_of_concept(self, concept: Mapping | None) -> frozenset[str]:
        """Names of every value set a CodeableConcept dict (or None) belongs to through its codings."""
        if not isinstance(concept, (dict, Mapping)):  # dict first: no ABC check for the usual case
            return _EMPTY
        codings = concept.get("coding")
        return self.concepts(codings) if isinstance(codings, list) else _EMPTY

    def recognise(
        self, codings: Iterable[Mapping] = (), ingredients: Iterable[Mapping] = (), texts: Iterable[str] = ()
    ) -> Recognition:
        """The drug classes of a medication (rules.md § Drug recognition).

        ``codings``: its concept's codings; ``ingredients``: the codings of its ingredients; ``texts``: its
        concept text, coding displays and form. By code and by ingredient are dictionary look-ups; a name
        counts for a class only when no code put the medication in that class. A form for skin, eye, ear or
        mucosa, known from a code's published display or named in a text, belongs to no class.
        """
        codings = [c for c in codings or () if isinstance(c, Mapping)]
        ingredients = [c for c in ingredients or () if isinstance(c, Mapping)]
        texts = [t for t in texts or () if isinstance(t, str)]
        if any(self._is_local_form(c) for c in codings):
            return self._form_free(codings, ingredients, texts)
        named: set[str] = set()
        for text in texts:
            classes = self._classes_named_in(text)
            if classes is None:
                return self._form_free(codings, ingredients, texts)
            named |= classes
        by_code = self.concepts(codings) | self.concepts(ingredients)
        by_name = frozenset(named) - by_code
        if not by_code and not by_name:
            return NOT_RECOGNISED
        return Recognition(by_code | by_name, by_name)

    def _form_free(self, codings: list[Mapping], ingredients: list[Mapping], texts: list[str]) -> Recognition:
        """A medication in a form for skin, eye, ear or mucosa: only the classes that count whatever the form
        (a nasal live influenza vaccine), else no class."""
        by_code = (self.concepts(codings) | self.concepts(ingredients)) & FORM_FREE_CLASSES
        named: set[str] = set()
        for text in texts:
            named |= self._named(words(text)) & FORM_FREE_CLASSES
        by_name = frozenset(named) - by_code
        if not by_code and not by_name:
            return LOCAL_FORM_DRUG
        return Recognition(by_code | by_name, by_name)

    def _classes_named_in(self, text: str) -> frozenset[str] | None:
        """The drug classes named in ``text`` (None: it names a form for skin, eye, ear or mucosa).
        Memoised: the same displays and texts come back on every call for a patient."""
        try:
            return self._text_memo[text]
        except KeyError:
            pass
        named = self._scan(text)
        if len(self._text_memo) < _MEMO_LIMIT:
            self._text_memo[text] = named
        return named

    def _scan(self, text: str) -> frozenset[str] | None:
        found = words(text)
        if _FORMS.forms.is_local(found):
            return None
        return self._named(found)

    def _named(self, found: tuple[str, ...]) -> frozenset[str]:
        named: set[str] = set()
        for size in range(1, self._longest + 1):  # every run of 1..3 words: one dict hit each
            for start in range(len(found) - size + 1):
                named |= self._classes_of_words.get(found[start : start + size], frozenset())
        return frozenset(named)

    def formulation(self, codings: Iterable[Mapping], texts: Iterable[str]) -> str:
        """A tacrolimus order's formulation class: from its product code, else from its name, text and form
        (rules.md v3 § Tacrolimus formulation); "unknown" when neither tells."""
        for coding in codings:
            system, code = canonical_system(coding.get("system")), coding.get("code")
            found = (
                self.formulations.get((system, code.strip())) if system and isinstance(code, str) else None
            )
            if found and found != UNKNOWN:
                return found
        return _FORMS.formulations.of_texts([t for t in texts if isinstance(t, str)])

    def strength_mg(self, codings: Iterable[Mapping]) -> float | None:
        """A drug-class product's strength in mg, from its published display ("N MG"), not the sender's."""
        for coding in codings:
            display = self.display(coding)
            found = strength_mg(display) if display else None
            if found is not None:
                return found
        return None

    def display(self, coding: Mapping) -> str | None:
        """The published display of a drug-class code (to name a Medication known only by its ingredients)."""
        system, code = canonical_system(coding.get("system")), coding.get("code")
        return self._displays.get((system, code.strip())) if isinstance(code, str) and system else None

    def _is_local_form(self, coding: Mapping) -> bool:
        system, code = canonical_system(coding.get("system")), coding.get("code")
        return isinstance(code, str) and (system, code.strip()) in self.local_forms

    def contains(self, name: str, system: str, code: str) -> bool:
        """Is this code in value set ``name``?"""
        self._check_name(name)
        return name in self._match(system, code)

    def codes(self, name: str) -> list[tuple[str, str, str]]:
        """(system, code, display) of every entry of ``name``, extension and local codes included."""
        self._check_name(name)
        return list(self._codes[name])

    def _check_name(self, name: str) -> None:
        if name not in self._codes:
            raise ValueError(f"unknown value set {name!r}")

    def _match(self, system: object, code: object) -> frozenset[str]:
        """Memoised: every resource of every request asks, and most codes repeat across patients."""
        key = (system, code)
        try:
            return self._memo[key]
        except KeyError:
            found = self._lookup(system, code)
        except TypeError:  # an unhashable system/code in malformed JSON: never a member
            return _EMPTY
        if len(self._memo) < _MEMO_LIMIT:
            self._memo[key] = found
        return found

    def _lookup(self, system: object, code: object) -> frozenset[str]:
        system = canonical_system(system)
        if system is None or not isinstance(code, str) or not code.strip():
            return frozenset()
        if system != ICD10CM:
            return self._exact.get((system, code.strip()), frozenset())
        key = _icd_key(code)
        found: frozenset[str] = frozenset()
        for end in range(_ICD_MIN_LENGTH, len(key) + 1):
            found |= self._icd.get(key[:end], frozenset())
        return found


def _read(path: Path) -> tuple[Path, dict]:
    """A ValueSet file, parsed once per version of the file: every runtime the process builds (each reload,
    each app a test makes) reads the same megabyte of value sets, half the time it takes to build one. The
    parsed resource is shared, so nothing may change it."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read value set: {exc}") from None
    return path, _parsed(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=1024)
def _parsed(path: Path, mtime_ns: int, size: int) -> dict:
    """``path``'s ValueSet as of ``mtime_ns`` and ``size`` (the cache key: an edited file is read again)."""
    try:
        resource = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read value set: {exc}") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "ValueSet":
        raise ValueError(f"{path}: not a FHIR ValueSet")
    return resource


def _expansion(path: Path, resource: dict) -> list[tuple[str, str, str]]:
    """The (system, code, display) rows of a ValueSet's expansion."""
    rows = []
    for entry in (resource.get("expansion") or {}).get("contains") or ():
        system, code = canonical_system(entry.get("system")), entry.get("code")
        if not system or not isinstance(code, str) or not code.strip():
            raise ValueError(f"{path}: expansion entry without system and code: {entry!r}")
        rows.append((system, code.strip(), entry.get("display") or ""))
    return rows


def _class_names(resource: dict) -> list[str]:
    """The drug-class names (ingredients, brands) a ValueSet declares; empty for other value sets."""
    return [
        e["valueString"].strip()
        for e in resource.get("extension") or ()
        if isinstance(e, dict) and e.get("url") == NAME_EXTENSION and isinstance(e.get("valueString"), str)
    ]


def _local_row(name: str, coding: Mapping[str, str]) -> tuple[str, str, str]:
    system, code = canonical_system(coding.get("system")), coding.get("code")
    if not system or not isinstance(code, str) or not code.strip():
        raise ValueError(
            f"valuesets.local_codes.{name}: each code needs a system and a code, got {dict(coding)!r}"
        )
    return system, code.strip(), coding.get("display") or ""


def _unique(rows: Iterable[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    seen: dict[tuple[str, str], tuple[str, str, str]] = {}
    for row in rows:
        key = (row[0], _icd_key(row[1]) if row[0] == ICD10CM else row[1])
        seen.setdefault(key, row)
    return list(seen.values())


@cache
def default_terminology() -> Terminology:
    """The verified value sets only, loaded once per process."""
    return Terminology.load()
