"""Lab values in the one unit each rule compares against (the canonical units of common.md).

Labs report the same analyte in several units (creatinine in mg/dL or µmol/L, UPCR in g/g, mg/g or mg/mmol,
HbA1c in % or mmol/mol). Rules only ever see the canonical unit; a value whose unit is not understood is
not guessed at: :func:`to_canonical` returns None and the caller reports "unit X not usable".

Units are read from the Quantity's UCUM ``code`` and its printed ``unit``. Both are normalised the same way:
whitespace removed, micro sign / Greek mu / ``mcg`` read as ``u``, case ignored, ``²`` read as ``2``, and UCUM
annotations in braces dropped (UCUM defines them as having no effect, so ``mg/g{creat}`` is ``mg/g``).
The code wins when it is a unit this module knows; if it names a unit that does not fit the group, or the
printed unit disagrees with it, the value is not usable. A code that is not a unit at all (a SNOMED unit
code, say) is ignored and the printed unit is used.

Judgements:

* eGFR: every LOINC code of the ``egfr`` value set is normalised to 1.73 m² by definition and UCUM treats
  ``{1.73_m2}`` as an annotation, so ``mL/min`` (as Synthea writes for 33914-3) is accepted as the same unit.
* UPCR without any unit: usable only for LOINC 34366-5, whose property is a unitless ratio; it is read as a
  mass ratio (g/g = mg/mg). Pass the Observation's LOINC code as ``loinc`` for this. 2890-2 without a unit is
  not usable.
* Potassium in mass units, hCG in moles and IgG in g/dL have no factor in rules.md and are not converted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

CANONICAL_UNITS = {
    "creatinine": "mg/dL",
    "egfr": "mL/min/{1.73_m2}",
    "upcr": "g/g",
    "tacrolimus-level": "ng/mL",
    "potassium": "mmol/L",
    "magnesium": "mg/dL",
    "glucose": "mg/dL",
    "glucose-fasting": "mg/dL",
    "hba1c": "%",
    "blood-pressure": "mm[Hg]",
    "systolic-bp": "mm[Hg]",
    "diastolic-bp": "mm[Hg]",
    "hcg-quantitative": "IU/L",
    "igg": "mg/dL",
    "body-height": "cm",
    "gestational-age": "d",
}
"""Lab group (observation value-set name) -> the unit its LabValues carry."""

QUALITATIVE_GROUPS = frozenset(
    {"hcg-qualitative", "pregnancy-status", "edd", "breastfeeding-status", "hbsag"}
)
"""Lab groups answered with a code or a date: no unit to convert to."""

UNITLESS_RATIO_LOINC = "34366-5"  # Protein/Creatinine [Ratio] in Urine

CREATININE_UMOL_PER_MG_DL = 88.4
MAGNESIUM_MG_DL_PER_MMOL_L = 2.43
GLUCOSE_MG_DL_PER_MMOL_L = 18.016
UPCR_MG_MMOL_PER_G_G = 113.0


def _factor(multiplier: float) -> Callable[[float], float]:
    return lambda value: value * multiplier


def _ifcc_to_ngsp(mmol_per_mol: float) -> float:
    """HbA1c IFCC (mmol/mol) to NGSP (%), the IFCC-NGSP master equation."""
    return mmol_per_mol * 0.09148 + 2.152


_SAME = _factor(1.0)
_MG_DL = {"mg/dl": _SAME}
_MM_HG = {"mm[hg]": _SAME, "mmhg": _SAME}

# Keys are normalised units (see _normalise); values turn a number in that unit into the canonical unit.
_CONVERSIONS: dict[str, dict[str, Callable[[float], float]]] = {
    "creatinine": {
        "mg/dl": _SAME,
        "umol/l": _factor(1 / CREATININE_UMOL_PER_MG_DL),
        "mmol/l": _factor(1000 / CREATININE_UMOL_PER_MG_DL),
    },
    "egfr": {"ml/min/1.73m2": _SAME, "ml/min": _SAME},
    "upcr": {
        "g/g": _SAME,
        "mg/mg": _SAME,
        "": _SAME,  # "{ratio}" once its annotation is dropped; never a missing unit (see to_canonical)
        "1": _SAME,  # UCUM unity, what {ratio} means
        "mg/g": _factor(1 / 1000),
        "mg/mmol": _factor(1 / UPCR_MG_MMOL_PER_G_G),
    },
    "tacrolimus-level": {"ng/ml": _SAME, "ug/l": _SAME},
    "potassium": {"mmol/l": _SAME, "meq/l": _SAME},
    "magnesium": {
        "mg/dl": _SAME,
        "mmol/l": _factor(MAGNESIUM_MG_DL_PER_MMOL_L),
        "meq/l": _factor(MAGNESIUM_MG_DL_PER_MMOL_L / 2),  # Mg is divalent: 1 mEq = 0.5 mmol
    },
    "glucose": {"mg/dl": _SAME, "mmol/l": _factor(GLUCOSE_MG_DL_PER_MMOL_L)},
    "hba1c": {"%": _SAME, "mmol/mol": _ifcc_to_ngsp},
    "blood-pressure": _MM_HG,
    "systolic-bp": _MM_HG,
    "diastolic-bp": _MM_HG,
    "hcg-quantitative": {"[iu]/l": _SAME, "iu/l": _SAME, "m[iu]/ml": _SAME, "miu/ml": _SAME},
    "igg": {**_MG_DL, "g/l": _factor(100)},
    # the bedside Schwartz eGFR under 18 (rules.md v3): UCUM cm, m and the international inch [in_i]
    "body-height": {"cm": _SAME, "m": _factor(100), "[in_i]": _factor(2.54), "in": _factor(2.54)},
}
_CONVERSIONS["glucose-fasting"] = _CONVERSIONS["glucose"]
# gestational age for P8 (rules.md v3): UCUM wk and d, and the words a valueString may hold
_CONVERSIONS["gestational-age"] = {
    "d": _SAME, "day": _SAME, "days": _SAME, "wk": _factor(7), "week": _factor(7), "weeks": _factor(7),
}  # fmt: skip

_KNOWN_UNITS = frozenset(key for table in _CONVERSIONS.values() for key in table)
_ANNOTATION = re.compile(r"\{[^{}]*\}")
_FOREIGN = object()
"""Marks a unit this module knows, but not one of the group being converted."""


def canonical_unit(group: str) -> str | None:
    """The unit values of ``group`` are stored in; None for qualitative groups."""
    _check_group(group)
    return CANONICAL_UNITS.get(group)


def to_canonical(
    group: str, value: float, unit: str | None, code: str | None, *, loinc: str | None = None
) -> tuple[float, str] | None:
    """``value`` of lab ``group`` in the group's canonical unit, or None when the unit is not usable.

    ``unit`` and ``code`` are the Quantity's printed unit and UCUM code; ``loinc`` is the Observation's
    LOINC code, needed only for the unitless UPCR 34366-5. Raises ValueError for an unknown group.
    """
    _check_group(group)
    table = _CONVERSIONS.get(group)
    if (
        table is None
        or isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        return None
    if not _present(unit) and not _present(code):
        if group == "upcr" and isinstance(loinc, str) and loinc.strip() == UNITLESS_RATIO_LOINC:
            return float(value), CANONICAL_UNITS[group]
        return None
    by_code = _reading(group, table, value, code, opaque=lambda key: key.isdigit())
    by_unit = _reading(group, table, value, unit, opaque=lambda key: key not in _KNOWN_UNITS)
    if by_code is _FOREIGN or by_unit is _FOREIGN:
        return None  # a unit of something else, or code and printed unit name different units
    if isinstance(by_code, float) and isinstance(by_unit, float) and not math.isclose(by_code, by_unit):
        return None  # code and printed unit disagree
    result = by_code if isinstance(by_code, float) else by_unit
    return (result, CANONICAL_UNITS[group]) if isinstance(result, float) else None


def _present(text: object) -> bool:
    return isinstance(text, str) and bool(text.strip())


def _reading(
    group: str,
    table: dict[str, Callable[[float], float]],
    value: float,
    text: str | None,
    opaque: Callable[[str], bool],
) -> float | object | None:
    """The converted value, _FOREIGN, or None when ``text`` is absent or says nothing usable (``opaque``:
    a code that is not a unit, such as a SNOMED unit code, or printed text this module cannot read)."""
    if not isinstance(text, str) or not _present(text):
        return None
    key = _normalise(group, text)
    if key in table:
        return float(table[key](value))
    return None if opaque(key) else _FOREIGN


def _normalise(group: str, text: str) -> str:
    key = re.sub(r"\s+", "", text).replace("µ", "u").replace("μ", "u").replace("²", "2").lower()
    key = key.replace("mcg", "ug")
    if group == "egfr":
        key = re.sub(r"[{}_^]", "", key).replace("sq.m", "m2").replace("sqm", "m2")
        return key
    return _ANNOTATION.sub("", key)


def _check_group(group: str) -> None:
    if group not in CANONICAL_UNITS and group not in QUALITATIVE_GROUPS:
        raise ValueError(f"unknown lab group {group!r}")


def linear_factors(group: str) -> dict[str, float]:
    """Normalised unit -> factor to the canonical unit, for groups whose conversions are all linear.

    For the SMART app, which converts in the browser exactly as the rules do (same keys, same factors).
    """
    _check_group(group)
    table = _CONVERSIONS.get(group, {})
    return {key: convert(1.0) for key, convert in table.items() if convert is not _ifcc_to_ngsp}
