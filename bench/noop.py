"""The baseline: a Flask endpoint that reads the body and answers ``{"cards": []}``, under the same server
settings as ``cds-service serve`` (granian, same workers and threads, start-up objects frozen alike)."""

from __future__ import annotations

import sys

from flask import Flask, jsonify, request

from cds_service.server import deliver_stop_signals_to_main_thread, freeze_startup_objects, granian_server


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


def load_app() -> Flask:
    deliver_stop_signals_to_main_thread()
    app = create_noop_app()
    freeze_startup_objects()
    return app


if __name__ == "__main__":
    port, workers, threads = (int(a) for a in sys.argv[1:4])
    granian_server("noop", "127.0.0.1", port, workers, threads).serve(
        target_loader=load_app, wrap_loader=False
    )
