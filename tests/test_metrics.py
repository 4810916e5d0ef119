"""/metrics under the real multi-process server: every worker's counts summed, whichever worker answers;
the request id in the log line of each call."""

from __future__ import annotations

import re
import uuid

import pytest
import requests

from tests.support import config_copy, hook_request, small_patient, start_service

pytestmark = pytest.mark.slow  # a real service
PID = "metrics-p1"
SIGN = "/cds-services/tacrolimus-order-sign"


def _value(page: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", page, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_sum_every_worker_and_every_call_logs_its_request_id(tmp_path, monkeypatch):
    config = config_copy(tmp_path)
    folder = tmp_path / "metrics"  # as an operator may set it (e.g. a Kubernetes emptyDir)
    folder.mkdir()
    stale = folder / "counter_999999.db"
    stale.write_bytes(b"left by an earlier run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    calls = 12
    with start_service(config, workers=2, dev=True) as service:
        ids = [f"ehr-{uuid.uuid4().hex[:8]}" for _ in range(calls)]
        session = requests.Session()
        for request_id in ids:
            answer = session.post(
                f"{service.base}{SIGN}",
                json=hook_request(PID, small_patient(PID)),
                headers={"X-Request-ID": request_id, "Connection": "close"},  # spread over the workers
                timeout=30,
            )
            assert answer.status_code == 200 and answer.headers["X-Request-ID"] == request_id
        series = 'cds_hook_calls_total{service="tacrolimus-order-sign",status="200"}'
        for _ in range(4):  # each scrape may be answered by another worker: all must see every call
            page = requests.get(f"{service.base}/metrics", headers={"Connection": "close"}, timeout=10).text
            assert _value(page, series) == calls
            assert _value(page, 'cds_stage_seconds_count{stage="cards"}') == calls
            assert 'cds_findings_shown_total{finding="' in page
        logged = service.wait_until(
            lambda: (
                {e.get("request_id") for e in service.events() if e.get("event") == "hook call"} >= set(ids)
            ),
            "a hook call log line per request id",
        )
        assert logged
        assert not stale.exists()  # an earlier run's counts are not summed in
