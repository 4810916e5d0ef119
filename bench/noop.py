"""The baseline: a Flask endpoint that reads the body and answers ``{"cards": []}``, under the same server
settings as ``cds-service serve`` (granian, same workers and threads, start-up objects frozen alike)."""

from __future__ import annotations

import sys
from functools import partial

from flask import Flask, jsonify, request

from cds_service.server import freeze_startup_objects, granian_server
from cds_service.wsgi_bridge import BodyFirst


def create_noop_app() -> Flask:
    app = Flask(__name__)

    @app.post("/cds-services/<service_id>")
    def noop(service_id: str):
        request.get_data()
        return jsonify({"cards": []})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    return app


def load_app(threads: int) -> BodyFirst:
    app = create_noop_app()
    freeze_startup_objects()
    return BodyFirst(app, threads, 10_000_000)


if __name__ == "__main__":
    port, workers, threads = (int(a) for a in sys.argv[1:4])
    granian_server("noop", "127.0.0.1", port, workers).serve(
        target_loader=partial(load_app, threads), wrap_loader=False
    )
