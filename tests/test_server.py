"""``cds-service serve`` as an operator runs it: slow clients, a master killed with -9, --dev on a network.

Each test reproduces a failure seen under the former server (gunicorn, gthread workers) against a real
``cds-service serve`` subprocess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.support import (
    CDS_SERVICE,
    ServiceProcess,
    config_copy,
    finding_ids,
    hook_request,
    small_patient,
    start_service,
)

pytestmark = pytest.mark.slow  # a real service
SIGN = "tacrolimus-order-sign"


def _trickling_clients(port: int, count: int, stop: threading.Event) -> threading.Thread:
    """``count`` connections that send a request line, then one header byte per 0.2 s, never finishing."""
    sockets = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=5)
        connection.sendall(f"POST /cds-services/{SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode())
        sockets.append(connection)

    def trickle() -> None:
        for _ in range(150):  # at most 30 s, however the test ends
            if stop.wait(0.2):
                break
            for connection in sockets:
                with contextlib.suppress(OSError):  # the server may drop a client this slow: allowed
                    connection.sendall(b"a")
        for connection in sockets:
            connection.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    return thread


def test_fifty_clients_trickling_headers_do_not_block_health_or_hook_calls(tmp_path):
    """Under gunicorn gthread (2 workers x 4 threads), ten such clients blocked every /healthz for 25 s."""
    with start_service(config_copy(tmp_path), workers=2, dev=True) as server:
        port = int(server.base.rsplit(":", 1)[1])
        request = hook_request("slow-p1", small_patient("slow-p1"))
        expected = finding_ids(
            requests.post(f"{server.base}/cds-services/{SIGN}", json=request, timeout=10).json()
        )
        stop = threading.Event()
        trickler = _trickling_clients(port, 50, stop)
        try:
            time.sleep(1.0)  # the slow clients are now holding their connections open
            for _ in range(3):
                health = requests.get(f"{server.base}/healthz", timeout=2)
                assert health.status_code == 200
                call = requests.post(f"{server.base}/cds-services/{SIGN}", json=request, timeout=2)
                assert call.status_code == 200
                assert finding_ids(call.json()) == expected
        finally:
            stop.set()
            trickler.join(timeout=5)


def test_clients_stalling_mid_body_do_not_block_anyone_and_are_answered_408(tmp_path):
    """Headers complete, then one byte of a 1,000-byte body and silence: under gunicorn and under granian's
    own WSGI interface each such client held a Python thread, and ten of them blocked every /healthz."""
    with start_service(config_copy(tmp_path), workers=2, dev=True) as server:
        port = int(server.base.rsplit(":", 1)[1])
        request = hook_request("stall-p1", small_patient("stall-p1"))
        stalled = []
        for _ in range(20):
            connection = socket.create_connection(("127.0.0.1", port), timeout=20)
            connection.sendall(
                f"POST /cds-services/{SIGN} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
            )
            stalled.append(connection)
        try:
            time.sleep(1.0)
            for _ in range(3):
                assert requests.get(f"{server.base}/healthz", timeout=2).status_code == 200
                call = requests.post(f"{server.base}/cds-services/{SIGN}", json=request, timeout=2)
                assert call.status_code == 200 and finding_ids(call.json())
            answer = stalled[0].recv(4096)  # the body time limit (10 s) ends the wait with an answer
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            assert b"request body not received in time" in answer
        finally:
            for connection in stalled:
                connection.close()


def test_bodies_over_the_limit_get_413_declared_or_chunked(tmp_path):
    with start_service(
        config_copy(tmp_path, server={"max_body_bytes": 50_000}), workers=1, dev=True
    ) as server:
        url = f"{server.base}/cds-services/{SIGN}"
        declared = requests.post(
            url, data=b"{" + b" " * 60_000 + b"}", timeout=10, headers={"Content-Type": "application/json"}
        )
        assert declared.status_code == 413
        assert declared.json() == {"error": "request body too large"}
        chunked = requests.post(
            url,
            data=iter([b"{", b" " * 30_000, b" " * 30_000, b"}"]),
            timeout=10,
            headers={"Content-Type": "application/json"},
        )
        assert chunked.status_code == 413
        assert chunked.json() == {"error": "request body too large"}
        fits = requests.post(url, data=b"{}", timeout=10, headers={"Content-Type": "application/json"})
        assert fits.status_code == 400  # read in full and judged by the app: not a CDS Hooks request


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()  # a zombie holds no socket


def _wait(check, what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_after_kill_9_of_the_master_its_workers_go_and_a_new_master_serves_alone(tmp_path):
    """Under gunicorn, orphaned workers held the socket 6-20 s and a new master exited "Connection in use".
    The new master must also be the only one answering: no orphan still serving the old configuration."""
    directory = config_copy(tmp_path)
    with start_service(directory, workers=2, dev=True) as first:
        port = int(first.base.rsplit(":", 1)[1])
        orphans = first.workers()
        assert len(orphans) == 2
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        _wait(lambda: not any(_alive(pid) for pid in orphans), "the killed master's workers to exit")
        first._marker_file.unlink()  # only a process started before this point can still name it

        second = ServiceProcess(directory, port, workers=2, dev=True)
        try:
            second.wait_ready(timeout=60)
            for _ in range(20):  # a new connection each time: the kernel would spread them over any orphan
                services = requests.get(f"{second.base}/healthz", timeout=5).json()["services"]
                assert second.marker in services
                assert first.marker not in services
        finally:
            second.stop()


def test_dev_mode_refuses_a_non_loopback_host_unless_allowed_by_its_own_flag(tmp_path):
    directory = config_copy(tmp_path)
    refused = subprocess.run(
        [CDS_SERVICE, "serve", "--dev", "--host", "0.0.0.0", "--config", str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert "--dev turns caller authentication off" in refused.stderr
    assert "--allow-dev-on-network" in refused.stderr

    with start_service(
        directory, workers=1, dev=True, extra_args=["--host", "0.0.0.0", "--allow-dev-on-network"]
    ) as server:
        assert requests.get(f"{server.base}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_hosts_are_recognised(host):
    from cds_service.cli import is_loopback

    assert is_loopback(host)
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.1.2.3")
