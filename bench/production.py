"""Production-mode scenario: the service without ``--dev``, every call carrying a fresh EHR JWT.

Each call is verified (signature, audience, expiry) and its ``jti`` recorded in the replay table, which is
what a real deployment pays per call. The tokens are minted before the clock starts (ES256, unique jti), so
the load generator's signing does not compete with the service for the cores.
"""

from __future__ import annotations

import http.client
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://bench-ehr.example"
SERVICE_PATH = "/cds-services/tacrolimus-order-sign"


class Ehr:
    """One EHR that signs its calls with an ES256 key, registered inline in the service's configuration."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = f"bench-{uuid.uuid4().hex[:8]}"

    def jwk(self) -> dict:
        public = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": "ES256", "use": "sig"}

    def tokens(self, audience: str, count: int) -> list[str]:
        now = int(time.time())
        return [
            jwt.encode(
                {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 280, "jti": uuid.uuid4().hex},
                self.key,
                algorithm="ES256",
                headers={"kid": self.kid, "typ": "JWT"},
            )
            for _ in range(count)
        ]


def production_config(template: Path, target: Path, port: int, ehr: Ehr) -> Path:
    """A copy of the configuration folder ``template`` that trusts ``ehr`` and knows its own URL."""
    shutil.copytree(template, target)
    settings_path = target / "settings.yaml"
    settings = yaml.safe_load(settings_path.read_text())
    settings["server"]["public_base_url"] = f"http://127.0.0.1:{port}"
    settings["callers"] = [{"issuer": ISSUER, "jwks": {"keys": [ehr.jwk()]}, "algorithms": ["ES256"]}]
    settings_path.write_text(yaml.safe_dump(settings))
    return target


def signed_load(port: int, body: bytes, tokens: list[str], seconds: float, concurrency: int) -> dict:
    """Like bench.load, each call with its own token (a replayed one would be refused)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    supply = iter(tokens)

    def next_token() -> str | None:
        with lock:
            return next(supply, None)

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, codes = [], {}
        while time.monotonic() < stop_at and (token := next_token()) is not None:
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            started = time.perf_counter()
            connection.request("POST", SERVICE_PATH, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000)
            codes[response.status] = codes.get(response.status, 0) + 1
        connection.close()
        with lock:
            latencies.extend(mine)
            for code, count in codes.items():
                statuses[code] = statuses.get(code, 0) + count

    began = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "statuses": statuses,
    }


def run_scenario(
    start_service: Callable[[Path, int], subprocess.Popen],
    template: Path,
    work: Path,
    port: int,
    body: bytes,
    seconds: float,
    concurrency: int,
    tokens_per_second: int = 3000,
) -> dict:
    """Start a production-mode service (``start_service(config, port)``), load it, stop it; the result row.

    ``tokens_per_second`` bounds the pre-minted supply; a run that exhausts it reports fewer requests.
    """
    ehr = Ehr()
    config = production_config(template, work / "hooks-production", port, ehr)
    process = start_service(config, port)
    try:
        audience = f"http://127.0.0.1:{port}{SERVICE_PATH}"
        signed_load(port, body, ehr.tokens(audience, 50), 1.0, concurrency)  # warm-up
        alone = signed_load(port, body, ehr.tokens(audience, 100), 60, 1)["p50"]
        result = signed_load(
            port, body, ehr.tokens(audience, int(tokens_per_second * seconds)), seconds, concurrency
        )
        result["alone_p50"] = alone
        return result
    finally:
        process.terminate()
        process.wait(timeout=20)
