"""The same clinical fact coded another valid way gives the same cards (rules.md v3 § Reading the record
however it is coded; issue 22). Every fixture patient (order hooks, and patient-view for the ``pv-*`` ones)
and the real records of ``tests/data/real`` are re-encoded by every transformation of ``metamorphic.py``,
sent by prefetch and by FHIR callback (a real FHIR server on loopback), and must give the same finding ids
and indicators as the untransformed record sent the same way in this run.

Set ``METAMORPHIC_REPORT=<file>`` to write every outcome (same, skipped with its reason, mismatch with
expected and got) as a JSON table at the end of the module (run it in one process: under pytest-xdist each
worker writes the outcomes it saw).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import orjson
import pytest
import yaml

from cds_service.app import create_app
from cds_service.fixtures import load_bundle, manifest
from cds_service.protocol import check_response
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import build_request_from_bundle
from cds_service.sandbox.store import FhirStore
from tests.metamorphic import (
    INTERPRETATION,
    TRANSFORMATIONS,
    CannotPreserve,
    Context,
    NothingToChange,
    Transformation,
    by_name,
)
from tests.support import FINDINGS_KEY, config_copy, small_patient, tacrolimus_draft

pytestmark = pytest.mark.slow  # thousands of generated cases
TOKEN = "metamorphic-token-1"
PATHS = ("prefetch", "fhir")
MONITORING = "tacrolimus-monitoring"


@dataclass(frozen=True)
class Record:
    """A patient as the EHR holds it, and the call being made: its resources (drafts included), the drafts
    (``Type/id``) and selections, and the hook."""

    name: str
    resources: tuple[dict, ...]
    drafts: tuple[str, ...]
    hook: str
    selections: tuple[str, ...] | None = None
    named_service: str | None = None
    """The service a fixture's manifest names for this hook (the co-prescribing services)."""

    @property
    def service(self) -> str:
        if self.named_service:
            return self.named_service
        return MONITORING if self.hook == "patient-view" else f"tacrolimus-{self.hook}"


# --- the records: fixtures and real data --------------------------------------------------------------------


def _fixture(name: str) -> Record:
    entry = manifest()[name]
    bundle = load_bundle(name)
    hook = "patient-view" if entry.get("service") == MONITORING else "order-sign"
    resources = tuple(e["resource"] for e in bundle["entry"])
    selections = tuple(entry.get("selections") or ())
    named = (entry.get("services") or {}).get(hook)
    return Record(name, resources, tuple(entry.get("drafts", ())), hook, selections, named)


def _real_records() -> dict[str, Record]:
    """The Synthea patients of tests/data/real as each stood on their newest day (with lupus nephritis and a
    tacrolimus draft, as test_real_data.py orders it), and every real order of medication-orders.json for a
    small lupus nephritis patient; their expected answer is the untransformed one."""
    from tests.test_real_data import (  # the same builders the real-data tests use
        FRANCINE_PREGNANT,
        REAL_ORDERS,
        as_of,
        as_order,
        for_patient,
        newest_day,
        order_of,
        patient_id,
        synthea,
        with_lupus_nephritis,
    )

    records: dict[str, Record] = {}

    def add(name: str, resources: list[dict], drafts: list[dict]) -> None:
        refs = tuple(f"MedicationRequest/{d['id']}" for d in drafts)
        records[name] = Record(name, (*resources, *drafts), refs, "order-sign")

    for who in ("asa", "dirk", "isaiah"):
        record = with_lupus_nephritis(as_of(synthea(who), newest_day(synthea(who))))
        add(f"real-synthea-{who}", record, [tacrolimus_draft(patient_id(record), "real-tac")])
    francine = with_lupus_nephritis(as_of(synthea("francine"), FRANCINE_PREGNANT))
    methotrexate = for_patient(order_of(synthea("asa"), "105586"), patient_id(francine))
    add(
        "real-synthea-francine-pregnant",
        [*francine, methotrexate],
        [tacrolimus_draft(patient_id(francine), "real-tac")],
    )
    for entry in REAL_ORDERS:
        pid = "real-orders-p"
        original = entry["resource"]
        code = (original.get("medicationCodeableConcept") or original.get("code"))["coding"][0]["code"]
        resource = as_order(copy.deepcopy(original), pid)
        drafts = [tacrolimus_draft(pid, "real-tac")]
        stored = small_patient(pid)
        if resource.get("status") == "draft":
            drafts.append(resource)
        else:
            stored.append(resource)
        add(f"real-order-{code}", stored, drafts)
    return records


