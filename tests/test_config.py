"""Administrators' configuration: every (cfg) value of the rule catalog works, bad files are reported
precisely (file, line, path, allowed values) and never take the service down, tenants get their own
overrides, and a reload on a running ``cds-service serve`` changes what it answers."""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import requests
import yaml
from click.testing import CliRunner

from cds_service.app import RuntimeHolder, create_app
from cds_service.cli import main
from cds_service.config import ConfigError, load_config
from cds_service.fixtures import load_bundle, manifest
from cds_service.hook_call import answer_hook
from cds_service.runtime import Runtime
from cds_service.sandbox.requests import build_request, build_request_from_bundle
from cds_service.storage import Store, make_engine
from tests.security_helpers import Signer, bearer, claims
from tests.support import FINDINGS_KEY, ROOT, config_copy, start_service

SIGN = "tacrolimus-order-sign"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"


# --- helpers ------------------------------------------------------------------------------------------------


def card_findings(config_dir: Path, request: dict, tenant: str | None = None, service: str = SIGN) -> dict:
    """{finding id: indicator} on the cards the service returns for ``request`` on this configuration."""
    config = load_config(config_dir)
    runtime = Runtime.from_config(config, store=Store(make_engine("sqlite://")))
    try:
        answer = answer_hook(copy.deepcopy(request), config.services[service], runtime, tenant=tenant)
    finally:
        runtime.close()
    assert answer.status == 200, answer.body
    return {
        item["id"]: item["indicator"]
        for card in answer.body["cards"]
        for item in card["extension"][FINDINGS_KEY]
    }


def fixture_request(name: str) -> dict:
    return build_request(name, hook="order-sign")


def _drafts(name: str) -> list[str]:
    return list(manifest()[name]["drafts"])


def _patient_id(bundle: dict) -> str:
    return next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def n2_with_fasting_glucose() -> dict:
    """The N2 patient (on tacrolimus since July) with a fasting glucose of 110 mg/dL ten days ago."""
    bundle = load_bundle("n2-creatinine-rise-25pct")
    pid = _patient_id(bundle)
    when = time.strftime("%Y-%m-%dT08:30:00Z", time.gmtime(time.time() - 10 * 86400))
    bundle["entry"].append({"resource": {
        "resourceType": "Observation", "id": "cfg-fasting-glucose", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "1558-6", "display": "Fasting glucose"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": 110, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"},
    }})  # fmt: skip
    return build_request_from_bundle(bundle, _drafts("n2-creatinine-rise-25pct"), hook="order-sign")


def well_monitored_with_erythromycin() -> dict:
    """The well-monitored patient with an active erythromycin order (a moderate CYP3A4 inhibitor)."""
    bundle = load_bundle("complete-well-monitored")
    pid = _patient_id(bundle)
    bundle["entry"].append({"resource": {
        "resourceType": "MedicationRequest", "id": "cfg-erythromycin", "status": "active", "intent": "order",
        "subject": {"reference": f"Patient/{pid}"}, "authoredOn": time.strftime("%Y-%m-%d"),
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "4053",
                                                  "display": "erythromycin"}]},
    }})  # fmt: skip
    return build_request_from_bundle(bundle, _drafts("complete-well-monitored"), hook="order-sign")


def preeclampsia_patient_without_the_condition() -> dict:
    """The P5 patient without her pre-eclampsia Condition: only a 150/96 reading ten days ago is left."""
    bundle = load_bundle("p5-pregnant-preeclampsia")
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("id") != "p5pe-pre-eclampsia-1"]
    return build_request_from_bundle(bundle, _drafts("p5-pregnant-preeclampsia"), hook="order-sign")


# --- every (cfg) value flips a finding ----------------------------------------------------------------------


def T(**thresholds) -> dict:  # short: it is a column of the table below
    return {"thresholds": thresholds}


