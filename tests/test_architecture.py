"""The house rules of issue 21, measured: one declaration per finding, one spec per service.

A finding id is spelt in the code of at most two modules under ``cds_service/`` (its family module, where it
is declared, and at most one other), never in JavaScript or a JSON Schema; the hook name ``patient-view`` in
at most five modules. Docstrings and comments do not count: they explain, they do not decide. And what the
declarations say matches what the rules do.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from cds_service.fixtures import manifest
from cds_service.hook_call import answer_hook
from cds_service.protocol import SUPPORTED_HOOKS
from cds_service.rules import FINDING_IDS, REGISTRY, RETIRED
from cds_service.rules.citations import CITATIONS
from cds_service.rules.model import TOPICS
from cds_service.rules.registry import SERVICE_KINDS
from cds_service.sandbox.requests import build_request
from cds_service.services import SPECS, spec_for
from cds_service.smart import DRUG_GROUPS, LAB_GROUPS
from cds_service.terminology import Terminology
from tests.support import make_app

PACKAGE = Path(__file__).resolve().parent.parent / "cds_service"
FINDING_ID = re.compile(r"P(?:10|[1-9])|S[0-7]|R[1-4]|N(?:1[0-9]|2[01]|[1-9])")
"""Every id catalog version 3 uses or retires: P1-P10, S0-S7, R1-R4, N1-N21."""
HOOK = "patient-view"


def code_strings(path: Path) -> list[str]:
    """String constants of a module that are code: docstrings (any string statement) left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
    ]


MODULES = {path.relative_to(PACKAGE.parent).as_posix(): code_strings(path) for path in PACKAGE.rglob("*.py")}


def modules_spelling(predicate) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for module, strings in MODULES.items():
        for value in strings:
            for key in predicate(value):
                found[key].add(module)
    return found


def test_each_finding_id_is_spelt_in_at_most_two_modules():
    spelt = modules_spelling(lambda value: [value] if FINDING_ID.fullmatch(value) else [])
    too_many = {finding_id: sorted(mods) for finding_id, mods in spelt.items() if len(mods) > 2}
    assert too_many == {}
    assert set(FINDING_IDS) <= set(spelt)  # the measure sees the declarations


def test_retired_ids_are_spelt_only_where_the_finding_that_replaced_them_is_declared():
    spelt = modules_spelling(lambda value: [value] if value in RETIRED else [])
    for old, new in RETIRED.items():
        family_module = f"cds_service/rules/{REGISTRY[new].family}.py"
        assert spelt[old] == {family_module}, old


def test_the_hook_name_patient_view_is_spelt_in_at_most_five_modules():
    spelt = modules_spelling(lambda value: [HOOK] if HOOK in value else [])
    assert 0 < len(spelt[HOOK]) <= 5, sorted(spelt[HOOK])


def _json_strings(value, keys: bool = True):
    if isinstance(value, dict):
        for key, inner in value.items():
            if keys:
                yield key
            yield from _json_strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _json_strings(inner)
    elif isinstance(value, str):
        yield value


def test_no_finding_id_in_javascript_or_json_schema():
    in_text = re.compile(rf"\b(?:{FINDING_ID.pattern})\b")
    for script in PACKAGE.rglob("*.js"):
        if "vendor" in script.parts:  # the SMART client library, not ours
            continue
        found = [f for f in in_text.findall(script.read_text(encoding="utf-8")) if f != "R4"]  # FHIR R4
        assert found == [], script
    for schema in (PACKAGE / "schemas").rglob("*.json"):
        strings = list(_json_strings(json.loads(schema.read_text(encoding="utf-8"))))
        assert not [s for s in strings if FINDING_ID.fullmatch(s)], schema
        # in prose too ("N2: ..."); R4 is also the FHIR release, so only P, S and N ids are looked for there
        assert not [s for s in strings if re.search(r"\b[PSN]\d{1,2}\b", s)], schema


# --- the declarations are complete and true ---------------------------------------------------------------


