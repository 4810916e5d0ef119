"""What the benchmarks and the tests share: the service as a real ``cds-service serve`` subprocess (on a free
port, its log captured), a configuration copy to run it on, and small patients and hook requests to send it.

The tests reach these through ``tests.support``; ``bench/`` imports them from here, never from ``tests/``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import requests
import yaml

ROOT = Path(__file__).resolve().parent.parent
CDS_SERVICE = str(Path(sys.executable).with_name("cds-service"))  # the console script of this environment
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


def config_copy(tmp_path: Path, **settings_changes) -> Path:
    """A copy of hooks/ with its database in tmp_path and ``section={key: value}`` changes applied."""
    target = tmp_path / "hooks"
    shutil.copytree(ROOT / "hooks", target)
    path = target / "settings.yaml"
    settings = yaml.safe_load(path.read_text())
    settings["feedback"]["database_url"] = f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    for section, changes in settings_changes.items():
        if isinstance(changes, dict):
            settings.setdefault(section, {}).update(changes)
        else:
            settings[section] = changes
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_fhir_server(body: dict, server: str, token: str) -> dict:
    """A copy of the hook request ``body`` naming ``server`` as its FHIR server, with ``token`` to call it."""
    body = copy.deepcopy(body)
    body["fhirServer"] = server
    body["fhirAuthorization"] = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "tacrolimus-cds",
    }
    return body


# --- the service as a real ``cds-service serve`` subprocess -------------------------------------------------

T = TypeVar("T")


def add_marker_service(config_dir: Path) -> tuple[str, Path]:
    """A service with a unique id: /healthz then tells our server from another one on the same port.

    Its file sorts after the real ones, so that a client taking the first service for a hook (the sandbox)
    still takes the real one. Returns (the marker id, its file)."""
    marker = f"probe-{uuid.uuid4().hex[:12]}"
    source = (config_dir / "services" / "tacrolimus-order-sign.yaml").read_text()
    path = config_dir / "services" / f"zz-{marker}.yaml"
    path.write_text(source.replace("id: tacrolimus-order-sign", f"id: {marker}"))
    return marker, path


class PortTaken(RuntimeError):
    """Another process listens on the port picked for the service (tests of other people run too)."""


class ServiceProcess:
    """``cds-service serve`` in a subprocess, with every stderr line kept (the service logs JSON there)."""

    def __init__(
        self,
        config_dir: Path,
        port: int,
        *,
        workers: int = 2,
        dev: bool = False,
        extra_args: Sequence[str] = (),
    ):
        self.base = f"http://127.0.0.1:{port}"
        self.marker, self._marker_file = add_marker_service(config_dir)
        self.lines: list[str] = []
        command = [CDS_SERVICE, "serve", "--config", str(config_dir), "--port", str(port)]
        command += ["--workers", str(workers), *(["--dev"] if dev else []), *extra_args]
        self.process = subprocess.Popen(
            command,
            cwd=config_dir.parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def _last_lines(self, count: int = 40) -> str:
        return "\n".join(self.lines[-count:])

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until /healthz answers with our marker service; PortTaken if another process has the port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=5)  # every line of the exited process
                if any("cannot listen on" in line for line in self.lines):  # `serve` checks the port first
                    raise PortTaken(self.base)
                raise RuntimeError("service exited:\n" + self._last_lines())
            if any("cannot listen on" in line for line in self.lines):
                raise PortTaken(self.base)
            try:
                health = requests.get(f"{self.base}/healthz", timeout=2)
                if health.status_code == 200 and self.marker in health.json().get("services", ()):
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError("service did not start:\n" + self._last_lines())

    def events(self) -> list[dict[str, Any]]:
        """The log lines that are JSON objects, parsed."""
        found = []
        for line in list(self.lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def wait_until(self, check: Callable[[], T], what: str = "the condition", timeout: float = 10.0) -> T:
        """The first truthy result of ``check()`` (a failed HTTP call counts as not yet); fails if the service
        exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"service exited while waiting for {what}:\n" + self._last_lines(30))
            try:
                result = check()
            except requests.RequestException:
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last lines:\n" + self._last_lines(30))
            time.sleep(0.05)

    def wait_for_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first log event that ``match``es (log lines reach us a moment after the response)."""
        return self.wait_until(
            lambda: next((event for event in self.events() if match(event)), None), "a log event", timeout
        )

    def workers(self) -> set[int]:
        """Process ids of the workers (the master's children)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()} if children.exists() else set()

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        self._marker_file.unlink(missing_ok=True)


@contextmanager
def start_service(
    config_dir: Path | Callable[[int], Path], attempts: int = 3, **options: Any
) -> Iterator[ServiceProcess]:
    """A ready ``ServiceProcess`` (``options``: workers, dev, extra_args) on a free port, stopped on exit.

    ``config_dir`` is the configuration folder, or a function of the port that makes one (for settings that
    name the service's own URL). A port another process took meanwhile is retried with a new one."""
    for _ in range(attempts):
        port = free_port()
        directory = config_dir(port) if callable(config_dir) else config_dir
        service = ServiceProcess(directory, port, **options)
        try:
            service.wait_ready()
        except PortTaken:
            service.stop()
            continue
        except BaseException:
            service.stop()
            raise
        try:
            yield service
        finally:
            service.stop()
        return
    raise RuntimeError(f"no free port for the service in {attempts} attempts")


# --- patients and requests ----------------------------------------------------------------------------------


def when(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).isoformat(timespec="seconds")


def lab(pid: str, oid: str, code: str, value: float, unit: str, days_ago: float) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when(days_ago),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def small_patient(pid: str = "http-p1", observations: int = 3) -> list[dict]:
    """A woman of 30 with lupus nephritis, a completed mycophenolate course and a few recent labs."""
    resources = [
        {
            "resourceType": "Patient",
            "id": pid,
            "gender": "female",
            "birthDate": (datetime.now(UTC) - timedelta(days=30 * 366)).date().isoformat(),
        },
        {
            "resourceType": "Condition",
            "id": f"{pid}-ln",
            "subject": {"reference": f"Patient/{pid}"},
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                ]
            },
            "code": {
                "coding": [
                    {
                        "system": SNOMED,
                        "code": "68815009",
                        "display": "Systemic lupus erythematosus glomerulonephritis syndrome",
                    }
                ]
            },
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"{pid}-mmf",
            "status": "completed",
            "intent": "order",
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": when(400)[:10],
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "68149"}]},
            "dispenseRequest": {"validityPeriod": {"start": when(400)[:10], "end": when(100)[:10]}},
        },
        {
            "resourceType": "AllergyIntolerance",
            "id": f"{pid}-alg",
            "patient": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": RXNORM, "code": "121191", "display": "rituximab"}]},
        },
    ]
    codes = [("2160-0", 0.9, "mg/dL"), ("2823-3", 4.4, "mmol/L"), ("19123-9", 2.0, "mg/dL")]
    for i in range(observations):
        code, value, unit = codes[i % len(codes)]
        resources.append(lab(pid, f"{pid}-o{i}", code, value, unit, 3 + i))
    return resources


