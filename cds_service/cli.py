"""``cds-service``: run the service and the tools around it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import click

from cds_service.config import Config, ConfigError, load_config
from cds_service.hook_names import HOOKS, PATIENT_VIEW
from cds_service.logs import setup_logging

log = logging.getLogger(__name__)


def exit_unless_port_free(host: str, port: int, wait_seconds: float = 0.0) -> None:
    """One clear line and exit status 2 when ``host:port`` stays taken (``server.wait_for_port``).

    Checked before anything says "serving", so a busy port never prints a misleading start.
    """
    from cds_service.server import PortInUse, wait_for_port

    try:
        wait_for_port(host, port, wait_seconds)
    except PortInUse as error:
        click.echo(f"error: {error}; stop what runs there or choose another --port", err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """Tacrolimus-in-lupus-nephritis CDS Hooks service."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="CDS_HOST")
@click.option("--port", default=8080, show_default=True, type=int, envvar="CDS_PORT")
@click.option("--config", "config_dir", default=None, help="Configuration folder (default: hooks/).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), envvar="CDS_WORKERS")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64), envvar="CDS_THREADS")
@click.option(
    "--dev", is_flag=True, help="Local work: no caller authentication, http FHIR servers on loopback."
)
@click.option(
    "--allow-dev-on-network",
    is_flag=True,
    help="Let --dev listen on a non-loopback --host (anyone who reaches it calls without authentication).",
)
def serve(
    host: str,
    port: int,
    config_dir: str | None,
    workers: int,
    threads: int,
    dev: bool,
    allow_dev_on_network: bool,
) -> None:
    """Serve the CDS services on a production HTTP server (granian, WSGI workers).

    Options may also come from the environment: CDS_HOST, CDS_PORT, CDS_WORKERS, CDS_THREADS (and
    CDS_DATABASE_URL, CDS_PUBLIC_BASE_URL, CDS_ADMIN_TOKEN, CDS_CONFIG_DIR for the configuration).
    """
    if dev and not allow_dev_on_network and not is_loopback(host):
        click.echo(
            f"--dev turns caller authentication off; it listens on loopback only, not on {host!r}. "
            "Use --host 127.0.0.1, or add --allow-dev-on-network if every host that can reach it is trusted.",
            err=True,
        )
        sys.exit(2)
    setup_logging()
    try:
        config = load_config(config_dir)
        if dev and (own := dev_base_url(config, host, port)):
            os.environ[PUBLIC_BASE_URL_ENV] = own  # the workers and every reload read it too
            config = load_config(config_dir)
    except ConfigError as error:
        click.echo("configuration is invalid, not starting:", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    exit_unless_port_free(host, port, wait_seconds=10.0)  # workers of a stopped server may still finish
    from cds_service.metrics_folder import metrics_folder

    metrics_dir = metrics_folder()  # before prometheus-client is imported: workers count into this folder
    try:
        from cds_service.storage import writable_problem

        unwritable = writable_problem(config.section("feedback")["database_url"])
        if unwritable:
            click.echo(f"error: the database cannot be written, not starting: {unwritable}", err=True)
            sys.exit(2)
        if not dev and (warning := loopback_base_url_warning(config)):
            log.warning(warning)
        base = f"http://{url_host(host)}:{port}"
        if dev:
            click.echo(dev_mode_warning(config), err=True)
        click.echo(f"serving {', '.join(sorted(config.services))} on {base}/cds-services", err=True)
        if dev:
            for name, path in DEV_PAGES:
                click.echo(f"  {name:<8} {base}{path}", err=True)
        from cds_service.server import PortInUse
        from cds_service.server import serve as run

        try:
            run(config, app_factory(dev), host, port, workers, threads)
        except PortInUse as error:
            click.echo(f"error: {error}; stop what runs there or choose another --port", err=True)
            sys.exit(2)
    finally:
        metrics_dir.cleanup()


PUBLIC_BASE_URL_ENV = "CDS_PUBLIC_BASE_URL"
DEV_PAGES = (("sandbox", "/sandbox"), ("admin", "/admin"), ("docs", "/docs"))
"""What ``serve --dev`` prints under "serving": the pages a newcomer opens first."""


def url_host(host: str) -> str:
    """``host`` as in a URL: a listen-everywhere address is reached on loopback, IPv6 in brackets."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def dev_base_url(config: Config, host: str, port: int) -> str | None:
    """With ``--dev``: this service's own address, for ``server.public_base_url``, when nobody set one.

    The bundled configuration names http://127.0.0.1:8080; on another ``--port`` the cards' ``source.url``,
    the course-app links and ``/admin`` would point at a port nothing listens on. A URL set in the
    environment, or one that is not on loopback, is the operator's choice and stays.
    """
    configured = str(config.section("server").get("public_base_url") or "")
    if os.environ.get(PUBLIC_BASE_URL_ENV) or not is_loopback(urlsplit(configured).hostname or "localhost"):
        return None
    own = f"http://{url_host(host)}:{port}"
    return None if configured.rstrip("/") == own else own


def dev_mode_warning(config: Config) -> str:
    """The one DEV MODE line of a start (the workers say nothing more about it)."""
    from cds_service.admin import DEV_TOKEN, dev_token_in_use

    admin = f", /admin accepts the fixed token {DEV_TOKEN!r}" if dev_token_in_use(config, dev=True) else ""
    return (
        "DEV MODE: caller authentication is OFF, plain-http FHIR servers on loopback are allowed"
        f"{admin}. Never use --dev with real patient data."
    )


def app_factory(dev: bool) -> Callable[[Config], Any]:
    """What each worker of ``serve`` builds: the production app, or with ``--dev`` the app with the sandbox
    composed in (the only place that does so; the production image leaves the sandbox out). The start-up
    line said DEV MODE once already, so the workers do not say it again."""
    if dev:
        from cds_service.sandbox.web import create_dev_app

        return lambda config: create_dev_app(config=config, announced=True)
    from cds_service.app import create_app

    return lambda config: create_app(config=config)


def loopback_base_url_warning(config: Config) -> str | None:
    """The start-up warning of a production service whose ``server.public_base_url`` is on loopback.

    The cards' ``source.url`` (its default is that URL + /docs) and the links built from it would point at
    the EHR user's own machine (rules.md § Card contract); None when the URL names another host.
    """
    url = str(config.section("server").get("public_base_url") or "")
    host = urlsplit(url).hostname or ""
    if not host or not is_loopback(host):
        return None
    return (
        f"server.public_base_url is {url} (loopback): card source.url and links will point at loopback, "
        "not at this service; set server.public_base_url (or CDS_PUBLIC_BASE_URL) to the URL EHRs call"
    )


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1 (``0.0.0.0`` and every other address are reachable from outside)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@main.group()
def db() -> None:
    """The database of feedback, shown findings and seen JWT ids."""


@db.command("upgrade")
@click.option("--config", "config_dir", default=None, help="Configuration folder (default: hooks/).")
def db_upgrade(config_dir: str | None) -> None:
    """Bring the database schema to the newest revision (`serve` also does this at start)."""
    from cds_service.migrations import current, head
    from cds_service.storage import make_engine

    setup_logging()
    config = _config_or_exit(config_dir)
    engine = make_engine(config.section("feedback")["database_url"])
    with engine.connect() as connection:
        click.echo(f"database schema at revision {current(connection)} (newest: {head()})")
    engine.dispose()


@main.group("alert-memory")
def alert_memory() -> None:
    """What clinicians were already shown, so the same alert is not repeated (docs/rules.md)."""


@alert_memory.command("clear")
@click.option("--config", "config_dir", default=None, help="Configuration folder (default: hooks/).")
def alert_memory_clear(config_dir: str | None) -> None:
    """Forget every finding shown, for every patient: the next call shows them all again (for testers)."""
    from cds_service.alert_memory import AlertMemory, longest_window
    from cds_service.storage import make_engine

    setup_logging()
    config = _config_or_exit(config_dir)
    engine = make_engine(config.section("feedback")["database_url"])
    try:
        forgotten = AlertMemory(engine, keep=longest_window(config)).forget_all()
    finally:
        engine.dispose()
    click.echo(f"alert memory cleared: {forgotten} remembered finding(s) forgotten")


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


@main.group()
def valuesets() -> None:
    """The drug-class value sets."""


@valuesets.command("report")
@click.option("--directory", type=click.Path(exists=True, file_okay=False), default=None)
def valuesets_report(directory: str | None) -> None:
    """Per drug class: codes by term type and source, names, problems; exit 1 if there is a problem."""
    from pathlib import Path

    from cds_service.terminology import DEFAULT_DIR
    from cds_service.valueset_report import build_report, render

    reports = build_report(Path(directory) if directory else DEFAULT_DIR)
    click.echo(render(reports))
    if any(r.problems for r in reports):
        sys.exit(1)


REPORT_FORMATS = ("table", "csv", "json")


def _config_or_exit(directory: str | None):
    """The checked configuration, or its problems on stderr and exit status 2."""
    try:
        return load_config(directory)
    except ConfigError as error:
        click.echo("configuration is invalid:", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)


@main.group()
def feedback() -> None:
    """Clinicians' feedback on the cards."""


@feedback.command("report")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]), help="Count from this day (UTC).")
@click.option("--format", "fmt", type=click.Choice(list(REPORT_FORMATS)), default="table", show_default=True)
@click.option("--tenant", default=None, help="Only this tenant's cards and feedback.")
@click.option("--config", "config_dir", default=None, help="Configuration folder (default: hooks/).")
def feedback_report(since, fmt: str, tenant: str | None, config_dir: str | None) -> None:
    """Per service and finding id: cards shown, accepted, overridden (with reasons), accept rate."""
    from cds_service.report import FORMATS, store_statistics  # imported here: keeps `serve` start-up lean
    from cds_service.storage import Store, make_engine

    config = _config_or_exit(config_dir)
    store = Store(make_engine(config.section("feedback")["database_url"]))
    known = set(config.section("tenants") or {}) | store.tenants()
    if tenant is not None and tenant not in known:
        listed = ", ".join(sorted(known)) or "none (no tenant is configured, and the database has none)"
        click.echo(f"error: unknown tenant {tenant!r}; known tenants: {listed}", err=True)
        sys.exit(2)
    stats = store_statistics(store, since=since.date() if since else None, tenant=tenant)
    click.echo(FORMATS[fmt](stats).rstrip("\n"))


