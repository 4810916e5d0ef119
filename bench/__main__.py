"""Benchmark: ``make bench`` (or ``python -m bench [--seconds N] [--concurrency C]``).

Starts the service as ``cds-service serve`` does (gunicorn, 2 workers × 4 threads), a no-op Flask endpoint
under the same server, and a FHIR server on loopback; loads each on loopback with keep-alive clients and
prints requests/s, p50 and p99 per scenario, with the targets of the issue beside them.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from bench import production
from bench.patients import lupus_patient, other_draft, tacrolimus_draft
from cds_service.sandbox.requests import build_request_from_bundle

ROOT = Path(__file__).resolve().parent.parent
WORKERS, THREADS = 2, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}: {url}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server did not come up: {url}")


def start(args: list[str], health: str, env: dict | None = None) -> subprocess.Popen:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_until_up(health, process)
    return process


def load(
    port: int, path: str, bodies: list[bytes], seconds: float, concurrency: int, max_requests: int
) -> dict:
    """Keep-alive clients post ``bodies`` in turn for ``seconds`` (or ``max_requests``); latencies in ms."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, codes = [], {}
        while time.monotonic() < stop_at and len(mine) < max_requests // concurrency:
            body = bodies[(offset + len(mine) * concurrency) % len(bodies)]
            started = time.perf_counter()
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
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
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
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


def single_latency(port: int, path: str, bodies: list[bytes], count: int) -> float:
    """p50 of one client alone: the latency a single EHR call sees on an idle server."""
    return load(port, path, bodies, seconds=60, concurrency=1, max_requests=count)["p50"]


def new_versions(body: bytes, version: int) -> bytes:
    """The request with ``meta.versionId`` set on every prefetched resource: same findings, new content."""
    request = json.loads(body)
    for value in request["prefetch"].values():
        resources = (
            [e["resource"] for e in value.get("entry", [])]
            if value.get("resourceType") == "Bundle"
            else [value]
        )
        for resource in resources:
            resource["meta"] = {"versionId": str(version)}
    return json.dumps(request).encode()


def as_bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


PRODUCTION = "typical, production mode (JWT per call)"


