"""The administrators' page ``/admin`` and ``POST /admin/reload``, behind an admin token.

The token is configured as its SHA-256 (``admin.token_sha256`` in settings.yaml) or given in the environment
(``CDS_ADMIN_TOKEN``); with neither, every ``/admin`` URL answers 404. In ``--dev`` without either, the fixed
token ``dev-admin-token`` works and the start-up log says so. A request proves the token with
``Authorization: Bearer <token>`` or shows the session cookie the login form sets (HttpOnly, SameSite=Strict,
only sent to ``/admin``; signed and expiring, never the token itself, ended on the server at sign-out; see
``admin_sessions``). A POST made with the cookie must come from the admin page: ``Sec-Fetch-Site:
same-origin`` or the session's form token (``_from_the_admin_page``). Wrong tokens, by form or header, slow
down and then lock out the client.
The page is server-rendered HTML with inline SVG: no script, no external CSS, and a
Content-Security-Policy that allows only its own nonce-tagged style block. ``/admin/trends`` draws its charts
with the vendored Chart.js: its policy adds only its own nonce-tagged scripts. ``POST /admin/simulate`` runs a
proposed configuration on the reference population (``staging``) with the same CSRF checks as a reload.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request
from sqlalchemy.engine import make_url
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response as BaseResponse  # what flask.redirect returns

from cds_service.admin_sessions import SESSION_SECONDS, AdminSessions
from cds_service.config import Config, ConfigError, load_config
from cds_service.process_control import ask_master_to_reload, master_pid
from cds_service.replicas import announce, announced, config_version, instances
from cds_service.report import FindingStats, rate_text, reasons_text, store_statistics
from cds_service.rules import FINDING_IDS, REGISTRY
from cds_service.rules.titles import finding_title
from cds_service.services import spec_for

log = logging.getLogger("cds_service.admin")
bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="admin_static",
    static_url_path="/static",
)
CHART_JS = "/smart/static/vendor/chart.umd.min.js"
"""The vendored Chart.js the course app ships (``smart/static/vendor/VENDORED.md``): one copy for both."""

COOKIE = "cds_admin"
DEV_TOKEN = "dev-admin-token"
ENV_TOKEN = "CDS_ADMIN_TOKEN"
SHORT_TOKEN = 20
DEV_ANNOUNCED = "CDS_DEV_MODE_ANNOUNCED"
"""App config flag: the start-up line already named the dev token, so the app does not log it again."""


# --- who may come in --------------------------------------------------------------------------------------


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def accepted_hashes(config: Config, dev: bool) -> list[str]:
    """SHA-256 hashes of the tokens that open /admin now; empty means the admin page is off."""
    hashes = []
    configured = config.section("admin").get("token_sha256")
    if configured:
        hashes.append(configured.lower())
    if os.environ.get(ENV_TOKEN):
        hashes.append(_sha256(os.environ[ENV_TOKEN]))
    if not hashes and dev:
        hashes.append(_sha256(DEV_TOKEN))
    return hashes


def dev_token_in_use(config: Config, dev: bool) -> bool:
    """Does the fixed ``dev-admin-token`` open /admin (``--dev`` with no token configured)?"""
    return dev and not accepted_hashes(config, dev=False)


def token_opens(token: str | None, hashes: Iterable[str]) -> bool:
    if not token:
        return False
    presented = _sha256(token)
    # compare_digest against every hash (no early exit), so timing does not say which one matched
    return any([hmac.compare_digest(presented, expected) for expected in hashes])


def _holder():
    return current_app.extensions["cds_runtime"]


def _hashes() -> list[str]:
    holder = _holder()
    return accepted_hashes(holder.current.config, holder.dev)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sessions() -> AdminSessions:
    """The sessions and login throttle on the current database (made once per engine)."""
    engine = _holder().current.store.engine
    sessions = _SESSIONS.get(engine)
    if sessions is None:
        sessions = _SESSIONS[engine] = AdminSessions(engine)
    return sessions


def _client() -> str:
    return request.remote_addr or "unknown"


def _bearer() -> str | None:
    scheme, _, value = (request.headers.get("Authorization") or "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


FORM_TOKEN = "csrf_token"
CROSS_SITE = ("cross-site", "same-site")


def _from_the_admin_page() -> bool:
    """May this cookie-authenticated POST change anything, i.e. did the admin page itself send it?

    The pages send no Referer (``Referrer-Policy: no-referrer``), so a browser's form POST carries
    ``Origin: null`` and cannot be compared with this site. Browsers say instead where a request comes from in
    ``Sec-Fetch-Site``, which no page can set: ``same-origin`` passes, ``cross-site`` and ``same-site`` never.
    A client without Fetch Metadata proves it with the session's form token, which only the page shows.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site == "same-origin":
        return True
    if site in CROSS_SITE:
        return False
    return _sessions().form_token_matches(request.cookies.get(COOKIE), request.form.get(FORM_TOKEN))


