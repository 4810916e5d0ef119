"""``cds-service``: run the service and the tools around it."""

from __future__ import annotations

import sys

import click

from cds_service.config import ConfigError, load_config
from cds_service.logs import setup_logging


@click.group()
def main() -> None:
    """Tacrolimus-in-lupus-nephritis CDS Hooks service."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--config", "config_dir", default=None, help="Configuration folder (default: hooks/).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--dev", is_flag=True, help="Local work: no caller authentication, http FHIR servers on loopback.")
def serve(host: str, port: int, config_dir: str | None, workers: int, threads: int, dev: bool) -> None:
    """Serve the CDS services on a production WSGI server (gunicorn)."""
    from cds_service.server import serve as run  # noqa: PLC0415 - gunicorn is only needed here

    setup_logging()
    try:
        config = load_config(config_dir)
    except ConfigError as error:
        click.echo("configuration is invalid, not starting:", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    if dev:
        click.echo(
            "DEV MODE: caller authentication is OFF and plain-http FHIR servers on loopback are allowed. "
            "Never use --dev with real patient data.",
            err=True,
        )
    click.echo(f"serving {', '.join(sorted(config.services))} on http://{host}:{port}/cds-services", err=True)
    run(config, host, port, workers, threads, dev)


@main.group()
def config() -> None:
    """Check the configuration."""


@config.command("check")
@click.argument("directory", required=False)
def config_check(directory: str | None) -> None:
    """Print every problem in the configuration in DIRECTORY (default hooks/); exit 1 if there are any."""
    try:
        loaded = load_config(directory)
    except ConfigError as error:
        for problem in error.problems:
            click.echo(problem)
        sys.exit(1)
    click.echo(f"{loaded.directory}: ok ({', '.join(sorted(loaded.services))})")
