"""Unit conversion to the canonical unit of each lab group, with numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from cds_service.units import CANONICAL_UNITS, canonical_unit, to_canonical


def converted(group, value, unit, code=None, **kw):
    result = to_canonical(group, value, unit, code, **kw)
    assert result is not None, (group, value, unit, code)
    return result


@pytest.mark.parametrize(
    ("group", "value", "unit", "code", "expected", "canonical"),
    [
        # creatinine: umol/L / 88.4 = mg/dL ; 97 / 88.4 = 1.09729 ; 0.09 mmol/L = 90 umol/L = 1.01810
        ("creatinine", 1.2, "mg/dL", "mg/dL", 1.2, "mg/dL"),
        ("creatinine", 97, "umol/L", "umol/L", 1.097285, "mg/dL"),
        ("creatinine", 97, "\u00b5mol/L", None, 1.097285, "mg/dL"),  # micro sign
        ("creatinine", 97, "\u03bcmol/L", None, 1.097285, "mg/dL"),  # Greek mu
        ("creatinine", 176.8, "umol/l", None, 2.0, "mg/dL"),
        ("creatinine", 0.09, "mmol/L", None, 1.018100, "mg/dL"),
        # magnesium: mmol/L x 2.43 = mg/dL ; 0.6 x 2.43 = 1.458 ; 1.4 mEq/L = 0.7 mmol/L = 1.701
        ("magnesium", 1.8, "mg/dL", "mg/dL", 1.8, "mg/dL"),
        ("magnesium", 0.6, "mmol/L", "mmol/L", 1.458, "mg/dL"),
        ("magnesium", 1.4, "mEq/L", None, 1.701, "mg/dL"),
        # glucose: mmol/L x 18.016 = mg/dL ; 7.0 x 18.016 = 126.112 ; 11.1 x 18.016 = 199.9776
        ("glucose", 7.0, "mmol/L", "mmol/L", 126.112, "mg/dL"),
        ("glucose", 11.1, "mmol/L", None, 199.9776, "mg/dL"),
        ("glucose-fasting", 7.0, "mmol/L", None, 126.112, "mg/dL"),
        ("glucose", 95, "mg/dL", "mg/dL", 95.0, "mg/dL"),
        # UPCR: mg/mmol / 113 = g/g ; mg/g / 1000 = g/g ; 56.5 / 113 = 0.5 ; 850 / 1000 = 0.85
        ("upcr", 56.5, "mg/mmol", "mg/mmol", 0.5, "g/g"),
        ("upcr", 226, "mg/mmol", None, 2.0, "g/g"),
        ("upcr", 850, "mg/g", "mg/g", 0.85, "g/g"),
        ("upcr", 850, "mg/g creat", "mg/g{creat}", 0.85, "g/g"),  # UCUM annotation dropped
        ("upcr", 0.62, "mg/mg", None, 0.62, "g/g"),
        ("upcr", 1.3, "g/g", "g/g", 1.3, "g/g"),
        ("upcr", 0.4, None, "{ratio}", 0.4, "g/g"),
        # HbA1c: % = mmol/mol x 0.09148 + 2.152 ; 48 -> 6.54304 ; 53 -> 7.00044
        ("hba1c", 48, "mmol/mol", "mmol/mol", 6.54304, "%"),
        ("hba1c", 53, "mmol/mol", None, 7.00044, "%"),
        ("hba1c", 6.8, "%", "%", 6.8, "%"),
        # potassium: mEq/L = mmol/L for a monovalent ion
        ("potassium", 5.8, "mEq/L", None, 5.8, "mmol/L"),
        ("potassium", 4.2, "mmol/L", "mmol/L", 4.2, "mmol/L"),
        # IgG: g/L x 100 = mg/dL ; 4.5 g/L = 450 mg/dL
        ("igg", 4.5, "g/L", "g/L", 450.0, "mg/dL"),
        ("igg", 720, "mg/dL", None, 720.0, "mg/dL"),
        # tacrolimus: ng/mL = ug/L
        ("tacrolimus-level", 7.2, "ng/mL", "ng/mL", 7.2, "ng/mL"),
        ("tacrolimus-level", 7.2, "ug/L", "ug/L", 7.2, "ng/mL"),
        ("tacrolimus-level", 7.2, "\u00b5g/L", None, 7.2, "ng/mL"),
        ("tacrolimus-level", 7.2, "mcg/L", None, 7.2, "ng/mL"),
        # blood pressure
        ("systolic-bp", 152, "mmHg", "mm[Hg]", 152.0, "mm[Hg]"),
        ("diastolic-bp", 96, "mm Hg", None, 96.0, "mm[Hg]"),
        ("blood-pressure", 120, None, "mm[Hg]", 120.0, "mm[Hg]"),
        # hCG: mIU/mL = IU/L
        ("hcg-quantitative", 30, "[IU]/L", "[IU]/L", 30.0, "IU/L"),
        ("hcg-quantitative", 30, "IU/L", None, 30.0, "IU/L"),
        ("hcg-quantitative", 30, "mIU/mL", "m[IU]/mL", 30.0, "IU/L"),
        # eGFR and its printed variants
        ("egfr", 44, "mL/min/{1.73_m2}", "mL/min/{1.73_m2}", 44.0, "mL/min/{1.73_m2}"),
        ("egfr", 44, "mL/min/1.73m2", None, 44.0, "mL/min/{1.73_m2}"),
        ("egfr", 44, "mL/min/1.73 m2", None, 44.0, "mL/min/{1.73_m2}"),
        ("egfr", 44, "mL/min/1.73m\u00b2", None, 44.0, "mL/min/{1.73_m2}"),
        ("egfr", 44, "mL/min/1.73m^2", None, 44.0, "mL/min/{1.73_m2}"),
        ("egfr", 44, "ml/min/1.73 sq m", None, 44.0, "mL/min/{1.73_m2}"),
        ("egfr", 44, "mL/min", "mL/min", 44.0, "mL/min/{1.73_m2}"),  # egfr codes are per 1.73 m2 anyway
    ],
)
def test_conversions(group, value, unit, code, expected, canonical):
    result, unit_out = converted(group, value, unit, code)
    assert result == pytest.approx(expected, rel=1e-6)
    assert unit_out == canonical == CANONICAL_UNITS[group]


def test_upcr_34366_5_is_a_unitless_ratio_but_2890_2_needs_a_unit():
    assert to_canonical("upcr", 0.8, None, None, loinc="34366-5") == (0.8, "g/g")
    assert to_canonical("upcr", 0.8, "", " ", loinc="34366-5") == (0.8, "g/g")
    assert to_canonical("upcr", 0.8, None, None, loinc="2890-2") is None
    assert to_canonical("upcr", 0.8, None, None) is None


@pytest.mark.parametrize(
    ("group", "unit", "code"),
    [
        ("creatinine", None, None),  # no unit at all
        ("creatinine", "", ""),
        ("creatinine", "mg/L", None),  # a real unit without a factor in rules.md
        ("creatinine", "%", "%"),  # a unit of something else
        ("potassium", "mg/dL", "mg/dL"),  # potassium by mass: no factor
        ("glucose", "g/L", None),
        ("igg", "g/dL", None),
        ("hcg-quantitative", "pmol/L", "pmol/L"),  # molar hCG (2119-6) cannot become IU/L
        ("hcg-quantitative", "U/L", None),
        ("egfr", "mL/s", None),
        ("upcr", "mg/dL", None),
        ("tacrolimus-level", "nmol/L", None),
        ("hba1c", "mg/dL", None),
        ("magnesium", "furlongs", None),  # printed text that is not a unit
    ],
)
def test_units_that_cannot_be_converted_give_none(group, unit, code):
    assert to_canonical(group, 1.0, unit, code) is None


def test_the_ucum_code_wins_and_must_agree_with_the_printed_unit():
    # printed unit unreadable, code fine: the code is the computable statement
    assert converted("creatinine", 97, "micromoles per litre", "umol/L")[0] == pytest.approx(97 / 88.4)
    # code and printed unit name different units: which one is true cannot be known
    assert to_canonical("glucose", 7.0, "mmol/L", "mg/dL") is None
    assert to_canonical("creatinine", 97, "umol/L", "mg/dL") is None
    # code is a unit of another group
    assert to_canonical("potassium", 4.2, "mmol/L", "mg/dL") is None


def test_a_code_that_is_not_a_unit_is_ignored():
    # a SNOMED CT unit code in Quantity.code, as in a public FHIR example (22760-3, 258813002 = mmol/L)
    assert to_canonical("potassium", 4.2, "mmol/L", "258813002") == (4.2, "mmol/L")
    assert to_canonical("potassium", 4.2, None, "258813002") is None


@pytest.mark.parametrize("value", [math.nan, math.inf, True, "4.2", None])
def test_values_that_are_not_finite_numbers_are_not_usable(value):
    assert to_canonical("potassium", value, "mmol/L", "mmol/L") is None


def test_integers_come_back_as_floats():
    result, _ = converted("potassium", 5, "mmol/L")
    assert isinstance(result, float) and result == 5.0


def test_qualitative_groups_have_no_canonical_unit_and_unknown_groups_are_errors():
    assert canonical_unit("hcg-qualitative") is None
    assert to_canonical("hcg-qualitative", 1.0, "[IU]/L", None) is None
    assert canonical_unit("creatinine") == "mg/dL"
    assert canonical_unit("hcg-quantitative") == "IU/L"
    with pytest.raises(ValueError, match="'kreatinine'"):
        to_canonical("kreatinine", 1.0, "mg/dL", None)
    with pytest.raises(ValueError, match="'hcg'"):
        canonical_unit("hcg")
