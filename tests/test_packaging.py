"""Packaging and operations: declared dependencies, the version, the production image's files, a clean start,
refused calls in the log."""

from __future__ import annotations

import ast
import fnmatch
import logging
import re
import shutil
import sys
import tomllib
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest
import requests

from cds_service.config import load_config
from tests.support import (
    ROOT,
    config_copy,
    hook_request,
    make_app,
    probe_production_app,
    small_patient,
    start_service,
)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _declared(requirements: list[str]) -> set[str]:
    names = (re.match(r"[A-Za-z0-9_.\-]+", r)[0] for r in requirements)  # type: ignore[index]
    return {name.lower().replace("_", "-").replace(".", "-") for name in names}


def _imported_top_level(folder: str) -> set[str]:
    found = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    local = {path.stem for path in (ROOT / folder).glob("*.py")} | {"cds_service", "bench", folder}
    return found - set(sys.stdlib_module_names) - local


def _distributions(modules: set[str]) -> set[str]:
    by_module = packages_distributions()
    return {
        dist.lower().replace("_", "-").replace(".", "-")
        for module in modules
        for dist in by_module.get(module, [module])
    }


def test_every_package_the_service_imports_is_a_declared_dependency():
    # psycopg (the ``postgres`` extra) is imported only where a PostgreSQL engine is made (storage.py).
    extras = PYPROJECT["project"]["optional-dependencies"]
    declared = _declared(PYPROJECT["project"]["dependencies"]) | _declared(extras["postgres"])
    assert _distributions(_imported_top_level("cds_service")) - declared == set()


def test_every_package_the_tests_import_is_declared_and_test_tools_are_pinned():
    test_extra = PYPROJECT["project"]["optional-dependencies"]["test"]
    declared = _declared(PYPROJECT["project"]["dependencies"]) | _declared(test_extra)
    assert _distributions(_imported_top_level("tests")) - declared == set()
    assert all("==" in requirement for requirement in test_extra), test_extra


def test_every_runtime_dependency_has_an_upper_bound():
    unbounded = [r for r in PYPROJECT["project"]["dependencies"] if "<" not in r]
    assert unbounded == []


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("packaging"), dev=False).test_client()


def test_healthz_names_the_installed_version(client):
    assert version("tacrolimus-cds") == PYPROJECT["project"]["version"]
    assert client.get("/healthz").get_json()["version"] == PYPROJECT["project"]["version"]


def _rejections(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cds_service.app" and r.getMessage() == "request rejected"]


def test_a_refused_call_is_logged_with_its_reason_and_no_patient_data(tmp_path, caplog):
    service = make_app(tmp_path, dev=True).test_client()
    secret_name = "Zelda Quixote-Marmalade"  # a patient name that must never reach the log
    body = {
        "hook": "order-sign",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"patientId": secret_name, "draftOrders": {"resourceType": "Bundle", "entry": []}},
    }
    with caplog.at_level(logging.INFO, logger="cds_service"):
        answer = service.post("/cds-services/tacrolimus-order-sign", json=body)
        service.post("/cds-services/tacrolimus-order-sign", data="x", content_type="text/plain")
        service.get("/nothing-here")
    assert answer.status_code == 400
    first, unsupported, unknown = _rejections(caplog)
    assert (first.status, first.path, first.field) == (
        400,
        "/cds-services/tacrolimus-order-sign",
        "context.patientId",  # not a FHIR id: the reason says so without repeating it
    )
    assert first.reason == answer.get_json()["error"]
    assert (unsupported.status, unsupported.reason) == (415, "Content-Type must be application/json")
    assert unknown.status == 404 and unknown.levelno == logging.INFO
    assert secret_name not in caplog.text


def test_invalid_feedback_items_are_logged_with_the_fields_at_fault(tmp_path, caplog):
    service = make_app(tmp_path, dev=True).test_client()
    with caplog.at_level(logging.INFO, logger="cds_service"):
        answer = service.post(
            "/cds-services/tacrolimus-order-sign/feedback",
            json={
                "feedback": [{"card": "c", "outcome": "loved-it", "outcomeTimestamp": "2026-11-01T09:00:00Z"}]
            },
        )
    assert answer.status_code == 400
    (record,) = [r for r in caplog.records if r.getMessage() == "feedback"]
    assert record.levelno == logging.WARNING and record.rejected == 1
    assert record.problems[0].startswith("feedback[0].outcome")


