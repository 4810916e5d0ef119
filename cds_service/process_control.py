"""The master and its workers (``cds-service serve``): who the master is, and how a worker asks it to reload.

Its own small module so that the admin page (in a worker) can send the reload signal without importing the
server that forks the workers (which imports the app, which imports the admin page).
"""

from __future__ import annotations

import os
import signal

MASTER_PID_ENV = "CDS_SERVICE_MASTER_PID"
"""Set by ``serve`` in the master; a worker whose parent has this pid may ask the master to reload."""


def mark_master() -> None:
    """In the master, before it forks: its workers then know whom to signal (``master_pid``)."""
    os.environ[MASTER_PID_ENV] = str(os.getpid())


def master_pid() -> int | None:
    """The master's pid if this process is a worker of ``cds-service serve``, else None."""
    master = os.environ.get(MASTER_PID_ENV, "")
    return int(master) if master.isdigit() and int(master) == os.getppid() else None


def ask_master_to_reload() -> None:
    """From a worker: SIGHUP the master, so every worker moves to the configuration on disk."""
    master = master_pid()
    if master is not None:
        os.kill(master, signal.SIGHUP)
