"""Rule catalog version 3: N17 (formulation switch or mix), N18 for one regimen split over the day, P9
(post-partum exposure) and P10 (oestrogen contraceptive with active nephritis).

Each boundary is tested on both sides, from plain data as in test_rules.py: 95 % of the daily dose for
immediate release → Envarsus, 150 % for any switch, 42 days after the delivery, 1.2 × the dose at conception,
UPCR 0.5 g/g within 90 days.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from cds_service.cards import build_cards
from cds_service.record import Procedure
from cds_service.rules.model import OrderLabs, RuleInput, StopMedication
from cds_service.terminology import Terminology
from tests.test_rules import LUPUS_NEPHRITIS, ago, cond, fires, lab, make, med, stays_quiet, tacrolimus_draft

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


# --- P9: post-partum exposure ------------------------------------------------------------------------------
def _delivered(days_ago: float, *, then_mg=5.0, now_mg=6.0, levels=(), procedure=False, continuing=True):
    """On tacrolimus since 330 days (then_mg/day, raised to now_mg/day 150 days ago); delivered days_ago."""
    first = replace(med("tacrolimus", rid="tac-1", days=330), daily_dose_mg=then_mg)
    if now_mg != then_mg:
        first = replace(
            med("tacrolimus", rid="tac-1", days=330, status="stopped", ended_days=150), daily_dose_mg=then_mg
        )
    current = replace(med("tacrolimus", rid="tac-2", days=150), daily_dose_mg=now_mg)
    meds = [first, current] if now_mg != then_mg else [first]
    when = ago(days_ago)
    conditions = [cond(*LUPUS_NEPHRITIS)]
    procedures = ()
    if procedure:
        procedures = (Procedure("deliv-1", frozenset({"delivery-procedures"}), "Cesarean section", when),)
    else:
        conditions.append(
            replace(cond("pregnancy-outcome", "delivery", name="Single live birth"), onset=when)
        )
    trigger = replace(tacrolimus_draft(prior=meds[-1].id if continuing else None), daily_dose_mg=now_mg)
    inp = make(conditions=conditions, meds=meds if continuing else [], labs=list(levels), trigger=trigger)
    inp.record.procedures = procedures
    return inp


@pytest.mark.parametrize(("days_ago", "fires_"), [(42, True), (43, False)])
def test_p9_fires_up_to_42_days_after_the_delivery(days_ago, fires_):
    inp = _delivered(days_ago)
    if fires_:
        f = fires("P9", inp)
        assert f.indicator == "warning" and f.suggestions == (
            OrderLabs((("11253-2", "Tacrolimus [Mass/volume] in Blood"),), "Order a tacrolimus trough level"),
        )
        assert "raised in pregnancy" in f.detail
    else:
        assert "no delivery" in stays_quiet("P9", inp)


@pytest.mark.parametrize(("now_mg", "indicator"), [(6.0, "warning"), (5.95, "info"), (5.0, "info")])
def test_p9_is_a_warning_from_1_2_times_the_dose_at_conception(now_mg, indicator):
    assert fires("P9", _delivered(20, now_mg=now_mg)).indicator == indicator


def test_p9_thresholds_are_settings_and_a_delivery_procedure_dates_the_birth():
    inp = _delivered(20, procedure=True)
    assert "Cesarean section (procedure)" in fires("P9", inp).detail
    stays_quiet("P9", replace(inp, thresholds={**inp.thresholds, "postpartum_days": 19}))
    lowered = replace(inp, thresholds={**inp.thresholds, "postpartum_dose_rise": 1.25})
    assert fires("P9", lowered).indicator == "info"


def test_p9_a_level_since_the_delivery_or_a_new_start_keeps_it_quiet():
    after = lab("tacrolimus-level", 6.0, days=3)
    assert "since the delivery" in stays_quiet("P9", _delivered(20, levels=[after]))
    before = lab("tacrolimus-level", 6.0, days=30)
    assert "last: 6 ng/mL" in fires("P9", _delivered(20, levels=[before])).detail
    assert "new tacrolimus start" in stays_quiet("P9", _delivered(20, continuing=False))


def test_p9_a_start_during_the_pregnancy_has_no_conception_dose_and_is_info():
    inp = _delivered(20)
    started = replace(med("tacrolimus", rid="tac-2", days=150), daily_dose_mg=6.0)
    record = replace(inp.record, medications=(started, *inp.orders))
    f = fires("P9", replace(inp, record=record))
    assert f.indicator == "info" and "began during the pregnancy" in f.detail


def test_p9_in_patient_view_asks_for_a_trough_now():
    inp = _delivered(12)
    stored = next(m for m in inp.record.medications if m.id == "tac-2")
    record = replace(inp.record, medications=tuple(m for m in inp.record.medications if not m.is_trigger))
    view = RuleInput(record, (stored,), inp.thresholds, continuing=True)
    f = fires("P9", view)
    assert f.indicator == "warning" and "check a trough now" in f.detail


# --- P10: oestrogen-containing contraceptive with active nephritis ------------------------------------------
PILL = "combined-hormonal-contraceptives"


def _on_the_pill(upcr: float | None, *, days: float = 10, new_start=False, **settings):
    meds = [med(PILL, name="ethinyl estradiol 0.03 MG / levonorgestrel 0.15 MG Oral Tablet", days=300)]
    if not new_start:
        meds.append(med("tacrolimus", rid="tac-1", days=200))
    labs = [lab("upcr", upcr, days=days)] if upcr is not None else []
    trigger = tacrolimus_draft(prior=None if new_start else "tac-1")
    return make(meds=meds, labs=labs, trigger=trigger, **settings)


@pytest.mark.parametrize(("upcr", "fires_"), [(0.5, True), (0.49, False)])
def test_p10_active_nephritis_is_a_upcr_of_0_5_or_more(upcr, fires_):
    if fires_:
        f = fires("P10", _on_the_pill(upcr))
        assert f.indicator == "info" and "progestin-only or intrauterine" in f.detail
    else:
        assert "below 0.5 g/g" in stays_quiet("P10", _on_the_pill(upcr))


def test_p10_the_upcr_must_be_within_90_days_and_a_new_start_counts_unless_turned_off():
    assert "no UPCR in 90 days" in stays_quiet("P10", _on_the_pill(0.8, days=91))
    fires("P10", _on_the_pill(0.8, days=90))
    assert "a new tacrolimus start" in fires("P10", _on_the_pill(0.2, new_start=True)).detail
    stays_quiet("P10", _on_the_pill(0.2, new_start=True, contraceptive_new_start_counts=False))


def test_p10_needs_an_active_lupus_nephritis_condition_and_an_oestrogen_product():
    no_ln = _on_the_pill(1.0)
    record = replace(no_ln.record, conditions=(cond("lupus"),))
    assert "no active lupus nephritis" in stays_quiet("P10", replace(no_ln, record=record))
    assert "no active oestrogen" in stays_quiet("P10", make(labs=[lab("upcr", 1.0, days=3)]))


def test_the_combined_pill_is_recognised_by_code_and_by_name():
    terminology = Terminology.load()
    ring = [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1367436"}]
    assert PILL in terminology.concepts(ring)
    by_name = terminology.recognise(texts=["Ethinyl estradiol 35 mcg / norgestimate 0.25 mg tablet"])
    assert PILL in by_name.classes and PILL in by_name.by_name
    progestin_only = [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "198042"}]
    assert PILL not in terminology.concepts(progestin_only)
    ingredient = [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "4124"}]
    assert PILL not in terminology.concepts(ingredient)
    assert PILL in Terminology.load(include=("unverified",)).concepts(ingredient)


def test_one_suggestion_removes_every_draft_of_the_regimen_on_the_card():
    morning, evening = draft(ENVARSUS, 2, "tac-am"), draft(ENVARSUS, 2, "tac-pm")
    base = make(meds=[stored(IR, 4), evening], trigger=morning)
    inp = RuleInput(base.record, (morning, evening), base.thresholds)
    (card,) = build_cards([fires("N17", inp)], inp.record, {})
    first = card["suggestions"][0]
    assert [a["type"] for a in first["actions"]] == ["delete", "delete"]
    assert [a["resourceId"] for a in first["actions"]] == [
        "MedicationRequest/tac-am",
        "MedicationRequest/tac-pm",
    ]
    assert all(a["type"] != "update" for s in card["suggestions"] for a in s["actions"])  # old order kept