# (setting, change to settings.yaml, request, finding, indicator by default, after the change); None: no card
CFG_CASES = [
    ("scope", {"scope": "any-indication"}, "transplant-tacrolimus-no-lupus", "N5", None, "warning"),
    ("recent_lab_days", T(recent_lab_days=5), "complete-well-monitored", "N1", None, "info"),
    ("baseline_creatinine_days", T(baseline_creatinine_days=10), "n3-creatinine-rise-first-order", "N3",
     "critical", None),
    ("creatinine_rise_warning", T(creatinine_rise_warning=0.26), "n2-creatinine-rise-25pct", "N2", "warning",
     None),
    ("creatinine_rise_critical", T(creatinine_rise_critical=0.25, creatinine_rise_critical_mg_dl=0.2),
     "n2-creatinine-rise-25pct", "N3", None, "critical"),
    ("creatinine_rise_critical_mg_dl", T(creatinine_rise_critical_mg_dl=0.25), "n2-absolute-rise-below-floor",
     "N3", None, "critical"),
    ("tacrolimus_level_max", T(tacrolimus_level_max=6), "s7-long-term-tacrolimus", "N4", None, "warning"),
    ("tacrolimus_level_max_with_mycophenolate", T(tacrolimus_level_max_with_mycophenolate=9.5),
     "n4-high-trough-on-mmf", "N4", "warning", None),
    ("potassium_max", T(potassium_max=6.0), "n5-hyperkalaemia", "N5", "warning", None),
    ("magnesium_min", T(magnesium_min=1.4), "n6-low-magnesium-si", "N6", "info", None),
    ("bp_info", T(bp_info=[120, 70]), "n2-creatinine-rise-25pct", "N7", None, "info"),
    ("bp_warning", T(bp_warning=[163, 100]), "n7-hypertension", "N7", "warning", "info"),
    ("bp_critical", T(bp_critical=[161, 100]), "n7-hypertension", "N7", "warning", "critical"),
    ("fasting_glucose", T(fasting_glucose=100), n2_with_fasting_glucose, "N8", None, "info"),
    ("random_glucose", T(random_glucose=90), "n2-creatinine-rise-25pct", "N8", None, "info"),
    ("hba1c", T(hba1c=7.0), "n8-hyperglycaemia-on-tacrolimus", "N8", "info", None),
    ("include_moderate_cyp3a4", T(include_moderate_cyp3a4=True), well_monitored_with_erythromycin, "N9", None,
     "warning"),
    ("paxlovid_window_days", T(paxlovid_window_days=9), "n21-paxlovid-ended-10-days-renewal", "N21",
     "critical", None),
    ("formulation_mg_for_mg_ratio", T(formulation_mg_for_mg_ratio=0.96), "n17-envarsus-95pct", "N17",
     "critical", "warning"),
    ("formulation_switch_high_ratio", T(formulation_switch_high_ratio=1.6), "n17-astagraf-150pct", "N17",
     "critical", "warning"),
    ("formulation_switch_dose_indicator", T(formulation_switch_dose_indicator="warning"),
     "n17-envarsus-95pct", "N17", "critical", "warning"),
    ("live_vaccine_before_start_days", T(live_vaccine_before_start_days=27),
     "n19-mmr-given-28-days-before-start", "N19", "info", None),
    ("live_vaccine_on_tacrolimus_days", T(live_vaccine_on_tacrolimus_days=29),
     "n19-yellow-fever-30-days-renewal", "N19", "warning", None),
    ("egfr_cni_caution", T(egfr_cni_caution=35), "n13-egfr-low", "N13", "warning", None),
    ("egfr_cni_caution_continuing", T(egfr_cni_caution_continuing="warning"), "n13-egfr-low-renewal", "N13",
     "info", "warning"),
    ("body_height_days", T(body_height_days=30), "n13-under-18-schwartz", "N13", "warning", None),
    ("mycophenolate_failure_months", T(mycophenolate_failure_months=11), "s1-mmf-inadequate-response", "S1",
     "info", None),
    ("upcr_response", T(upcr_response=2.0), "s1-mmf-inadequate-response", "S1", "info", None),
    ("upcr_reduction", T(upcr_reduction=0.3), "s1-mmf-inadequate-response", "S1", "info", None),
    ("igg_low", T(igg_low=400), "s3-low-igg", "S3", "info", None),
    ("tacrolimus_long_term_months", T(tacrolimus_long_term_months=24), "s7-long-term-tacrolimus", "S7",
     "info", None),
    ("pregnancy_status_days", T(pregnancy_status_days=10), "p1-pregnant-sle", "P1", "info",
     None),
    ("hcg_days", T(hcg_days=3, hcg_unconfirmed_days=3), "p2-pregnant-on-methotrexate", "P1", "info", None),
    ("hcg_unconfirmed_days", T(hcg_unconfirmed_days=30), "hcg-20-days-on-mmf", "P1", "info", "info"),
    ("edd_overdue_days", T(edd_overdue_days=15), "pregnancy-edd-15-days-past", "P1", None, "info"),
    ("breastfeeding_status_days", T(breastfeeding_status_days=279), "p4-breastfeeding-answer-280-days", "P4",
     "info", None),
    ("hcg_positive_iu_per_l", T(hcg_positive_iu_per_l=2000), "p2-pregnant-on-methotrexate", "P1", "info",
     None),
    ("hcg_indeterminate_iu_per_l", T(hcg_indeterminate_iu_per_l=[1, 25]), "p3-negative-hcg-30-days", "P3",
     None, "info"),
    ("pregnancy_capable_age", T(pregnancy_capable_age=[30, 55]), "p3-mmf-no-pregnancy-test", "P3", "info",
     None),
    ("mycophenolate_hcg_days", T(mycophenolate_hcg_days=7), "complete-well-monitored", "P3", None, "info"),
    ("pregnancy_bp_days", T(pregnancy_bp_days=11), preeclampsia_patient_without_the_condition, "P5", None,
     "warning"),
    ("pregnancy_trough_days", T(pregnancy_trough_days=60), "p6-pregnant-on-tacrolimus-no-trough", "P6",
     "info", None),
    ("postpartum_days", T(postpartum_days=41), "p9-delivered-42-days-dose-raised", "P9", "warning", None),
    ("postpartum_dose_rise", T(postpartum_dose_rise=1.25), "p9-delivered-42-days-dose-raised", "P9",
     "warning", "info"),
    ("active_nephritis_upcr", T(active_nephritis_upcr=0.6), "p10-contraceptive-upcr-0-5", "P10", "info",
     None),
    ("active_nephritis_upcr_days", T(active_nephritis_upcr_days=4), "p10-contraceptive-upcr-0-5", "P10",
     "info", None),
    ("contraceptive_new_start_counts", T(contraceptive_new_start_counts=False), "p10-contraceptive-new-start",
     "P10", "info", None),
    ("findings.enabled", {"findings": {"N11": {"enabled": False}}}, "s0-ln-first-agent", "N11", "info",
     None),
    ("findings.indicator", {"findings": {"P2": {"indicator": "warning"}}}, "p2-pregnant-on-methotrexate",
     "P2", "critical", "warning"),
    ("findings.indicator N3", {"findings": {"N3": {"enabled": True, "indicator": "warning"}}},
     "n3-creatinine-rise-first-order", "N3", "critical", "warning"),
]  # fmt: skip