def test_every_declaration_names_known_things():
    terminology = Terminology.load()
    shipped = yaml.safe_load((PACKAGE.parent / "hooks" / "settings.yaml").read_text())["thresholds"]
    assert set(REGISTRY.settings) == set(shipped)  # the defaults are in the administrator's file
    for declaration in REGISTRY.values():
        assert declaration.topic in TOPICS
        assert set(declaration.citations) <= set(CITATIONS), declaration.id
        assert set(declaration.course) <= set(LAB_GROUPS) | set(DRUG_GROUPS), declaration.id
        assert declaration.runs_in and declaration.runs_in <= set(SERVICE_KINDS)
        for names in declaration.needs.values():
            for name in names:
                terminology.codes(name)  # raises for an unknown value set


def test_every_service_spec_has_its_hook_schema_and_runs_declared_findings():
    assert len({spec.id for spec in SPECS}) == len(SPECS)
    for spec in SPECS:
        assert spec.hook in SUPPORTED_HOOKS
        assert (PACKAGE / "schemas" / spec.context_schema).is_file()
        assert spec.findings and set(spec.findings) <= set(FINDING_IDS)
    assert spec_for("a-local-name", "order-sign").id == "tacrolimus-order-sign"  # another id: its hook's spec


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("architecture"), hold_repeats={"enabled": False})


@pytest.mark.slow  # one in-process call per fixture
@pytest.mark.parametrize("fixture", sorted(manifest()))
def test_what_fires_matches_its_declaration(app, fixture):
    """Topic, indicator and citations of every finding that fires are among those its declaration names."""
    runtime = app.extensions["cds_runtime"]()
    entry = manifest()[fixture]
    hook = entry.get("hook") or "order-sign"
    service = (  # a fixture of another service names it (patient-view, co-prescribing)
        runtime.service(entry["service"])
        if entry.get("service")
        else next(s for s in runtime.config.services.values() if s.hook == hook)
    )
    body = build_request(fixture, hook=hook, prefetch_templates=runtime.templates_for(service))
    answer = answer_hook(body, service, runtime)
    fired = answer.evaluation.findings if answer.evaluation else []
    assert {f.id for f in fired} >= set(manifest()[fixture]["expected"])
    for finding in fired:
        declared = REGISTRY[finding.id]
        assert finding.topic == declared.topic, finding.id
        assert finding.indicator in declared.indicators, finding.id
        assert set(finding.citations) <= set(declared.citations), finding.id
        assert finding.id in spec_for(service.id, service.hook).findings


def test_the_course_app_gets_finding_titles_and_highlights_from_the_service(app):
    served = app.test_client().get("/smart/terminology.json").get_json()["findings"]
    assert list(served) == list(FINDING_IDS)
    assert served["N2"] == {"title": REGISTRY["N2"].title, "highlights": ["creatinine"], "drugs": []}
    # a finding's drugs are the classes its declaration reads: the duplicate-CNI finding shows cyclosporine's
    assert served["N12"]["drugs"] == ["other-calcineurin-inhibitors"]
    assert served["N12"]["highlights"] == ["tacrolimus", "other-calcineurin-inhibitors"]


def test_every_drug_class_a_finding_reads_gets_a_row_in_the_course_app(app):
    """A finding added later (its declaration reads a new drug class) is charted without touching the app."""
    terms = app.test_client().get("/smart/terminology.json").get_json()
    rows = [c["group"] for c in terms["drugClasses"]]
    read = {g for d in REGISTRY.values() for g in d.drugs} - {"teratogens"}  # a union: drawn as its members
    assert read <= set(rows) and rows[0] == "tacrolimus"
    assert set(rows) == set(terms["drugs"]) == set(terms["drugNames"])
    labels = {c["group"]: c["label"] for c in terms["drugClasses"]}
    assert labels["other-calcineurin-inhibitors"] == "Other calcineurin inhibitors"
    assert all(labels.values()) and not any("(" in label for label in labels.values())
