"""The probes of issue 12, measured: ``python -m bench.hostile`` (or ``make bench-hostile``).

Starts ``cds-service serve`` (dev mode for the FHIR probes, a trusted issuer and an admin token for the
others) and prints times and status counts for: a 9 MB prefetch of 36,000 creatinine results, a
100,000-entry FHIR Bundle, ten calls to a FHIR server trickling one byte a second and a healthy call after
them, the page cap, crafted JWT time claims, 500 admin-token guesses and badly framed bodies.
The tests (tests/test_hostile_*.py) assert the behaviour; this prints the figures.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import socket
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import jwt
import requests

from bench.ehr_keys import Signer, bearer
from bench.harness import config_copy, hook_request, searchset, small_patient, start_service, with_fhir_server
from bench.hostile_servers import (
    canned_fhir_server,
    compact,
    creatinine,
    rising_creatinine,
    search_answers,
    trickling_fhir_server,
)
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.store import FhirStore

PID = "bench-p1"
SIGN = "/cds-services/tacrolimus-order-sign"


def worst_bodies(base: list[dict]) -> list[tuple[str, dict]]:
    patient, _condition, order, allergy = base[:4]
    many_orders = [{**order, "id": f"mmf-{i}"} for i in range(20_000)]
    many_allergies = [{**allergy, "id": f"alg-{i}"} for i in range(30_000)]
    big_patient = {**patient, "name": [{"family": f"F{i}", "given": ["G"]} for i in range(150_000)]}
    drafts = hook_request(PID, base)
    template = drafts["context"]["draftOrders"]["entry"][0]["resource"]
    drafts["context"]["draftOrders"]["entry"] = [
        {"resource": {**template, "id": f"t{i}"}} for i in range(1000)
    ]
    return [
        ("20,000 mycophenolate orders", hook_request(PID, [*base, *many_orders])),
        ("30,000 rituximab allergies", hook_request(PID, [*base, *many_allergies])),
        ("a Patient with 150,000 names", hook_request(PID, [big_patient, *base[1:]])),
        ("1,000 tacrolimus draft orders", drafts),
    ]


def timed(call) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def fhir_probes(tmp: Path) -> None:
    now = datetime.now(UTC)
    config = config_copy(tmp / "dev", fhir={"max_response_bytes": 30_000_000})
    resources = small_patient(PID, observations=0)
    with start_service(config, workers=2, dev=True) as service:
        # 9 MB prefetch of 36,000 creatinine results
        raw = json.dumps(hook_request(PID, resources + rising_creatinine(36_000, 3, now))).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in (1, 2):
            took, response = timed(
                lambda raw=raw: requests.post(service.base + SIGN, data=raw, headers=headers, timeout=30)
            )
            print(
                f"prefetch 36,000 creatinine ({len(raw) / 1e6:.1f} MB), run {attempt}: "
                f"{response.status_code} in {took:.2f} s"
            )
        # other bodies just under the limit that once cost seconds
        base = small_patient(PID)
        for label, body in worst_bodies(base):
            raw = json.dumps(body).encode()
            took, response = timed(
                lambda raw=raw: requests.post(service.base + SIGN, data=raw, headers=headers, timeout=30)
            )
            print(f"{label} ({len(raw) / 1e6:.1f} MB): {response.status_code} in {took:.2f} s")
        # a 100,000-entry Bundle from the FHIR server
        answers = search_answers(resources, compact(searchset(rising_creatinine(100_000, 1, now))))
        with canned_fhir_server(answers) as (base, _):
            body = with_fhir_server(hook_request(PID, None), base, "token")
            for attempt in (1, 2):
                took, response = timed(lambda: requests.post(service.base + SIGN, json=body, timeout=30))
                incomplete = "only the first" in response.text
                print(
                    f"FHIR Bundle of 100,000 entries ({len(answers['Observation']) / 1e6:.1f} MB), "
                    f"run {attempt}: "
                    f"{response.status_code} in {took:.2f} s (key named incomplete: {incomplete})"
                )
        # page cap
        page = searchset([creatinine(0, 1.3, 30, now)])
        page["link"] = [{"relation": "next", "url": "Observation?page=again"}]
        with canned_fhir_server({**answers, "Observation": page}) as (base, _):
            took, response = timed(
                lambda: requests.post(
                    service.base + SIGN, json=with_fhir_server(hook_request(PID, None), base, "t"), timeout=30
                )
            )
            print(
                f"endless next links: {response.status_code} in {took:.2f} s "
                f"(pages kept: {'more than 10 pages' in response.text})"
            )
        # ten calls to a trickling server, then a healthy one
        store = FhirStore(
            [{"resourceType": "Bundle", "entry": [{"resource": r} for r in small_patient(PID)]}]
        )
        with (
            trickling_fhir_server(interval=1.0, duration=120) as (slow, trickle),
            serve_in_thread(store) as healthy,
        ):
            slow_body = with_fhir_server(hook_request(PID, None), slow, "t")
            started = time.monotonic()
            with ThreadPoolExecutor(10) as pool:
                slow_answers = list(
                    pool.map(
                        lambda _: timed(
                            lambda: requests.post(service.base + SIGN, json=slow_body, timeout=30)
                        ),
                        range(10),
                    )
                )
            statuses = Counter(r.status_code for _, r in slow_answers)
            print(
                f"10 calls to a server sending 1 byte/s: {dict(statuses)}, "
                f"each {min(t for t, _ in slow_answers):.2f}-{max(t for t, _ in slow_answers):.2f} s, "
                f"all done in {time.monotonic() - started:.2f} s"
            )
            cut = time.monotonic()
            while trickle.open and time.monotonic() - cut < 10:
                time.sleep(0.05)
            print(
                f"  trickling connections open {time.monotonic() - started:.2f} s after the calls began: "
                f"{trickle.open} (of {trickle.accepted} accepted)"
            )
            healthy_body = with_fhir_server(hook_request(PID, None), healthy, "t")
            for attempt in range(3):
                took, response = timed(
                    lambda: requests.post(service.base + SIGN, json=healthy_body, timeout=30)
                )
                print(f"  then a healthy server, call {attempt + 1}: {response.status_code} in {took:.2f} s")


def auth_probes(tmp: Path) -> None:
    key = Signer("ES384")
    admin_token = uuid.uuid4().hex
    callers = [{"issuer": "https://ehr.bench", "jwks": {"keys": [key.jwk()]}}]
    admin = {"token_sha256": hashlib.sha256(admin_token.encode()).hexdigest()}

    def config_for(port: int) -> Path:
        return config_copy(
            tmp / f"auth-{port}",
            server={"public_base_url": f"http://127.0.0.1:{port}"},
            callers=callers,
            admin=admin,
        )

    with start_service(config_for, workers=2) as service:
        aud = json.dumps(service.base + "/cds-services")
        now = int(time.time())
        for name, exp, iat in [
            ("exp NaN", "NaN", now),
            ("exp 1e400", "1e400", now),
            ("exp 2**70", str(2**70), now),
            ("iat NaN", now + 100, "NaN"),
            ("lifetime 10 years", now + 10 * 365 * 86400, now),
            ("lifetime 300 s", now + 300, now),
        ]:
            jti = uuid.uuid4()
            payload = (
                f'{{"iss": "https://ehr.bench", "aud": {aud}, "exp": {exp}, "iat": {iat}, "jti": "{jti}"}}'
            )
            token = jwt.PyJWS().encode(
                payload.encode(), key.private_key, algorithm="ES384", headers={"kid": key.kid}
            )
            response = requests.get(service.base + "/cds-services", headers=bearer(token), timeout=10)
            print(f"JWT {name}: {response.status_code}")
        statuses: Counter[int] = Counter()
        started = time.monotonic()
        for i in range(500):
            statuses[
                requests.post(
                    service.base + "/admin/login",
                    data={"token": f"guess-{i}"},
                    allow_redirects=False,
                    timeout=10,
                ).status_code
            ] += 1
        took = time.monotonic() - started
        print(f"500 admin-token guesses in {took:.1f} s: {dict(statuses)} (only the 401s were checked)")
        port = int(service.base.rsplit(":", 1)[1])
        login = (
            b"POST /admin/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\ntoken=x\r\n0\r\n\r\n"
        )
        print(f"malformed chunk size on POST /admin/login: {raw_status(port, login)}")
        big = b"[" + b" " * 10_500_000 + b"]"
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(big[i : i + 65536]), big[i : i + 65536]) for i in range(0, len(big), 65536)
        )
        head = (
            b"POST /cds-services/tacrolimus-order-sign HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        chunks += b"0\r\n\r\n"
        print(f"chunked body of 10.5 MB: {raw_status(port, head + chunks)}")
        compressed = gzip.compress(b'{"hook": "order-sign"}')
        head = (
            b"POST /cds-services/tacrolimus-order-sign HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Encoding: gzip\r\nConnection: close\r\n"
        )
        head += b"Content-Length: %d\r\n\r\n" % len(compressed)
        print(f"gzip body: {raw_status(port, head + compressed)}")
        print(f"tracebacks in the log: {service.log_text().count('Traceback')}")


def raw_status(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        with contextlib.suppress(OSError):  # it may answer and close before reading everything
            connection.sendall(request)
        return int(connection.recv(100).split(b" ", 2)[1])


def depth_check_probes() -> None:
    """The byte-level depth check on 4 MB of pure nesting: time grows with the size, not its square."""
    from cds_service.request_json import MAX_REQUEST_DEPTH, nested_deeper_than_bytes

    shapes = {
        "4 MB run of openers": b"[" * 2_000_000 + b"]" * 2_000_000,
        "4 MB staircase": b"[[]" * 1_000_000 + b"]" * 1_000_000,
    }
    for label, data in shapes.items():
        started = time.perf_counter()
        deeper = nested_deeper_than_bytes(data, MAX_REQUEST_DEPTH)
        print(f"depth check, {label}: deeper={deeper} in {time.perf_counter() - started:.3f} s")


def main() -> None:
    depth_check_probes()
    with tempfile.TemporaryDirectory() as tmp:
        fhir_probes(Path(tmp))
        auth_probes(Path(tmp))


if __name__ == "__main__":
    main()
