"""Metamorphic transformations: the same clinical fact coded another valid way (rules.md v3 § Reading the
record however it is coded). Each transformation is a pure function of a patient's record (its FHIR
resources, drafts included) and/or of the CDS Hooks request built from it, returning a transformed copy; the
service must give the same findings and indicators for the copy as for the original.

A transformation that cannot keep a record's meaning raises ``CannotPreserve`` with the reason (e.g. a
creatinine that rounding to whole µmol/L would move across a threshold); one that finds nothing to re-encode
raises ``NothingToChange``. Both become skips with that reason, so a skip always says why.

Codes used here come from the project's value sets (``cds_service/valuesets``: lab codes, yes/no and
pregnancy answers, RxNorm ingredients and product displays) or from the catalog (rules.md v3: SNOMED
qualifier values, HL7 interpretation codes). The LOINC answers LA6576-8 Positive / LA6577-6 Negative (answer
list LL2206-2) and LA11882-0 Detected / LA11883-8 Not detected (LL1055-4) are as the SMART Health Cards
vaccination IG lists them in its COVID-19 lab result value set (smart-on-fhir/health-cards, FSH source).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
LOCAL_SYSTEM = "http://hospital.example.org/fhir/CodeSystem/local-codes"
T = TypeVar("T")


class CannotPreserve(Exception):
    """This record's meaning cannot be kept by the transformation; the message says why."""


class NothingToChange(Exception):
    """The record holds nothing this transformation re-encodes; the message says what it looks for."""


@dataclass(frozen=True)
class Context:
    """What a transformation may need besides the data: the FHIR base the references point to, the data path
    (``prefetch`` or ``fhir``), a seed (the record's name) for deterministic shuffles and ids, and (for a
    request step) the record after the record step."""

    fhir_base: str
    path: str
    seed: str
    record: tuple[dict, ...] = ()
    notes: list[str] = field(default_factory=list)
    """Which variant a transformation chose for this record, for the outcome and the failure message."""

    def rng(self, salt: str) -> random.Random:
        return random.Random(hashlib.sha256(f"{self.seed}/{salt}".encode()).hexdigest())

    def choose(self, salt: str, options: list[T]) -> T:
        """One of ``options``, the same for this record every run."""
        return options[int(hashlib.sha256(f"{self.seed}/{salt}".encode()).hexdigest(), 16) % len(options)]


Resources = list[dict]
RecordStep = Callable[[Resources, Context], Resources]
RequestStep = Callable[[dict, Context], dict]


@dataclass(frozen=True)
class Transformation:
    """A named re-encoding. ``record`` changes the resources (both data paths see the change: the prefetch is
    filled from them and the FHIR server serves them); ``request`` changes the built hook request."""

    name: str
    doc: str
    record: RecordStep | None = None
    request: RequestStep | None = None
    looks_for: str = "anything"

    def apply_record(self, resources: Resources, ctx: Context) -> Resources:
        if self.record is None:
            return resources
        return self.record(clone(resources), ctx)

    def apply_request(self, request: dict, ctx: Context) -> dict:
        if self.request is None:
            return request
        return self.request(clone(request), ctx)


TRANSFORMATIONS: list[Transformation] = []


def transformation(name: str, *, looks_for: str, step: str = "record"):
    """Register a function as the ``step`` ("record" or "request") of a transformation; its docstring says
    the equivalence it relies on."""
    if step not in ("record", "request"):
        raise ValueError(step)

    def register(function: Callable) -> Callable:
        doc = " ".join((function.__doc__ or "").split())
        TRANSFORMATIONS.append(Transformation(name, doc, looks_for=looks_for, **{step: function}))
        return function

    return register


# --- helpers ----------------------------------------------------------------------------------------------


def clone(node: Any) -> Any:
    """A deep copy of JSON data (much faster than copy.deepcopy on FHIR records)."""
    return orjson.loads(orjson.dumps(node))


@cache
def valueset(name: str) -> dict:
    """A value set the service ships verified (``cds_service/valuesets/<name>.json``); {} when it ships none
    (or only behind configuration, under ``unverified/``)."""
    path = ROOT / "cds_service" / "valuesets" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


@cache
def valueset_codes(name: str) -> frozenset[tuple[str, str]]:
    """(system, code) of a shipped value set: its expansion and its compose."""
    data = valueset(name)
    codes = {(c["system"], c["code"]) for c in data.get("expansion", {}).get("contains", [])}
    for include in data.get("compose", {}).get("include", []):
        codes |= {(include.get("system", ""), c["code"]) for c in include.get("concept", [])}
    return frozenset(codes)


@cache
def settings_thresholds() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "hooks" / "settings.yaml").read_text())["thresholds"]


def codes_of(concept: Any) -> set[tuple[str, str]]:
    if not isinstance(concept, dict):
        return set()
    return {
        (c.get("system", ""), c.get("code", "")) for c in concept.get("coding", []) if isinstance(c, dict)
    }


def observation_codes(resource: dict) -> set[tuple[str, str]]:
    return codes_of(resource.get("code")) if resource.get("resourceType") == "Observation" else set()


def is_lab(resource: dict, valueset: str) -> bool:
    return bool(observation_codes(resource) & valueset_codes(valueset))


def of_type(resources: Resources, *types: str) -> Iterator[dict]:
    return (r for r in resources if r.get("resourceType") in types)


def changed(before: Resources | bytes, after: Resources, what: str) -> Resources:
    """``after``, or NothingToChange(what) when it equals ``before`` (resources or their ``orjson`` dump)."""
    if (before if isinstance(before, bytes) else orjson.dumps(before)) == orjson.dumps(after):
        raise NothingToChange(what)
    return after


def concepts(node: Any) -> Iterator[dict]:
    """Every CodeableConcept-like object (a dict with a ``coding`` list) in a JSON tree."""
    if isinstance(node, dict):
        if isinstance(node.get("coding"), list):
            yield node
        for value in node.values():
            yield from concepts(value)
    elif isinstance(node, list):
        for value in node:
            yield from concepts(value)


def patient_of(resources: Resources) -> dict:
    return next(of_type(resources, "Patient"))


# --- 1. qualitative results: answer codes, qualifier values, text, interpretation only -------------------

POSITIVE_WORDS = re.compile(r"^\s*(positive|reactive|detected|present|pos)\b", re.I)
NEGATIVE_WORDS = re.compile(r"^\s*(negative|non-?\s?reactive|not detected|absent|neg)\b", re.I)
POSITIVE_CODES = {
    (LOINC, "LA6576-8"), (LOINC, "LA11882-0"), (SNOMED, "10828004"), (SNOMED, "11214006"),
    (SNOMED, "260373001"), (INTERPRETATION, "POS"), (INTERPRETATION, "DET"),
}  # fmt: skip
NEGATIVE_CODES = {
    (LOINC, "LA6577-6"), (LOINC, "LA11883-8"), (SNOMED, "260385009"), (SNOMED, "131194007"),
    (SNOMED, "260415000"), (INTERPRETATION, "NEG"), (INTERPRETATION, "ND"),
}  # fmt: skip
QUALITATIVE_SETS = ("hbsag", "anti-hbc", "hcg-qualitative")
HCG_SERUM_QUALITATIVE = "2118-8"  # Choriogonadotropin (pregnancy test) [Presence] in Serum or Plasma


