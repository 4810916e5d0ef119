"""Pneumocystis prophylaxis at a tacrolimus start on high-dose glucocorticoid (N20, rule catalog version 3).

Shipped off (``pneumocystis_check: false``): Pneumocystis pneumonia is rare in SLE and prophylaxis has its own
harms (trimethoprim-sulfamethoxazole raises potassium and creatinine beside tacrolimus), so an administrator
turns the reminder on. It speaks, at info, for a new start when a systemic glucocorticoid of at least
``pneumocystis_prednisone_mg_day`` prednisone-equivalent has been taken or is planned for at least
``pneumocystis_glucocorticoid_days``, another immunosuppressant is active, and no prophylaxis is. rules.md v3
§ Nephrotoxicity and safety monitoring; clinical.md §6.1 item 3 and §6.2 N20; interpretations 78-82.
"""

from __future__ import annotations

from datetime import datetime

from cds_service.record import Medication
from cds_service.rules.common import (
    active_orders,
    capital,
    continuing_because,
    day,
    finding,
    medication_evidence,
    names,
    num,
    quiet,
    threshold,
    unavailable,
    window_start,
    words,
)
from cds_service.rules.model import Finding, Quiet, RuleInput
from cds_service.rules.monitoring import MONITORING, labs
from cds_service.rules.registry import NEW_START_ONLY, Wording, setting

GLUCOCORTICOIDS = "glucocorticoids-systemic"
PROPHYLAXIS = "pjp-prophylaxis"
ANTI_CD20 = ("rituximab", "obinutuzumab")
OTHER_IMMUNOSUPPRESSANTS = ("mycophenolate", "cyclophosphamide", *ANTI_CD20)
"""Besides tacrolimus and the glucocorticoid (clinical.md §6.2 N20: mycophenolate, cyclophosphamide,
anti-CD20); an anti-CD20 dose given within ``pneumocystis_anti_cd20_days`` counts too."""
CITED = ("eular-2022-infections", "pjp-sle-2024", "prograf-label")

WORDING = Wording(
    new_start=(
        "EULAR 2022 suggests Pneumocystis prophylaxis for more than 15–30 mg/day of prednisolone or "
        "equivalent for more than 2–4 weeks. Pneumocystis pneumonia is rare in SLE, and "
        "trimethoprim-sulfamethoxazole raises potassium and creatinine beside tacrolimus; atovaquone, or "
        "dapsone after G6PD testing, are alternatives. Weigh it with the patient and record the decision."
    ),
)
"""N20 runs for a new start only (rules.md v3: not in patient-view, not on continuing therapy)."""


def _days_on(m: Medication, now: datetime) -> float:
    """Days the order covers, whichever is longer: since it started (a stored order), or as planned."""
    started = m.exposure.start if m.exposure is not None else None
    elapsed = (now.date() - started.date()).days if started is not None else 0
    return max(float(elapsed), m.planned_days or 0.0)


def _course(m: Medication) -> str:
    parts = [f"{num(m.prednisone_mg_day)} mg/day prednisone-equivalent"]
    if m.exposure is not None:
        parts.append(f"since {day(m.exposure.start)}")
    if m.planned_days:
        parts.append(f"planned for {num(m.planned_days)} days")
    return f"{m.name} ({', '.join(parts)})"


def _other_immunosuppressants(inp: RuleInput) -> list[Medication]:
    record = inp.record
    active = active_orders(record, *OTHER_IMMUNOSUPPRESSANTS)
    since = window_start(inp.now, threshold(inp, "pneumocystis_anti_cd20_days")).date()
    seen = {m.id for m in active}
    recent = [
        m
        for m in record.medications
        if m.id not in seen
        and any(c in m.concepts for c in ANTI_CD20)
        and m.exposure is not None
        and m.exposure.end.date() >= since
    ]
    return [*active, *recent]


