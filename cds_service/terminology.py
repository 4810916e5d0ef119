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

The verified sets are the ``*.json`` files of the directory. ``include`` adds the extra codes of a
sub-folder (``unverified``); ``local_codes`` adds an organisation's own codes. Codes added to a member of
``teratogens`` are teratogens too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

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


class Terminology:
    """Value-set membership of codes. Build with :meth:`load`; instances are read-only."""

    def __init__(self, expansions: Mapping[str, Sequence[tuple[str, str, str]]]):
        self._codes = {name: tuple(rows) for name, rows in expansions.items()}
        self.names: frozenset[str] = frozenset(self._codes)
        exact: dict[tuple[str, str], set[str]] = {}
        icd: dict[str, set[str]] = {}
        for name, rows in self._codes.items():
            for system, code, _ in rows:
                if system == ICD10CM:
                    icd.setdefault(_icd_key(code), set()).add(name)
                else:
                    exact.setdefault((system, code.strip()), set()).add(name)
        self._exact = {key: frozenset(names) for key, names in exact.items()}
        self._icd = {key: frozenset(names) for key, names in icd.items()}
        self._memo: dict[tuple[object, object], frozenset[str]] = {}

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
        expansions = {path.stem: _expansion(path) for path in sorted(directory.glob("*.json"))}
        for folder in include:
            extra_dir = directory / folder
            if not folder or Path(folder).name != folder or folder.startswith(".") or not extra_dir.is_dir():
                raise ValueError(f"unknown value-set folder {folder!r} in valuesets.include")
            for path in sorted(extra_dir.glob("*.json")):
                if path.stem not in expansions:
                    raise ValueError(
                        f"{path}: unknown value set {path.stem!r} (no {path.stem}.json to extend)"
                    )
                expansions[path.stem] += _expansion(path)
        for name, codings in (local_codes or {}).items():
            if name not in expansions:
                raise ValueError(f"unknown value set {name!r} in valuesets.local_codes")
            expansions[name] += [_local_row(name, coding) for coding in codings]
        for composite, members in COMPOSITES.items():
            if composite in expansions:
                for member in members:
                    expansions[composite] += expansions.get(member, [])
        return cls({name: _unique(rows) for name, rows in expansions.items()})

    @classmethod
    def from_settings(cls, valuesets: Mapping[str, Any] | None, directory: Path = DEFAULT_DIR) -> Terminology:
        """Build from the ``valuesets`` section of hooks/settings.yaml (``include``, ``local_codes``)."""
        valuesets = valuesets or {}
        return cls.load(valuesets.get("include") or (), valuesets.get("local_codes") or {}, directory)

    def concepts(self, codings: Iterable[Mapping]) -> frozenset[str]:
        """Names of every value set that any of these FHIR Coding dicts belongs to."""
        found = _EMPTY
        for coding in codings or ():
            if isinstance(coding, Mapping):
                hit = self._match(coding.get("system"), coding.get("code"))
                if hit:
                    found = found | hit if found else hit
        return found

    def concepts_of_concept(self, concept: Mapping | None) -> frozenset[str]:
        """Names of every value set a CodeableConcept dict (or None) belongs to through its codings."""
        if not isinstance(concept, Mapping):
            return frozenset()
        codings = concept.get("coding")
        return self.concepts(codings) if isinstance(codings, list) else frozenset()

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


def _expansion(path: Path) -> list[tuple[str, str, str]]:
    """The (system, code, display) rows of a ValueSet file's expansion."""
    try:
        resource = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read value set: {exc}") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "ValueSet":
        raise ValueError(f"{path}: not a FHIR ValueSet")
    rows = []
    for entry in (resource.get("expansion") or {}).get("contains") or ():
        system, code = canonical_system(entry.get("system")), entry.get("code")
        if not system or not isinstance(code, str) or not code.strip():
            raise ValueError(f"{path}: expansion entry without system and code: {entry!r}")
        rows.append((system, code.strip(), entry.get("display") or ""))
    return rows


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