@main.command()
@click.argument("source", metavar="FIXTURE_OR_REQUEST.json")
@click.option("--service", "service_id", default=None, help="Default: the request's hook, else order-sign.")
@click.option("--tenant", default=None, help="Apply this tenant's overrides (tenants: in settings.yaml).")
@click.option("--config", "config_dir", default=None, help="Configuration folder (default: hooks/).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--dev", is_flag=True, help="Allow a plain-http fhirServer on loopback in the request.")
@click.option(
    "--finding", "findings", multiple=True, metavar="ID", help="Only this finding (repeatable), e.g. N13."
)
def explain(
    source: str,
    service_id: str | None,
    tenant: str | None,
    config_dir: str | None,
    fmt: str,
    dev: bool,
    findings: tuple[str, ...],
) -> None:
    """Why each catalog finding fired or not for one request: a fixture name, a Bundle or a request file."""
    from cds_service import explain as why
    from cds_service.protocol import ProtocolError

    config = _config_or_exit(config_dir)
    try:
        only = why.pick_findings(findings)
        wanted = service_id or why.request_service(source)
        service = why.pick_service(config, wanted, why.request_hook(source))
        source_request = why.load_source(source, service.hook)
        with why.fixture_api_in_process(source_request) as (source_request, in_process):
            answer, verdicts, settings = why.explain(  # the in-process fixture server is on loopback
                source_request, config, service, tenant=tenant, dev=dev or in_process, only=only
            )
    except why.ExplainError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except ProtocolError as error:
        click.echo(f"error: the request is not a valid {service.hook} call: {error.to_json()}", err=True)
        sys.exit(2)
    render = why.as_json if fmt == "json" else why.as_text
    click.echo(render(source_request, service, tenant, answer, verdicts, settings))
    if hint := why.refusal_hint(answer, source_request.body, dev):
        click.echo(f"hint: {hint}", err=True)


