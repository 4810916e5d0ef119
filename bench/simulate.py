"""Benchmark of ``cds-service simulate`` (issue 27): ``make bench-simulate`` or
``python -m bench.simulate [--patients 1000] [--jobs 2]``.

Writes the generated patients (``cds_service.reference_population``, another seed than the shipped
population) as one FHIR Bundle file each, then times ``cds-service simulate FOLDER --jobs N --format json`` as
an administrator runs it, start-up included, against its target: 1,000 patients in under a minute.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness import CDS_SERVICE
from cds_service.reference_population import patient

TARGET_SECONDS = 60.0
SEED = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="simulate-bench-") as folder:
        for number in range(1, args.patients + 1):
            (Path(folder) / f"patient-{number:05d}.json").write_text(json.dumps(patient(number, SEED)))
        started = time.monotonic()
        run = subprocess.run(
            [str(CDS_SERVICE), "simulate", folder, "--jobs", str(args.jobs), "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the simulate process and its workers
    report = json.loads(run.stdout)
    calls = sum(r["calls"] for r in report["runs"])
    verdict = "ok" if seconds < TARGET_SECONDS * args.patients / 1000 else "OVER TARGET"
    print(
        f"simulate {report['patients']} patients, {calls} calls, --jobs {args.jobs}: {seconds:.1f} s "
        f"({seconds / report['patients'] * 1000:.1f} ms per patient), "
        f"CPU {usage.ru_utime + usage.ru_stime:.1f} s; target < {TARGET_SECONDS:.0f} s "
        f"per 1,000 patients: {verdict}"
    )


if __name__ == "__main__":
    main()