def n20_pneumocystis_prophylaxis(inp: RuleInput) -> Finding | Quiet:
    """A new start on a systemic glucocorticoid ≥ ``pneumocystis_prednisone_mg_day`` for ≥
    ``pneumocystis_glucocorticoid_days`` (started or planned), another immunosuppressant, and no
    Pneumocystis prophylaxis; off unless ``pneumocystis_check`` (interpretations 78-82)."""
    if not threshold(inp, "pneumocystis_check"):
        return quiet("N20", "off: an administrator turns it on with pneumocystis_check (shipped off)")
    continuing = continuing_because(inp)
    if continuing:
        return quiet("N20", f"{continuing}: N20 is for a new start")
    record = inp.record
    steroids = [m for m in record.medications if m.active and GLUCOCORTICOIDS in m.concepts]
    gaps = [
        f"the prednisone-equivalent daily dose of {m.name} could not be worked out from its dosageInstruction"
        for m in steroids
        if m.prednisone_mg_day is None
    ]
    if not steroids:
        return quiet(
            "N20", "no active systemic glucocorticoid order", unavailable(record, "MedicationRequest")
        )
    dose, days = (
        threshold(inp, "pneumocystis_prednisone_mg_day"),
        threshold(inp, "pneumocystis_glucocorticoid_days"),
    )
    high = [m for m in steroids if m.prednisone_mg_day is not None and m.prednisone_mg_day >= dose]
    long = [m for m in high if _days_on(m, inp.now) >= days]
    if not long:
        read = [_course(m) for m in steroids if m.prednisone_mg_day is not None]
        return quiet(
            "N20",
            f"no glucocorticoid of at least {num(dose)} mg/day prednisone-equivalent for at least "
            f"{num(days)} days" + (f": {words(read)}" if read else ""),
            gaps,
        )
    others = _other_immunosuppressants(inp)
    if not others:
        return quiet("N20", "no other immunosuppressant (mycophenolate, cyclophosphamide, anti-CD20) active")
    prophylaxis = active_orders(record, PROPHYLAXIS)
    if prophylaxis:
        return quiet("N20", f"Pneumocystis prophylaxis is active: {names(prophylaxis)}")
    assert WORDING.new_start is not None
    return finding(
        "N20",
        "info",
        f"Prednisone-equivalent {num(long[0].prednisone_mg_day)} mg/day with another immunosuppressant: "
        "consider Pneumocystis prophylaxis",
        f"{capital(words([_course(m) for m in long]))}, with {names(others)}, and tacrolimus "
        "now; no Pneumocystis prophylaxis (trimethoprim-sulfamethoxazole, atovaquone, dapsone, "
        f"pentamidine) is active. {WORDING.new_start}",
        CITED,
        evidence=[medication_evidence(m) for m in (*long, *others)],
        missing=[*gaps, *unavailable(record, "MedicationRequest")],
    )


DECLARATIONS = (
    MONITORING.declare(
        "N20",
        n20_pneumocystis_prophylaxis,
        ("info",),
        "Pneumocystis prophylaxis to consider",
        settings=(
            setting(
                "pneumocystis_check",
                "boolean",
                about="N20 (shipped off): remind about Pneumocystis prophylaxis at a new start on high-dose "
                "glucocorticoid with another immunosuppressant",
            ),
            setting(
                "pneumocystis_prednisone_mg_day",
                "number",
                0,
                1000,
                "N20: glucocorticoid dose, prednisone-equivalent mg/day, at or above",
            ),
            setting(
                "pneumocystis_glucocorticoid_days",
                "integer",
                1,
                365,
                "N20: the glucocorticoid taken or planned for at least this many days",
            ),
            setting(
                "pneumocystis_anti_cd20_days",
                "integer",
                0,
                3650,
                "N20: an anti-CD20 dose given within this many days counts as another immunosuppressant",
            ),
        ),
        citations=CITED,
        runs_in=NEW_START_ONLY,
        needs=labs(drugs=(GLUCOCORTICOIDS, PROPHYLAXIS, *OTHER_IMMUNOSUPPRESSANTS)),
        course=("mycophenolate", "cyclophosphamide", "rituximab"),
        wording=WORDING,
    ),
)
