"""``/smart``: the "course" SMART on FHIR app (kidney and tacrolimus trends), served by the service itself.

The app runs wholly in the browser. The EHR launches ``/smart/launch?iss=…&launch=…``; the SMART client
(fhirclient, vendored in ``static/vendor``) discovers the EHR's authorization server, asks for a read-only
patient-scoped token (authorization code with PKCE) and comes back to ``/smart/app``, which reads the
patient's record from ``iss`` with that token and draws the chart. Nothing about the patient is sent here:
the service only hands out static files and ``/smart/terminology.json`` (value-set codes, unit factors and
default thresholds - terminology and configuration, no patient data).

Content-Security-Policy: scripts and styles from this service only, no inline code, no eval; ``connect-src``
is this service plus the origin of the FHIR server the launch named. The launch response remembers that
origin in a cookie scoped to ``/smart`` so that ``/smart/app`` (the OAuth redirect target, whose URL no
longer carries ``iss``) can be given the same policy.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, request, send_file

from cds_service import units
from cds_service.drug_forms import form_table_data
from cds_service.fhir_policy import ServerUrl
from cds_service.record_builder import DURATION_DAYS
from cds_service.rules import REGISTRY
from cds_service.rules.registry import Declaration
from cds_service.terminology import COMPOSITES, DEFAULT_DIR, FORM_FREE_CLASSES, SYSTEM_ALIASES

STATIC = Path(__file__).resolve().parent / "static"
CLIENT_ID = "tacrolimus-course"
"""The client id an EHR administrator registers for the app (a public client: PKCE, no secret)."""
SCOPES = (
    "launch patient/Patient.read patient/Observation.read patient/MedicationRequest.read "
    "patient/Condition.read"
)
ORIGIN_COOKIE = "smart_fhir_origin"

LAB_GROUPS = (
    "creatinine", "egfr", "tacrolimus-level", "upcr", "blood-pressure", "systolic-bp", "diastolic-bp",
    "potassium", "magnesium",
)  # fmt: skip
"""The lab value sets the chart plots (the same sets the rules read)."""
ANCHOR_DRUGS = (
    "tacrolimus", "other-calcineurin-inhibitors", "mycophenolate", "cyclophosphamide", "rituximab",
)  # fmt: skip
"""The rows drawn for every patient: the calcineurin inhibitors and the lupus nephritis regimen's anchors."""
DRUG_GROUPS = tuple(
    group
    for group in dict.fromkeys(
        [*ANCHOR_DRUGS, *(g for d in REGISTRY.values() for g in (*d.drugs, *d.course) if g not in LAB_GROUPS)]
    )
    if group not in COMPOSITES
)
"""The drug classes drawn as exposure rows: the anchors, then every class a finding reads or highlights (from
the rule registry, so a new finding's drugs appear without changing the app); unions such as ``teratogens``
are drawn as their members."""
COURSE_THRESHOLDS = (
    "recent_lab_days", "baseline_creatinine_days", "creatinine_rise_warning", "creatinine_rise_critical",
    "tacrolimus_level_max", "tacrolimus_level_max_with_mycophenolate",
)  # fmt: skip

bp = Blueprint("smart", __name__, url_prefix="/smart", static_folder="static", static_url_path="/static")


def _runtime() -> Any:
    return current_app.extensions["cds_runtime"]()


def fhir_origin(iss: str | None) -> str | None:
    """The origin of a launch's ``iss`` if it may be called: https, or plain http on a loopback host."""
    if not iss or len(iss) > 2000:
        return None
    try:
        parts = urlsplit(iss)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.username or parts.password or parts.scheme not in ("https", "http"):
        return None
    if parts.scheme == "http" and not _loopback(host):
        return None
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{shown}" + (f":{port}" if port else "")


def launch_refusal(iss: str, runtime: Any) -> str | None:
    """Why a launch naming ``iss`` may not widen the page's ``connect-src``, or None.

    ``iss`` must be a FHIR server a registered caller may name (``callers[].fhir_servers``, as for hook
    calls); with ``--dev`` a loopback server too (the sandbox's). Any other would let a link turn the app's
    pages into a client of a host nobody configured.
    """
    target = ServerUrl.parse(iss)
    if target is None:
        return "iss: not a plain http(s) FHIR base URL"
    if runtime.dev and _loopback(target.host.strip("[]")):
        return None
    for caller in runtime.config.settings.get("callers") or ():
        entries = (ServerUrl.parse(url, pattern=True) for url in caller.get("fhir_servers") or ())
        if any(entry is not None and entry.covers(target) for entry in entries):
            return None
    return "iss: not a FHIR server of a registered caller (callers[].fhir_servers)"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def page_csp(origin: str | None, smart: Mapping[str, Any] | None = None) -> str:
    """The app pages' policy: this service's files only; calls to the launch's FHIR origin (plus the
    ``smart.connect_origins`` an administrator lists); framed by the service or ``smart.frame_ancestors``."""
    smart = smart or {}
    connect = " ".join(["'self'", *([origin] if origin else []), *smart.get("connect_origins", ())])
    frames = " ".join(["'self'", *smart.get("frame_ancestors", ())])
    return (
        f"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors {frames}"
    )