@cache
def records() -> dict[str, Record]:
    found = {name: _fixture(name) for name in sorted(manifest())}
    found.update(_real_records())
    assert set(found) == set(RECORD_NAMES), "RECORD_NAMES must name every record"
    return found


REAL_ORDER_CODES = ("315749", "835925", "835894", "197805", "834022", "855635", "1313112", "0069-2587-10")
"""The first coding of each order of tests/data/real/medication-orders.json (checked as records load)."""
RECORD_NAMES = [
    *sorted(manifest()),
    *(f"real-synthea-{who}" for who in ("asa", "dirk", "isaiah", "francine-pregnant")),
    *(f"real-order-{code}" for code in REAL_ORDER_CODES),
]


# --- the service and the FHIR server ------------------------------------------------------------------------


class SwappableStore(FhirStore):
    """One FHIR server for the module whose content is the record under test (tests run one at a time)."""

    def load(self, resources: list[dict], exclude: tuple[str, ...]) -> None:
        """Serve ``resources`` but ``exclude`` (``Type/id``), shared rather than copied (nothing here
        modifies them)."""
        stored: dict[str, dict[str, dict]] = {}
        for r in resources:
            if f"{r['resourceType']}/{r['id']}" not in exclude:
                stored.setdefault(r["resourceType"], {})[r["id"]] = r
        self._resources = stored
        self._indexes = None


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # Every call is judged on its own: nothing held back as a repeat, and patient-view shows info findings too
    # (more to compare).
    directory = config_copy(tmp_path_factory.mktemp("metamorphic"), hold_repeats={"enabled": False})
    path = directory / "services" / f"{MONITORING}.yaml"
    service = yaml.safe_load(path.read_text())
    service.update(hold_repeats={"enabled": False}, min_indicator="info")
    path.write_text(yaml.safe_dump(service, sort_keys=False))
    return create_app(config_dir=directory, dev=True)


@pytest.fixture(scope="module")
def fhir(tmp_path_factory):
    store = SwappableStore()
    with serve_in_thread(store, require_token=TOKEN) as base:
        yield store, base


def findings(
    app, fhir, record: Record, path: str, transform: Transformation | None, notes: list[str] | None = None
) -> list[tuple[str, str]]:
    """The (finding id, indicator) pairs of the cards for ``record``, transformed by ``transform``, sent by
    ``path``; CannotPreserve / NothingToChange from the transformation propagate. The variant the
    transformation chose is appended to ``notes``."""
    store, base = fhir
    ctx = Context(fhir_base=base, path=path, seed=record.name, notes=notes if notes is not None else [])
    resources = list(record.resources)
    if transform is not None:
        resources = transform.apply_record(resources, ctx)
    store.load(resources, record.drafts)
    runtime = app.extensions["cds_runtime"]()
    templates = runtime.templates_for(runtime.service(record.service))
    body = build_request_from_bundle(
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]},
        list(record.drafts),
        selections=list(record.selections) if record.selections else None,
        hook=record.hook,
        via=path,
        fhir_base=base,
        prefetch_templates=templates,
        token=TOKEN,
        store=store,
    )
    if transform is not None and transform.request is not None:
        transformed = transform.apply_request(body, replace(ctx, record=tuple(resources)))
        if transformed == body and transform.record is None:
            raise NothingToChange(transform.looks_for)
        body = transformed
    response = app.test_client().post(f"/cds-services/{record.service}", json=body)
    assert response.status_code == 200, response.get_json()
    cards = response.get_json()
    assert check_response(cards) == []
    return sorted(
        (f["id"], f["indicator"]) for card in cards["cards"] for f in card["extension"][FINDINGS_KEY]
    )


BASELINES: dict[tuple[str, str], list[tuple[str, str]]] = {}
OUTCOMES: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    target = os.environ.get("METAMORPHIC_REPORT")
    if target:
        Path(target).write_text(json.dumps(OUTCOMES, indent=1))