def tacrolimus_draft(pid: str, order_id: str = "tac-draft", code: str = "198377") -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{pid}"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}], "text": "tacrolimus"},
    }


def bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def searchset(resources: list[dict]) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r} for r in resources],
    }


def hook_request(
    pid: str, resources: list[dict] | None, hook: str = "order-sign", draft: dict | None = None
) -> dict:
    """A CDS Hooks request for ``pid`` with a full prefetch built from ``resources`` (None: no prefetch)."""
    draft = draft or tacrolimus_draft(pid)
    body = {
        "hook": hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": pid, "draftOrders": bundle([draft])},
    }
    if hook == "order-select":
        body["context"]["selections"] = [f"MedicationRequest/{draft['id']}"]
    if resources is not None:
        by_type = {}
        for r in resources:
            by_type.setdefault(r["resourceType"], []).append(r)
        body["prefetch"] = {
            "patient": copy.deepcopy((by_type.get("Patient") or [None])[0]),
            "conditions": searchset(by_type.get("Condition", [])),
            "medications": searchset(by_type.get("MedicationRequest", [])),
            "observations": searchset(by_type.get("Observation", [])),
            "allergies": searchset(by_type.get("AllergyIntolerance", [])),
            "procedures": searchset(by_type.get("Procedure", [])),
            "immunizations": searchset(by_type.get("Immunization", [])),
        }
    return body
