"""``cds-service explain``: for one request, every finding P1..N15 with why it fired or not, on the same code
path (and the same configuration) as a real call."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from cds_service.cli import main
from cds_service.config import load_config
from cds_service.explain import FINDING_IDS, explain, load_source, pick_service
from cds_service.fixtures import FIXTURES_DIR, manifest
from cds_service.sandbox.requests import build_request
from cds_service.storage import Store, make_engine
from tests.support import FINDINGS_KEY, config_copy, make_app

SIGN = "tacrolimus-order-sign"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["explain", *args])
    return result.exit_code, result.output


def block(output: str, finding: str) -> list[str]:
    """The lines about one finding: its head line and the indented lines under it."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [finding])
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[start:end]


def test_a_fixture_explained_finding_by_finding_with_data_and_thresholds(tmp_path):
    code, out = run("n2-creatinine-rise-25pct", "--config", str(config_copy(tmp_path)))
    assert code == 0, out
    assert "card nephrotoxicity-monitoring (warning): N2" in out
    heads = [
        line.split()[0] for line in out.splitlines() if line and not line.startswith(" ") and ":" not in line
    ]
    assert heads == list(FINDING_IDS)
    n2 = block(out, "N2")
    assert n2[0].startswith("N2   FIRED (warning, card nephrotoxicity-monitoring)")
    assert any("Creatinine (newest): 1 mg/dL" in line and "Observation/" in line for line in n2)
    assert any("Creatinine (baseline): 0.8 mg/dL" in line for line in n2)
    assert "settings: creatinine_rise_warning=0.2, creatinine_rise_critical=0.3" in n2[-1]
    n3 = block(out, "N3")
    assert n3[0].strip() == "N3   quiet" and "25% (0.20 mg/dL) above the baseline" in n3[1]
    assert "less than 30%" in n3[1]
    assert "newest potassium" in block(out, "N5")[1] and "potassium_max=5.5" in block(out, "N5")[-1]


def test_explain_uses_the_configuration_and_tenant_given(tmp_path):
    directory = config_copy(
        tmp_path, thresholds={"creatinine_rise_warning": 0.26},
        tenants={"hospital-a": {"thresholds": {"creatinine_rise_warning": 0.2},
                                "findings": {"N2": {"enabled": False}}},
                 "hospital-b": {"thresholds": {"creatinine_rise_warning": 0.2}}},
    )  # fmt: skip
    _, out = run("n2-creatinine-rise-25pct", "--config", str(directory))
    assert block(out, "N2")[0].strip() == "N2   quiet"
    assert "less than 26%" in block(out, "N2")[1]
    _, out = run("n2-creatinine-rise-25pct", "--config", str(directory), "--tenant", "hospital-b")
    assert block(out, "N2")[0].startswith("N2   FIRED (warning")
    _, out = run("n2-creatinine-rise-25pct", "--config", str(directory), "--tenant", "hospital-a")
    n2 = block(out, "N2")
    assert n2[0].strip() == "N2   fired, off"
    assert any("turned off by configuration (findings.N2.enabled: false): not on a card" in x for x in n2)
    assert "0 card(s)" in out


def test_a_re_graded_finding_says_so(tmp_path):
    directory = config_copy(tmp_path, findings={"P2": {"indicator": "warning"}})
    _, out = run("p2-pregnant-on-methotrexate", "--config", str(directory))
    p2 = block(out, "P2")
    assert p2[0].startswith("P2   FIRED (warning, card pregnancy)")
    assert any("indicator critical re-graded to warning by configuration" in line for line in p2)


def test_a_request_file_a_fixture_file_and_a_bundle_file(tmp_path):
    directory = str(config_copy(tmp_path))
    request = tmp_path / "request.json"
    request.write_text(json.dumps(build_request("n5-hyperkalaemia", hook="order-select")))
    code, out = run(str(request), "--config", directory)
    assert code == 0 and "service:  tacrolimus-order-select" in out  # picked by the request's hook
    assert block(out, "N5")[0].startswith("N5   FIRED (warning")

    code, out = run(str(FIXTURES_DIR / "n5-hyperkalaemia.json"), "--config", directory)
    assert code == 0 and "request:  fixture n5-hyperkalaemia (order-sign)" in out
    assert block(out, "N5")[0].startswith("N5   FIRED")

    bundle = tmp_path / "my-patient.json"
    shutil.copy(FIXTURES_DIR / "n13-egfr-low.json", bundle)
    code, out = run(str(bundle), "--config", directory, "--service", "tacrolimus-order-select")
    assert code == 0 and "request:  bundle" in out and "drafts MedicationRequest/" in out
    assert "service:  tacrolimus-order-select" in out