@pytest.mark.slow
def test_a_clean_start_logs_no_error_line(tmp_path, monkeypatch):
    # A runtime dir nobody can write (gunicorn once put its control socket there and logged an error).
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/proc/self")  # nobody, not even root, may create a socket there
    with start_service(config_copy(tmp_path), workers=1) as server:
        assert requests.get(f"{server.base}/healthz", timeout=10).status_code == 200
        lines = list(server.lines)
    assert [line for line in lines if re.search(r"error", line, re.IGNORECASE)] == []


def test_cards_link_to_the_documentation_the_service_serves(tmp_path):
    base = "https://cds.example-hospital.org/tacrolimus"
    service = make_app(tmp_path, dev=True, server={"public_base_url": base}).test_client()
    cards = service.post(
        "/cds-services/tacrolimus-order-sign", json=hook_request("p1", small_patient("p1"))
    ).get_json()["cards"]
    assert cards and {card["source"]["url"] for card in cards} == {f"{base}/docs"}
    docs = service.get("/docs")
    assert docs.status_code == 200 and docs.mimetype == "text/html"
    heading = '<h1 id="tacrolimus-for-lupus-nephritis-a-cds-hooks-20-service">Tacrolimus for lupus'
    assert heading in docs.get_data(as_text=True)
    assert "script-src" not in docs.headers["Content-Security-Policy"]  # default-src 'none': no script


def test_an_administrator_may_point_the_source_link_elsewhere(tmp_path):
    own = "https://intranet.example.org/cds/tacrolimus"
    config = load_config(config_copy(tmp_path, cards={"source_url": own}))
    assert config.settings["cards"]["source_url"] == own
    bundled = load_config(config_copy(tmp_path / "bundled")).settings
    assert bundled["cards"]["source_url"] == bundled["server"]["public_base_url"] + "/docs"


# --- the production image (Dockerfile + .dockerignore; no Docker needed to list its files) -----------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``path`` (relative to the build context) out: a pattern matches the path
    or one of its folders; ``**/name`` matches a folder or file of that name anywhere."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def image_files() -> dict[str, Path]:
    """What the Dockerfile's COPY lines put in its WORKDIR: path in the image -> file of this checkout."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]
    # Only what _ignored understands: no re-inclusion, `**` only as a leading `**/name`.
    assert not [p for p in patterns if p.startswith("!") or "**" in p.removeprefix("**/")], patterns
    files: dict[str, Path] = {}
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        *sources, target = line.split()[1:]
        assert not any(s.startswith("--") for s in sources), line  # COPY --from/--chown: not modelled here
        for source in sources:
            where = (ROOT / source).resolve()
            found = [where] if where.is_file() else [p for p in where.rglob("*") if p.is_file()]
            for path in found:
                relative = path.relative_to(ROOT).as_posix()
                if _ignored(relative, patterns):
                    continue
                inside = path.name if where.is_file() else path.relative_to(where).as_posix()
                files[str(Path(target) / inside)] = path
    return files


def test_the_production_image_holds_no_fixture_and_no_sandbox():
    files = image_files()
    assert {"pyproject.toml", "README.md", "cds_service/app.py", "hooks/settings.yaml"} <= set(files)
    assert "cds_service/tables.py" in files and "cds_service/migrations/env.py" in files
    assert [f for f in files if f.startswith(("fhir_fixtures/", "cds_service/sandbox/"))] == []
    assert [f for f in files if f.startswith(("tests/", "bench/")) or "__pycache__" in f] == []
    assert "fhir_fixtures" not in (ROOT / "Dockerfile").read_text()


@pytest.mark.slow
def test_the_production_image_files_serve_without_the_sandbox(tmp_path):
    """The image's files alone (copied as the Dockerfile would) run the production app; the sandbox is not
    there to import, and nothing asks for it."""
    app = tmp_path / "app"
    for inside, source in image_files().items():
        (app / inside).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, app / inside)
    (app / "var").mkdir()
    report = probe_production_app(app / "hooks", cwd=app, pythonpath=app)
    assert report["package"] == str(app / "cds_service" / "__init__.py")  # the copy, not this checkout
    assert report["sandbox"] == [] and not (app / "cds_service" / "sandbox").exists()
    assert report["answers"]["/healthz"] == 200 and report["answers"]["/readyz"] == 200
    assert report["answers"]["/docs"] == 200 and report["answers"]["/sandbox"] == 404