ORDER_TRANSFORMATIONS = {
    "medication-contained", "medication-in-draft-orders", "medication-on-server", "medication-urn-uuid",
    "drug-name-only", "drug-ingredient-only", "codings-local-first", "absolute-references",
    "shuffled-entries", "extra-extensions-meta", "stu3-medication-request-no-intent",
}  # fmt: skip
"""What the real orders are re-encoded by: they are here for drug recognition, and their patient is
support.small_patient, whose labs and conditions the fixtures already cover (this keeps the module fast)."""


def _applies(transformation: Transformation, record: str) -> bool:
    return not record.startswith("real-order-") or transformation.name in ORDER_TRANSFORMATIONS


CASES = [(t.name, r, p) for t in TRANSFORMATIONS for r in RECORD_NAMES if _applies(t, r) for p in PATHS]


@pytest.mark.parametrize(("transform", "record", "path"), CASES, ids=[f"{t}-{r}-{p}" for t, r, p in CASES])
def test_the_same_fact_coded_another_way_gives_the_same_findings(app, fhir, transform, record, path):
    transformation = by_name()[transform]
    subject = records()[record]
    outcome: dict = {"transformation": transform, "record": record, "path": path}
    notes: list[str] = []
    try:
        got = findings(app, fhir, subject, path, transformation, notes)
    except (CannotPreserve, NothingToChange) as e:
        reason = f"{'cannot preserve' if isinstance(e, CannotPreserve) else 'nothing to re-encode'}: {e}"
        OUTCOMES.append({**outcome, "result": "skipped", "reason": reason})
        pytest.skip(reason)
    if (record, path) not in BASELINES:
        BASELINES[record, path] = findings(app, fhir, subject, path, None)
    expected = BASELINES[record, path]
    result = "same" if got == expected else "mismatch"
    OUTCOMES.append({**outcome, "variant": notes, "result": result, "expected": expected, "got": got})
    assert got == expected, f"{transform} ({', '.join(notes) or 'one variant'}): {transformation.doc}"


def test_there_are_at_least_fifteen_transformations_each_saying_what_it_relies_on():
    assert len(TRANSFORMATIONS) >= 15
    for transformation in TRANSFORMATIONS:
        assert transformation.doc and (transformation.record or transformation.request), transformation.name


def test_every_transformation_is_pure_and_every_skip_says_why(fhir):
    """A transformation never changes its input (the untransformed answer is computed from the same objects)
    and, when it does not apply, says why."""
    _, base = fhir
    for name in RECORD_NAMES:
        record = records()[name]
        before = orjson.dumps(record.resources)
        for transformation in TRANSFORMATIONS:
            try:
                transformation.apply_record(list(record.resources), Context(base, "prefetch", name))
            except (CannotPreserve, NothingToChange) as e:
                assert str(e), transformation.name
        assert orjson.dumps(record.resources) == before, name


def test_a_transformation_that_changes_the_meaning_is_caught(app, fhir):
    """The comparison can fail: a reactive HBsAg rewritten as non-reactive loses N14."""

    def negate_hbsag(resources, ctx):
        for resource in resources:
            if (
                resource["resourceType"] == "Observation"
                and resource["code"]["coding"][0]["code"] == "5196-1"
            ):
                resource["valueCodeableConcept"] = {"text": "Non-reactive"}
                resource["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": "NEG"}]}]
        return resources

    not_the_same = Transformation("negate-hbsag", "not an equivalence", record=negate_hbsag)
    record = records()["n14-hbsag-positive-renewal"]
    for path in PATHS:
        original = findings(app, fhir, record, path, None)
        assert ("N14", "warning") in original
        assert findings(app, fhir, record, path, not_the_same) != original


def test_rounding_across_a_threshold_skips_with_the_reason(fhir):
    """A creatinine rise of exactly 0.30 mg/dL (0.86 -> 1.16) is 76 -> 103 µmol/L, 0.31 mg/dL once rounded:
    the unit transformation says it cannot keep that record's meaning instead of testing something else."""
    _, base = fhir
    record = records()["pv-creatinine-rise-45pct"]  # creatinine 0.86 mg/dL, later 1.16
    with pytest.raises(CannotPreserve, match=r"difference across 0\.3"):
        by_name()["units-creatinine"].apply_record(
            list(record.resources), Context(base, "prefetch", record.name)
        )
