"""Rule catalog version 3: N17 (formulation switch or mix), N18 for one regimen split over the day.

Each boundary is tested on both sides, from plain data as in test_rules.py: 95 % of the daily dose for
immediate release → Envarsus, 150 % for any switch.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from cds_service.rules.model import OrderLabs, RuleInput, StopMedication
from tests.test_rules import fires, make, med, stays_quiet, tacrolimus_draft

IR = "immediate-release"
ENVARSUS = "extended-release tablet"
ASTAGRAF = "extended-release capsule"
NAMES = {
    IR: "tacrolimus 1 MG Oral Capsule",
    ENVARSUS: "Envarsus XR 1 mg tablet",
    ASTAGRAF: "Astagraf XL 1 mg",
}
TROUGH = OrderLabs(
    (("11253-2", "Tacrolimus [Mass/volume] in Blood"),),
    "Order a tacrolimus trough level (5–7 days after the switch)",
)


def draft(form: str, per_day: float | None, rid: str = "tac-draft", prior: str | None = None, **more):
    order = tacrolimus_draft(rid, prior=prior)
    return replace(order, name=NAMES[form], formulation=form, daily_dose_mg=per_day, **more)


def stored(form: str, per_day: float | None, rid: str = "tac-old", **kwargs):
    order = med("tacrolimus", name=NAMES[form], rid=rid, **kwargs)
    return replace(order, formulation=form, daily_dose_mg=per_day)


def switch(old_form, old_dose, new_form, new_dose, prior: str | None = None, **thresholds):
    return make(
        meds=[stored(old_form, old_dose)], trigger=draft(new_form, new_dose, prior=prior), **thresholds
    )


# --- thresholds --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("new_dose", "indicator"), [(3.8, "critical"), (3.79, "warning"), (3.2, "warning")])
def test_n17_immediate_release_to_envarsus_is_critical_from_95_percent_of_the_daily_dose(new_dose, indicator):
    f = fires("N17", switch(IR, 4, ENVARSUS, new_dose))
    assert f.indicator == indicator
    assert "80% of the total immediate-release daily dose" in f.detail
    if indicator == "critical":
        summary = (
            "Tacrolimus immediate release → Envarsus XR at 95% of the daily dose; the label converts at 80%"
        )
        assert f.summary == summary


@pytest.mark.parametrize(
    ("old_form", "new_form", "new_dose", "indicator"),
    [
        (IR, ASTAGRAF, 6, "critical"),
        (IR, ASTAGRAF, 5.99, "warning"),
        (ENVARSUS, IR, 6, "critical"),
        (ASTAGRAF, ENVARSUS, 5.99, "warning"),
        (ASTAGRAF, ENVARSUS, 4, "warning"),  # mg for mg between ER products: no labelled ratio, not ≥ 150 %
    ],
)
def test_n17_any_switch_is_critical_from_150_percent_of_the_daily_dose(
    old_form, new_form, new_dose, indicator
):
    f = fires("N17", switch(old_form, 4, new_form, new_dose))
    assert f.indicator == indicator
    if indicator == "critical":
        assert "of the daily dose: check the dose" in f.summary


def test_n17_thresholds_and_the_critical_indicator_are_settings():
    assert fires("N17", switch(IR, 4, ENVARSUS, 3.8, formulation_mg_for_mg_ratio=0.96)).indicator == "warning"
    assert fires("N17", switch(IR, 4, ASTAGRAF, 6, formulation_switch_high_ratio=1.6)).indicator == "warning"
    lowered = switch(IR, 4, ENVARSUS, 4, formulation_switch_dose_indicator="warning")
    assert fires("N17", lowered).indicator == "warning"


def test_n17_a_dose_that_cannot_be_computed_is_a_warning_that_says_so():
    f = fires("N17", switch(IR, None, ENVARSUS, 4))
    assert f.indicator == "warning" and "daily dose not computable from the order" in f.detail
    assert any("daily dose not computable from tacrolimus 1 MG Oral Capsule" in m for m in f.missing)


# --- suggestions -------------------------------------------------------------------------------------------
def test_n17_critical_deletes_the_drafts_of_one_regimen_in_one_suggestion_and_never_stops_the_old_order():
    morning, evening = draft(ENVARSUS, 2, "tac-am"), draft(ENVARSUS, 2, "tac-pm")
    base = make(meds=[stored(IR, 4), evening], trigger=morning)
    inp = RuleInput(base.record, (morning, evening), base.thresholds)
    f = fires("N17", inp)
    assert f.indicator == "critical"
    delete = f.suggestions[0]
    assert isinstance(delete, StopMedication) and delete.drafts_only
    assert (delete.medication, delete.together) == (morning, (evening,))
    assert "orders (one regimen)" in delete.label
    assert f.suggestions[1:] == (TROUGH,)


def test_n17_a_switch_below_the_thresholds_stops_the_old_order_switched_to_the_new_one_and_orders_a_trough():
    f = fires("N17", switch(IR, 5, ENVARSUS, 4, prior="tac-old"))
    assert f.indicator == "warning"
    stop, trough = f.suggestions
    assert isinstance(stop, StopMedication) and stop.medication.id == "tac-old" and not stop.drafts_only
    assert stop.reason == "switched to Envarsus XR 1 mg tablet"
    assert trough == TROUGH
    assert "duplicate tacrolimus therapy" not in f.detail  # the draft names the order it replaces


def test_n17_an_unreferenced_active_old_order_may_be_a_duplicate_and_the_detail_says_so():
    assert (
        "if this is not a switch, it is duplicate tacrolimus therapy"
        in fires("N17", switch(IR, 5, ENVARSUS, 4)).detail
    )


def test_n17_in_patient_view_reads_older_to_newer_and_suggests_no_stop():
    old = stored(IR, 4, days=200)
    new = stored(ENVARSUS, 4, rid="tac-new", days=9)
    base = make(meds=[old, new])
    inp = RuleInput(base.record, (new,), base.thresholds, continuing=True)
    f = fires("N17", inp)
    assert f.indicator == "critical"  # immediate release → Envarsus at 100 %
    assert f.suggestions == (TROUGH,)
    assert "Check with the patient and the pharmacy" in f.detail and "before signing" not in f.detail
    reversed_ages = make(meds=[replace(old, authored=new.authored), replace(new, authored=old.authored)])
    inp = RuleInput(reversed_ages.record, (new,), base.thresholds, continuing=True)
    assert "Envarsus XR 1 mg tablet (extended-release tablet" in fires("N17", inp).detail.split("→")[0]


# --- N17 instead of N12, and what stays N12 ----------------------------------------------------------------
def test_n17_replaces_n12_for_a_stored_order_of_another_oral_class():
    inp = switch(IR, 4, ENVARSUS, 4)
    fires("N17", inp)
    stays_quiet("N12", inp)


def test_n12_keeps_the_same_formulation_two_drafts_of_different_classes_and_iv_beside_oral():
    same = switch(IR, 4, IR, 4)
    assert fires("N12", same).indicator == "critical"
    assert "no stored tacrolimus order of another oral formulation class" in stays_quiet("N17", same)
    first, second = draft(IR, 2, "tac-1"), draft(ENVARSUS, 4, "tac-2")
    base = make(meds=[second], trigger=first)
    mixed = RuleInput(base.record, (first, second), base.thresholds)
    assert "not interchangeable mg for mg" in fires("N12", mixed).detail
    stays_quiet("N17", mixed)
    iv = replace(stored(IR, 4), formulation="intravenous")
    route = make(meds=[iv], trigger=draft(ENVARSUS, 4))
    assert fires("N12", route).indicator == "warning"
    stays_quiet("N17", route)


def test_n17_unknown_formulation_is_read_as_the_same_and_stays_n12():
    inp = make(meds=[stored(IR, 4)], trigger=replace(draft(IR, 4), formulation="unknown"))
    stays_quiet("N17", inp)
    fires("N12", inp)


def test_n17_a_renewed_order_that_is_already_stopped_still_dates_the_switch_but_is_not_stopped_again():
    old = stored(IR, 4, status="stopped", days=30, ended_days=1)
    f = fires("N17", make(meds=[old], trigger=draft(ENVARSUS, 3.2, prior=old.id)))
    assert f.suggestions == (TROUGH,)
    assert "no stored tacrolimus order" in stays_quiet("N17", make(meds=[old], trigger=draft(ENVARSUS, 3.2)))


# --- N18: one regimen of once-daily drafts at different times of day ----------------------------------------
MORNING = '[[null,{"repeat":{"frequency":1,"period":1,"periodUnit":"d","when":["MORN"]}},null]]'
EVENING = '[[null,{"repeat":{"frequency":1,"period":1,"periodUnit":"d","when":["EVE"]}},null]]'


def _split(first_timing: str, second_timing: str) -> RuleInput:
    am = draft(ENVARSUS, 3, "tac-am", administrations_per_day=1, dosing=first_timing)
    pm = draft(ENVARSUS, 2, "tac-pm", administrations_per_day=1, dosing=second_timing)
    base = make(meds=[pm], trigger=am)
    return RuleInput(base.record, (am, pm), base.thresholds)


def test_n18_once_daily_drafts_of_one_extended_release_regimen_at_two_times_of_day_fire_with_one_delete():
    f = fires("N18", _split(MORNING, EVENING))
    assert "at more than one time of day" in f.summary
    (delete,) = f.suggestions
    assert isinstance(delete, StopMedication) and [
        delete.medication.id,
        *(m.id for m in delete.together),
    ] == [
        "tac-am",
        "tac-pm",
    ]


def test_n18_once_daily_drafts_at_the_same_time_of_day_are_one_morning_dose():
    assert "once a day or less" in stays_quiet("N18", _split(MORNING, MORNING))
