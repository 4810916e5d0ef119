"""Several hosts for real: PostgreSQL, two ``cds-service serve`` instances and nginx in front of them.

One instance is killed with SIGKILL in the middle of the load. What an EHR was told must hold: every
feedback acknowledged is stored, every hook call answered 200 has its shown findings stored, a JWT used on
one instance is refused on the other, and the balancer serves on with the instance that is left.
(``scripts/install-test-tools`` installs Debian's postgresql and nginx-light; ``.ci/run`` runs it.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import pytest
import requests

from cds_service.storage import Store, make_engine
from tests.security_helpers import Signer, bearer, claims
from tests.support import config_copy, free_port, hook_request, small_patient, start_service, tool_missing

pytestmark = [pytest.mark.nginx, pytest.mark.slow]  # and postgres, from its fixture
PID = "multi-p1"
ISSUER = "https://ehr-multi.test"
SIGN = "/cds-services/tacrolimus-order-sign"

NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    client_max_body_size 10m;
    upstream cds {{
        server 127.0.0.1:{a} max_fails=1 fail_timeout=60s;
        server 127.0.0.1:{b} max_fails=1 fail_timeout=60s;
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://cds;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502 http_503;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@contextmanager
def nginx_in_front_of(ports: tuple[int, int], folder: Path, port: int) -> Iterator[str]:
    binary = nginx_binary()
    if binary is None:
        tool_missing("nginx is not installed (Debian's nginx-light package); the multi-host tests need it")
    folder.mkdir()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=folder, a=ports[0], b=ports[1], port=port))
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start: " + (folder / "error.log").read_text()[-2000:])
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def kill_instance(service) -> None:
    """SIGKILL the instance's master and every worker at once, as when its host dies."""
    pids = [service.process.pid, *service.workers()]
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    service.process.wait(timeout=10)


class Load:
    """EHR clients calling through the balancer: hook calls and feedback, each with a fresh JWT."""

    def __init__(self, base: str, signer: Signer, audience_base: str):
        self.base = base
        self.signer = signer
        self.audience_base = audience_base
        self.answered_calls: list[str] = []  # hookInstance of every call answered 200 with cards
        self.acknowledged: list[str] = []  # card of every feedback item answered 200
        self.other_statuses: list[int] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def _token(self, path: str) -> dict[str, str]:
        return bearer(self.signer.token(claims(ISSUER, f"{self.audience_base}{path}")))

    def client(self, calls: int) -> None:
        session = requests.Session()
        patient = small_patient(PID)
        for _ in range(calls):
            if self.stop.is_set():
                return
            body = hook_request(PID, patient)
            body["hookInstance"] = str(uuid.uuid4())
            card = f"fb-{uuid.uuid4()}"
            item = {"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-01-02T03:04:05Z"}
            try:
                call = session.post(f"{self.base}{SIGN}", json=body, headers=self._token(SIGN), timeout=30)
                feedback = session.post(
                    f"{self.base}{SIGN}/feedback",
                    json={"feedback": [item]},
                    headers=self._token(f"{SIGN}/feedback"),
                    timeout=30,
                )
            except requests.RequestException:
                continue
            with self.lock:
                if call.status_code == 200 and call.json()["cards"]:
                    self.answered_calls.append(body["hookInstance"])
                else:
                    self.other_statuses.append(call.status_code)
                if feedback.status_code == 200:
                    self.acknowledged.append(card)
                else:
                    self.other_statuses.append(feedback.status_code)


