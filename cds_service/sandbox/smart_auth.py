"""A development SMART authorization server on the fixture FHIR server, so testers can launch the SMART app.

On every fixture FHIR server (``fixtures serve``, ``/sandbox/fhir`` under ``--dev``, the tests' servers):

* ``GET  {base}/.well-known/smart-configuration`` - SMART App Launch discovery;
* ``POST {base}/auth/launch`` (form or query: ``patient``, optional ``appContext``) - what an EHR does before
  it opens the app: it mints a ``launch`` id bound to that patient (and a card's ``appContext``);
* ``GET  {base}/auth/authorize`` - grants at once, **without a login**, and redirects with a code;
* ``POST {base}/auth/token`` - exchanges the code (PKCE S256 checked) for a patient-scoped token.

Development only: every endpoint answers 403 unless the caller is on loopback, redirect URIs must be on
loopback too, and the fixture server does not check the token it hands out (its data are synthetic). Launch
ids and codes are self-contained (base64url JSON) so that any gunicorn worker can redeem them; they are
not single-use and not signed, which is acceptable only because of the loopback restriction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import secrets
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Flask, Response, request

from cds_service.prefetch import FHIR_ID
from cds_service.sandbox.store import FhirStore

READ_TYPES = ("Patient", "Observation", "MedicationRequest", "Condition")
"""The resource types a token may read: the SMART app's read-only scopes."""
MAX_APP_CONTEXT = 8000


class _Refused(ValueError):
    """An authorization request that cannot be granted; answered 400 with the OAuth error and message."""

    def __init__(self, error: str, message: str):
        super().__init__(message)
        self.error = error