def test_the_cases_cover_every_cfg_value_of_the_catalog():
    """Every threshold in settings.yaml, the scope and both finding switches have a case below."""
    shipped = yaml.safe_load((ROOT / "hooks" / "settings.yaml").read_text())
    covered = {case[0] for case in CFG_CASES}
    assert set(shipped["thresholds"]) | {"scope", "findings.enabled", "findings.indicator"} <= covered


def card_details(config_dir: Path, request: dict) -> str:
    config = load_config(config_dir)
    runtime = Runtime.from_config(config, store=Store(make_engine("sqlite://")))
    try:
        answer = answer_hook(copy.deepcopy(request), config.services[SIGN], runtime)
    finally:
        runtime.close()
    return "\n".join(card["detail"] for card in answer.body["cards"])


def test_hcg_unconfirmed_days_decides_when_the_card_says_nothing_later_confirms_the_pregnancy(tmp_path):
    """The one (cfg) value that changes words, not findings: P1 and P2 fire either way."""
    request = fixture_request("hcg-20-days-on-mmf")
    unconfirmed = "20 days ago, and no later result confirms the pregnancy"
    assert unconfirmed in card_details(config_copy(tmp_path / "default"), request)
    changed = config_copy(tmp_path / "changed", thresholds={"hcg_unconfirmed_days": 20})
    assert unconfirmed not in card_details(changed, request)