def test_two_instances_behind_nginx_survive_losing_one(tmp_path, postgres, monkeypatch):
    database = postgres.new_database()
    monkeypatch.setenv("CDS_DATABASE_URL", database)
    signer = Signer("ES384")
    try:
        with ExitStack() as stack:
            # The EHR calls the balancer's URL, so that is the audience both instances expect.
            balancer_port = free_port()
            public = f"http://127.0.0.1:{balancer_port}"
            callers = [{"issuer": ISSUER, "jwks": {"keys": [signer.jwk()]}}]

            def config_for(port: int, name: str) -> Path:
                return config_copy(tmp_path / name, server={"public_base_url": public}, callers=callers)

            (tmp_path / "a").mkdir()
            (tmp_path / "b").mkdir()
            # Each instance's metrics folder in tmp_path: one killed by SIGKILL cannot remove its own.
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "a" / "metrics"))
            a = stack.enter_context(start_service(lambda port: config_for(port, "a"), workers=2))
            monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "b" / "metrics"))
            b = stack.enter_context(start_service(lambda port: config_for(port, "b"), workers=2))
            ports = (int(a.base.rsplit(":", 1)[1]), int(b.base.rsplit(":", 1)[1]))
            base = stack.enter_context(nginx_in_front_of(ports, tmp_path / "nginx", balancer_port))
            for instance in (a, b):  # both on the PostgreSQL server, not on their own SQLite files
                ready = requests.get(f"{instance.base}/readyz", timeout=5)
                assert ready.status_code == 200 and ready.json()["database"] == "postgresql"

            # A JWT used on one instance is refused on the other: the replay table is in PostgreSQL.
            token = bearer(signer.token(claims(ISSUER, f"{public}{SIGN}")))
            body = hook_request(PID, small_patient(PID))
            assert requests.post(f"{a.base}{SIGN}", json=body, headers=token, timeout=30).status_code == 200
            replayed = requests.post(f"{b.base}{SIGN}", json=body, headers=token, timeout=30)
            assert replayed.status_code == 401

            load = Load(base, signer, public)
            clients = [threading.Thread(target=load.client, args=(40,)) for _ in range(4)]
            for thread in clients:
                thread.start()
            deadline = time.monotonic() + 120
            while len(load.acknowledged) < 30 and time.monotonic() < deadline:
                time.sleep(0.05)
            kill_instance(a)  # mid-load
            for thread in clients:
                thread.join(timeout=300)

            # The balancer serves on with the instance that is left.
            after = [
                requests.post(
                    f"{base}{SIGN}",
                    json=body,
                    headers=bearer(signer.token(claims(ISSUER, f"{public}{SIGN}"))),
                    timeout=30,
                ).status_code
                for _ in range(10)
            ]
            assert after == [200] * 10
            assert b.process.poll() is None

        store = Store(make_engine(database))
        stored_cards = {row["card_uuid"] for row in store.feedback_rows()}
        assert len(load.acknowledged) >= 30
        assert set(load.acknowledged) <= stored_cards  # every acknowledged feedback is stored
        shown_calls = {row["hook_instance"] for row in store.shown_rows()}
        assert set(load.answered_calls) <= shown_calls  # every call answered 200 has its shown findings
        assert set(load.other_statuses) <= {502, 503, 504}  # the calls cut by the kill, nothing else
    finally:
        postgres.drop_database(database)


def test_a_worker_killed_mid_load_loses_no_row_of_an_answered_call_on_sqlite(tmp_path, monkeypatch):
    """Issue 12: shown findings are as durable as feedback (they were batched in the background)."""
    monkeypatch.delenv("CDS_DATABASE_URL", raising=False)
    config = config_copy(tmp_path)
    with start_service(config, workers=2, dev=True) as service:
        load = Load(service.base, Signer("ES384"), service.base)  # --dev: tokens are not looked at
        clients = [threading.Thread(target=load.client, args=(40,)) for _ in range(4)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 120
        while len(load.answered_calls) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(min(service.workers()), signal.SIGKILL)  # gunicorn starts a new one
        for thread in clients:
            thread.join(timeout=300)
    store = Store(make_engine(f"sqlite:///{tmp_path / 'cds.sqlite3'}"))
    assert len(load.answered_calls) >= 30
    assert set(load.answered_calls) <= {row["hook_instance"] for row in store.shown_rows()}
    assert set(load.acknowledged) <= {row["card_uuid"] for row in store.feedback_rows()}