def _refused_cross_site() -> tuple[Response, int]:
    log.warning("admin POST refused: not sent by the admin page", extra={"remote": _client()})
    return jsonify({"error": "cross-site request refused"}), 403


@bp.record_once
def _announce(state) -> None:
    holder = state.app.extensions["cds_runtime"]
    config = holder.current.config
    if dev_token_in_use(config, holder.dev):
        if state.app.config.get(DEV_ANNOUNCED):  # ``serve --dev`` said it once for all its workers
            return
        log.warning(f"DEV MODE: /admin accepts the fixed token {DEV_TOKEN!r}; configure admin.token_sha256")
    elif 0 < len(os.environ.get(ENV_TOKEN, "")) < SHORT_TOKEN:
        log.warning(f"{ENV_TOKEN} is shorter than {SHORT_TOKEN} characters: use a long random token")


@bp.before_request
def _admin_switched_on() -> None:
    if not _hashes():
        raise NotFound()


class Throttled(Exception):
    """This client failed too often: it must wait (``seconds``) before the token is checked again."""

    def __init__(self, seconds: int, locked: bool):
        super().__init__(seconds)
        self.seconds, self.locked = seconds, locked


def _check_token(token: str) -> bool:
    """Does ``token`` open the page? Counted per client; Throttled while the client must wait."""
    sessions = _sessions()
    waiting = sessions.attempt(_client())  # counted before the check: concurrent guesses get no extra tries
    if waiting is not None:
        raise Throttled(waiting.seconds, waiting.locked)
    if token_opens(token, _hashes()):
        sessions.succeeded(_client())
        return True
    log.warning("admin token refused", extra={"remote": _client()})
    return False


def _authenticated() -> str | None:
    """How the request proved the admin token ("bearer" or "cookie"), or None. Throttled for a client that
    guessed wrong too often."""
    token = _bearer()
    if token is not None:
        return "bearer" if _check_token(token) else None
    return "cookie" if _sessions().valid(request.cookies.get(COOKIE), _hashes()) else None


@bp.errorhandler(Throttled)
def _throttled(error: Throttled) -> Response:
    what = "locked out after repeated wrong tokens" if error.locked else "slowed down after wrong tokens"
    message = f"Too many wrong tokens from this address: {what}; try again in {error.seconds} s."
    if request.path.endswith("/login") and request.method == "POST":
        response = _page("admin_login.html", status=429, error=message)
    else:
        response = jsonify({"error": message})
        response.status_code = 429
    response.headers["Retry-After"] = str(error.seconds)
    return response


def _unauthorized() -> Response:
    response = jsonify({"error": "admin token required (Authorization: Bearer <token>)"})
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="cds-admin"'
    return response


# --- pages ------------------------------------------------------------------------------------------------


def _page(template: str, status: int = 200, scripts: bool = False, **context: Any) -> Response:
    """A page whose CSP allows its own nonce-tagged style block and, with ``scripts``, its nonce-tagged
    scripts (the trends page's charts): nothing inline without the nonce."""
    nonce = secrets.token_urlsafe(16)
    response = Response(
        render_template(template, nonce=nonce, **context), status=status, mimetype="text/html"
    )
    script = f"script-src 'nonce-{nonce}'; " if scripts else ""
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; {script}style-src 'nonce-{nonce}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    return response


def _wants_html() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" or request.mimetype == "application/x-www-form-urlencoded"


@bp.get("")
@bp.get("/")
def page() -> BaseResponse:
    if _authenticated() is None:
        if request.headers.get("Authorization") or not _wants_html():
            return _unauthorized()
        return redirect("/admin/login", code=303)
    return _admin_page()