@pytest.mark.slow  # one app per case
@pytest.mark.parametrize(
    ("setting", "changes", "source", "finding", "before", "after"), CFG_CASES, ids=[c[0] for c in CFG_CASES]
)
def test_changing_a_cfg_value_flips_a_fixture_finding(
    tmp_path, setting, changes, source, finding, before, after
):
    request = source() if callable(source) else fixture_request(source)
    default = card_findings(config_copy(tmp_path / "default"), request)
    changed = card_findings(config_copy(tmp_path / "changed", **changes), request)
    assert default.get(finding) == before, default
    assert changed.get(finding) == after, changed


# --- invalid files are reported precisely -------------------------------------------------------------------


def pristine_copy(tmp_path: Path) -> Path:
    """hooks/ copied as written (comments, layout, line numbers), with its database moved into tmp_path."""
    directory = tmp_path / "hooks"
    shutil.copytree(ROOT / "hooks", directory)
    settings = directory / "settings.yaml"
    text, count = re.subn(
        r"(?m)^(\s*database_url:).*$", rf"\1 sqlite:///{tmp_path / 'cds.sqlite3'}", settings.read_text()
    )
    assert count == 1
    settings.write_text(text)
    return directory


def edited_config(tmp_path: Path, file: str, old: str, new: str) -> tuple[Path, Path, int]:
    """hooks/ with ``old`` replaced by ``new`` in ``file``; returns (dir, file, line of new's last line)."""
    directory = pristine_copy(tmp_path)
    path = directory / file
    text = path.read_text()
    assert old in text, f"{old!r} not in {file}"
    text = text.replace(old, new, 1)
    path.write_text(text)
    written = new.strip("\n")
    line = text[: text.index(written)].count("\n") + 1 + written.count("\n")
    return directory, path, line


