"""Run the app under gunicorn (a production WSGI server), with reload on SIGHUP that never takes it down.

The master process loads and checks the configuration; workers are forked from it and build their app from
that checked configuration. On SIGHUP the master checks the files again: if they are valid, new workers start
on them while the old ones finish their in-flight requests; if not, the problems are logged and the new
workers start on the last good configuration.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from cds_service.app import create_app
from cds_service.config import Config, ConfigError, load_config
from cds_service.storage import make_engine

log = logging.getLogger("cds_service.server")


class Server(BaseApplication):
    def __init__(self, config: Config, dev: bool, options: dict[str, Any]):
        self.config_snapshot = config
        self.dev = dev
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        self.cfg.set("on_reload", self._on_reload)

    def _on_reload(self, arbiter) -> None:  # runs in the master on SIGHUP
        try:
            self.config_snapshot = load_config(self.config_snapshot.directory)
            log.info("configuration reloaded", extra={"services": sorted(self.config_snapshot.services)})
        except ConfigError as error:
            log.error(
                "configuration reload refused; serving the last good one", extra={"problems": error.problems}
            )

    def load(self):
        return create_app(config=self.config_snapshot, dev=self.dev)


def gunicorn_options(host: str, port: int, workers: int, threads: int) -> dict[str, Any]:
    """The production server settings; the benchmark runs its no-op baseline under the same ones."""
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": None,  # the app logs one PHI-free line per call; URLs are not needed twice
        "errorlog": "-",
        "loglevel": "warning",
        "limit_request_line": 8190,
        "limit_request_field_size": 16380,
        "preload_app": False,
        # gunicorn >= 25.1 opens a control socket under $HOME by default; the service does not use it, and in
        # the container (HOME not writable) it logged "Control server error: Permission denied" at each start.
        "control_socket_disable": True,
    }


def serve(config: Config, host: str, port: int, workers: int, threads: int, dev: bool) -> None:
    # The master creates the database schema once, before any worker exists to race for it.
    make_engine(config.section("feedback")["database_url"]).dispose()
    Server(config, dev, gunicorn_options(host, port, workers, threads)).run()
