"""A proposed configuration simulated before it is loaded: what ``/admin`` shows next to the reload button.

The proposal is the configuration folder on disk (what a reload would load), another folder on this machine,
or an uploaded ``settings.yaml`` laid over a copy of the folder in use. It is checked as a reload checks it
and simulated against the running configuration on the synthetic reference population shipped with the
service (``population.reference_population``: the production image has no fixtures), in this process, with
a throwaway alert memory; nothing is written to the service's database and nothing is loaded.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cds_service import population, simulation
from cds_service.config import Config, ConfigError, load_config

MAX_UPLOAD_BYTES = 1_000_000


@contextmanager
def proposed_folder(
    current: Path, settings_yaml: bytes | None = None, folder: str | None = None
) -> Iterator[Path]:
    """The folder holding the proposal: ``folder``, a copy of ``current`` with ``settings_yaml``, or
    ``current`` itself (the files on disk)."""
    if settings_yaml is not None:
        if len(settings_yaml) > MAX_UPLOAD_BYTES:
            raise ConfigError([f"settings.yaml: the upload is larger than {MAX_UPLOAD_BYTES} bytes"])
        with tempfile.TemporaryDirectory(prefix="cds-staged-") as scratch:
            copy = Path(scratch) / "hooks"
            shutil.copytree(current, copy)
            (copy / "settings.yaml").write_bytes(settings_yaml)
            yield copy
        return
    if folder:
        if not Path(folder).is_dir():
            raise ConfigError([f"{folder}: not a folder on this machine"])
        yield Path(folder)
        return
    yield current


def preview(running: Config, proposed: Config, tenant: str | None = None) -> dict[str, Any]:
    """The reference population under both: ``compare`` of ``simulation.as_json`` plus its size."""
    patients = population.reference_population()
    setups = [simulation.Setup(running, tenant), simulation.Setup(proposed, tenant)]
    report = simulation.as_json(simulation.simulate(patients, setups, population.watched_drafts()))
    return {"patients": report["patients"], "tenant": tenant, **report["compare"]}


def stage(
    running: Config, settings_yaml: bytes | None = None, folder: str | None = None, tenant: str | None = None
) -> dict[str, Any]:
    """Check and simulate a proposal; ``{"problems": [...]}`` when it would be refused by a reload."""
    try:
        with proposed_folder(Path(running.directory), settings_yaml, folder) as where:
            proposed = load_config(where)
            label = "the uploaded settings.yaml" if settings_yaml is not None else str(where)
            reloadable = settings_yaml is None and not folder  # the files a reload would load
            return {"source": label, "reloadable": reloadable, **preview(running, proposed, tenant)}
    except ConfigError as error:
        return {"problems": error.problems}
