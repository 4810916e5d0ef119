"""The folder where the workers of a multi-process server keep their metrics (prometheus-client's
multi-process mode). Standard library only: it must run before prometheus-client is first imported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class MetricsFolder:
    path: Path
    owned: bool
    creator: int = field(default_factory=os.getpid)

    def cleanup(self) -> None:
        """Remove the folder we made, from the process that made it only: a forked worker that exits runs
        the same ``finally`` blocks, and must not pull the folder from under the others."""
        if self.owned and os.getpid() == self.creator:
            shutil.rmtree(self.path, ignore_errors=True)


def metrics_folder() -> MetricsFolder:
    """The folder where every worker writes its metrics (prometheus-client multi-process mode), emptied.

    ``PROMETHEUS_MULTIPROC_DIR`` if the operator set it (e.g. a Kubernetes emptyDir), else a fresh temporary
    folder removed at exit. Must run before prometheus-client is imported; works with any pre-fork server.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # from an earlier run: would be summed in
            stale.unlink(missing_ok=True)
        return MetricsFolder(path, owned=False)
    path = Path(tempfile.mkdtemp(prefix="cds-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return MetricsFolder(path, owned=True)