def _polarity_of_text(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    if NEGATIVE_WORDS.match(text):
        return "negative"
    if POSITIVE_WORDS.match(text):
        return "positive"
    return None


def qualitative_polarity(observation: dict) -> str | None:
    """positive / negative as every channel of the result says it; CannotPreserve when they disagree."""
    said: set[str] = set()
    value = observation.get("valueCodeableConcept")
    for source in [*([value] if value else []), *observation.get("interpretation", [])]:
        codes = codes_of(source)
        said |= {"positive"} if codes & POSITIVE_CODES else set()
        said |= {"negative"} if codes & NEGATIVE_CODES else set()
        said |= {p} if (p := _polarity_of_text(source.get("text"))) else set()
    if (p := _polarity_of_text(observation.get("valueString"))) is not None:
        said.add(p)
    if "valueBoolean" in observation:
        said.add("positive" if observation["valueBoolean"] else "negative")
    if len(said) > 1:
        raise CannotPreserve(f"Observation/{observation['id']} states both polarities")
    return next(iter(said), None)


def _hcg_quantity_polarity(observation: dict) -> str | None:
    """A quantitative hCG read as the catalog reads it: > 25 IU/L positive, < 5 negative, else None."""
    quantity = observation.get("valueQuantity") or {}
    value, comparator = quantity.get("value"), quantity.get("comparator")
    unit = (quantity.get("code") or quantity.get("unit") or "").replace("[", "").replace("]", "").lower()
    if not isinstance(value, int | float) or unit not in ("iu/l", "miu/ml"):
        return None
    positive_above = settings_thresholds()["hcg_positive_iu_per_l"]
    if value > positive_above and comparator in (None, ">", ">="):
        return "positive"
    if value < 5 and comparator in (None, "<", "<="):
        return "negative"
    if value == 5 and comparator == "<":
        return "negative"
    return None


@dataclass(frozen=True)
class AnswerStyle:
    """How a qualitative answer is written: value codes per polarity, or a value string, or interpretation."""

    value_codes: dict[str, tuple[str, str, str]] | None = None  # polarity -> (system, code, display)
    value_string: dict[str, str] | None = None
    interpretation: dict[str, tuple[str, str]] | None = None  # polarity -> (code, display)
    value_text: dict[str, str] | None = None


def _write_answer(observation: dict, polarity: str, style: AnswerStyle) -> None:
    for key in [k for k in observation if k.startswith("value")] + ["interpretation"]:
        observation.pop(key, None)
    if style.value_codes:  # the code alone: a display would let the text be read instead of the code
        system, code, _display = style.value_codes[polarity]
        observation["valueCodeableConcept"] = {"coding": [{"system": system, "code": code}]}
    if style.value_string:
        observation["valueString"] = style.value_string[polarity]
    if style.value_text:
        observation["valueCodeableConcept"] = {"text": style.value_text[polarity]}
    if style.interpretation:
        code, display = style.interpretation[polarity]
        observation["interpretation"] = [
            {"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}
        ]


def _answers(style: AnswerStyle) -> RecordStep:
    def step(resources: Resources, ctx: Context) -> Resources:
        before = orjson.dumps(resources)
        for observation in of_type(resources, "Observation"):
            if any(is_lab(observation, name) for name in QUALITATIVE_SETS):
                polarity = qualitative_polarity(observation)
                if polarity is None:
                    raise CannotPreserve(f"Observation/{observation['id']} states no polarity to re-encode")
                _write_answer(observation, polarity, style)
            elif is_lab(observation, "hcg-quantitative"):
                polarity = _hcg_quantity_polarity(observation)
                if polarity is None:
                    continue  # 5-25 IU/L is indeterminate: no qualitative answer says that; left as it is
                observation["code"] = {"coding": [{"system": LOINC, "code": HCG_SERUM_QUALITATIVE}]}
                _write_answer(observation, polarity, style)
        return changed(before, resources, "no qualitative result (HBsAg, anti-HBc, hCG) to re-encode")

    return step


def _codes(positive: tuple[str, str, str], negative: tuple[str, str, str]) -> AnswerStyle:
    return AnswerStyle(value_codes={"positive": positive, "negative": negative})


ANSWER_STYLES: list[tuple[str, str, AnswerStyle]] = [
    (
        "answer-loinc-positive",
        "A qualitative result coded only by the LOINC answer LA6576-8 Positive / LA6577-6 Negative (LL2206-2)"
        " says what 'positive'/'negative' text does.",
        _codes((LOINC, "LA6576-8", "Positive"), (LOINC, "LA6577-6", "Negative")),
    ),
    (
        "answer-loinc-detected",
        "A qualitative result coded only by the LOINC answer LA11882-0 Detected / LA11883-8 Not detected"
        " (LL1055-4) is the same positive/negative result.",
        _codes((LOINC, "LA11882-0", "Detected"), (LOINC, "LA11883-8", "Not detected")),
    ),
    (
        "answer-snomed-positive",
        "A qualitative result coded only by the SNOMED CT qualifier 10828004 Positive / 260385009 Negative"
        " is the same result.",
        _codes((SNOMED, "10828004", "Positive"), (SNOMED, "260385009", "Negative")),
    ),
    (
        "answer-snomed-reactive",
        "A qualitative result coded only by the SNOMED CT qualifier 11214006 Reactive / 131194007"
        " Non-Reactive is the same result.",
        _codes((SNOMED, "11214006", "Reactive"), (SNOMED, "131194007", "Non-Reactive")),
    ),
    (
        "answer-snomed-detected",
        "A qualitative result coded only by the SNOMED CT qualifier 260373001 Detected / 260415000 Not"
        " detected is the same result.",
        _codes((SNOMED, "260373001", "Detected"), (SNOMED, "260415000", "Not detected")),
    ),
    (
        "answer-value-string",
        "A qualitative result given as valueString text ('Positive', 'not detected') is the same result.",
        AnswerStyle(value_string={"positive": "Positive", "negative": "not detected"}),
    ),
    (
        "answer-text-reactive",
        "A qualitative result given as valueCodeableConcept.text alone ('Reactive', 'Non-reactive') is the"
        " same result.",
        AnswerStyle(value_text={"positive": "Reactive", "negative": "Non-reactive"}),
    ),
    (
        "answer-interpretation-pos-neg",
        "A qualitative result given only as the HL7 interpretation POS / NEG, with no value, is the same"
        " result.",
        AnswerStyle(interpretation={"positive": ("POS", "Positive"), "negative": ("NEG", "Negative")}),
    ),
    (
        "answer-interpretation-det-nd",
        "A qualitative result given only as the HL7 interpretation DET / ND, with no value, is the same"
        " result.",
        AnswerStyle(interpretation={"positive": ("DET", "Detected"), "negative": ("ND", "Not detected")}),
    ),
]

for _name, _doc, _style in ANSWER_STYLES:
    TRANSFORMATIONS.append(
        Transformation(
            _name,
            _doc + " (A quantitative hCG > 25 IU/L or < 5 IU/L becomes a serum qualitative hCG 2118-8.)",
            record=_answers(_style),
            looks_for="qualitative results (HBsAg, anti-HBc, hCG)",
        )
    )


@transformation("answer-text-case-whitespace", looks_for="a valueCodeableConcept with text")
def answer_text_case(resources: Resources, ctx: Context) -> Resources:
    """A valueCodeableConcept.text in another case, with extra spaces, says the same thing."""
    before = orjson.dumps(resources)
    for resource in of_type(resources, "Observation"):
        value = resource.get("valueCodeableConcept")
        if isinstance(value, dict) and isinstance(value.get("text"), str):
            value["text"] = "  " + re.sub(r"\s+", "   ", value["text"].upper()) + " "
    return changed(before, resources, "no valueCodeableConcept text")


# --- 2. units ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitChange:
    """Values of ``valueset`` in unit ``source`` rewritten in ``target`` (value × factor, rounded to
    ``decimals``), with the thresholds the rules compare them to (in the source unit) so that a value that
    rounding moves across one is caught."""

    valueset: str
    source: tuple[str, ...]  # normalised units accepted as the source
    target_unit: str
    target_code: str
    factor: float
    decimals: int | None
    limits: tuple[float, ...] = ()
    ratios: tuple[float, ...] = ()  # later / earlier compared to these
    differences: tuple[float, ...] = ()  # later - earlier (in mg/dL, see to_mg_dl) compared to these
    egfr: bool = (
        False  # the values are creatinine: the calculated eGFR must stay on the same side of its limit
    )
    ordered: bool = False  # the rules compare these values with each other (lowest as baseline, rise, fall)
    to_mg_dl: float = 1.0  # for the creatinine checks: a source value times this is creatinine in mg/dL


def _norm_unit(quantity: dict) -> str:
    unit = quantity.get("code") or quantity.get("unit") or ""
    return unit.replace("µ", "u").replace("μ", "u").replace("[", "").replace("]", "").lower()


def _side(a: float, b: float) -> int:
    return (a > b) - (a < b)


def _ckd_epi(creatinine: float, age: float, female: bool) -> float:
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine / kappa
    egfr = 142 * min(ratio, 1) ** alpha * max(ratio, 1) ** -1.200 * 0.9938**age
    return egfr * (1.012 if female else 1)


def _age(resources: Resources) -> tuple[float, bool] | None:
    patient = patient_of(resources)
    born = patient.get("birthDate")
    if not born or patient.get("gender") not in ("female", "male"):
        return None
    years = (datetime.now().date() - datetime.fromisoformat(born[:10]).date()).days / 365.25
    return years, patient["gender"] == "female"


def _guard(change: UnitChange, pairs: list[tuple[float, float]], resources: Resources, what: str) -> None:
    """CannotPreserve when rounding in the new unit moves a value across a limit the rules use."""
    for before, after in pairs:
        for limit in change.limits:
            if _side(before, limit) != _side(after, limit):
                raise CannotPreserve(
                    f"{what} {before} becomes {after:g} after rounding: across the limit {limit}"
                )
    for (a, a2), (b, b2) in ((p, q) for p in pairs for q in pairs if p is not q):
        if change.ordered and _side(a, b) != _side(a2, b2):
            raise CannotPreserve(f"{what} {a} and {b} change order (or tie) after rounding")
        for ratio in change.ratios:
            if _side(b / a, ratio) != _side(b2 / a2, ratio):
                raise CannotPreserve(f"{what} {a} -> {b}: rounding moves their ratio across {ratio}")
        k = change.to_mg_dl
        for difference in change.differences:  # on values rounded to 2 decimals, as N3 compares them
            rise, rise2 = round(b * k, 2) - round(a * k, 2), round(b2 * k, 2) - round(a2 * k, 2)
            if _side(round(rise, 2), difference) != _side(round(rise2, 2), difference):
                raise CannotPreserve(
                    f"{what} {a} -> {b}: rounding moves their difference across {difference}"
                )
    if change.egfr and (age := _age(resources)) is not None:
        limit = settings_thresholds()["egfr_cni_caution"]
        for before, after in pairs:
            e1, e2 = _ckd_epi(before * change.to_mg_dl, *age), _ckd_epi(after * change.to_mg_dl, *age)
            if any(_side(round(e1, d), limit) != _side(round(e2, d), limit) for d in (0, 1, 3)):
                raise CannotPreserve(
                    f"{what} {before} -> {after:g}: calculated eGFR {e1:.2f} -> {e2:.2f} crosses {limit}"
                )


def _unit_step(changes: tuple[UnitChange, ...], what: str) -> RecordStep:
    def step(resources: Resources, ctx: Context) -> Resources:
        before = orjson.dumps(resources)
        for change in changes:
            pairs: list[tuple[float, float]] = []
            for observation in of_type(resources, "Observation"):
                quantity = observation.get("valueQuantity")
                if not is_lab(observation, change.valueset) or not isinstance(quantity, dict):
                    continue
                value = quantity.get("value")
                if _norm_unit(quantity) not in change.source or not isinstance(value, int | float):
                    continue
                if quantity.get("extension") == [CONVERTED]:
                    continue  # already rewritten by an earlier change of this transformation
                moved = value * change.factor
                if change.decimals is not None:
                    moved = round(moved, change.decimals) if change.decimals else round(moved)
                pairs.append((value, moved / change.factor))
                quantity.update(value=moved, unit=change.target_unit, system=UCUM, code=change.target_code)
                quantity["extension"] = [CONVERTED]
            _guard(change, pairs, resources, what)
        for observation in of_type(resources, "Observation"):
            quantity = observation.get("valueQuantity")
            if isinstance(quantity, dict) and quantity.get("extension") == [CONVERTED]:
                del quantity["extension"]
        return changed(before, resources, f"no {what} in a unit this transformation converts")

    return step


CONVERTED = {"url": "urn:metamorphic:converted", "valueBoolean": True}
"""Marks a quantity converted during one step, so a later change of the same step leaves it alone."""


def _unit_transformation(name: str, doc: str, what: str, *changes: UnitChange) -> None:
    TRANSFORMATIONS.append(Transformation(name, doc, record=_unit_step(changes, what), looks_for=what))


_T = settings_thresholds()
_CREATININE_RATIOS = (1 + _T["creatinine_rise_warning"], 1 + _T["creatinine_rise_critical"])
_unit_transformation(
    "units-creatinine",
    "Creatinine in µmol/L (whole numbers, as labs report) is mg/dL × 88.4; µmol/L values become mg/dL.",
    "creatinine",
    UnitChange(
        "creatinine",
        ("mg/dl",),
        "µmol/L",
        "umol/L",
        88.4,
        0,
        ratios=_CREATININE_RATIOS,
        differences=(0.3,),
        egfr=True,
        ordered=True,
    ),
    UnitChange(
        "creatinine",
        ("umol/l",),
        "mg/dL",
        "mg/dL",
        1 / 88.4,
        2,
        ratios=_CREATININE_RATIOS,
        differences=(26.52,),
        egfr=True,
        ordered=True,
        to_mg_dl=1 / 88.4,
    ),
)
_unit_transformation(
    "units-potassium",
    "Potassium in mEq/L is the same number as in mmol/L (monovalent ion).",
    "potassium",
    UnitChange("potassium", ("mmol/l",), "mEq/L", "meq/L", 1.0, None),
)
_unit_transformation(
    "units-magnesium",
    "Magnesium in mmol/L (2 decimals) is mg/dL ÷ 2.43; mmol/L values become mg/dL.",
    "magnesium",
    UnitChange("magnesium", ("mg/dl",), "mmol/L", "mmol/L", 1 / 2.43, 2, (_T["magnesium_min"],)),
    UnitChange("magnesium", ("mmol/l",), "mg/dL", "mg/dL", 2.43, 2, (_T["magnesium_min"] / 2.43,)),
)
_unit_transformation(
    "units-glucose",
    "Glucose in mmol/L (1 decimal) is mg/dL ÷ 18.016; mmol/L values become mg/dL.",
    "glucose",
    UnitChange(
        "glucose",
        ("mg/dl",),
        "mmol/L",
        "mmol/L",
        1 / 18.016,
        1,
        (_T["fasting_glucose"], _T["random_glucose"]),
    ),
    UnitChange("glucose-fasting", ("mg/dl",), "mmol/L", "mmol/L", 1 / 18.016, 1, (_T["fasting_glucose"],)),
    UnitChange(
        "glucose",
        ("mmol/l",),
        "mg/dL",
        "mg/dL",
        18.016,
        0,
        (_T["fasting_glucose"] / 18.016, _T["random_glucose"] / 18.016),
    ),
)
_unit_transformation(
    "units-hcg",
    "hCG in mIU/mL is the same number as in IU/L.",
    "quantitative hCG",
    UnitChange("hcg-quantitative", ("iu/l",), "mIU/mL", "m[IU]/mL", 1.0, None),
)
_unit_transformation(
    "units-tacrolimus",
    "A tacrolimus level in µg/L is the same number as in ng/mL.",
    "tacrolimus level",
    UnitChange("tacrolimus-level", ("ng/ml",), "µg/L", "ug/L", 1.0, None),
)
_unit_transformation(
    "units-upcr",
    "UPCR in mg/mmol (1 decimal) is g/g × 113; mg/g and mg/mmol values become g/g.",
    "UPCR",
    UnitChange(
        "upcr", ("g/g",), "mg/mmol", "mg/mmol", 113.0, 1,
        limits=(_T["upcr_response"],), ratios=(_T["upcr_reduction"],), ordered=True,
    ),
    UnitChange(
        "upcr", ("mg/g",), "g/g", "g/g", 1 / 1000, 3,
        limits=(_T["upcr_response"] * 1000,), ratios=(_T["upcr_reduction"],), ordered=True,
    ),
    UnitChange(
        "upcr", ("mg/mmol",), "g/g", "g/g", 1 / 113, 3,
        limits=(_T["upcr_response"] * 113,), ratios=(_T["upcr_reduction"],), ordered=True,
    ),
)  # fmt: skip


# --- 3. quantities as text -------------------------------------------------------------------------------


def _quantity_text(quantity: dict) -> str:
    value = quantity["value"]
    number = f"{value:g}" if isinstance(value, float) else str(value)
    unit = quantity.get("unit") or quantity.get("code") or ""
    return f"{quantity.get('comparator', '')}{number} {unit}".strip()


@transformation("quantity-as-value-string", looks_for="a valueQuantity")
def quantity_as_string(resources: Resources, ctx: Context) -> Resources:
    """A valueQuantity written as valueString "5.6 mmol/L" (number and unit) is the same value."""
    before = orjson.dumps(resources)
    for observation in of_type(resources, "Observation"):
        for holder in [observation, *observation.get("component", [])]:
            quantity = holder.get("valueQuantity")
            if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
                holder["valueString"] = _quantity_text(holder.pop("valueQuantity"))
    return changed(before, resources, "no valueQuantity")


UNIT_FIELDS = [("UCUM code only", "unit"), ("printed unit only", "code")]


@transformation("quantity-unit-one-field", looks_for="a valueQuantity with both a unit and a UCUM code")
def quantity_unit_one_field(resources: Resources, ctx: Context) -> Resources:
    """A Quantity's unit given only as its UCUM code (system + code) or only as printed text (unit) is the
    same unit; which one is chosen per record."""
    label, dropped = ctx.choose("unit-field", UNIT_FIELDS)
    ctx.notes.append(label)
    before = orjson.dumps(resources)
    for observation in of_type(resources, "Observation"):
        for holder in [observation, *observation.get("component", [])]:
            quantity = holder.get("valueQuantity")
            if isinstance(quantity, dict) and quantity.get("unit") and quantity.get("code"):
                del quantity[dropped]
                if dropped == "code":
                    quantity.pop("system", None)
    return changed(before, resources, "no valueQuantity with both a unit and a UCUM code")


@transformation("hcg-comparator", looks_for="a quantitative hCG below 5 or above 1000 IU/L")
def hcg_comparator(resources: Resources, ctx: Context) -> Resources:
    """An hCG below 5 IU/L reported as "<5", above 1000 as ">1000", keeps its meaning (negative /
    positive)."""
    before = orjson.dumps(resources)
    for observation in of_type(resources, "Observation"):
        quantity = observation.get("valueQuantity")
        if not is_lab(observation, "hcg-quantitative") or not isinstance(quantity, dict):
            continue
        value = quantity.get("value")
        if isinstance(value, int | float) and "comparator" not in quantity:
            if value < 5:
                quantity.update(value=5, comparator="<")
            elif value > 1000:
                quantity.update(value=1000, comparator=">")
    return changed(before, resources, "no quantitative hCG below 5 or above 1000 IU/L")


# --- 4. where the Medication is -----------------------------------------------------------------------------


def _medication_for(order: dict, med_id: str) -> dict:
    return {"resourceType": "Medication", "id": med_id, "code": order.pop("medicationCodeableConcept")}


def _orders_with_concepts(resources: Resources) -> list[dict]:
    return [r for r in of_type(resources, "MedicationRequest") if "medicationCodeableConcept" in r]


@transformation("medication-contained", looks_for="an order with medicationCodeableConcept")
def medication_contained(resources: Resources, ctx: Context) -> Resources:
    """An order's drug given as a contained Medication (``#id``) is the same drug as its concept."""
    orders = _orders_with_concepts(resources)
    if not orders:
        raise NothingToChange("no order with medicationCodeableConcept")
    for order in orders:
        order.setdefault("contained", []).append(_medication_for(order, "med"))
        order["medicationReference"] = {"reference": "#med"}
    return resources


def _referenced_medications(resources: Resources) -> Resources:
    """Every order's concept moved to a Medication resource of its own, referenced as ``Medication/<id>``."""
    orders = _orders_with_concepts(resources)
    if not orders:
        raise NothingToChange("no order with medicationCodeableConcept")
    for order in orders:
        medication = _medication_for(order, f"{order['id']}-med")
        order["medicationReference"] = {"reference": f"Medication/{medication['id']}"}
        resources.append(medication)
    return resources


def _medication_entries(request: dict) -> list[dict]:
    entries = request.get("context", {}).get("draftOrders", {}).get("entry", [])
    return [e for e in entries if e.get("resource", {}).get("resourceType") == "Medication"]


def _prefetch_include(request: dict, medications: Resources, base: str) -> None:
    """Medications added to the prefetch ``medications`` Bundle as ``_include`` entries, as an EHR running
    ``MedicationRequest?patient=…&_include=MedicationRequest:medication`` returns them."""
    bundle = (request.get("prefetch") or {}).get("medications")
    if not isinstance(bundle, dict) or not medications:
        return
    bundle.setdefault("entry", []).extend(
        {"fullUrl": f"{base}/Medication/{m['id']}", "resource": m, "search": {"mode": "include"}}
        for m in medications
    )


def _medication_step(keep_draft_medications: bool) -> RequestStep:
    def step(request: dict, ctx: Context) -> dict:
        """Stored orders' Medications go into the prefetch Bundle (the FHIR server serves them anyway); a
        draft's Medication stays in draftOrders, or is taken out of it (then the service must find it on the
        FHIR server or, without one, in the prefetch Bundle)."""
        context = request["context"]
        draft_medications = [e["resource"] for e in _medication_entries(request)]
        if not keep_draft_medications and "draftOrders" in context:
            context["draftOrders"]["entry"] = [
                e
                for e in context["draftOrders"]["entry"]
                if e.get("resource", {}).get("resourceType") != "Medication"
            ]
        if ctx.path == "prefetch":
            drafted = {m["id"] for m in draft_medications}
            stored = [m for m in of_type(ctx.record, "Medication") if m["id"] not in drafted]
            _prefetch_include(
                request, stored + ([] if keep_draft_medications else draft_medications), ctx.fhir_base
            )
        return request

    return step


def _medication_in_draft_orders(resources: Resources, ctx: Context) -> Resources:
    return _referenced_medications(resources)


TRANSFORMATIONS += [
    Transformation(
        "medication-in-draft-orders",
        "An order's drug as a `Medication/<id>` resource (in draftOrders for a draft; in the prefetch Bundle"
        " or on the FHIR server for a stored order) is the same drug as its concept.",
        record=_medication_in_draft_orders,
        request=_medication_step(keep_draft_medications=True),
        looks_for="an order with medicationCodeableConcept",
    ),
    Transformation(
        "medication-on-server",
        "A draft's `Medication/<id>` found only on the EHR's FHIR server (without one, in the prefetch"
        " Bundle) is the same drug as its concept.",
        record=_medication_in_draft_orders,
        request=_medication_step(keep_draft_medications=False),
        looks_for="an order with medicationCodeableConcept",
    ),
]


@transformation("medication-urn-uuid", looks_for="an order with medicationCodeableConcept", step="request")
def medication_urn_uuid(request: dict, ctx: Context) -> dict:
    """A Medication referenced by ``urn:uuid:`` matching its entry's fullUrl (draftOrders; for stored orders
    the prefetch Bundle) is the same drug as the order's concept."""
    bundles = [request["context"].get("draftOrders")]
    if ctx.path == "prefetch":
        bundles.append((request.get("prefetch") or {}).get("medications"))
    touched = False
    for bundle in (b for b in bundles if isinstance(b, dict)):
        added: list[dict] = []
        searched = {"search": {"mode": "include"}} if bundle.get("type") == "searchset" else {}
        for entry in bundle.get("entry", []):
            order = entry.get("resource", {})
            if order.get("resourceType") != "MedicationRequest" or "medicationCodeableConcept" not in order:
                continue
            full_url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, ctx.seed + order['id'])}"
            medication = {"resourceType": "Medication", "code": order.pop("medicationCodeableConcept")}
            order["medicationReference"] = {"reference": full_url}
            added.append({"fullUrl": full_url, "resource": medication, **searched})
            touched = True
        bundle.setdefault("entry", []).extend(added)
    if not touched:
        raise NothingToChange("no order with medicationCodeableConcept in the request")
    return request