def _encode(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


def _decode(text: str | None, what: str) -> dict:
    try:
        padded = (text or "") + "=" * (-len(text or "") % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error):
        raise _Refused(
            "invalid_request" if what == "launch" else "invalid_grant", f"unknown {what}"
        ) from None
    if not isinstance(data, dict):
        raise _Refused("invalid_grant", f"unknown {what}")
    return data


def _loopback_host(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def granted_scopes(requested: str) -> str:
    """The requested scopes this server grants: ``launch``, ``openid``/``fhirUser`` and patient reads."""
    allowed = {"launch", "launch/patient", "openid", "fhirUser"}
    for rtype in READ_TYPES:
        allowed |= {f"patient/{rtype}.read", f"patient/{rtype}.rs", f"patient/{rtype}.r"}
    return " ".join(s for s in requested.split() if s in allowed)


def _json(body: dict, status: int = 200) -> Response:
    return Response(
        json.dumps(body), status=status, mimetype="application/json", headers={"Cache-Control": "no-store"}
    )


def install_dev_smart(app: Flask, base_path: str, store: FhirStore) -> None:
    """Add the development SMART endpoints under ``base_path`` of the fixture FHIR server ``app``."""
    auth = f"{base_path}/auth"

    def base_url() -> str:
        return request.host_url.rstrip("/") + base_path

    @app.before_request
    def loopback_only() -> Response | None:
        if request.path.startswith(auth + "/") and not _loopback_host(request.remote_addr):
            return _json({"error": "access_denied", "error_description": "loopback only"}, 403)
        return None

    @app.after_request
    def cors(response: Response) -> Response:
        """The app runs on the service's origin; it reads discovery, the token and FHIR data from here."""
        origin = request.headers.get("Origin")
        if origin and request.path.startswith(base_path):
            response.headers.setdefault("Access-Control-Allow-Origin", origin)
            response.headers.setdefault("Access-Control-Allow-Headers", "Authorization, Content-Type")
            response.headers.setdefault("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            response.headers.setdefault("Vary", "Origin")
        return response

    @app.get(f"{base_path}/.well-known/smart-configuration")
    def smart_configuration() -> Response:
        return _json(
            {
                "issuer": base_url(),
                "authorization_endpoint": f"{base_url()}/auth/authorize",
                "token_endpoint": f"{base_url()}/auth/token",
                "grant_types_supported": ["authorization_code"],
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": granted_scopes(
                    "launch launch/patient openid fhirUser "
                    + " ".join(f"patient/{t}.read patient/{t}.rs" for t in READ_TYPES)
                ).split(),
                "capabilities": [
                    "launch-ehr",
                    "client-public",
                    "context-ehr-patient",
                    "permission-patient",
                    "permission-v1",
                    "permission-v2",
                ],
            }
        )

    @app.route(f"{auth}/launch", methods=["POST"])
    def mint_launch() -> Response:
        """What the EHR does before it opens the app: a launch id for this patient (and card context)."""
        patient = request.values.get("patient", "")
        app_context = request.values.get("appContext")
        if not FHIR_ID.match(patient) or store.read("Patient", patient) is None:
            return _json(
                {"error": "invalid_request", "error_description": "patient: not a stored Patient id"}, 400
            )
        if app_context is not None and len(app_context) > MAX_APP_CONTEXT:
            return _json({"error": "invalid_request", "error_description": "appContext: too long"}, 400)
        context = {"patient": patient, **({"appContext": app_context} if app_context is not None else {})}
        return _json({"launch": _encode(context)})

    @app.get(f"{auth}/authorize")
    def authorize() -> Response:
        args = request.args
        try:
            redirect_uri = args.get("redirect_uri", "")
            parts = urlsplit(redirect_uri)
            if parts.scheme not in ("http", "https") or not _loopback_host(parts.hostname):
                raise _Refused("invalid_request", "redirect_uri: must be an http(s) URL on loopback")
            if args.get("response_type") != "code":
                raise _Refused("unsupported_response_type", "response_type: must be code")
            if not args.get("client_id"):
                raise _Refused("invalid_request", "client_id: required")
            if args.get("aud", "").rstrip("/") != base_url():
                raise _Refused("invalid_request", f"aud: must be this FHIR server, {base_url()}")
            if args.get("code_challenge_method") != "S256" or not args.get("code_challenge"):
                raise _Refused("invalid_request", "code_challenge with code_challenge_method S256: required")
            context = _decode(args.get("launch"), "launch")
            if not isinstance(context.get("patient"), str):
                raise _Refused("invalid_request", "launch: unknown launch")
        except _Refused as refused:
            return _json({"error": refused.error, "error_description": str(refused)}, 400)
        code = _encode(
            {
                **context,
                "client_id": args["client_id"],
                "redirect_uri": redirect_uri,
                "challenge": args["code_challenge"],
                "scope": granted_scopes(args.get("scope", "")),
            }
        )
        query = urlencode({"code": code, **({"state": args["state"]} if "state" in args else {})})
        return Response(
            status=302, headers={"Location": f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{query}"}
        )

    @app.post(f"{auth}/token")
    def token() -> Response:
        form = request.form
        try:
            if form.get("grant_type") != "authorization_code":
                raise _Refused("unsupported_grant_type", "grant_type: must be authorization_code")
            granted = _decode(form.get("code"), "code")
            if not isinstance(granted.get("patient"), str):  # a code this server never issued
                raise _Refused("invalid_grant", "unknown code")
            if form.get("redirect_uri") != granted.get("redirect_uri"):
                raise _Refused("invalid_grant", "redirect_uri: differs from the authorization request")
            if form.get("client_id", granted.get("client_id")) != granted.get("client_id"):
                raise _Refused("invalid_grant", "client_id: differs from the authorization request")
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            expected = str(granted.get("challenge", "")).encode()  # bytes: any text compares, never raises
            if not verifier or not hmac.compare_digest(challenge.encode(), expected):
                raise _Refused("invalid_grant", "code_verifier: does not match the code_challenge")
        except _Refused as refused:
            return _json({"error": refused.error, "error_description": str(refused)}, 400)
        answer: dict[str, Any] = {
            "access_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": granted.get("scope", ""),
            "patient": granted["patient"],
            "need_patient_banner": True,
        }
        if "appContext" in granted:
            answer["appContext"] = granted["appContext"]
        return _json(answer)