def _admin_page(
    notice: str | None = None,
    problems: list[str] | None = None,
    status: int = 200,
    staged: dict[str, Any] | None = None,
) -> Response:
    holder = _holder()
    runtime = holder()
    since = _since_arg()
    tenant = request.args.get("tenant") or None
    stats = store_statistics(runtime.store, since=since, tenant=tenant)
    try:
        load_config(runtime.config.directory)
        on_disk: list[str] = []
    except ConfigError as error:
        on_disk = error.problems
    return _page(
        "admin.html",
        status=status,
        view=effective_view(runtime.config),
        replicas=replica_view(runtime),
        stats=stats,
        chart=chart(stats),
        since=since.isoformat() if since else "",
        tenant=tenant or "",
        on_disk=on_disk,
        form_token=_sessions().form_token(request.cookies.get(COOKIE)),
        notice=notice,
        problems=problems or [],
        staged=staged,
        rate_text=rate_text,
        reasons_text=reasons_text,
        show=show,
        title=finding_title,
    )


def show(value: Any) -> str:
    """A setting as it would be written in YAML: true/false, [a, b], {} for an empty mapping."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _since_arg() -> date | None:
    return _date_arg("since")


@bp.get("/login")
def login_form() -> Response:
    return _page("admin_login.html")


@bp.context_processor
def _dev_token() -> dict[str, Any]:
    """The login page names the fixed token when it is the one that works (``--dev``, none configured)."""
    holder = _holder()
    return {"dev_token": DEV_TOKEN if dev_token_in_use(holder.current.config, holder.dev) else None}


@bp.post("/login")
def login() -> BaseResponse:
    if request.headers.get("Sec-Fetch-Site") in CROSS_SITE:  # another site must not sign this browser in
        return _page("admin_login.html", status=403, error="Sign in from this page, not from another site.")
    token = (request.form.get("token") or "").strip()
    if not _check_token(token):
        return _page("admin_login.html", status=401, error="That token does not open the admin page.")
    log.info("admin login", extra={"remote": _client()})
    response = redirect("/admin", code=303)
    secure = request.is_secure or _holder().current.config.section("server")["public_base_url"].startswith(
        "https"
    )
    session = _sessions().open(_sha256(token))
    response.set_cookie(
        COOKIE,
        session,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="Strict",
        secure=secure,
        path="/admin",
    )
    return response


@bp.post("/logout")
def logout() -> BaseResponse | tuple[Response, int]:
    """End the session on the server (a copy of the cookie is worthless after this) and in the browser."""
    if not _from_the_admin_page():
        return _refused_cross_site()
    _sessions().close(request.cookies.get(COOKIE))
    response = redirect("/admin/login", code=303)
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="Strict")
    return response


@bp.post("/reload")
def reload() -> Response | tuple[Response, int]:
    """Load the configuration files again; a bad file leaves the running configuration in place.

    Under ``cds-service serve`` (a master and its workers) the files are checked here and the master is sent
    SIGHUP, so every worker moves to the new configuration and in-flight requests finish on the old one.
    Elsewhere (a single process) this process swaps its configuration itself.
    """
    how = _authenticated()
    if how is None:
        return _unauthorized()
    if how == "cookie" and not _from_the_admin_page():
        return _refused_cross_site()
    holder = _holder()
    under_master = master_pid() is not None
    if under_master:
        try:
            checked = load_config(holder.config_dir)
            services, version, problems = sorted(checked.services), config_version(checked), []
        except ConfigError as error:
            problems = error.problems
    else:
        problems = holder.reload()
        services, version = sorted(holder.current.config.services), config_version(holder.current.config)
        if not problems:  # under a master, the master announces it once it has reloaded (server.py)
            announce(holder.current.store.engine, version)
    if problems:
        log.error("admin reload refused", extra={"problems": problems})
        if _wants_html():
            return _admin_page(problems=problems, status=422)
        return jsonify(
            {"reloaded": False, "problems": problems, "serving": "the last good configuration"}
        ), 422
    if under_master:
        # The master re-reads the files and starts new workers; this one finishes its requests, then stops.
        ask_master_to_reload()
        log.info("admin reload: SIGHUP sent to the master", extra={"services": services})
        answer: dict[str, Any]
        status, answer = (
            202,
            {
                "reloaded": "scheduled",
                "services": services,
                "version": version,
                "detail": "new workers start on the checked configuration",
            },
        )
    else:
        status, answer = 200, {"reloaded": True, "services": services, "version": version}
    if _wants_html():
        if under_master:
            return _admin_page(
                notice="Configuration checked; the workers restart on it (refresh this page). "
                f"The other instances follow version {version} within seconds."
            )
        return _admin_page(
            notice=f"Configuration checked and reloaded. Version {version}: the other instances follow."
        )
    return jsonify(answer), status


@bp.post("/simulate")
def simulate_staged() -> Response | tuple[Response, int]:
    """Simulate a proposed configuration on the reference population against the running one (``staging``).

    The proposal: an uploaded ``settings.yaml`` (field ``settings``), a folder on this machine (``folder``),
    else the files on disk that a reload would load. Nothing is loaded; the page shows the difference per
    finding next to the reload button.
    """
    how = _authenticated()
    if how is None:
        return _unauthorized()
    if how == "cookie" and not _from_the_admin_page():
        return _refused_cross_site()
    from cds_service.staging import stage

    upload = request.files.get("settings")
    settings_yaml = upload.read() if upload is not None and upload.filename else None
    runtime = _holder()()
    staged = stage(
        runtime.config,
        settings_yaml=settings_yaml,
        folder=(request.form.get("folder") or "").strip() or None,
        tenant=(request.form.get("tenant") or "").strip() or None,
    )
    log.info("admin simulate", extra={"problems": len(staged.get("problems", ()))})
    status = 422 if "problems" in staged else 200
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":  # the form
        return _admin_page(staged=staged, status=status)
    return jsonify(staged), status


@bp.get("/trends")
def trends_page() -> BaseResponse:
    """Per finding and week: cards shown, overridden (and the rate), accepted; top override reasons."""
    if _authenticated() is None:
        if request.headers.get("Authorization") or not _wants_html():
            return _unauthorized()
        return redirect("/admin/login", code=303)
    from cds_service import trends

    today = datetime.now(UTC).date()
    until = _date_arg("until") or today + timedelta(days=1)
    since = _date_arg("since") or until - timedelta(weeks=trends.DEFAULT_WEEKS)
    if since >= until:
        since = until - timedelta(days=1)
    tenant = request.args.get("tenant") or None
    admin = _holder()().config.section("admin")
    found = trends.trends(
        _holder()().store,
        since,
        until,
        tenant=tenant,
        flag_rate=admin.get("override_flag_rate", trends.FLAG_RATE),
        flag_min_cards=admin.get("override_flag_min_cards", trends.FLAG_MIN_CARDS),
    )
    data = {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "findings": [dict(t.to_json(), title=finding_title(t.finding)) for t in found],
        "top_reasons": trends.top_reasons(found),
    }
    return _page(
        "admin_trends.html",
        scripts=True,
        data=data,
        since=since.isoformat(),
        until=until.isoformat(),
        tenant=tenant or "",
        flag_rate=admin.get("override_flag_rate", trends.FLAG_RATE),
        flag_min_cards=admin.get("override_flag_min_cards", trends.FLAG_MIN_CARDS),
        chart_js=CHART_JS,
        rate_text=rate_text,
    )


def _date_arg(name: str) -> date | None:
    try:
        return date.fromisoformat(request.args[name]) if request.args.get(name) else None
    except ValueError:
        return None


@bp.get("/instances")
def instances_json() -> Response | tuple[Response, int]:
    """Which configuration version each instance serves (the page's table, for scripts and monitoring)."""
    if _authenticated() is None:
        return _unauthorized()
    view = replica_view(_holder()())
    return jsonify(
        {
            "this": view["this"],
            "announced": view["announced"],
            "instances": [{**row, "loaded_at": str(row["loaded_at"]), "seen_at": str(row["seen_at"])}
                          for row in view["instances"]],
        }
    )  # fmt: skip


# --- what the page shows ----------------------------------------------------------------------------------


def replica_view(runtime: Any) -> dict[str, Any]:
    """This instance's configuration version, the last one announced to all, and what each instance serves."""
    engine = runtime.store.engine
    news = announced(engine)
    return {
        "this": config_version(runtime.config),
        "announced": {"version": news.version, "at": news.at.isoformat(timespec="seconds"), "by": news.by}
        if news
        else None,
        "instances": instances(engine),
    }


@cache
def _descriptions() -> dict[str, str]:
    return {name: item.schema.get("description", "") for name, item in REGISTRY.settings.items()}


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping) and value:
        return [pair for key, inner in value.items() for pair in _flatten(inner, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), value)]