# --- 5. drug identity: product code, ingredient, name ------------------------------------------------------

INGREDIENT_DISPLAY = re.compile(r"^[a-z][a-z ,-]*$", re.I)
"""A value-set concept named by words alone (no strength, form or brand) is an ingredient (RxNorm IN/MIN)."""


@cache
def ingredients() -> dict[str, str]:
    """Ingredient name (lower case) -> RxNorm code, from the shipped drug value sets, where one name has one
    code; the product's name must contain it as words."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "cds_service" / "valuesets").glob("*.json")):
        for concept in json.loads(path.read_text()).get("expansion", {}).get("contains", []):
            display = concept.get("display", "")
            if concept.get("system") == RXNORM and INGREDIENT_DISPLAY.match(display):
                found.setdefault(display.lower(), set()).add(concept["code"])
    return {name: codes.pop() for name, codes in found.items() if len(codes) == 1} | KNOWN_INGREDIENTS


KNOWN_INGREDIENTS = {  # clinical.md §1.1 (RxNorm IN, verified there)
    "tacrolimus": "42316", "mycophenolate mofetil": "68149", "mycophenolic acid": "7145",
    "cyclophosphamide": "3002", "rituximab": "121191", "azathioprine": "1256", "hydroxychloroquine": "5521",
    "methotrexate": "6851", "cyclosporine": "3008", "cyclosporine, modified": "236077",
    "belimumab": "1092437",
}  # fmt: skip


FORM_WORDS = re.compile(
    r"(extended release oral (tablet|capsule)|oral (tablet|capsule|suspension)|granules for oral suspension|"
    r"injection|ointment|cream|tablet|capsule)",
    re.I,
)


@cache
def rxnorm_displays() -> dict[str, str]:
    """RxNorm code -> its published display, from the shipped drug value sets."""
    displays: dict[str, str] = {}
    for path in sorted((ROOT / "cds_service" / "valuesets").glob("*.json")):
        for concept in json.loads(path.read_text()).get("expansion", {}).get("contains", []):
            if concept.get("system") == RXNORM and concept.get("display"):
                displays.setdefault(concept["code"], concept["display"])
    return displays


def _names(concept: dict) -> list[str]:
    """What a drug concept is called: its text, its codings' displays, their published RxNorm displays."""
    codings = concept.get("coding", [])
    names = [concept.get("text"), *(c.get("display") for c in codings)]
    names += [rxnorm_displays().get(c.get("code", "")) for c in codings if c.get("system") == RXNORM]
    return [n for n in names if isinstance(n, str) and n.strip()]


