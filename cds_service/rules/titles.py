"""Each finding id in words: the one table that the admin page, reports and tools use to name a finding.

Short (≤ 50 characters), in the words of the rule catalog (version 2, § Findings).
"""

from __future__ import annotations

FINDING_TITLES: dict[str, str] = {
    "P1": "Pregnant: compatible, monitor more closely",
    "P2": "Teratogen active in pregnancy",
    "P3": "Mycophenolate, no negative pregnancy test",
    "P4": "Breastfeeding: tacrolimus compatible",
    "P5": "High blood pressure in pregnancy",
    "P6": "Pregnant, no recent tacrolimus level",
    "P7": "Drug not compatible with breastfeeding",
    "S0": "Tacrolimus as first agent",
    "S1": "Inadequate response to mycophenolate",
    "S2": "Mycophenolate and cyclophosphamide both used",
    "S3": "Rituximab cannot be used",
    "S4": "Lupus nephritis class V",
    "S5": "Duplicate calcineurin inhibitor",
    "S6": "eGFR 45 or lower",
    "S7": "Long-term tacrolimus without remission",
    "N1": "Baseline labs missing",
    "N2": "Creatinine 20–30 % above baseline",
    "N3": "Creatinine ≥ 30 % above baseline",
    "N4": "Tacrolimus level too high",
    "N5": "High potassium",
    "N6": "Low magnesium",
    "N7": "High blood pressure",
    "N8": "High glucose or HbA1c on tacrolimus",
    "N9": "Strong CYP3A4 inhibitor or inducer",
    "N10": "Nephrotoxic drug active",
    "N11": "Monitoring schedule for a new start",
    "N12": "Duplicate calcineurin-inhibitor therapy",
    "N13": "eGFR 45 or lower",
    "N14": "Hepatitis B",
    "N15": "Hepatitis B screening missing",
}


def finding_title(finding_id: str) -> str:
    """The finding in words; an unknown id (e.g. ``?``, feedback on an unrecorded card) gets ``""``."""
    return FINDING_TITLES.get(finding_id, "")