def test_a_bundle_file_with_a_vaccine_drafted_as_a_service_request_sends_it_as_a_draft_order(tmp_path):
    directory = str(config_copy(tmp_path))
    bundle = tmp_path / "vaccine.json"
    shutil.copy(FIXTURES_DIR / "n19-varicella-service-request-draft.json", bundle)
    code, out = run(str(bundle), "--config", directory)
    assert code == 0 and "ServiceRequest/n19var-sr-1" in out.splitlines()[0]
    assert block(out, "N19")[0].startswith("N19  FIRED (warning")


def test_out_of_scope_and_no_trigger_are_explained(tmp_path):
    directory = str(config_copy(tmp_path))
    _, out = run("transplant-tacrolimus-no-lupus", "--config", directory)
    assert all("out of scope: no active systemic lupus" in block(out, f)[1] for f in FINDING_IDS)
    _, out = run("topical-tacrolimus-ointment", "--config", directory)
    assert all("no systemic tacrolimus order in this request" in block(out, f)[1] for f in FINDING_IDS)


def test_json_output_and_errors(tmp_path):
    directory = str(config_copy(tmp_path))
    code, out = run("n13-egfr-low", "--config", directory, "--format", "json")
    assert code == 0
    document = json.loads(out)
    assert [f["id"] for f in document["findings"]] == list(FINDING_IDS)
    n13 = next(f for f in document["findings"] if f["id"] == "N13")
    assert n13["status"] == "fired" and n13["settings"] == {
        "egfr_cni_caution": 45,
        "egfr_cni_caution_continuing": "info",
        "body_height_days": 180,
        "recent_lab_days": 30,
    }
    code, out = run("no-such-fixture", "--config", directory)
    assert code == 2 and "neither a file nor a fixture name" in out
    code, out = run("n13-egfr-low", "--config", directory, "--service", "nope")
    assert code == 2 and "no service 'nope'" in out


def test_explain_shows_the_data_and_setting_behind_the_new_findings(tmp_path):
    directory = str(config_copy(tmp_path))
    code, out = run("n13-creatinine-only-egfr", "--config", directory, "--finding", "N13")
    assert code == 0, out
    n13 = block(out, "N13")
    assert n13[0].startswith("N13  FIRED (warning")
    assert any("eGFR, calculated (CKD-EPI 2021): 30 mL/min/1.73 m² (female, 50 years)" in x for x in n13)
    assert any(x.strip().startswith("Creatinine: 2 mg/dL") for x in n13)
    assert n13[-1].strip() == (
        "settings: egfr_cni_caution=45, egfr_cni_caution_continuing=info, body_height_days=180, "
        "recent_lab_days=30"
    )
    assert "P1 " not in out  # only the finding asked for
    _, out = run("hcg-20-days-on-mmf", "--config", directory, "--finding", "P2")
    p2 = block(out, "P2")
    assert any("hCG: 850 IU/L" in x for x in p2) and "hcg_unconfirmed_days=14" in p2[-1]
    _, out = run("delivered-old-pregnant-answer", "--config", directory, "--finding", "P1")
    assert "was ended by Spontaneous vaginal delivery" in block(out, "P1")[1]


@pytest.mark.parametrize(("old", "new"), [("S5", "N12"), ("S6", "N13")])
def test_explain_refuses_a_retired_finding_id_and_names_its_successor(tmp_path, old, new):
    code, out = run("n13-egfr-low", "--config", str(config_copy(tmp_path)), "--finding", old)
    assert code == 2 and f"'{old}' is retired in rule catalog version 2: it is now {new}" in out


@pytest.mark.slow  # one app and one explain run per fixture
@pytest.mark.parametrize("fixture", sorted(manifest()))
def test_explain_agrees_with_the_service_over_http(tmp_path, fixture):
    """The findings explain puts on cards are the ones the running service returns for the same request."""
    app = make_app(tmp_path)
    config = load_config(tmp_path / "hooks")
    service = pick_service(config, None, None)
    source = load_source(fixture, service.hook)
    response = app.test_client().post(f"/cds-services/{service.id}", json=source.body)
    served = {
        (i["id"], i["indicator"])
        for c in response.get_json().get("cards", [])
        for i in c["extension"][FINDINGS_KEY]
    }
    answer, verdicts, _ = explain(source, config, service)
    assert {(v.id, v.indicator) for v in verdicts if v.status == "fired"} == served
    assert answer.status == response.status_code


def test_explain_writes_nothing_to_the_database(tmp_path):
    directory = config_copy(tmp_path)
    run("n2-creatinine-rise-25pct", "--config", str(directory))
    store = Store(make_engine(load_config(directory).section("feedback")["database_url"]))
    assert store.shown_rows() == []