def _name_of(concept: dict) -> str | None:
    """The name an EHR would send alone: the first that says the dose form (so the formulation is kept)."""
    names = _names(concept)
    return next((n for n in names if FORM_WORDS.search(n)), names[0] if names else None)


def _drug_concepts(resources: Resources) -> list[dict]:
    """The drug concepts of every order and Medication (inline, contained or stored)."""
    found = []
    for resource in resources:
        if resource.get("resourceType") == "MedicationRequest":
            if "medicationCodeableConcept" in resource:
                found.append(resource["medicationCodeableConcept"])
            found += [c["code"] for c in resource.get("contained", []) if isinstance(c.get("code"), dict)]
        elif resource.get("resourceType") == "Medication" and isinstance(resource.get("code"), dict):
            found.append(resource["code"])
    return found


def _name_only(cases: list[tuple[str, Callable[[str], str]]]) -> RecordStep:
    def step(resources: Resources, ctx: Context) -> Resources:
        label, case = ctx.choose("case", cases)
        ctx.notes.append(label)
        concepts_found = [c for c in _drug_concepts(resources) if c.get("coding")]
        if not concepts_found:
            raise NothingToChange("no coded drug")
        for concept in concepts_found:
            name = _name_of(concept)
            if name is None:
                raise CannotPreserve("a coded drug has no name to keep")
            concept.clear()
            concept["text"] = case(name)
        return resources

    return step


