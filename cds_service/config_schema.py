"""JSON Schema checks of the configuration files, with messages an administrator can act on.

Each problem reads ``<file>:<line>: <dotted.path>: <what is wrong>, got <value>``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource

from cds_service.rules import RETIRED, retired_message
from cds_service.yaml_lines import line_of

FORMAT_CHECKER = Draft202012Validator.FORMAT_CHECKER
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas" / "config"


@cache
def _validators() -> dict[str, Draft202012Validator]:
    schemas = {p.stem: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.json")}
    registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    return {
        name: Draft202012Validator(schema, registry=registry, format_checker=FORMAT_CHECKER)
        for name, schema in schemas.items()
    }


def _explain(error: ValidationError) -> str:
    """Say what is allowed, in words, rather than the validator's jargon."""
    schema, kind = error.schema, error.validator
    if kind in ("minimum", "maximum", "type") and schema.get("type") in ("number", "integer"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        what = "a whole number" if schema["type"] == "integer" else "a number"
        bounds = f" between {lo} and {hi}" if lo is not None and hi is not None else ""
        return f"must be {what}{bounds}, got {error.instance!r}"
    if kind == "enum":
        return f"must be one of {', '.join(map(repr, schema['enum']))}, got {error.instance!r}"
    if kind == "required":
        return error.message.replace("is a required property", "is required")
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        return f"{error.message}; allowed: {', '.join(allowed)}" if allowed else error.message
    if kind == "type":
        return f"must be {TYPE_WORDS.get(schema.get('type'), schema.get('type'))}, got {error.instance!r}"
    if kind in ("minItems", "maxItems") and schema.get("minItems") == schema.get("maxItems"):
        return f"must be a list of exactly {schema['minItems']} values, got {error.instance!r}"
    if kind == "pattern":
        return f"must match {schema['pattern']}, got {error.instance!r}"
    if kind == "format":
        return f"must be a valid {schema['format']}, got {error.instance!r}"
    return f"{error.message}"


TYPE_WORDS = {
    "boolean": "true or false",
    "string": "text",
    "array": "a list",
    "object": "a mapping (key: value lines)",
}


def _explain_name(error: ValidationError) -> str:
    if error.validator == "enum" and error.instance in RETIRED:
        return retired_message(error.instance)
    if error.validator == "enum":
        return f"{error.instance!r} is not a finding id of the catalog (P1-P7, S0-S4, S7, N1-N15)"
    return f"{error.instance!r} is not allowed as a name here: {error.message}"


def where(path: Path, parts: Iterable[str | int]) -> str:
    """``file:line`` of the setting at ``parts`` (just ``file`` when the line cannot be found)."""
    line = line_of(path, parts)
    return f"{path}:{line}" if line else str(path)


def _dotted(parts: Iterable[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "(top level)"


def _unknown_keys(error: ValidationError, path: Path) -> list[str]:
    """One problem per misspelt or unknown key, at the key's own line, with the nearest allowed name."""
    allowed = sorted(error.schema.get("properties", {}))
    parts = list(error.absolute_path)
    problems = []
    for key in error.instance:
        if key in allowed:
            continue
        guess = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        problems.append(
            f"{where(path, [*parts, key])}: {_dotted([*parts, key])}: not a known setting; {hint}"
            f"allowed: {', '.join(allowed)}"
        )
    return problems


def _check(name: str, document: Any, path: Path) -> list[str]:
    errors = sorted(_validators()[name].iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    problems = []
    for error in errors:
        # An anyOf/$ref failure is clearer through its deepest cause.
        leaf = error
        while leaf.context:
            leaf = min(leaf.context, key=lambda e: len(e.absolute_path) * -1)
        if (
            leaf.validator == "additionalProperties"
            and leaf.schema.get("properties")
            and isinstance(leaf.instance, dict)
        ):
            problems.extend(_unknown_keys(leaf, path))
            continue
        parts = list(leaf.absolute_path)
        if "propertyNames" in leaf.absolute_schema_path:
            # A bad key: jsonschema reports it at its parent, with the key as the instance.
            parts.append(leaf.instance)
            problems.append(f"{where(path, parts)}: {_dotted(parts)}: {_explain_name(leaf)}")
            continue
        problems.append(f"{where(path, parts)}: {_dotted(parts)}: {_explain(leaf)}")
    return problems


def check_settings(settings: Any, path: Path) -> list[str]:
    problems = _check("settings", settings, path)
    if not problems:
        problems += _check_consistency(settings, path)
    return problems


def check_service(service: Any, path: Path) -> list[str]:
    return _check("service", service, path)


def _check_consistency(settings: dict, path: Path) -> list[str]:
    """Relations a schema cannot state: the warning threshold is below the critical one, and so on."""
    return check_thresholds(settings["thresholds"], path, ["thresholds"])


def check_thresholds(t: Mapping[str, Any], path: Path, at: list[str | int]) -> list[str]:
    """Check complete (merged) thresholds; ``at`` is where the file that set them writes its thresholds."""
    problems = []
    if t["creatinine_rise_warning"] >= t["creatinine_rise_critical"]:
        problems.append(
            f"{where(path, [*at, 'creatinine_rise_warning'])}: {_dotted([*at, 'creatinine_rise_warning'])}: "
            f"must be below creatinine_rise_critical ({t['creatinine_rise_critical']}), "
            f"got {t['creatinine_rise_warning']}"
        )
    tiers = [t["bp_info"], t["bp_warning"], t["bp_critical"]]
    if not all(a[0] <= b[0] and a[1] <= b[1] for a, b in pairwise(tiers)):
        problems.append(
            f"{where(path, [*at, 'bp_info'])}: {_dotted([*at, 'bp_*'])}: tiers must rise: "
            f"bp_info <= bp_warning <= bp_critical, got {tiers[0]}, {tiers[1]}, {tiers[2]}"
        )
    if t["hcg_unconfirmed_days"] > t["hcg_days"]:
        problems.append(
            f"{where(path, [*at, 'hcg_unconfirmed_days'])}: {_dotted([*at, 'hcg_unconfirmed_days'])}: "
            f"must not exceed hcg_days ({t['hcg_days']}), got {t['hcg_unconfirmed_days']}"
        )
    band_low, band_high = t["hcg_indeterminate_iu_per_l"]
    if band_low > band_high:
        band = [*at, "hcg_indeterminate_iu_per_l"]
        problems.append(
            f"{where(path, band)}: {_dotted(band)}: [from, to] with from <= to, got {[band_low, band_high]}"
        )
    low, high = t["pregnancy_capable_age"]
    if low > high:
        problems.append(
            f"{where(path, [*at, 'pregnancy_capable_age'])}: {_dotted([*at, 'pregnancy_capable_age'])}: "
            f"[from, to] with from <= to, got {[low, high]}"
        )
    return problems
