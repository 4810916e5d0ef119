"""A FHIR server for the benchmark's callback scenario, in its own process: ``python -m bench.fhir_process
PORT BUNDLE.json...``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from werkzeug.serving import make_server

from cds_service.sandbox.fhir_server import create_fhir_app
from cds_service.sandbox.store import FhirStore

if __name__ == "__main__":
    port = int(sys.argv[1])
    store = FhirStore([json.loads(Path(p).read_text()) for p in sys.argv[2:]])
    make_server("127.0.0.1", port, create_fhir_app(store), threaded=True).serve_forever()