NAME_CASES: list[tuple[str, Callable[[str], str]]] = [("UPPER", str.upper), ("lower", str.lower)]

TRANSFORMATIONS.append(
    Transformation(
        "drug-name-only",
        "A drug named only by its text, in any case (UPPER or lower, chosen per record), is recognised by its"
        " name as the same drug.",
        record=_name_only(NAME_CASES),
        looks_for="a coded drug",
    )
)


@transformation("drug-ingredient-only", looks_for="an order with a coded product")
def drug_ingredient_only(resources: Resources, ctx: Context) -> Resources:
    """A Medication with no code but its RxNorm ingredient and its dose form is the same drug as the
    product."""
    orders = [o for o in _orders_with_concepts(resources) if o["medicationCodeableConcept"].get("coding")]
    if not orders:
        raise NothingToChange("no order with a coded product")
    for order in orders:
        concept = order.pop("medicationCodeableConcept")
        names = " ".join(_names(concept))
        coded = {c.get("code") for c in concept["coding"]} & set(ingredients().values())
        words = [w for w in ingredients() if re.search(rf"\b{re.escape(w)}\b", names, re.I)]
        named = {ingredients()[w] for w in words if not any(w != longer and w in longer for longer in words)}
        found = sorted(coded or named)
        if len(found) != 1:
            raise CannotPreserve(f"no single ingredient of a shipped value set in {names!r}")
        medication: dict = {
            "resourceType": "Medication",
            "id": "med",
            "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": found[0]}]}}],
        }
        forms = [m.group(0) for m in FORM_WORDS.finditer(names)]
        if forms:
            medication["form"] = {"text": max(forms, key=len)}
        elif "tacrolimus" in names.lower():
            raise CannotPreserve(f"the formulation of {names!r} cannot be kept without its product code")
        order.setdefault("contained", []).append(medication)
        order["medicationReference"] = {"reference": "#med"}
    return resources


