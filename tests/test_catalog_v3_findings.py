"""Rule catalog version 3, new findings: N18 (extended release more than once a day) and N21 (Paxlovid).

Each boundary is tested on both sides, from plain data as in test_rules.py; the recognition of Paxlovid by
name goes through the real terminology; the last test sends the fixtures through the service's rules.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from cds_service.rules.model import OrderLabs, RuleInput, StopMedication
from cds_service.terminology import Terminology
from tests.test_rules import fires, make, med, stays_quiet, tacrolimus_draft

ENVARSUS = "extended-release tablet"
ASTAGRAF = "extended-release capsule"


def tacrolimus(formulation: str | None, per_day: float | None, *, draft: bool = True, rid: str = "tac-draft"):
    order = tacrolimus_draft(rid) if draft else med("tacrolimus", name="Envarsus XR 1 mg", rid=rid)
    return replace(
        order, name="Envarsus XR 1 mg tablet", formulation=formulation, administrations_per_day=per_day
    )


def paxlovid(**kwargs):
    return med("nirmatrelvir-ritonavir", "cyp3a4-strong-inhibitors", name="Paxlovid", **kwargs)


# --- N18 ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("formulation", [ENVARSUS, ASTAGRAF])
def test_n18_an_extended_release_draft_twice_a_day_is_a_warning_whose_suggestion_deletes_it(formulation):
    draft = tacrolimus(formulation, 2)
    f = fires("N18", make(trigger=draft))
    assert f.indicator == "warning" and "ordered twice a day" in f.summary
    assert "before signing" in f.detail and "doubles exposure" in f.detail
    assert f.suggestions == (
        StopMedication(draft, f"Remove the draft {draft.name} order (re-enter it once daily)",
                       reason="Extended-release tacrolimus ordered more than once a day", drafts_only=True),
    )  # fmt: skip


def test_n18_a_renewal_draft_twice_a_day_also_asks_for_a_trough_if_the_patient_takes_it_so():
    draft = replace(tacrolimus(ENVARSUS, 2), prior_prescription="tac-1")
    f = fires("N18", make(trigger=draft))
    assert "before signing" in f.detail and "already takes it this way, check a trough" in f.detail
    assert "already takes it" not in fires("N18", make(trigger=tacrolimus(ENVARSUS, 2))).detail


def test_n18_once_a_day_or_immediate_release_or_unknown_formulation_or_timing_stays_quiet():
    assert "once a day" in stays_quiet("N18", make(trigger=tacrolimus(ENVARSUS, 1)))
    assert "immediate-release" in stays_quiet("N18", make(trigger=tacrolimus("immediate-release", 2)))
    assert "unknown" in stays_quiet("N18", make(trigger=tacrolimus("unknown", 2)))
    assert "could not be read" in stays_quiet("N18", make(trigger=tacrolimus(ENVARSUS, None)))


def test_n18_in_patient_view_reads_the_active_order_with_continuing_wording_and_no_delete():
    stored = tacrolimus(ENVARSUS, 2, draft=False, rid="mr-tac")
    base = make(meds=[stored])
    inp = RuleInput(base.record, (stored,), base.thresholds, continuing=True)
    f = fires("N18", inp)
    assert "check a trough now" in f.detail and not f.suggestions


# --- N21 ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ended", "fires_"), [(10, True), (11, False)])
def test_n21_counts_a_course_that_ended_up_to_10_days_ago(ended, fires_):
    inp = make(meds=[paxlovid(status="completed", days=15, ended_days=ended)])
    if fires_:
        f = fires("N21", inp)
        assert f.indicator == "critical" and "ending" in f.detail
    else:
        assert "last 10 days" in stays_quiet("N21", inp)


def test_n21_window_is_an_administrator_setting():
    inp = make(meds=[paxlovid(status="completed", days=15, ended_days=10)], paxlovid_window_days=9)
    stays_quiet("N21", inp)


@pytest.mark.parametrize(("authored", "fires_"), [(15, True), (16, False)])
def test_n21_an_order_with_no_end_counts_as_a_5_day_course_from_authored_on(authored, fires_):
    inp = make(meds=[paxlovid(status="stopped", days=authored)])  # its exposure ends on its authoredOn
    if fires_:
        assert "ending" in fires("N21", inp).detail
    else:
        stays_quiet("N21", inp)


@pytest.mark.parametrize("status", ["active", "on-hold"])
def test_n21_an_active_or_on_hold_order_counts_whatever_its_date_and_n9_is_not_also_shown(status):
    inp = make(meds=[paxlovid(status=status, days=20)])
    f = fires("N21", inp)
    assert f.suggestions == (OrderLabs((("11253-2", "Tacrolimus [Mass/volume] in Blood"),),
                                       "Order a tacrolimus level (about day 3 of the course)"),)  # fmt: skip
    assert "no active strong CYP3A4" in stays_quiet("N9", inp)


def test_n21_a_drafted_paxlovid_gets_a_delete_labelled_choose_another_covid_treatment():
    draft = paxlovid(draft=True)
    f = fires("N21", make(meds=[draft]))
    deletes = [s for s in f.suggestions if isinstance(s, StopMedication)]
    assert [s.medication for s in deletes] == [draft]
    assert "choose another COVID-19 treatment" in deletes[0].label
    assert "Choose another COVID-19 treatment" in f.detail


def test_n21_plain_ritonavir_is_still_n9_and_not_n21():
    inp = make(meds=[med("cyp3a4-strong-inhibitors", name="ritonavir 100 MG Oral Tablet")])
    fires("N9", inp)
    stays_quiet("N21", inp)


def test_paxlovid_is_recognised_by_name_and_its_codes_ship_only_behind_configuration():
    terminology = Terminology.load()
    by_name = terminology.recognise(texts=["Paxlovid (nirmatrelvir 150 mg / ritonavir 100 mg) dose pack"])
    assert "nirmatrelvir-ritonavir" in by_name.classes and "nirmatrelvir-ritonavir" in by_name.by_name
    pack = [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2587899"}]
    assert "nirmatrelvir-ritonavir" not in terminology.concepts(pack)
    included = Terminology.load(include=("unverified",))
    assert "nirmatrelvir-ritonavir" in included.concepts(pack)