@main.group()
def fixtures() -> None:
    """The fixture patients in fhir_fixtures/."""


@fixtures.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Keep it on loopback: no authentication")
@click.option("--port", default=8090, show_default=True, type=int)
def fixtures_serve(host: str, port: int) -> None:
    """Serve every fixture patient as a read-only FHIR R4 API (dates moved to today) until Ctrl-C."""
    import time

    from cds_service.sandbox import FhirStore, serve_in_thread

    exit_unless_port_free(host, port)
    store = FhirStore.from_fixtures()
    with serve_in_thread(store, host, port, log_requests=True) as base_url:
        click.echo(f"fixture FHIR server on {base_url} ({base_url}/metadata); Ctrl-C stops it", err=True)
        click.echo(f"SMART (development, no login): {base_url}/.well-known/smart-configuration", err=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopped", err=True)


@main.group()
def sandbox() -> None:
    """Try the service on the fixture patients without an EHR."""


@sandbox.command("list")
def sandbox_list() -> None:
    """Every fixture with its one-line description and the findings it must produce."""
    from cds_service.sandbox.runner import fixture_rows

    rows = fixture_rows()
    width = max(len(name) for name, _, _ in rows)
    for name, description, expected in rows:
        click.echo(f"{name:<{width}}  {description}  [{', '.join(expected) or 'no cards'}]")


@sandbox.command("links")
@click.option("--sandbox", "sandbox_url", default=None, help="Default: https://sandbox.cds-hooks.org/")
@click.option("--fhir", "fhir_url", default=None, help="Default: http://localhost:8080/sandbox/fhir")
@click.option("--discovery", default=None, help="Default: http://localhost:8080/cds-services")
@click.option("--markdown", is_flag=True, help="As the rows of the table in docs/integration.md.")
def sandbox_links(
    sandbox_url: str | None, fhir_url: str | None, discovery: str | None, markdown: bool
) -> None:
    """A link per fixture that opens the official CDS Hooks Sandbox on that patient, our services added."""
    from cds_service.sandbox import official

    rows = official.links(
        sandbox_url or official.HOSTED_SANDBOX,
        fhir_url or official.LOCAL_FHIR,
        discovery or official.LOCAL_DISCOVERY,
    )
    if markdown:
        for name, patient, link in rows:
            click.echo(f"| `{name}` | `{patient}` | [{official.screen(name)}]({link}) |")
        return
    width = max(len(name) for name, _, _ in rows)
    for name, _, link in rows:
        click.echo(f"{name:<{width}}  {link}")


@sandbox.command("run")
@click.argument("fixture")
@click.option(
    "--hook",
    type=click.Choice(HOOKS),
    default=None,
    help=f"Default: the fixture's own hook ({PATIENT_VIEW} for the pv-* patients), else order-select. "
    f"{PATIENT_VIEW} calls tacrolimus-monitoring: the chart is opened, no order is drafted.",
)
@click.option(
    "--via",
    type=click.Choice(["prefetch", "fhir"]),
    default="prefetch",
    show_default=True,
    help="prefetch: the data in the request; fhir: fhirServer + token, the service fetches it.",
)
@click.option("--url", default=None, help="A running service (http://127.0.0.1:8080); default: in-process.")
@click.option(
    "--fhir-base",
    default=None,
    help="With --via fhir: the FHIR server the service reads (default with --url: <url>/sandbox/fhir, "
    "mounted by `serve --dev`; in-process: a fixture server on loopback).",
)
@click.option("--config", "config_dir", default=None, help="Config of in-process runs (default hooks/)")
@click.option("--json", "as_json", is_flag=True, help="Print the raw request and response as JSON.")
def sandbox_run(
    fixture: str,
    hook: str | None,
    via: str,
    url: str | None,
    fhir_base: str | None,
    config_dir: str | None,
    as_json: bool,
) -> None:
    """Send FIXTURE's tacrolimus order (or, with --hook patient-view, the opening of its chart) to the service
    and print the cards."""
    import json

    from cds_service.sandbox.runner import RunError, render_exchange, run_exchange

    try:
        exchange = run_exchange(fixture, hook, via, url=url, fhir_base=fhir_base, config_dir=config_dir)
    except (RunError, ConfigError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(exchange.as_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(render_exchange(exchange, color=sys.stdout.isatty()))
    if exchange.status != 200:
        sys.exit(1)


@main.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option(
    "--config", "config_dir", default=None, help="Baseline configuration folder (default: the one in use)."
)
@click.option(
    "--compare",
    "compare_to",
    default=None,
    metavar="DIR|tenant:NAME",
    help="The proposed configuration: a folder, or tenant:NAME for a tenant's overrides of the baseline.",
)
@click.option("--tenant", default=None, help="Apply this tenant's overrides to the baseline.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "csv", "json"]), default="text", show_default=True
)
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 64), help="Processes to use.")
@click.option(
    "--drafts",
    "drafts_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The watched drugs drafted for the co-prescribing services: a JSON list of "
    '{"code": RxNorm code or "" (by name), "display": name, "dosage": text, "system": optional} '
    "(default: data/simulation-drafts.json).",
)
def simulate(
    paths: tuple[str, ...],
    config_dir: str | None,
    compare_to: str | None,
    tenant: str | None,
    fmt: str,
    jobs: int,
    drafts_file: str | None,
) -> None:
    """Run the services over a population and count the cards: PATH is a folder of FHIR Bundles (one patient
    each), `fixtures` or `reference` (the synthetic population shipped with the service).

    Per service and hook: calls, answers with cards, cards per call, info-only share and each finding's firing
    rate; with --compare, the difference per finding and the patients whose highest indicator changed. Nothing
    is written to the service's database.
    """
    from pathlib import Path

    from cds_service import population, simulation

    try:
        patients = [p for source in paths for p in population.load(source)]
        drugs = population.watched_drafts(Path(drafts_file) if drafts_file else None)
        setups = [simulation.load_setup(config_dir, tenant)]
        if compare_to is not None:
            if compare_to.startswith("tenant:"):
                setups.append(simulation.Setup(setups[0].config, compare_to.removeprefix("tenant:")))
                simulation.load_setup(config_dir, setups[1].tenant)  # the tenant must exist
            else:
                setups.append(simulation.load_setup(compare_to, tenant))
    except population.PopulationError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    except ConfigError as error:
        click.echo("configuration is invalid:", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(2)
    if sys.stderr.isatty() and len(patients) >= 50:
        with click.progressbar(length=len(patients), label="simulating", file=sys.stderr) as bar:
            results = simulation.simulate(patients, setups, drugs, jobs=jobs, progress=bar.update)
    else:
        results = simulation.simulate(patients, setups, drugs, jobs=jobs)
    click.echo(simulation.RENDERERS[fmt](results).rstrip("\n"))