def production_row(work: Path, config: Path, body: bytes, args: argparse.Namespace, env: dict) -> tuple:
    """The typical prefetch call again, on a service without --dev: a fresh EHR JWT verified per call."""

    def start_service(config_dir: Path, port: int) -> subprocess.Popen:
        command = [str(Path(sys.executable).parent / "cds-service"), "serve", "--port", str(port)]
        command += ["--workers", str(WORKERS), "--threads", str(THREADS), "--config", str(config_dir)]
        return start(command, f"http://127.0.0.1:{port}/healthz", env)

    result = production.run_scenario(
        start_service, config, work, free_port(), body, args.seconds, args.concurrency
    )
    return (PRODUCTION, len(body), result)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per scenario")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--cold-requests", type=int, default=1500, help="distinct bodies of the cold scenario"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cds-bench-"))
    processes: list[subprocess.Popen] = []
    try:
        typical = lupus_patient("bench-typical", observations=200)
        large = lupus_patient("bench-large", observations=10_000, seed=11)
        bundles = {}
        for name, resources in (("typical", typical), ("large", large)):
            bundles[name] = as_bundle(resources)
            (work / f"{name}.json").write_text(json.dumps(bundles[name]))

        config = work / "hooks"
        shutil.copytree(ROOT / "hooks", config)
        settings = yaml.safe_load((config / "settings.yaml").read_text())
        settings["feedback"]["database_url"] = f"sqlite:///{work / 'bench.sqlite3'}"
        (config / "settings.yaml").write_text(yaml.safe_dump(settings))

        fhir_port, service_port, noop_port = free_port(), free_port(), free_port()
        python = sys.executable
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        processes.append(
            start(
                [python, "-m", "bench.fhir_process", str(fhir_port), *map(str, work.glob("*.json"))],
                f"http://127.0.0.1:{fhir_port}/metadata",
                env,
            )
        )
        processes.append(
            start(
                [
                    str(Path(python).parent / "cds-service"),
                    "serve",
                    "--dev",
                    "--port",
                    str(service_port),
                    "--workers",
                    str(WORKERS),
                    "--threads",
                    str(THREADS),
                    "--config",
                    str(config),
                ],
                f"http://127.0.0.1:{service_port}/healthz",
                env,
            )
        )
        processes.append(
            start(
                [python, "-m", "bench.noop", str(noop_port), str(WORKERS), str(THREADS)],
                f"http://127.0.0.1:{noop_port}/healthz",
                env,
            )
        )

        with urllib.request.urlopen(f"http://127.0.0.1:{service_port}/cds-services") as response:
            templates = json.load(response)["services"][0]["prefetch"]
        fhir_base = f"http://127.0.0.1:{fhir_port}"

        def request(bundle: dict, draft: dict, via: str) -> bytes:
            body = build_request_from_bundle(
                {**bundle, "entry": bundle["entry"] + [{"resource": draft}]},
                [f"MedicationRequest/{draft['id']}"],
                hook="order-sign",
                via=via,
                fhir_base=fhir_base if via != "prefetch" else None,
                prefetch_templates=templates,
            )
            return json.dumps(body).encode()

        typical_body = request(bundles["typical"], tacrolimus_draft("bench-typical"), "prefetch")
        # Every request a new version of every resource: nothing a cache holds can be reused (a first call).
        cold = [new_versions(typical_body, n) for n in range(args.cold_requests)]
        scenarios = [
            ("no-op endpoint (baseline)", noop_port, [typical_body]),
            ("typical patient, full prefetch", service_port, [typical_body]),
            ("typical, new content every call", service_port, cold),
            (
                "typical patient, FHIR callback",
                service_port,
                [request(bundles["typical"], tacrolimus_draft("bench-typical"), "fhir")],
            ),
            (
                "large patient (10,000 obs), prefetch",
                service_port,
                [request(bundles["large"], tacrolimus_draft("bench-large"), "prefetch")],
            ),
            (
                "non-tacrolimus order",
                service_port,
                [request(bundles["typical"], other_draft("bench-typical"), "prefetch")],
            ),
        ]
        path = "/cds-services/tacrolimus-order-sign"
        rows = []
        for name, port, bodies in scenarios:
            load(port, path, bodies, seconds=1.0, concurrency=args.concurrency, max_requests=50)  # warm-up
            time.sleep(1.0)  # let the background writer of shown findings drain before timing one client
            alone = single_latency(port, path, bodies, count=100)
            result = load(port, path, bodies, args.seconds, args.concurrency, max_requests=100_000)
            result["alone_p50"] = alone
            time.sleep(1.0)
            rows.append((name, len(bodies[0]), result))
        rows.append(production_row(work, config, typical_body, args, env))

        baseline = rows[0][2]

        def verdict(ok: bool) -> str:
            return "PASS" if ok else "FAIL"

        def typical_target(r: dict) -> str:
            share = r["rps"] / baseline["rps"]
            return (
                f"p50 alone ≤ 10 ms: {verdict(r['alone_p50'] <= 10)}; "
                f"rps ≥ 40 % of no-op: {verdict(share >= 0.4)} ({100 * share:.0f} %)"
            )

        targets = {
            "typical patient, full prefetch": typical_target,
            "typical, new content every call": typical_target,
            "large patient (10,000 obs), prefetch": lambda r: (
                f"p50 alone ≤ 150 ms: {verdict(r['alone_p50'] <= 150)}"
            ),
            PRODUCTION: lambda r: (
                f"rps ≥ 70 % of dev mode: {verdict(r['rps'] >= 0.7 * rows[1][2]['rps'])} "
                f"({100 * r['rps'] / rows[1][2]['rps']:.0f} %)"
            ),
            "non-tacrolimus order": lambda r: (
                f"p50 alone within 2× no-op: {verdict(r['alone_p50'] <= 2 * baseline['alone_p50'])}"
            ),
        }
        print(
            f"\nservice: gunicorn {WORKERS} workers × {THREADS} threads; load: {args.concurrency} keep-alive "
            f"clients for {args.seconds:g} s per scenario, on loopback; {os.cpu_count()} cores\n"
        )
        columns = ("body KB", 8), ("req/s", 8), ("p50 ms", 8), ("p99 ms", 8), ("alone p50", 10)
        header = f"{'scenario':40} " + " ".join(f"{name:>{width}}" for name, width in columns) + "  target"
        print(header)
        print("-" * len(header))
        for name, size, r in rows:
            target = targets.get(name, lambda r: "")(r)
            bad = {k: v for k, v in r["statuses"].items() if k != 200}
            note = f"  statuses {bad}" if bad else ""
            print(
                f"{name:40} {size / 1024:8.1f} {r['rps']:8.0f} {r['p50']:8.1f} {r['p99']:8.1f} "
                f"{r['alone_p50']:10.1f}  {target}{note}"
            )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