def problems_of(directory: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    return caught.value.problems


RETIRED_S5 = "is retired in rule catalog version 2: it is now N12 (monitoring family, any scope)"
RETIRED_S6 = RETIRED_S5.replace("N12", "N13")
TENANT_BLOCK = "tenants:\n  hospital-a:\n    thresholds:\n      potassium_max: 55\n"


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("settings.yaml", "creatinine_rise_warning: 0.20", 'creatinine_rise_warning: "20%"',
         "thresholds.creatinine_rise_warning: must be a number between 0 and 1, got '20%'"),
        ("settings.yaml", "\nscope: lupus", "\nscope: lupus-only",
         "scope: must be one of 'lupus', 'any-indication', got 'lupus-only'"),
        ("settings.yaml", "P2: {enabled: true, indicator: critical}", "P2: {indicator: severe}",
         "findings.P2.indicator: must be one of 'info', 'warning', 'critical', got 'severe'"),
        ("settings.yaml", "N3: {enabled: true, indicator: critical}", "N33: {enabled: false}",
         "findings.N33: 'N33' is not a finding id of the catalog "
         "(P1-P7, P9-P10, S0-S4, S7, N1-N15, N17-N19, N21)"),
        ("settings.yaml", "N3: {enabled: true, indicator: critical}", "S5: {enabled: false}",
         f"findings.S5: 'S5' {RETIRED_S5}"),
        ("settings.yaml", "\ntenants: {}\n", "\ntenants:\n  hospital-a:\n    findings: {S6: {}}\n",
         f"tenants.hospital-a.findings.S6: 'S6' {RETIRED_S6}"),
        ("services/tacrolimus-order-sign.yaml", "hook: order-sign", "hook: order-sign\nfindings: {S5: {}}",
         f"findings.S5: 'S5' {RETIRED_S5}"),
        ("settings.yaml", "hcg_unconfirmed_days: 14", "hcg_unconfirmed_days: 300",
         "thresholds.hcg_unconfirmed_days: must not exceed hcg_days (280), got 300"),
        ("settings.yaml", "bp_info: [140, 90]", "bp_info: [140]",
         "thresholds.bp_info: must be a list of exactly 2 values, got [140]"),
        ("settings.yaml", "include_moderate_cyp3a4: false", "include_moderate_cyp3a4: sometimes",
         "thresholds.include_moderate_cyp3a4: must be true or false, got 'sometimes'"),
        ("settings.yaml", "recent_lab_days: 30", "recent_lab_days: 30.5",
         "thresholds.recent_lab_days: must be a whole number between 1 and 3650, got 30.5"),
        ("settings.yaml", "admin: {}", "admin: {token_sha256: my-secret}",
         "admin.token_sha256: must match ^[0-9a-f]{64}$, got 'my-secret'"),
        ("settings.yaml", "\ntenants: {}\n", "\n" + TENANT_BLOCK,
         "tenants.hospital-a.thresholds.potassium_max: must be a number between 2 and 10, got 55"),
        ("services/tacrolimus-order-sign.yaml", "hook: order-sign", "hook: order-sgn",
         "hook: must be one of 'order-select', 'order-sign', 'patient-view', got 'order-sgn'"),
    ],
    ids=["text-for-number", "scope", "indicator", "finding-id", "retired-S5", "retired-S6-tenant",
         "retired-S5-service", "hcg-unconfirmed", "bp-pair", "boolean", "integer", "admin-hash",
         "tenant-range", "service-hook"],
)  # fmt: skip
def test_an_invalid_value_is_reported_with_file_line_path_and_allowed_values(
    tmp_path, file, old, new, expected
):
    directory, path, line = edited_config(tmp_path, file, old, new)
    assert problems_of(directory) == [f"{path}:{line}: {expected}"]


def test_a_misspelt_setting_names_the_right_one_and_where_it_is(tmp_path):
    directory, path, line = edited_config(
        tmp_path, "settings.yaml", "  potassium_max: 5.5", "  potasium_max: 5.5"
    )
    problems = problems_of(directory)
    assert any(
        p.startswith(
            f"{path}:{line}: thresholds.potasium_max: not a known setting; did you mean 'potassium_max'?"
        )
        for p in problems
    ), problems
    assert any(p.endswith("thresholds: 'potassium_max' is required") for p in problems), problems


def test_relations_between_values_are_checked_per_tenant_and_service(tmp_path):
    directory, path, _ = edited_config(
        tmp_path, "settings.yaml", "\ntenants: {}\n",
        "\ntenants:\n  hospital-a:\n    thresholds: {creatinine_rise_warning: 0.35}\n",
    )  # fmt: skip
    line = path.read_text().splitlines().index("    thresholds: {creatinine_rise_warning: 0.35}") + 1
    assert problems_of(directory) == [
        f"{path}:{line}: tenants.hospital-a.thresholds.creatinine_rise_warning: must be below "
        "creatinine_rise_critical (0.3), got 0.35"
    ]
    service_file = directory / "services" / "tacrolimus-order-select.yaml"
    service_file.write_text(service_file.read_text() + "thresholds:\n  bp_warning: [170, 100]\n")
    (directory / "settings.yaml").write_text(
        path.read_text().replace("{creatinine_rise_warning: 0.35}", "{}")
    )
    problems = problems_of(directory)
    assert problems == [
        f"{service_file}:{len(service_file.read_text().splitlines()) - 1}: thresholds.bp_*: tiers must rise: "
        "bp_info <= bp_warning <= bp_critical, got [140, 90], [170, 100], [165, 105]"
    ]


