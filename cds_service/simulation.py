"""``cds-service simulate`` and the staged-configuration preview on ``/admin``: the alert burden of a
configuration on a population, and how a proposed one would change it.

Each patient's calls run in-process through ``hook_call.answer_hook``, the code path of an HTTP call, so the
cards are those the service would send. Per patient, in this order (the alert memory sees the calls an EHR
would make): for each order service, a tacrolimus draft (``population.tacrolimus_draft``, or the Bundle's own
drafts) at order-select then order-sign; the chart opened (patient-view, counted only for a patient on
tacrolimus: the others are not a call of that service); then for each other order service (co-prescribing)
each watched drug drafted at order-select then order-sign. The alert memory is a throwaway in-memory
database per process: nothing is written to the service's own database.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from cds_service.cards import FINDINGS_EXTENSION
from cds_service.config import Config, Service
from cds_service.hook_call import answer_hook
from cds_service.hook_names import HOOKS
from cds_service.population import (
    Patient,
    drug_draft,
    record_prefetch,
    request,
    resources,
    tacrolimus_draft,
)
from cds_service.protocol import ProtocolError
from cds_service.report import catalog_order
from cds_service.rules.model import INDICATOR_RANK
from cds_service.runtime import Runtime
from cds_service.services import DRAFT_TACROLIMUS, SPEC_BY_ID, spec_for
from cds_service.storage import Store

NONE = "none"
"""The highest indicator of an answer without cards."""


@dataclass(frozen=True)
class Outcome:
    """One call's answer, reduced to what the report counts (no patient data)."""

    service: str
    hook: str
    counted: bool
    status: int
    cards: tuple[tuple[str, tuple[str, ...]], ...]
    """(indicator, finding ids) per card."""


@dataclass(frozen=True)
class Setup:
    """One configuration to simulate: the loaded files and the tenant whose overrides apply."""

    config: Config
    tenant: str | None = None


def scratch_runtime(config: Config) -> Runtime:
    """A Runtime on ``config`` whose database (alert memory, seen tokens) is in memory and thrown away."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    from cds_service.migrations import upgrade

    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    upgrade(engine)
    return Runtime.from_config(config, dev=True, store=Store(engine))


def in_order(config: Config) -> tuple[list[Service], list[Service], list[Service]]:
    """(tacrolimus order services, chart services, other order services), each by hook order: the order in
    which a patient's calls are made."""
    services = sorted(config.services.values(), key=lambda s: HOOKS.index(s.hook))
    on_record = [s for s in services if spec_for(s.id, s.hook).trigger.on_record]
    tacrolimus = [s for s in services if spec_for(s.id, s.hook).trigger is DRAFT_TACROLIMUS]
    others = [s for s in services if s not in on_record and s not in tacrolimus]
    return tacrolimus, on_record, others


def calls(
    patient: Patient, runtime: Runtime, drugs: Sequence[Mapping[str, str]]
) -> Iterator[tuple[Service, dict[str, Any]]]:
    """(service, request) of every call made for ``patient``, in the order described above. A Bundle with
    draft orders of its own (a fixture's scenario) sends those to every order service instead."""
    tacrolimus, chart, others = in_order(runtime.config)
    serialised: dict[tuple[tuple[str, str], ...], bytes] = {}

    def wanted(service: Service) -> bool:
        return not patient.hooks or service.hook in patient.hooks

    def call(
        service: Service, drafts: Sequence[dict] = (), selections: Sequence[str] | None = None
    ) -> tuple[Service, dict[str, Any]]:
        """The request, its prefetch decoded afresh (as each HTTP call decodes its own) from the patient's
        record serialised once per set of templates."""
        templates = runtime.templates_for(service)
        key = tuple(templates.items())
        if key not in serialised:
            serialised[key] = orjson.dumps(record_prefetch(patient, templates))
        prefetch = orjson.loads(serialised[key])
        return service, request(patient, service.hook, templates, drafts, selections, prefetch)

    def order_calls(
        services: list[Service], drafts: list[dict], selections: Sequence[str] | None = None
    ) -> Iterator[tuple[Service, dict[str, Any]]]:
        for service in filter(wanted, services):
            yield call(service, drafts, selections)

    own: list[dict] = []
    if patient.drafts:
        by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources(patient.bundle)}
        own = [by_ref[d] for d in patient.drafts if d in by_ref]
        own += _referenced_medications(own, by_ref)
        yield from order_calls(tacrolimus, own, patient.selections)
    else:
        draft, medications = tacrolimus_draft(patient, runtime.terminology)
        yield from order_calls(tacrolimus, [draft, *medications])
    for service in filter(wanted, chart):
        yield call(service)
    if patient.drafts:
        yield from order_calls(others, own, patient.selections)
        return
    for number, drug in enumerate(drugs, start=1):
        yield from order_calls(others, [drug_draft(patient.patient_id, f"simulated-draft-{number}", drug)])