# --- 6. breastfeeding answers -------------------------------------------------------------------------------

YES_ANSWERS = valueset_codes("yes-answer")
NO_ANSWERS = valueset_codes("no-answer")


def _breastfeeding(yes: dict, no: dict) -> RecordStep:
    def step(resources: Resources, ctx: Context) -> Resources:
        before = orjson.dumps(resources)
        for observation in of_type(resources, "Observation"):
            if not is_lab(observation, "breastfeeding-status"):
                continue
            value_codes = codes_of(observation.get("valueCodeableConcept"))
            if value_codes & YES_ANSWERS or observation.get("valueBoolean") is True:
                answer = yes
            elif value_codes & NO_ANSWERS or observation.get("valueBoolean") is False:
                answer = no
            else:
                raise CannotPreserve(f"Observation/{observation['id']} is not a coded yes/no answer")
            for key in [k for k in observation if k.startswith("value")]:
                del observation[key]
            observation.update(clone(answer))
        return changed(before, resources, "no breastfeeding-status answer")

    return step


for _name, _doc, _yes, _no in [
    (
        "breastfeeding-not-exclusively",
        "'Breastfeeding, not exclusively' means the infant receives breast milk: lactating ('Formula only':"
        " not).",
        {"valueCodeableConcept": {"text": "Breastfeeding, not exclusively"}},
        {"valueCodeableConcept": {"text": "Formula only"}},
    ),
    (
        "breastfeeding-mixed-feeding",
        "'mixed feeding' means the infant receives breast milk: lactating ('not breastfeeding': not).",
        {"valueString": "mixed feeding"},
        {"valueString": "not breastfeeding"},
    ),
    (
        "breastfeeding-boolean",
        "valueBoolean true / false answers the breastfeeding-status question as Yes / No do.",
        {"valueBoolean": True},
        {"valueBoolean": False},
    ),
    (
        "breastfeeding-loinc-yes",
        "The LOINC answer LA33-6 Yes / LA32-8 No, code only, is the same answer.",
        {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA33-6"}]}},
        {"valueCodeableConcept": {"coding": [{"system": LOINC, "code": "LA32-8"}]}},
    ),
]:
    TRANSFORMATIONS.append(
        Transformation(
            _name, _doc, record=_breastfeeding(_yes, _no), looks_for="a breastfeeding-status answer"
        )
    )


# --- 7. order of entries ------------------------------------------------------------------------------------


def _shuffled(items: list, rng: random.Random) -> list:
    if len(items) < 2:
        return items
    shuffled = items[:]
    rng.shuffle(shuffled)
    return shuffled if shuffled != items else items[::-1]


def _shuffled_record(resources: Resources, ctx: Context) -> Resources:
    return _shuffled(resources, ctx.rng("record"))


def _shuffle_request(request: dict, ctx: Context) -> dict:
    bundles = [request["context"].get("draftOrders"), *(request.get("prefetch") or {}).values()]
    for i, bundle in enumerate(
        b for b in bundles if isinstance(b, dict) and b.get("resourceType") == "Bundle"
    ):
        if isinstance(bundle.get("entry"), list):
            bundle["entry"] = _shuffled(bundle["entry"], ctx.rng(f"bundle{i}"))
    return request


TRANSFORMATIONS.append(
    Transformation(
        "shuffled-entries",
        "The order of a patient's resources, of prefetch and search Bundle entries and of draftOrders means"
        " nothing.",
        record=_shuffled_record,
        request=_shuffle_request,
        looks_for="a Bundle with two entries or more",
    )
)


# --- 8. extensions and meta ---------------------------------------------------------------------------------

EXTENSION = {
    "url": "http://hospital.example.org/fhir/StructureDefinition/source-system",
    "valueString": "EHR-A",
}


@transformation("extra-extensions-meta", looks_for="any resource")
def extra_extensions_meta(resources: Resources, ctx: Context) -> Resources:
    """Extensions (on resources, concepts, quantities and, FHIR JSON's way, on the primitive ``status`` as
    ``_status``), a profile, tags, a security label and a version id on every resource (meta.lastUpdated left
    as it is), a ``display`` beside every reference, and no Observation or Condition ``category`` (it only
    files a resource) change no clinical fact."""
    for resource in resources:
        meta = resource.setdefault("meta", {})
        meta["versionId"] = "7"
        meta.setdefault("profile", []).append(
            f"http://hl7.org/fhir/us/core/StructureDefinition/us-core-{resource['resourceType'].lower()}"
        )
        meta.setdefault("tag", []).append({"system": "http://hospital.example.org/tags", "code": "imported"})
        meta.setdefault("security", []).append(
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
        )
        resource.setdefault("extension", []).append(clone(EXTENSION))
        for concept in concepts(resource):
            concept.setdefault("extension", []).append(clone(EXTENSION))
        if isinstance(resource.get("valueQuantity"), dict):
            resource["valueQuantity"].setdefault("extension", []).append(clone(EXTENSION))
        if "status" in resource:
            resource["_status"] = {"extension": [clone(EXTENSION)]}
        for key in ("subject", "patient", "requester", "encounter", "priorPrescription"):
            if isinstance(resource.get(key), dict) and "reference" in resource[key]:
                resource[key].setdefault("display", "see the reference")
        if resource["resourceType"] in ("Observation", "Condition"):
            resource.pop("category", None)
    return resources


# --- 9. effective[x], dates ---------------------------------------------------------------------------------


@transformation("effective-period", looks_for="an Observation with effectiveDateTime")
def effective_period(resources: Resources, ctx: Context) -> Resources:
    """effectivePeriod whose start and end are the same instant is the effectiveDateTime it replaces."""
    before = orjson.dumps(resources)
    for observation in of_type(resources, "Observation"):
        if "effectiveDateTime" in observation:
            when = observation.pop("effectiveDateTime")
            observation["effectivePeriod"] = {"start": when, "end": when}
    return changed(before, resources, "no Observation with effectiveDateTime")


DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


def _offsets(node: Any, zone: timezone) -> Any:
    if isinstance(node, dict):
        return {k: _offsets(v, zone) for k, v in node.items()}
    if isinstance(node, list):
        return [_offsets(v, zone) for v in node]
    if isinstance(node, str) and DATETIME.match(node):
        return datetime.fromisoformat(node.replace("Z", "+00:00")).astimezone(zone).isoformat()
    return node


ZONES = [("+05:30", timezone(timedelta(hours=5, minutes=30))), ("-03:00", timezone(timedelta(hours=-3)))]


@transformation("timezone-offsets", looks_for="a dateTime with a time")
def timezone_offsets(resources: Resources, ctx: Context) -> Resources:
    """A dateTime written with another UTC offset (the same instant, +05:30 or -03:00) is the same time."""
    label, zone = ctx.choose("zone", ZONES)
    ctx.notes.append(label)
    return changed(resources, [_offsets(r, zone) for r in resources], "no dateTime with a time")


@transformation("observation-issued-amended", looks_for="a final Observation or one with effectiveDateTime")
def observation_issued_amended(resources: Resources, ctx: Context) -> Resources:
    """A result released later the same day (``issued`` added) and with status ``amended`` or ``corrected``
    is as valid a result, dated by its effective time, as a ``final`` one without ``issued``."""
    before = orjson.dumps(resources)
    for i, observation in enumerate(of_type(resources, "Observation")):
        when = observation.get("effectiveDateTime")
        if isinstance(when, str) and "issued" not in observation:
            observation["issued"] = when if "T" in when else f"{when}T12:00:00Z"
        if observation.get("status") == "final":
            observation["status"] = "amended" if i % 2 else "corrected"
    return changed(before, resources, "no final Observation or one with effectiveDateTime")


# --- 10. STU3 shapes ----------------------------------------------------------------------------------------

STU3_CLINICAL = {"active", "recurrence", "inactive", "remission", "resolved"}
STU3_VERIFICATION = {"provisional", "differential", "confirmed", "refuted", "entered-in-error"}


@transformation("stu3-condition-status", looks_for="a Condition with a coded status")
def stu3_condition_status(resources: Resources, ctx: Context) -> Resources:
    """STU3 Condition.clinicalStatus / verificationStatus as plain code strings mean what the R4 codings
    mean."""
    before = orjson.dumps(resources)
    for condition in of_type(resources, "Condition"):
        for key, allowed in (("clinicalStatus", STU3_CLINICAL), ("verificationStatus", STU3_VERIFICATION)):
            status = condition.get(key)
            if isinstance(status, dict):
                codes = [c for _, c in codes_of(status)]
                if len(codes) != 1 or codes[0] not in allowed:
                    raise CannotPreserve(f"Condition/{condition['id']} {key} {codes} has no STU3 equivalent")
                condition[key] = codes[0]
    return changed(before, resources, "no Condition with a coded status")


@transformation("stu3-medication-request-no-intent", looks_for="a MedicationRequest with intent order")
def stu3_no_intent(resources: Resources, ctx: Context) -> Resources:
    """A MedicationRequest without ``intent`` (older shapes) is read as an order."""
    before = orjson.dumps(resources)
    for order in of_type(resources, "MedicationRequest"):
        if order.get("intent") == "order":
            del order["intent"]
    return changed(before, resources, "no MedicationRequest with intent order")


# --- 11. absolute references --------------------------------------------------------------------------------


def _absolute(node: Any, base: str) -> Any:
    if isinstance(node, dict):
        out = {k: _absolute(v, base) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and re.match(
            r"^(Patient|MedicationRequest|Medication|Encounter)/[^/]+$", ref
        ):
            out["reference"] = f"{base}/{ref}"
        return out
    if isinstance(node, list):
        return [_absolute(v, base) for v in node]
    return node


@transformation("absolute-references", looks_for="a relative reference")
def absolute_references(resources: Resources, ctx: Context) -> Resources:
    """``<FHIR base>/Patient/x`` is the same resource as ``Patient/x`` (subject, patient, priorPrescription,
    medicationReference)."""
    return changed(resources, [_absolute(r, ctx.fhir_base) for r in resources], "no relative reference")


# --- 12. delivery Procedure ---------------------------------------------------------------------------------

DELIVERY_ICD10 = re.compile(r"^(O8[0-2]|Z37)")


def _delivery_procedure_code() -> tuple[str, str] | None:
    """A SNOMED delivery procedure from the shipped Delivery Procedures value set (VSAC), if there is one:
    "Normal delivery procedure" where the set has it."""
    contains = valueset("delivery-procedures").get("expansion", {}).get("contains", [])
    snomed = sorted((c for c in contains if c.get("system") == SNOMED), key=lambda c: c["code"])
    plain = [c for c in snomed if re.match(r"normal delivery", c.get("display", ""), re.I)]
    chosen = (plain or snomed or [None])[0]
    return (SNOMED, chosen["code"]) if chosen else None


@transformation("delivery-procedure", looks_for="a delivery Condition (O80-O82, Z37)")
def delivery_procedure(resources: Resources, ctx: Context) -> Resources:
    """A delivery Procedure (VSAC Delivery Procedures) on the delivery date ends a pregnancy as a delivery
    Condition does."""
    deliveries = [
        c for c in of_type(resources, "Condition")
        if any(s.endswith("icd-10-cm") and DELIVERY_ICD10.match(code) for s, code in codes_of(c.get("code")))
    ]  # fmt: skip
    if not deliveries:
        raise NothingToChange("no delivery Condition (O80-O82, Z37)")
    code = _delivery_procedure_code()
    if code is None:
        raise CannotPreserve("no published delivery-procedure code is shipped (cds_service/valuesets)")
    for condition in deliveries:
        when = condition.get("onsetDateTime") or condition.get("recordedDate")
        if not when:
            raise CannotPreserve(f"Condition/{condition['id']} has no date for the Procedure")
        resources.remove(condition)
        resources.append(
            {
                "resourceType": "Procedure",
                "id": condition["id"],
                "status": "completed",
                "code": {"coding": [{"system": code[0], "code": code[1]}]},
                "subject": condition["subject"],
                "performedDateTime": when,
            }
        )
    return resources


# --- 13. codings: order and a local code first --------------------------------------------------------------


@transformation("codings-local-first", looks_for="a coded concept")
def codings_local_first(resources: Resources, ctx: Context) -> Resources:
    """Codings in another order, after an unrecognised local coding with the same display, name the same
    concept: a recognised standard coding wins."""
    before = orjson.dumps(resources)
    for resource in resources:
        for concept in concepts(resource):
            codings = [c for c in concept["coding"] if isinstance(c, dict)]
            if (
                not codings
                or concept is resource.get("clinicalStatus")
                or concept is resource.get("verificationStatus")
            ):
                continue
            display = next((c.get("display") for c in codings if c.get("display")), None)
            local = {"system": LOCAL_SYSTEM, "code": f"L{abs(hash(json.dumps(codings))) % 100000}"}
            if display:
                local["display"] = display
            concept["coding"] = [local, *codings[::-1]]
    return changed(before, resources, "no coded concept")


# --- 15. pregnancy status as text ---------------------------------------------------------------------------

PREGNANCY_TEXT = {
    "77386006": "Pregnant",
    "72892002": "Pregnant",
    "60001007": "Not pregnant",
    "261665006": "Unknown",
}


@transformation("pregnancy-status-text", looks_for="a pregnancy-status answer")
def pregnancy_status_text(resources: Resources, ctx: Context) -> Resources:
    """Pregnancy status answered in words ("Pregnant", "Not pregnant", "Unknown") reads as the SNOMED
    answers."""
    before = orjson.dumps(resources)
    for observation in of_type(resources, "Observation"):
        if not is_lab(observation, "pregnancy-status"):
            continue
        words = {
            PREGNANCY_TEXT.get(code) for _, code in codes_of(observation.get("valueCodeableConcept"))
        } - {None}
        if len(words) != 1:
            raise CannotPreserve(f"Observation/{observation['id']} has no single coded pregnancy answer")
        observation["valueCodeableConcept"] = {"text": words.pop()}
    return changed(before, resources, "no pregnancy-status answer")


# --- 16. vaccines given (Immunization) and vaccine orders (N19) ---------------------------------------------

CVX = "http://hl7.org/fhir/sid/cvx"


def _utc_day(when: str) -> str:
    """The calendar day (UTC, the service's default time zone) of a FHIR dateTime or date."""
    if "T" not in when:
        return when[:10]
    return datetime.fromisoformat(when.replace("Z", "+00:00")).astimezone(UTC).date().isoformat()


@transformation("immunization-occurrence-string", looks_for="an Immunization with occurrenceDateTime")
def immunization_occurrence_string(resources: Resources, ctx: Context) -> Resources:
    """An Immunization dated by ``occurrenceString`` holding its calendar day is given that day: N19's windows
    count calendar days, so the time of day it drops changes nothing."""
    before = orjson.dumps(resources)
    for immunization in of_type(resources, "Immunization"):
        when = immunization.pop("occurrenceDateTime", None)
        if isinstance(when, str):
            immunization["occurrenceString"] = _utc_day(when)
    return changed(before, resources, "no Immunization with occurrenceDateTime")


@transformation("stu3-immunization", looks_for="an Immunization")
def stu3_immunization(resources: Resources, ctx: Context) -> Resources:
    """STU3 Immunization: the date in ``date``, and a vaccine not given as status ``completed`` with
    ``notGiven: true`` (R4 ``not-done``), one given with ``notGiven: false``."""
    before = orjson.dumps(resources)
    for immunization in of_type(resources, "Immunization"):
        if "occurrenceDateTime" in immunization:
            immunization["date"] = immunization.pop("occurrenceDateTime")
        status = immunization.get("status")
        if status not in ("completed", "not-done"):
            raise CannotPreserve(
                f"Immunization/{immunization['id']} status {status!r} has no STU3 equivalent"
            )
        immunization["notGiven"] = status == "not-done"
        immunization["status"] = "completed"
        immunization.pop("statusReason", None)
    return changed(before, resources, "no Immunization")


def _vaccine_names() -> dict[tuple[str, str], str]:
    """The CDC name of each live-vaccine CVX code the service ships (its value set's displays)."""
    contains = valueset("live-vaccines").get("expansion", {}).get("contains", [])
    return {(c["system"], c["code"]): c["display"] for c in contains}


@transformation("vaccine-name-only", looks_for="a coded vaccine (Immunization or ServiceRequest)")
def vaccine_name_only(resources: Resources, ctx: Context) -> Resources:
    """A vaccine given or ordered known only by its name (the CDC CVX name of a live vaccine, else the
    record's own text) is the same vaccine: live vaccines are recognised by name, and a recombinant or
    inactivated one stays not live."""
    found = [
        (r, key)
        for r in of_type(resources, "Immunization", "ServiceRequest")
        for key in ("vaccineCode", "code")
        if isinstance(r.get(key), dict) and r[key].get("coding")
    ]
    if not found:
        raise NothingToChange("no coded vaccine")
    names = _vaccine_names()
    for resource, key in found:
        concept = resource[key]
        live = [names[code] for code in codes_of(concept) if code in names]
        name = live[0] if live else concept.get("text")
        if not isinstance(name, str) or not name:
            raise CannotPreserve(f"{resource['resourceType']}/{resource['id']} has no name to keep")
        resource[key] = {"text": name}
    return resources


def by_name() -> dict[str, Transformation]:
    names = [t.name for t in TRANSFORMATIONS]
    assert len(names) == len(set(names)), "transformation names must be unique"
    return {t.name: t for t in TRANSFORMATIONS}