def _page(name: str, origin: str | None) -> Response:
    smart = _runtime().config.section("smart")
    response = send_file(STATIC / name, mimetype="text/html", max_age=0)
    response.headers["Content-Security-Policy"] = page_csp(origin, smart)
    # For old browsers; browsers that know frame-ancestors ignore it when the CSP has that directive.
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/launch")
def launch() -> Response | tuple[Response, int]:
    """The EHR launch URL: ``iss`` (the FHIR base) and ``launch`` (the EHR's opaque launch id)."""
    iss, launch_id = request.args.get("iss"), request.args.get("launch")
    origin = fhir_origin(iss)
    if origin is None or not launch_id:
        message = (
            "launch needs iss (an https FHIR base URL, or http on loopback) and launch (the EHR's launch id)"
        )
        return jsonify({"error": message}), 400
    refused = launch_refusal(iss or "", _runtime())
    if refused:
        return jsonify({"error": refused}), 400
    response = _page("launch.html", origin)
    response.set_cookie(
        ORIGIN_COOKIE,
        origin,
        path="/smart",
        httponly=True,
        samesite="Lax",  # sent on the authorization server's redirect back to /smart/app
        secure=request.is_secure,
    )
    return response


@bp.get("/app")
def app_page() -> Response:
    """The redirect URI: finishes the token exchange and draws the course."""
    return _page("app.html", fhir_origin(request.cookies.get(ORIGIN_COOKIE)))


def highlights(declaration: Declaration) -> list[str]:
    """What the app highlights for a finding on its card: the groups ``course`` names, the drugs it reads."""
    return [g for g in dict.fromkeys([*declaration.course, *declaration.drugs]) if g not in COMPOSITES]


@cache
def class_label(group: str) -> str:
    """A drug class in words for the chart's row: its value set's title without the parenthesis."""
    try:
        title = json.loads((DEFAULT_DIR / f"{group}.json").read_text(encoding="utf-8"))["title"]
    except (OSError, ValueError, KeyError):
        return group
    return title.split(" (")[0]


@bp.get("/terminology.json")
def terminology() -> Response:
    """Value-set codes and names of the charted classes, unit factors to the rules' units, default thresholds,
    and each finding's title and the groups the app highlights for it (from the rule registry).

    Generated from the running configuration (extension and local codes included), so the app sorts
    observations and orders exactly as the rules do. Terminology and settings only - no patient data.
    """
    runtime = _runtime()
    terms = runtime.terminology
    thresholds = runtime.config.section("thresholds")
    return jsonify(
        {
            "systemAliases": SYSTEM_ALIASES,
            "labs": {g: [[s, c] for s, c, _ in terms.codes(g)] for g in LAB_GROUPS},
            "drugs": {g: [[s, c] for s, c, _ in terms.codes(g)] for g in DRUG_GROUPS},
            # recognition by name and the forms for skin, eye, ear or mucosa (rules.md § Drug recognition)
            "drugNames": {g: list(terms.names_of.get(g, ())) for g in DRUG_GROUPS},
            "localForms": sorted(f"{s}|{c}" for s, c in terms.local_forms),
            "formFreeClasses": sorted(FORM_FREE_CLASSES),  # counted whatever the form (a nasal live vaccine)
            "formTable": form_table_data(),  # drug-forms.json: what course.js reads local forms with
            "durationDays": DURATION_DAYS,  # a stopped order's supply: expectedSupplyDuration units in days
            "units": {g: {"canonical": units.CANONICAL_UNITS[g], "factors": units.linear_factors(g)}
                      for g in LAB_GROUPS},
            "thresholds": {k: thresholds[k] for k in COURSE_THRESHOLDS if k in thresholds},
            "drugClasses": [{"group": g, "label": class_label(g), "anchor": g in ANCHOR_DRUGS}
                            for g in DRUG_GROUPS],
            # each finding's title, drugs and what the app highlights for it, from the rule registry
            "findings": {i: {"title": d.title, "highlights": highlights(d), "drugs": list(d.drugs)}
                         for i, d in REGISTRY.items()},
            "clientId": CLIENT_ID,
            "scopes": SCOPES,
        }
    )  # fmt: skip