def _referenced_medications(drafts: list[dict], by_ref: Mapping[str, dict]) -> list[dict]:
    """The Medications the drafts reference, sent with them in ``draftOrders`` as an EHR sends them."""
    refs = {str((d.get("medicationReference") or {}).get("reference")) for d in drafts}
    return [by_ref[r] for r in sorted(refs) if r in by_ref and by_ref[r].get("resourceType") == "Medication"]


def run_patient(
    patient: Patient, runtime: Runtime, tenant: str | None, drugs: Sequence[Mapping[str, str]], now: datetime
) -> list[Outcome]:
    outcomes = []
    for service, body in calls(patient, runtime, drugs):
        on_record = spec_for(service.id, service.hook).trigger.on_record
        try:
            answer = answer_hook(body, service, runtime, now=now, tenant=tenant)
        except ProtocolError as error:  # what HTTP answers 4xx (e.g. a Bundle the request cannot carry)
            outcomes.append(Outcome(service.id, service.hook, True, error.status, ()))
            continue
        if answer.to_remember is not None:  # as the HTTP endpoint does: order-sign may hold it back
            answer.to_remember()
        cards = tuple(
            (
                str(card.get("indicator")),
                tuple(str(i["id"]) for i in (card.get("extension") or {}).get(FINDINGS_EXTENSION, ())),
            )
            for card in answer.body.get("cards", ())
        )
        counted = not on_record or bool(answer.notes.get("triggers"))
        outcomes.append(Outcome(service.id, service.hook, counted, answer.status, cards))
    return outcomes


# --- counting -----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """The tally of one service and hook over the population."""

    service: str
    hook: str
    calls: int = 0
    answers_with_cards: int = 0
    cards: int = 0
    info_only: int = 0
    """Answers with cards whose every card is info."""
    errors: int = 0
    """Answers other than 200 (412: required data missing)."""
    findings: Counter[str] = field(default_factory=Counter)
    """Finding id → answers it was shown in."""

    def add(self, outcome: Outcome) -> None:
        self.calls += 1
        self.errors += outcome.status != 200
        if outcome.cards:
            self.answers_with_cards += 1
            self.cards += len(outcome.cards)
            self.info_only += all(indicator == "info" for indicator, _ in outcome.cards)
        self.findings.update({f for _, ids in outcome.cards for f in ids})

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "hook": self.hook,
            "calls": self.calls,
            "answers_with_cards": self.answers_with_cards,
            "cards": self.cards,
            "cards_per_call": _ratio(self.cards, self.calls),
            "info_only": self.info_only,
            "info_only_share": _ratio(self.info_only, self.answers_with_cards),
            "errors": self.errors,
            "findings": dict(sorted(self.findings.items(), key=lambda kv: catalog_order(kv[0]))),
            "firing_rates": {
                f: _ratio(n, self.calls)
                for f, n in sorted(self.findings.items(), key=lambda kv: catalog_order(kv[0]))
            },
        }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def run_order(key: tuple[str, str]) -> tuple[int, int, str]:
    """Runs in the order of the service specs (``services.SPECS``), then by hook and id."""
    service, hook = key
    specs = list(SPEC_BY_ID)
    position = specs.index(service) if service in specs else len(specs)
    return (position, HOOKS.index(hook) if hook in HOOKS else len(HOOKS), service)


