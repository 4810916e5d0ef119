"""The baseline: a Flask endpoint that reads the body and answers ``{"cards": []}``, same gunicorn."""

from __future__ import annotations

import sys

from flask import Flask, jsonify, request
from gunicorn.app.base import BaseApplication

from cds_service.server import gunicorn_options


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


class NoopServer(BaseApplication):
    def __init__(self, options):
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return create_noop_app()


if __name__ == "__main__":
    port, workers, threads = (int(a) for a in sys.argv[1:4])
    NoopServer(gunicorn_options("127.0.0.1", port, workers, threads)).run()
