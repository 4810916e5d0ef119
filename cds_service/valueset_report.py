"""What each drug class ships, and what is wrong with it (``cds-service valuesets report``).

Reads the drug-class ValueSet files (the ones with name extensions, see terminology.py) and says, per class:
codes by RxNorm term type (read from the published display, the way terminology.py reads dose forms), codes by
source, the names it is recognised by, the forms for skin, eye, ear or mucosa it holds (which never count),
and problems: an empty class, a code without a declared source, a code shared by two classes that must not
share it (only a union and its members may).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cds_service.drug_forms import tables, words
from cds_service.terminology import (
    COMPOSITES,
    DEFAULT_DIR,
    FORM_FREE_CLASSES,
    NAME_EXTENSION,
    RXNORM,
    SOURCE_EXTENSION,
    SOURCE_KEY_EXTENSION,
)

STRENGTH = re.compile(r"\d\s*(MG|MCG|UNT|MEQ|ML|%|MG/ML|MG/MG)\b", re.I)
DOSE_FORM_GROUP = re.compile(r"\b(Product|Pill)$")
OTHER_SYSTEMS = {"http://hl7.org/fhir/sid/cvx": "CVX"}
"""Code systems of a drug class other than RxNorm, by the name the report gives their codes (no term type)."""


def term_type(display: str, ingredient_names: set[str]) -> str:
    """The RxNorm term type a published display string has (RxNorm's naming conventions)."""
    text = display.strip()
    branded = text.endswith("]")
    if text.startswith("{"):
        return "BPCK" if branded else "GPCK"
    if STRENGTH.search(text):
        return "SBD" if branded else "SCD"
    if DOSE_FORM_GROUP.search(text):
        return (
            "SBDG"
            if text.split()[0][:1].isupper() and text.split()[0].lower() not in ingredient_names
            else "SCDG"
        )
    if branded:
        return "SBDF"
    if len(text.split()) > 1 and re.search(r"\b(Oral|Injection|Injectable|Tablet|Capsule|Solution)\b", text):
        return "SCDF"
    words = text.lower()
    if words in ingredient_names or any(words.startswith(n) for n in ingredient_names):
        return "IN"  # IN, PIN or MIN: RxNorm's ingredient names are lower case
    return "BN"


@dataclass
class ClassReport:
    name: str
    total: int = 0
    term_types: Counter = field(default_factory=Counter)
    sources: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    """key -> (codes, reference, version)."""
    names: list[str] = field(default_factory=list)
    local_forms: int = 0
    problems: list[str] = field(default_factory=list)


def _fields(extension: dict) -> dict[str, str]:
    return {
        e["url"]: next((v for k, v in e.items() if k.startswith("value")), "")
        for e in extension.get("extension", [])
    }


def build_report(directory: Path = DEFAULT_DIR) -> list[ClassReport]:
    """One report per drug class in ``directory``, problems included."""
    reports: list[ClassReport] = []
    members_of: dict[str, set[str]] = {}
    for path in sorted(Path(directory).glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        names = [
            e.get("valueString", "") for e in resource.get("extension", []) if e.get("url") == NAME_EXTENSION
        ]
        if not names:
            continue
        report = ClassReport(path.stem, names=names)
        declared: dict[str, dict[str, str]] = {}
        for include in resource.get("compose", {}).get("include", []):
            for ext in include.get("extension", []):
                if ext.get("url") == SOURCE_EXTENSION:
                    fields = _fields(ext)
                    declared[fields.get("key", "")] = fields
        ingredient_names = {n.lower() for n in names}
        per_source: Counter = Counter()
        codes: set[str] = set()
        for entry in resource.get("expansion", {}).get("contains", []):
            display = entry.get("display", "")
            if path.stem not in FORM_FREE_CLASSES and tables().forms.is_local(words(display)):
                report.local_forms += 1
                continue
            codes.add(entry["code"])
            report.total += 1
            system = entry.get("system", "")
            kind = (
                term_type(display, ingredient_names)
                if system == RXNORM
                else OTHER_SYSTEMS.get(system, system)
            )
            report.term_types[kind] += 1
            keys = [
                e.get("valueString")
                for e in entry.get("extension", [])
                if e.get("url") == SOURCE_KEY_EXTENSION
            ]
            if not keys:
                report.problems.append(f"code {entry['code']} ({display}) has no source")
            for key in keys:
                if key not in declared:
                    report.problems.append(
                        f"code {entry['code']} names source {key!r}, which is not declared"
                    )
                per_source[key] += 1
        report.sources = {
            key: (
                count,
                declared.get(key, {}).get("reference", "?"),
                declared.get(key, {}).get("version", "?"),
            )
            for key, count in sorted(per_source.items())
        }
        if not report.total and not (Path(directory) / "unverified" / path.name).is_file():
            report.problems.append("the class is empty: no order can be recognised by code")
        members_of[path.stem] = codes
        reports.append(report)
    allowed = {(c, m) for c, ms in COMPOSITES.items() for m in ms} | {
        (m, c) for c, ms in COMPOSITES.items() for m in ms
    }
    by_name = {r.name: r for r in reports}
    classes = sorted(members_of)
    for i, first in enumerate(classes):
        for second in classes[i + 1 :]:
            if (first, second) in allowed:
                continue
            shared = members_of[first] & members_of[second]
            if shared:
                by_name[first].problems.append(
                    f"{len(shared)} code(s) also in {second}: {', '.join(sorted(shared)[:10])}"
                )
    return reports


def render(reports: list[ClassReport]) -> str:
    lines = []
    for r in reports:
        lines.append(f"{r.name}: {r.total} codes")
        lines.append("  by term type: " + ", ".join(f"{t} {n}" for t, n in sorted(r.term_types.items())))
        lines.append("  by source:")
        for key, (count, reference, version) in r.sources.items():
            lines.append(f"    {key}: {count} ({reference}, version {version})")
        lines.append(f"  forms for skin, eye, ear or mucosa (never count): {r.local_forms}")
        lines.append("  names: " + ", ".join(r.names))
        lines.append("  problems: " + ("; ".join(r.problems) if r.problems else "none"))
    return "\n".join(lines)