def highest(outcome: Outcome) -> str:
    return max((i for i, _ in outcome.cards), key=lambda i: INDICATOR_RANK.get(i, -1), default=NONE)


@dataclass
class Result:
    patients: int
    runs: list[Run]
    highest: dict[tuple[str, str, str], str]
    """(patient label, service, hook) → the highest indicator of its (counted) answer."""

    def to_json(self) -> dict[str, Any]:
        return {"patients": self.patients, "runs": [r.to_json() for r in self.runs]}


def tally(per_patient: Sequence[tuple[str, list[Outcome]]]) -> Result:
    runs: dict[tuple[str, str], Run] = {}
    top: dict[tuple[str, str, str], str] = {}
    for label, outcomes in per_patient:
        for outcome in outcomes:
            if not outcome.counted:
                continue
            runs.setdefault((outcome.service, outcome.hook), Run(outcome.service, outcome.hook)).add(outcome)
            key = (label, outcome.service, outcome.hook)
            top[key] = max(top.get(key, NONE), highest(outcome), key=lambda i: INDICATOR_RANK.get(i, -1))
    ordered = sorted(runs.values(), key=lambda r: run_order((r.service, r.hook)))
    return Result(len(per_patient), ordered, top)


@dataclass(frozen=True)
class Difference:
    service: str
    hook: str
    finding: str
    baseline: int
    proposed: int

    @property
    def change(self) -> int:
        return self.proposed - self.baseline


def compare(baseline: Result, proposed: Result) -> dict[str, Any]:
    """Per finding the change in answers it is shown in, and the patients whose highest indicator moved."""
    before = {(r.service, r.hook): r for r in baseline.runs}
    after = {(r.service, r.hook): r for r in proposed.runs}
    differences = []
    for key in sorted(before.keys() | after.keys(), key=run_order):
        b, a = before.get(key), after.get(key)
        found = set(b.findings if b else ()) | set(a.findings if a else ())
        for finding in sorted(found, key=catalog_order):
            counts = (b.findings[finding] if b else 0, a.findings[finding] if a else 0)
            if counts[0] != counts[1]:
                differences.append(Difference(*key, finding, *counts))
    changed = [
        {"patient": label, "service": service, "hook": hook, "baseline": old, "proposed": new}
        for (label, service, hook) in sorted(baseline.highest.keys() | proposed.highest.keys())
        if (old := baseline.highest.get((label, service, hook), NONE))
        != (new := proposed.highest.get((label, service, hook), NONE))
    ]
    return {
        "runs": [r.to_json() for r in proposed.runs],
        "differences": [
            {
                "service": d.service,
                "hook": d.hook,
                "finding": d.finding,
                "baseline": d.baseline,
                "proposed": d.proposed,
                "change": d.change,
            }
            for d in differences
        ],
        "patients_changed": changed,
    }


# --- running ------------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _start_worker(setups: Sequence[Setup], drugs: Sequence[Mapping[str, str]], now: datetime) -> None:
    _WORKER.update(setups=setups, runtimes=[scratch_runtime(s.config) for s in setups], drugs=drugs, now=now)


def _run_one(patient: Patient) -> tuple[str, list[list[Outcome]]]:
    setups, runtimes = _WORKER["setups"], _WORKER["runtimes"]
    return patient.label, [
        run_patient(patient, runtime, setup.tenant, _WORKER["drugs"], _WORKER["now"])
        for setup, runtime in zip(setups, runtimes, strict=True)
    ]


