"""Run the app under granian (a Rust HTTP server with Python WSGI workers), with reload on SIGHUP.

Why granian (docs/deployment.md, "Server model"): its HTTP side is asynchronous Rust, so a client that
trickles its headers holds a few bytes of a Tokio task, never a Python thread; the body is then read on the
worker's event loop (``wsgi_bridge``), and only complete requests reach the WSGI threads. Under gunicorn's
gthread workers, a few clients trickling headers blocked every thread. It also costs less CPU per request
(no-op endpoint; the numbers are in bench/README.md).

Start-up, in order, all in the master process:

1. ``cds-service serve`` loads and checks the configuration (cli.py);
2. ``before_workers`` runs once: one-time work no worker should race for (the database schema);
3. granian binds the socket and forks the workers; each worker builds its app from the checked
   configuration, arranges to die with the master, and freezes its start-up objects out of the garbage
   collector.

On SIGHUP the master checks the files again: if they are valid, new workers start on them while the old
ones finish their in-flight requests; if not, the problems are logged and the new workers start on the last
good configuration.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from cds_service.config import Config, ConfigError, load_config
from cds_service.process_control import MASTER_PID_ENV, mark_master
from cds_service.wsgi_bridge import BodyFirst

log = logging.getLogger("cds_service.server")

_PR_SET_PDEATHSIG = 1
_M_ARENA_MAX = -8  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3


def before_workers(config: Config) -> None:
    """One-time start-up work in the master, before any worker exists to race for it.

    Add steps here (in order); none runs again on reload, which only re-checks the configuration.
    """
    from cds_service.storage import make_engine

    # The database schema, migrated to the newest revision; instances starting on other hosts at the same
    # moment wait on the migration lock (cds_service/migrations/__init__.py).
    make_engine(config.section("feedback")["database_url"]).dispose()
    preload_code()


def preload_code() -> None:
    """Import the app's code once in the master: every worker (and every worker a reload starts) is forked
    with it, so a worker is ready in the time it takes to build its app, not to import it, and the
    pages of that code are shared between workers. A reload therefore changes configuration, not code:
    restart the service to run new code. Nothing here opens a file, a socket or a thread. (The app factory's
    own module, the sandbox's with ``--dev``, is already imported: ``cli.serve`` handed it over.)"""
    import cds_service.admin
    import cds_service.api
    import cds_service.app
    import cds_service.hook_call  # noqa: F401

    freeze_startup_objects()


def die_with_parent(master_pid: int) -> None:
    """Ask the kernel to kill this worker when the master dies, even by SIGKILL.

    Without it, workers orphaned by a ``kill -9`` of the master keep their listening sockets (granian
    workers each hold one, SO_REUSEPORT) and keep serving the old code and configuration beside a new
    master. SIGKILL, not SIGTERM: nothing in the worker can delay it, and with no master left to time out a
    slow graceful stop, a worker killed this way loses no more than a worker killed -9, which the service is
    built to survive.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("could not tie the worker's life to the master", extra={"errno": ctypes.get_errno()})
    if os.getppid() != master_pid:  # the master died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


YOUNG_COLLECTION_THRESHOLD = 100_000
"""Container objects alive (allocated, not yet freed) before the cyclic collector runs; Python's default is
700. A hook call makes 5,000-20,000 dicts and lists that its end frees by reference counting, so at 700 the
collector ran during most calls, each time walking every live object of the calls in flight; at 100,000 it
runs when that many outlive their calls, or during a large record. Cyclic garbage (about 14 objects a call)
waits longer to be freed; the server clears each request's environ itself (``wsgi_bridge``), so no request's
data waits in a cycle."""


def freeze_startup_objects() -> None:
    """Move every object alive now (modules, schemas, value sets, models) out of the collector's reach:
    a full collection then scans only what requests create, not the whole start-up state. And
    collect young objects less often (``YOUNG_COLLECTION_THRESHOLD``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


class SmallHeap:
    """Keeps a worker's heap small (glibc). Its threads share two malloc arenas instead of one each, so memory
    freed by one thread serves the next request on another (a smaller resident size after many mixed calls:
    bench/README.md); and once a request with a body over ``threshold`` bytes is answered and its objects
    are freed (``forget``, which the bridge runs after sending the answer), freed pages go back to the system
    (``malloc_trim``): a large prefetch briefly needs many times its size in Python objects; so they do after
    any request every ``every`` seconds. Costs milliseconds, never while an answer waits."""

    def __init__(self, threshold: int = 1_000_000, every: float = 2.0):
        self.threshold = threshold
        self.every = every
        """Seconds between trims after ordinary requests: their freed pages, too, go back in time."""
        self._trimmed = time.monotonic()
        libc = ctypes.CDLL(None) if sys.platform == "linux" else None
        self._trim = getattr(libc, "malloc_trim", None)
        mallopt = getattr(libc, "mallopt", None)
        if mallopt is not None:
            mallopt(_M_ARENA_MAX, 2)  # threads share two heaps instead of one each (less memory left spread)
            # Blocks of 256 KB and more (bodies, a large record's lists) are mapped on their own and unmapped
            # when freed; left to glibc, this threshold climbs to 32 MB after the first large frees, and
            # such blocks then stay in the heap, scattered between small live objects.
            mallopt(_M_MMAP_THRESHOLD, 256 * 1024)

    def forget(self, environ: dict[str, Any]) -> None:
        """Free what the request left in its environ; then, after a large body, give freed pages back."""
        length = environ.get("CONTENT_LENGTH") or ""
        environ.clear()
        large = length.isdigit() and int(length) > self.threshold
        if self._trim is not None and (large or time.monotonic() - self._trimmed > self.every):
            self._trimmed = time.monotonic()
            self._trim(0)


def follow_other_instances(app: Any) -> None:
    """In a new worker: take up a configuration another instance announced (before serving, if this
    host's files have it), then keep looking in the background (``replicas.Follower``)."""
    from sqlalchemy.exc import SQLAlchemyError

    from cds_service.replicas import Follower

    follower = Follower(app.extensions["cds_runtime"])
    try:
        follower.step()
    except SQLAlchemyError as error:  # the database is away: the background looks try again
        log.warning("configuration check at start skipped", extra={"error": type(error).__name__})
    follower.start()


AppFactory = Callable[[Config], Any]
"""Builds a worker's WSGI app on a configuration: the production app, or with ``--dev`` the sandbox's."""


class Server:
    """The master: holds the last good configuration and hands it to each worker it forks."""

    def __init__(
        self, config: Config, app_factory: AppFactory, host: str, port: int, workers: int, threads: int
    ):
        self.config_snapshot = config
        self.app_factory = app_factory
        self.host, self.port = host, port
        self.workers, self.threads = workers, threads

    def reload_config(self) -> None:
        """Runs in the master on SIGHUP, before new workers are forked; a good configuration is announced
        to the other instances through the shared database (``replicas``), so the reload reaches them too."""
        from cds_service.replicas import announce_to_database, config_version

        try:
            self.config_snapshot = load_config(self.config_snapshot.directory)
            log.info("configuration reloaded", extra={"services": sorted(self.config_snapshot.services)})
        except ConfigError as error:
            log.error(
                "configuration reload refused; serving the last good one", extra={"problems": error.problems}
            )
            return
        database = self.config_snapshot.section("feedback")["database_url"]
        announce_to_database(database, config_version(self.config_snapshot))

    def load_app(self) -> BodyFirst:
        """Runs in each new worker (forked from the master, so it sees the master's current snapshot)."""
        die_with_parent(int(os.environ[MASTER_PID_ENV]))
        app = self.app_factory(self.config_snapshot)
        follow_other_instances(app)
        freeze_startup_objects()
        limit = self.config_snapshot.section("server")["max_body_bytes"]
        return BodyFirst(app, self.threads, limit, forget=SmallHeap().forget)

    def run(self) -> None:
        wait_for_port(self.host, self.port)
        mark_master()
        before_workers(self.config_snapshot)
        server = granian_server("cds_service", self.host, self.port, self.workers)
        server.on_reload(self.reload_config)
        server.serve(target_loader=self.load_app, wrap_loader=False)


def granian_server(name: str, host: str, port: int, workers: int) -> Any:
    """The production server settings; the benchmark runs its no-op baseline under the same ones."""
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server as Granian

    return Granian(
        name,  # only a label: the app comes from ``target_loader``
        address=host,
        port=port,
        interface=Interfaces.RSGI,  # the app is a WSGI one behind wsgi_bridge.BodyFirst (its ``threads``)
        workers=workers,
        # Connections each worker holds at once (idle and slow ones included). Each worker has its own queue
        # (SO_REUSEPORT): once one is full, new connections the kernel hashes to it wait, so keep it high;
        # only ``threads`` requests run Python at a time whatever this is.
        backlog=2048,
        backpressure=1024,
        http=HTTPModes.http1,
        http1_settings=HTTP1Settings(header_read_timeout=10_000),  # a client gets 10 s to send its headers
        log_level=LogLevels.warning,
        log_access=False,  # the app logs one PHI-free line per call; URLs are not needed twice
        respawn_failed_workers=True,  # a worker that crashes is replaced
        respawn_interval=1.0,  # on reload, old workers get 1 s of overlap with the new ones before stopping
        workers_kill_timeout=20,  # a worker that will not finish its requests is killed after 20 s
        process_name=None,
    )


class PortInUse(RuntimeError):
    """Another process listens on the address: the service does not start beside it."""


def wait_for_port(host: str, port: int, seconds: float = 10.0) -> None:
    """Return once nothing listens on ``host:port``; PortInUse after ``seconds``.

    granian's workers open the port with SO_REUSEPORT, which would let a new master share it silently with
    anything else of this user (such as workers a killed master left behind, still on the old code). This
    plain bind refuses to share; the wait covers workers that are finishing their last requests after their
    master died (see ``die_with_parent``).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + seconds
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
            try:
                probe.bind((host, port))
                return
            except OSError as error:
                if time.monotonic() > deadline:
                    why = (error.strerror or str(error)).lower()
                    raise PortInUse(f"cannot listen on {host}:{port}: {why}") from None
        time.sleep(0.2)


def serve(config: Config, app_factory: AppFactory, host: str, port: int, workers: int, threads: int) -> None:
    Server(config, app_factory, host, port, workers, threads).run()
