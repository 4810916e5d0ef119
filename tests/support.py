"""Helpers shared by the HTTP-level tests (import them as ``tests.support``): a service on a temporary
configuration (in-process, or a real ``cds-service serve`` subprocess whose log is captured, from
``bench/harness.py``, which the benchmarks share), a small patient, and the rule for a missing tool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from bench.harness import (
    CDS_SERVICE,
    LOINC,
    ROOT,
    RXNORM,
    SNOMED,
    PortTaken,
    ServiceProcess,
    add_marker_service,
    bundle,
    config_copy,
    free_port,
    hook_request,
    lab,
    searchset,
    small_patient,
    start_service,
    tacrolimus_draft,
    when,
    with_fhir_server,
)
from cds_service.app import create_app
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.store import FhirStore
from cds_service.sandbox.web import create_dev_app

__all__ = [
    "CDS_SERVICE",
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "DATA",
    "FINDINGS_KEY",
    "LOINC",
    "ROOT",
    "RXNORM",
    "SNOMED",
    "PortTaken",
    "ServiceProcess",
    "add_marker_service",
    "bundle",
    "config_copy",
    "finding_ids",
    "free_port",
    "headless_chromium",
    "hook_request",
    "lab",
    "make_app",
    "probe_production_app",
    "searchset",
    "small_patient",
    "start_service",
    "tacrolimus_draft",
    "tool_missing",
    "when",
    "with_fhir_server",
]

DATA = ROOT / "tests" / "data"  # copies of public examples and corpora; see tests/data/SOURCES.md
FINDINGS_KEY = "org.example.tacrolimus-cds.findings"
CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")  # Debian's; the browser tests drive it
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A Playwright browser context on Debian's Chromium, headless, with a throw-away profile."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield context
        context.close()


def tool_missing(message: str) -> NoReturn:
    """A tool the tests need is not on this machine: a failure in CI, where ``.ci/run`` installs every one
    (PostgreSQL, nginx, Chromium), a skip elsewhere (its reason listed at the end of the run)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def make_app(tmp_path: Path, dev: bool = True, **settings_changes):
    """The app ``serve`` runs, on a copy of hooks/; with ``dev``, as ``serve --dev`` (sandbox composed in)."""
    factory = create_dev_app if dev else create_app
    return factory(config_dir=config_copy(tmp_path, **settings_changes))


@contextmanager
def serving_records(bundles: Mapping[str, dict], token: str) -> Iterator[str]:
    """A FHIR server on loopback (its base URL yielded) holding each case's record as the EHR stores it: the
    case's draft, ``MedicationRequest/<case>-draft``, is not signed yet and so is not on the server."""
    store = FhirStore()
    for case, records in bundles.items():
        store.add_bundle(records, exclude=[f"MedicationRequest/{case}-draft"])
    with serve_in_thread(store, require_token=token) as base:
        yield base


def finding_ids(response_json: dict) -> set[str]:
    return {item["id"] for card in response_json["cards"] for item in card["extension"][FINDINGS_KEY]}


PRODUCTION_APP_PROBE = """
import json, sys
import cds_service
from cds_service.app import create_app
from cds_service.server import preload_code
client = create_app(config_dir=sys.argv[1], dev=False).test_client()
paths = ("/healthz", "/readyz", "/docs", "/admin", "/sandbox")
answers = {path: client.get(path).status_code for path in paths}
answers["POST /cds-services/tacrolimus-order-sign"] = client.post(
    "/cds-services/tacrolimus-order-sign", json={}
).status_code
preload_code()  # what the master of `serve` imports before it forks the workers
print(json.dumps({
    "package": cds_service.__file__,
    "answers": answers,
    "sandbox": sorted(name for name in sys.modules if name.startswith("cds_service.sandbox")),
}))
"""


def probe_production_app(config_dir: Path, cwd: Path, pythonpath: Path | None = None) -> dict[str, Any]:
    """What the production app (``serve`` without ``--dev``) answers and imports, in a fresh interpreter:
    ``{"package": cds_service's file, "answers": {path: status}, "sandbox": [sandbox modules imported]}``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CDS_")}  # config only
    env.update({"PYTHONPATH": str(pythonpath)} if pythonpath else {})
    result = subprocess.run(
        [sys.executable, "-c", PRODUCTION_APP_PROBE, str(config_dir)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])