def test_local_codes_must_name_a_value_set_of_the_service(tmp_path):
    directory, path, _ = edited_config(
        tmp_path, "settings.yaml", "  local_codes: {}",
        "  local_codes:\n    creatinin: [{system: 'urn:oid:1.2.3', code: CREA}]",
    )  # fmt: skip
    line = path.read_text().splitlines().index("    creatinin: [{system: 'urn:oid:1.2.3', code: CREA}]") + 1
    [problem] = problems_of(directory)
    assert problem.startswith(
        f"{path}:{line}: valuesets.local_codes.creatinin: not a value set of the service;"
    )
    assert "creatinine" in problem.split("known:")[1]


def test_a_local_code_is_used_once_the_configuration_names_it(tmp_path):
    """A hospital's own creatinine code counts as creatinine (here: it makes the N3 rise visible)."""
    bundle = load_bundle("n3-creatinine-rise-first-order")
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation" and any(
            c.get("code") in ("2160-0", "14682-9") for c in resource["code"].get("coding", [])
        ):
            resource["code"] = {"coding": [{"system": "urn:oid:1.2.3.4", "code": "KREA"}]}
    request = build_request_from_bundle(bundle, _drafts("n3-creatinine-rise-first-order"), hook="order-sign")
    assert "N3" not in card_findings(config_copy(tmp_path / "a"), request)
    local = config_copy(tmp_path / "b", valuesets={"local_codes": {"creatinine": [
        {"system": "urn:oid:1.2.3.4", "code": "KREA"}]}})  # fmt: skip
    assert card_findings(local, request).get("N3") == "critical"


def test_a_setting_written_twice_is_reported_not_silently_taken(tmp_path):
    directory, path, line = edited_config(
        tmp_path, "settings.yaml", "  magnesium_min: 1.6", "  magnesium_min: 1.6\n  magnesium_min: 1.2"
    )
    assert problems_of(directory) == [
        f"{path}:{line}: thresholds.magnesium_min: written twice (first on line {line - 1}); keep one"
    ]


def test_broken_yaml_is_reported_with_its_line(tmp_path):
    directory, path, _ = edited_config(tmp_path, "settings.yaml", "  hcg_days: 280", "  hcg_days: [280")
    [problem] = problems_of(directory)
    assert re.match(rf"{re.escape(str(path))}:\d+: not valid YAML", problem), problem


def test_config_check_prints_every_problem_and_exits_non_zero(tmp_path):
    directory, path, line = edited_config(
        tmp_path, "settings.yaml", "creatinine_rise_warning: 0.20", 'creatinine_rise_warning: "20%"'
    )
    text = path.read_text().replace("\nscope: lupus", "\nscope: everyone")
    path.write_text(text)
    result = CliRunner().invoke(main, ["config", "check", str(directory)])
    assert result.exit_code == 1
    assert (
        f"{path}:{line}: thresholds.creatinine_rise_warning: must be a number between 0 and 1, got '20%'"
        in (result.output)
    )
    assert "scope: must be one of 'lupus', 'any-indication', got 'everyone'" in result.output
    good = CliRunner().invoke(main, ["config", "check", str(config_copy(tmp_path / "good"))])
    assert good.exit_code == 0 and ": ok (" in good.output


def test_the_service_refuses_to_start_on_an_invalid_configuration(tmp_path):
    directory, path, line = edited_config(
        tmp_path, "settings.yaml", "potassium_max: 5.5", "potassium_max: high"
    )
    with pytest.raises(ConfigError):
        create_app(config_dir=directory, dev=True)
    result = CliRunner().invoke(main, ["serve", "--config", str(directory), "--dev"])
    assert result.exit_code == 2
    assert (
        f"{path}:{line}: thresholds.potassium_max: must be a number between 2 and 10, got 'high'"
        in result.output
    )


def test_a_reload_with_an_invalid_file_keeps_the_last_good_configuration(tmp_path):
    directory = pristine_copy(tmp_path)
    holder = RuntimeHolder(directory, dev=True)
    request = fixture_request("n2-creatinine-rise-25pct")

    def findings() -> set[str]:
        answer = answer_hook(copy.deepcopy(request), holder().config.services[SIGN], holder())
        return {f.id for f in answer.evaluation.findings}

    assert "N2" in findings()
    settings = directory / "settings.yaml"
    settings.write_text(
        settings.read_text().replace("creatinine_rise_warning: 0.20", "creatinine_rise_warning: 0.26")
    )
    assert holder.reload() == []
    assert "N2" not in findings()
    settings.write_text(
        settings.read_text().replace("creatinine_rise_warning: 0.26", "creatinine_rise_warning: x")
    )
    problems = holder.reload()
    assert problems and "thresholds.creatinine_rise_warning: must be a number" in problems[0]
    assert "N2" not in findings()  # still the last good configuration (0.26), not the file, not the default