def simulate(
    patients: Sequence[Patient],
    setups: Sequence[Setup],
    drugs: Sequence[Mapping[str, str]],
    jobs: int = 1,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Result]:
    """One Result per setup, each over every patient (``jobs`` processes share the patients)."""
    now = now or datetime.now(UTC)
    done: list[tuple[str, list[list[Outcome]]]] = []
    if jobs <= 1 or len(patients) < 2:
        _start_worker(setups, drugs, now)
        try:
            for patient in patients:
                done.append(_run_one(patient))
                if progress:
                    progress(1)
        finally:
            _close_worker()
    else:
        import multiprocessing

        context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
        with context.Pool(jobs, initializer=_start_worker, initargs=(setups, drugs, now)) as pool:
            for item in pool.imap(_run_one, patients, chunksize=max(1, min(20, len(patients) // (jobs * 8)))):
                done.append(item)
                if progress:
                    progress(1)
    return [tally([(label, outcomes[n]) for label, outcomes in done]) for n in range(len(setups))]


def _close_worker() -> None:
    for runtime in _WORKER.get("runtimes", ()):
        runtime.close()
        if runtime.store is not None:
            runtime.store.engine.dispose()
    _WORKER.clear()


# --- the report ---------------------------------------------------------------------------------------------


def as_json(results: Sequence[Result]) -> dict[str, Any]:
    document = results[0].to_json()
    if len(results) > 1:
        document["compare"] = compare(results[0], results[1])
    return document


def render_json(results: Sequence[Result]) -> str:
    return json.dumps(as_json(results), indent=2)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def render_text(results: Sequence[Result]) -> str:
    document = as_json(results)
    lines = [f"{document['patients']} patients"]
    for run in document["runs"]:
        lines.append("")
        lines.append(
            f"{run['service']} ({run['hook']}): {run['calls']} calls, {run['answers_with_cards']} with cards "
            f"({_percent(_ratio(run['answers_with_cards'], run['calls']))}), "
            f"{run['cards_per_call'] or 0:.2f} cards per call, info-only {_percent(run['info_only_share'])}"
            + (f", {run['errors']} errors" if run["errors"] else "")
        )
        for finding, count in run["findings"].items():
            lines.append(f"  {finding:<6} {count:>6}  {_percent(run['firing_rates'][finding]):>5} of calls")
    if "compare" in document:
        lines += ["", "proposed configuration against the baseline:"]
        differences = document["compare"]["differences"]
        if not differences:
            lines.append("  no finding fires more or less often")
        for d in differences:
            where = f"{d['service']} ({d['hook']}) {d['finding']}"
            lines.append(f"  {where}: {d['baseline']} -> {d['proposed']} ({d['change']:+d})")
        changed = document["compare"]["patients_changed"]
        lines.append(f"patients whose highest indicator changed: {len(changed)}")
        for c in changed:
            lines.append(f"  {c['patient']} {c['service']} ({c['hook']}): {c['baseline']} -> {c['proposed']}")
    return "\n".join(lines)


CSV_COLUMNS = (
    "configuration",
    "service",
    "hook",
    "finding",
    "calls",
    "answers_with_cards",
    "cards",
    "info_only",
    "count",
    "firing_rate",
)


def render_csv(results: Sequence[Result]) -> str:
    """One row per configuration, service, hook and finding (finding ``*``: the run's totals)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name, result in zip(("baseline", "proposed"), results, strict=False):
        for run in result.runs:
            totals = (run.calls, run.answers_with_cards, run.cards, run.info_only)
            writer.writerow(
                (
                    name,
                    run.service,
                    run.hook,
                    "*",
                    *totals,
                    run.answers_with_cards,
                    _ratio(run.answers_with_cards, run.calls),
                )
            )
            for finding, count in sorted(run.findings.items(), key=lambda kv: catalog_order(kv[0])):
                writer.writerow(
                    (name, run.service, run.hook, finding, *totals, count, _ratio(count, run.calls))
                )
    return out.getvalue()


RENDERERS = {"text": render_text, "csv": render_csv, "json": render_json}


def load_setup(directory: str | Path | None, tenant: str | None = None) -> Setup:
    """A configuration folder (default: the one in use) and optionally one of its tenants."""
    from cds_service.config import load_config

    config = load_config(str(directory) if directory is not None else None)
    if tenant is not None and tenant not in (config.section("tenants") or {}):
        from cds_service.config import ConfigError

        raise ConfigError([f"tenants: no tenant {tenant!r} in {config.directory}"])
    return Setup(config, tenant)
