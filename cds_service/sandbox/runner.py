"""``cds-service sandbox run``: send a fixture patient's order to the service and print the cards readably.

The runner is an EHR on the command line: it reads the service's discovery (for the prefetch templates it
really publishes), builds the request from the fixture with ``build_request``, calls the service in-process
(Flask test client) or at a URL, and prints what a clinician would see.
"""

from __future__ import annotations

import atexit
import copy
import re
import shutil
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

import click
import requests
from markdown_it import MarkdownIt

from cds_service.fixtures import manifest
from cds_service.hook_names import opens_chart
from cds_service.sandbox.fhir_server import serve_in_thread
from cds_service.sandbox.requests import HOOKS, build_request
from cds_service.sandbox.store import FhirStore

FINDINGS_EXTENSION = "org.example.tacrolimus-cds.findings"
MOUNTED_FHIR_PATH = "/sandbox/fhir"
"""Where ``serve --dev`` mounts the fixture FHIR API (see ``sandbox.web``)."""
INDICATOR_COLOURS = {"critical": "red", "warning": "yellow", "info": "blue"}
REDACTED = "<redacted>"

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_MARKDOWN = MarkdownIt("commonmark", {"html": False})


class RunError(RuntimeError):
    """The exchange could not be made (unknown fixture, no service for the hook, unreachable URL)."""


# ---------------------------------------------------------------------------------------------------------
# Talking to the service: in-process or over HTTP, the same two calls.


class Transport(Protocol):
    where: str

    def get(self, path: str) -> tuple[int, Any]: ...

    def post(self, path: str, body: Mapping) -> tuple[int, Any]: ...


class InProcess:
    """The service as a Flask test client on a throw-away database: a dry run adds nothing to statistics."""

    where = "in-process"

    def __init__(self, config_dir: str | None = None):
        from cds_service.app import create_app
        from cds_service.config import load_config

        config = load_config(config_dir)
        scratch = tempfile.mkdtemp(prefix="cds-sandbox-")
        # Registered before the app exists, so it runs after the app's own exit hooks have written their rows.
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        feedback = {
            **config.settings["feedback"],
            "database_url": f"sqlite:///{Path(scratch) / 'dry-run.sqlite3'}",
        }
        config = replace(config, settings={**config.settings, "feedback": feedback})
        self.client = create_app(config=config, dev=True).test_client()

    def get(self, path: str) -> tuple[int, Any]:
        response = self.client.get(path)
        return response.status_code, response.get_json(silent=True)

    def post(self, path: str, body: Mapping) -> tuple[int, Any]:
        response = self.client.post(path, json=body)
        return response.status_code, response.get_json(silent=True)