# --- tenants ------------------------------------------------------------------------------------------------


def tenant_config(tmp_path: Path, callers: list | None = None) -> Path:
    return config_copy(
        tmp_path,
        tenants={
            "hospital-a": {
                "thresholds": {"creatinine_rise_warning": 0.26},
                "findings": {"N7": {"enabled": False}},
            },
            "https://ehr-c.example/auth": {"findings": {"N2": {"indicator": "critical"}}},
        },
        **({"callers": callers} if callers is not None else {}),
    )


def test_a_tenant_override_changes_that_tenant_only(tmp_path):
    directory = tenant_config(tmp_path)
    request = fixture_request("n2-creatinine-rise-25pct")
    assert card_findings(directory, request, tenant=None).get("N2") == "warning"
    assert card_findings(directory, request, tenant="hospital-b").get("N2") == "warning"
    assert "N2" not in card_findings(directory, request, tenant="hospital-a")
    assert card_findings(directory, request, tenant="https://ehr-c.example/auth").get("N2") == "critical"
    hypertension = fixture_request("n7-hypertension")
    assert "N7" in card_findings(directory, hypertension, tenant="hospital-b")
    assert "N7" not in card_findings(directory, hypertension, tenant="hospital-a")


def test_settings_for_merges_shared_service_and_tenant_and_is_cached(tmp_path):
    directory = tenant_config(tmp_path)
    service_file = directory / "services" / "tacrolimus-order-select.yaml"
    service_file.write_text(service_file.read_text() + "thresholds:\n  potassium_max: 5.8\n")
    config = load_config(directory)
    select = config.services["tacrolimus-order-select"]
    settings = config.settings_for(select, "hospital-a")
    assert settings["thresholds"]["potassium_max"] == 5.8  # from the service file
    assert settings["thresholds"]["creatinine_rise_warning"] == 0.26  # from the tenant
    assert settings["thresholds"]["magnesium_min"] == 1.6  # shared
    assert (
        settings["findings"]["N7"] == {"enabled": False}
        and settings["findings"]["P2"]["indicator"] == "critical"
    )
    assert config.settings_for(select, "hospital-a") is settings
    assert config.settings_for(SIGN, None) is config.services[SIGN].settings


class EhrSigner:
    """An EHR: its caller entry for ``callers:`` and the JWTs it signs (keys from the security helpers)."""

    def __init__(self, issuer: str):
        self.issuer = issuer
        self.signer = Signer("ES384")

    def caller(self, tenants: list[str]) -> dict:
        entry = {"issuer": self.issuer, "jwks": {"keys": [self.signer.jwk()]}}
        return {**entry, "tenants": tenants} if tenants else entry

    def bearer(self, aud: str, tenant: str | None = None) -> dict:
        return bearer(self.signer.token(claims(self.issuer, aud, tenant=tenant)))