def _diff(
    base: Mapping[str, Any], merged: Mapping[str, Any], sections: Iterable[str]
) -> list[tuple[str, Any]]:
    """The settings in ``merged`` that differ from ``base``, as dotted paths."""
    before = dict(_flatten({s: base.get(s) for s in sections}))
    return [(k, v) for k, v in _flatten({s: merged.get(s) for s in sections}) if before.get(k) != v]


def _safe_database_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as its scheme only
        return url.split(":", 1)[0] + ":…"


def effective_view(config: Config) -> dict[str, Any]:
    """Everything the page shows about the configuration, as plain data."""
    shared = config.settings
    tenants = config.section("tenants")
    sections = ("scope", "thresholds", "findings", "hold_repeats", "min_indicator")
    services = [
        {
            "id": s.id,
            "hook": s.hook,
            "title": s.title,
            "scope": s.settings["scope"],
            "overrides": _diff(shared, s.settings, sections),
        }
        for s in config.services.values()
    ]
    descriptions = _descriptions()
    affects = {key: REGISTRY.readers_of(key) for key in shared["thresholds"]}
    thresholds = []
    for key, value in shared["thresholds"].items():
        per_service = {
            s.id: s.settings["thresholds"][key]
            for s in config.services.values()
            if s.settings["thresholds"][key] != value
        }
        per_tenant = {
            t: o["thresholds"][key] for t, o in tenants.items() if key in (o.get("thresholds") or {})
        }
        thresholds.append(
            {
                "key": key,
                "value": value,
                "description": descriptions.get(key, ""),
                "affects": affects[key],
                "services": per_service,
                "tenants": per_tenant,
            }
        )
    findings = []
    for finding_id in FINDING_IDS:
        per_service = {}
        for s in config.services.values():
            options = (s.settings.get("findings") or {}).get(finding_id) or {}
            per_service[s.id] = {
                "enabled": options.get("enabled", True),
                "indicator": options.get("indicator"),
                "runs": finding_id in spec_for(s.id, s.hook).findings,
            }
        per_tenant = {
            t: o["findings"][finding_id]
            for t, o in tenants.items()
            if finding_id in (o.get("findings") or {})
        }
        findings.append({"id": finding_id, "services": per_service, "tenants": per_tenant})
    other = {
        "hold_repeats": dict(config.section("hold_repeats")),
        "min_indicator": shared.get("min_indicator", "info"),
        "cards": dict(config.section("cards")),
        "valuesets": dict(config.section("valuesets")),
        "fhir": dict(config.section("fhir")),
        "server": dict(config.section("server")),
        "feedback": {"database_url": _safe_database_url(config.section("feedback").get("database_url", ""))},
    }
    return {
        "directory": str(config.directory),
        "scope": shared["scope"],
        "services": services,
        "thresholds": thresholds,
        "findings": findings,
        "tenants": [{"id": t, "overrides": _flatten(o)} for t, o in tenants.items()],
        "other": _flatten(other),
    }


CHART_LABEL_WIDTH = 250
CHART_BAR_AREA = 420
CHART_ROW = 34


def chart(stats: list[FindingStats]) -> dict[str, Any]:
    """Bar geometry for the inline SVG: per (service, finding) a shown bar, accepted/overridden under it."""
    biggest = max([max(s.shown, s.answered) for s in stats] or [0]) or 1
    scale = CHART_BAR_AREA / biggest
    rows = []
    for index, s in enumerate(stats):
        y = index * CHART_ROW
        rows.append(
            {
                "label": f"{s.finding} · {s.service}",
                "y": y,
                "shown": round(s.shown * scale, 1),
                "accepted": round(s.accepted * scale, 1),
                "overridden": round(s.overridden * scale, 1),
                "text": f"shown {s.shown}, accepted {s.accepted}, overridden {s.overridden}",
                "stats": s,
            }
        )
    return {
        "rows": rows,
        "label_width": CHART_LABEL_WIDTH,
        "width": CHART_LABEL_WIDTH + CHART_BAR_AREA + 60,
        "height": max(len(rows) * CHART_ROW, CHART_ROW),
    }