class OverHttp:
    """A running service at ``base_url`` (``http://host:port``, without ``/cds-services``)."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/").removesuffix("/cds-services")
        self.where = self.base_url
        self.timeout = timeout
        self.session = requests.Session()

    def _answer(self, response: requests.Response) -> tuple[int, Any]:
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"error": f"not JSON: {response.text[:200]!r}"}

    def get(self, path: str) -> tuple[int, Any]:
        try:
            return self._answer(self.session.get(self.base_url + path, timeout=self.timeout))
        except requests.RequestException as error:
            raise RunError(f"cannot reach {self.base_url + path}: {error}") from None

    def post(self, path: str, body: Mapping) -> tuple[int, Any]:
        try:
            return self._answer(self.session.post(self.base_url + path, json=body, timeout=self.timeout))
        except requests.RequestException as error:
            raise RunError(f"cannot reach {self.base_url + path}: {error}") from None


# ---------------------------------------------------------------------------------------------------------
# One exchange


@dataclass
class Exchange:
    fixture: str
    hook: str
    via: str
    where: str
    service_id: str
    request: dict
    status: int
    response: Any
    expected: list[str] = field(default_factory=list)
    expected_known: bool = True
    """False when the manifest lists no expectation for this hook (an order fixture sent as patient-view)."""

    @property
    def cards(self) -> list[dict]:
        body = self.response if isinstance(self.response, Mapping) else {}
        cards = body.get("cards")
        return cards if isinstance(cards, list) else []

    def finding_ids(self) -> list[str]:
        return [
            item.get("id", "?")
            for card in self.cards
            for item in card.get("extension", {}).get(FINDINGS_EXTENSION, [])
        ]

    @property
    def endpoint(self) -> str:
        path = f"/cds-services/{self.service_id}"
        return f"{path} (in-process)" if self.where == InProcess.where else self.where + path

    def as_json(self) -> dict:
        """The raw exchange, with the FHIR access token replaced (tokens are never printed or logged)."""
        sent = copy.deepcopy(self.request)
        if isinstance(sent.get("fhirAuthorization"), dict) and "access_token" in sent["fhirAuthorization"]:
            sent["fhirAuthorization"]["access_token"] = REDACTED
        return {
            "fixture": self.fixture,
            "service": self.endpoint,
            "request": sent,
            "response": {"status": self.status, "body": self.response},
        }


def fixture_rows() -> list[tuple[str, str, list[str]]]:
    """(name, one-line description, expected finding ids) of every manifest fixture, sorted by name; the
    description of a fixture sent by another hook than the order hooks says which (``patient-view``)."""
    return [
        (
            name,
            entry.get("description", "") + (f" ({entry['hook']})" if entry.get("hook") else ""),
            list(entry.get("expected", ())),
        )
        for name, entry in sorted(manifest().items())
    ]


def discover_service(transport: Transport, hook: str, service_id: str | None = None) -> dict:
    """The service entry from ``GET /cds-services`` that answers ``hook``: ``service_id`` if given (a
    co-prescribing fixture names its services), else the first listed (the tacrolimus service)."""
    status, body = transport.get("/cds-services")
    if status != 200 or not isinstance(body, Mapping):
        raise RunError(f"discovery at {transport.where}/cds-services answered {status}")
    for service in body.get("services", []):
        if service.get("hook") == hook and service_id in (None, service.get("id")):
            return service
    wanted = f"service {service_id!r} for hook {hook!r}" if service_id else f"service for hook {hook!r}"
    raise RunError(f"no {wanted} at {transport.where}/cds-services")


@contextmanager
def _fixture_fhir_server(fixture: str, today: date) -> Iterator[str]:
    with serve_in_thread(FhirStore.from_fixtures([fixture], today)) as base_url:
        yield base_url


def _check_fhir_reachable(fhir_base: str) -> None:
    try:
        answer = requests.get(fhir_base.rstrip("/") + "/metadata", timeout=10)
    except requests.RequestException as error:
        raise RunError(f"FHIR server {fhir_base} is not reachable: {error}") from None
    if answer.status_code != 200:
        raise RunError(
            f"FHIR server {fhir_base} answered {answer.status_code} to /metadata "
            "(is the service running with --dev? pass --fhir-base otherwise)"
        )


def run_exchange(
    fixture: str,
    hook: str | None = None,
    via: str = "prefetch",
    url: str | None = None,
    fhir_base: str | None = None,
    config_dir: str | None = None,
) -> Exchange:
    """Build the fixture's request for ``hook``, send it to the service (in-process or at ``url``), answer.

    ``via="fhir"`` sends ``fhirServer`` instead of prefetch. In-process, the fixture's FHIR server runs on
    loopback for the duration; with ``url``, ``fhir_base`` (default ``<url>/sandbox/fhir``, the API that
    ``serve --dev`` mounts) must be a server the remote service can reach.
    """
    entry = manifest().get(fixture)
    if entry is None:
        raise RunError(f"unknown fixture {fixture!r}; `cds-service sandbox list` shows them")
    hook = hook or entry.get("hook") or "order-select"  # a patient-view fixture opens the chart
    if hook not in HOOKS:
        raise RunError(f"unsupported hook {hook!r} (supported: {', '.join(HOOKS)})")
    if via not in ("prefetch", "fhir"):
        raise RunError(f"unsupported via {via!r} (supported: prefetch, fhir)")
    transport: Transport = OverHttp(url) if url else InProcess(config_dir)
    service = discover_service(transport, hook, (entry.get("services") or {}).get(hook))
    today = datetime.now().astimezone().date()  # the same day for the request and the FHIR server's data

    server: AbstractContextManager[str | None]
    if via == "fhir" and url:
        fhir_base = fhir_base or transport.base_url + MOUNTED_FHIR_PATH  # type: ignore[attr-defined]
        _check_fhir_reachable(fhir_base)
        server = nullcontext(fhir_base)
    elif via == "fhir":
        server = _fixture_fhir_server(fixture, today) if not fhir_base else nullcontext(fhir_base)
    else:
        server = nullcontext(None)

    with server as base:
        request = build_request(
            fixture,
            hook=hook,
            via=via,
            fhir_base=base,
            prefetch_templates=service.get("prefetch") or {},
            today=today,
        )
        status, response = transport.post(f"/cds-services/{service['id']}", request)
    return Exchange(
        fixture=fixture,
        hook=hook,
        via=via,
        where=transport.where,
        service_id=service["id"],
        request=request,
        status=status,
        response=response,
        expected=list(entry.get("expected", ())) if hook_matches(entry, hook) else [],
        expected_known=hook_matches(entry, hook),
    )


def hook_matches(entry: Mapping, hook: str) -> bool:
    """Whether the manifest's expected findings are for ``hook``: patient-view fixtures for patient-view,
    the others for the order hooks."""
    return opens_chart(entry.get("hook")) == opens_chart(hook)


# ---------------------------------------------------------------------------------------------------------
# Printing cards for a terminal


def clean(text: object) -> str:
    """Service text without control characters, so a card cannot move the cursor or retitle the terminal."""
    return _CONTROL.sub("", str(text))


def _inline(tokens: list, color: bool) -> str:
    out: list[str] = []
    links: list[str] = []
    for token in tokens:
        kind = token.type
        if kind == "text":
            out.append(clean(token.content))
        elif kind == "code_inline":
            out.append(f"`{clean(token.content)}`")
        elif kind in ("softbreak", "hardbreak"):
            out.append(" " if kind == "softbreak" else "\n")
        elif kind in ("strong_open", "strong_close") and color:
            out.append("\x1b[1m" if kind == "strong_open" else "\x1b[22m")
        elif kind == "link_open":
            links.append(clean(token.attrs.get("href", "")))
        elif kind == "link_close" and links:
            out.append(f" <{links.pop()}>")
        elif kind == "image":
            out.append(f"[image: {clean(token.content)}]")
    return "".join(out)


def markdown_for_terminal(markdown: str, width: int = 100, indent: str = "", color: bool = False) -> str:
    """CommonMark rendered as wrapped plain text: paragraphs, bullet and numbered lists, bold, code, links.

    Raw HTML is not interpreted (it prints as the text it is).
    """
    lines: list[str] = []
    lists: list[list] = []  # [ordered, next number]
    marker = ""
    for token in _MARKDOWN.parse(markdown or ""):
        kind = token.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            lists.append([kind == "ordered_list_open", int(token.attrs.get("start", 1) or 1)])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                lines.append("")
        elif kind == "list_item_open":
            ordered, number = lists[-1]
            marker = f"{number}. " if ordered else "• "
            lists[-1][1] += 1
        elif kind in ("inline", "fence", "code_block"):
            depth = "  " * max(len(lists) - 1, 0)
            first = indent + depth + (marker or ("  " if lists else ""))
            rest = indent + depth + ("  " if lists else "")
            if kind == "inline":
                for number, part in enumerate(_inline(token.children or [], color).split("\n")):
                    lines.append(
                        textwrap.fill(
                            part,
                            width,
                            initial_indent=first if number == 0 else rest,
                            subsequent_indent=rest,
                            break_on_hyphens=False,
                        )
                        or first.rstrip()
                    )
            else:
                lines.extend(rest + "    " + clean(line) for line in token.content.rstrip("\n").split("\n"))
            marker = ""
        elif kind in ("paragraph_close", "heading_close", "fence", "code_block") and not lists:
            lines.append("")
        elif kind == "hr":
            lines.append(indent + "─" * min(40, width))
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def _style(text: str, color: bool, **kwargs: Any) -> str:
    return click.style(text, **kwargs) if color else text


def render_card(card: Mapping, number: int, width: int = 100, color: bool = False) -> str:
    """One card as an EHR lists it: indicator, summary, topic and findings, detail, suggestions, links."""
    indicator = clean(card.get("indicator", "?"))
    badge = _style(f"[{indicator.upper()}]", color, fg=INDICATOR_COLOURS.get(indicator, "white"), bold=True)
    lines = [f"{number}. {badge} {_style(clean(card.get('summary', '')), color, bold=True)}"]
    source = card.get("source") or {}
    topic = (source.get("topic") or {}).get("display") or (source.get("topic") or {}).get("code")
    findings = [clean(f.get("id", "?")) for f in card.get("extension", {}).get(FINDINGS_EXTENSION, [])]
    facts = [f"source: {clean(source.get('label', '?'))}"]
    if topic:
        facts.insert(0, f"topic: {clean(topic)}")
    if findings:
        facts.append(f"findings: {', '.join(findings)}")
    lines.append(textwrap.fill(" · ".join(facts), width, initial_indent="   ", subsequent_indent="   "))
    if card.get("detail"):
        lines += ["", markdown_for_terminal(card["detail"], width, indent="   ", color=color)]
    suggestions = card.get("suggestions") or []
    if suggestions:
        lines += ["", f"   Suggestions (choose {clean(card.get('selectionBehavior', '?'))}):"]
        for suggestion in suggestions:
            recommended = " (recommended)" if suggestion.get("isRecommended") else ""
            label = f"{clean(suggestion.get('label', ''))}{recommended}"
            lines.append(textwrap.fill(label, width, initial_indent="   ▸ ", subsequent_indent="     "))
            for action in suggestion.get("actions") or []:
                resource = action.get("resource") or {}
                target = action.get("resourceId") or resource.get("resourceType") or ""
                kind, description = clean(action.get("type", "?")), clean(action.get("description", ""))
                lines.append(f"       {kind} {clean(target)}: {description}")
    links = card.get("links") or []
    if links:
        lines += ["", "   Links:"]
        for link in links:
            kind = "" if link.get("type") == "absolute" else f" ({clean(link.get('type', '?'))} link)"
            label = f"{clean(link.get('label', ''))}{kind}"
            lines.append(textwrap.fill(label, width, initial_indent="   ↗ ", subsequent_indent="     "))
            lines.append(f"     {clean(link.get('url', ''))}")
    reasons = card.get("overrideReasons") or []
    if reasons:
        codes = ", ".join(clean(r.get("code", "?")) for r in reasons)
        lines += [
            "",
            textwrap.fill(
                f"Override reasons: {codes}",
                width,
                initial_indent="   ",
                subsequent_indent="     ",
                break_on_hyphens=False,
            ),
        ]
    return "\n".join(lines)


def render_exchange(exchange: Exchange, width: int | None = None, color: bool = False) -> str:
    """The whole answer for a terminal: what was sent where, then every card."""
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    cards = exchange.cards
    head = (
        f"{exchange.fixture} · {exchange.hook} via {exchange.via} · "
        f"{exchange.endpoint} · HTTP {exchange.status}"
    )
    lines = [_style(head, color, bold=True)]
    description = manifest().get(exchange.fixture, {}).get("description")
    if description:
        lines.append(textwrap.fill(clean(description), width))
    if exchange.expected_known:
        lines.append(f"expected findings (manifest): {', '.join(exchange.expected) or 'none'}")
    else:
        lines.append(f"expected findings (manifest): not listed for {exchange.hook}")
    lines.append(f"findings on the cards:        {', '.join(exchange.finding_ids()) or 'none'}")
    absent = [f for f in exchange.expected if f not in exchange.finding_ids()]
    if exchange.hook == "order-sign" and absent and exchange.status == 200:
        lines.append(
            f"not on the cards:             {', '.join(absent)} (info findings already shown at "
            "order-select for this order are not repeated; `cds-service explain` says why)"
        )
    if opens_chart(exchange.hook) and absent and exchange.status == 200:
        lines.append(
            f"not on the cards:             {', '.join(absent)} (shown at a {exchange.hook} of this patient "
            "within the last 24 hours and not risen since; `cds-service explain` says why)"
        )
    if exchange.status != 200:
        lines += [
            "",
            _style("The service did not answer with cards:", color, fg="red"),
            clean(exchange.response),
        ]
        return "\n".join(lines)
    lines += ["", f"{len(cards)} card{'s' if len(cards) != 1 else ''}" + (":" if cards else " (no advice)")]
    for number, card in enumerate(cards, 1):
        lines += ["", render_card(card, number, width, color)]
    return "\n".join(lines)