def test_the_tenant_comes_from_the_jwt_tenant_claim_else_the_issuer(tmp_path):
    ehr_a, ehr_c = EhrSigner("https://ehr-a.example/auth"), EhrSigner("https://ehr-c.example/auth")
    directory = tenant_config(
        tmp_path, callers=[ehr_a.caller(["hospital-a", "hospital-b"]), ehr_c.caller([])]
    )
    app = create_app(config_dir=directory, dev=False)
    client = app.test_client()
    path = f"/cds-services/{SIGN}"
    aud = yaml.safe_load((directory / "settings.yaml").read_text())["server"]["public_base_url"] + path
    request = fixture_request("n2-creatinine-rise-25pct")

    def n2(headers: dict) -> str | None:
        response = client.post(path, json=request, headers=headers)
        assert response.status_code == 200, response.get_json()
        ids = {
            i["id"]: i["indicator"]
            for c in response.get_json()["cards"]
            for i in c["extension"][FINDINGS_KEY]
        }
        return ids.get("N2")

    assert n2(ehr_a.bearer(aud, tenant="hospital-a")) is None
    assert n2(ehr_a.bearer(aud, tenant="hospital-b")) == "warning"
    assert n2(ehr_a.bearer(aud)) == "warning"  # issuer ehr-a has no overrides of its own
    assert n2(ehr_c.bearer(aud)) == "critical"  # no tenant claim: the issuer is the tenant
    store = app.extensions["cds_runtime"]().store
    assert {r["tenant"] for r in store.shown_rows()} == {"hospital-b", "https://ehr-a.example/auth",
                                                         "https://ehr-c.example/auth"}  # fmt: skip


# --- reload on a running server -----------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    """``cds-service serve --dev --workers 1 --threads 2`` on a copy of hooks/ as written."""
    directory = pristine_copy(tmp_path)
    with start_service(directory, workers=1, dev=True, extra_args=["--threads", "2"]) as server:
        yield server, directory


@pytest.mark.slow
def test_sighup_and_admin_reload_change_a_running_server_and_a_bad_file_keeps_the_last_good(served):
    server, directory = served
    settings = directory / "settings.yaml"
    request = fixture_request("n2-creatinine-rise-25pct")

    def n2_shown() -> bool:
        response = requests.post(f"{server.base}/cds-services/{SIGN}", json=request, timeout=10)
        response.raise_for_status()
        return any(i["id"] == "N2" for c in response.json()["cards"] for i in c["extension"][FINDINGS_KEY])

    assert n2_shown()
    settings.write_text(
        settings.read_text().replace("creatinine_rise_warning: 0.20", "creatinine_rise_warning: 0.26")
    )
    server.process.send_signal(signal.SIGHUP)
    server.wait_until(lambda: not n2_shown(), "N2 to go after SIGHUP", timeout=90)

    # An invalid file: the reload is refused, the service keeps answering on the last good configuration.
    settings.write_text(
        settings.read_text().replace("creatinine_rise_warning: 0.26", 'creatinine_rise_warning: "20%"')
    )
    workers_before = server.workers()
    server.process.send_signal(signal.SIGHUP)
    refused = server.wait_until(
        lambda: [json.loads(x) for x in server.lines if "configuration reload refused" in x],
        "the refusal in the log",
        timeout=90,
    )
    assert any("thresholds.creatinine_rise_warning: must be a number" in p for p in refused[0]["problems"])
    server.wait_until(
        lambda: not (server.workers() & workers_before), "the old worker to be replaced", timeout=90
    )
    assert requests.get(f"{server.base}/healthz", timeout=5).ok
    assert (
        not n2_shown()
    )  # the new worker runs the last good configuration (0.26): not the file, not the default

    # The admin call: refused with the problems while the file is bad, then a reload that brings N2 back.
    admin = {"Authorization": "Bearer dev-admin-token"}
    bad = requests.post(f"{server.base}/admin/reload", headers=admin, timeout=10)
    assert bad.status_code == 422
    assert any(
        p.startswith(f"{settings}:") and "creatinine_rise_warning" in p for p in bad.json()["problems"]
    )
    assert not n2_shown()
    settings.write_text(
        settings.read_text().replace('creatinine_rise_warning: "20%"', "creatinine_rise_warning: 0.2")
    )
    assert requests.post(f"{server.base}/admin/reload", timeout=10).status_code == 401
    good = requests.post(f"{server.base}/admin/reload", headers=admin, timeout=10)
    assert good.status_code == 202 and good.json()["reloaded"] == "scheduled"
    server.wait_until(n2_shown, "N2 to come back after POST /admin/reload", timeout=90)


def test_fixture_requests_used_here_exist():
    assert {c[2] for c in CFG_CASES if isinstance(c[2], str)} <= set(manifest())
