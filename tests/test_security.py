"""Only trusted EHRs get in, and the service cannot be turned against anyone (issue 6).

The attack tests run against the real thing: ``cds-service serve`` with two workers, a trusted issuer
whose JWKS is served from loopback, real FHIR servers (one redirecting) and a listener that counts any
connection the service should never have made. Each refusal is checked both ways: the caller sees a bare
401, and the log says why (without the token).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from cds_service.auth import (
    AuthError,
    JwksCache,
    ReplayStore,
    TrustedIssuer,
    Verifier,
    bearer_token,
    public_key,
)
from cds_service.config import load_config
from cds_service.config_schema import check_settings
from cds_service.fhir_policy import REFUSED, FhirPolicy
from cds_service.sandbox.fhir_server import Faults, serve_in_thread
from cds_service.sandbox.store import FhirStore
from cds_service.storage import make_engine
from tests.security_helpers import (
    MINTED,
    Signer,
    bearer,
    claims,
    connection_recorder,
    hmac_token,
    jwks_server,
    secret,
    unsigned_token,
)
from tests.support import (
    DATA,
    ROOT,
    ServiceProcess,
    bundle,
    config_copy,
    hook_request,
    small_patient,
    start_service,
    with_fhir_server,
)

pytestmark = pytest.mark.slow  # most tests call a real service, started once per database
PID = "sec-p1"
ISSUER = "https://ehr-a.test"
WILDCARD_ISSUER = "https://ehr-b.test"
TENANT = "tenant-a"
SIGN = "/cds-services/tacrolimus-order-sign"
FEEDBACK = f"{SIGN}/feedback"
SPEC_EXAMPLES = DATA / "cds-hooks" / "examples" / "HL7-cds-hooks@c4667a4_v2.0.1_index.md"
SANDBOX_JWKS = (
    DATA
    / "cds-hooks"
    / "examples"
    / "cds-hooks-sandbox@3b7e255"
    / "cds-hooks-sandbox__build~.well-known~jwks.json"
)


@dataclass
class Env:
    service: ServiceProcess
    key: Signer
    rsa_key: Signer
    rotated_key: Signer
    wildcard_key: Signer
    attacker: Signer
    jwks: object
    recorder: object
    good_fhir: str
    redirect_fhir: str
    fhir_token: str
    jwks_base: str

    def url(self, path: str) -> str:
        return self.service.base + path

    def token(self, path: str, signer: Signer | None = None, **changes) -> str:
        """A valid token of the trusted issuer for ``path``; ``changes`` alter claims (None drops one)."""
        return (signer or self.key).token(claims(ISSUER, self.url(path), **changes))


@pytest.fixture(scope="module")
def env(tmp_path_factory, module_database):
    """One service for the module's HTTP tests, started once on SQLite and once on PostgreSQL (each test runs
    on both: the replay store and the feedback it writes are storage-facing)."""
    tmp = tmp_path_factory.mktemp("security")
    key, rsa_key, rotated_key = Signer("ES384"), Signer("RS384"), Signer("ES384")
    wildcard_key, attacker = Signer("ES384"), Signer("ES384")
    documents = {
        "/a/jwks.json": {"keys": [key.jwk(), rsa_key.jwk()]},
        "/a/rotated.json": {"keys": [rotated_key.jwk()]},
        "/evil/jwks.json": {"keys": [attacker.jwk()]},
    }
    fhir_token = secret("fhir-access-token")
    store = FhirStore([bundle(small_patient(PID))])
    with ExitStack() as stack:
        jwks = stack.enter_context(jwks_server(documents))
        jwks_base = f"http://127.0.0.1:{jwks.server_port}"
        recorder = stack.enter_context(connection_recorder())
        recorder_url = f"http://127.0.0.1:{recorder.server_address[1]}/fhir"
        good_fhir = stack.enter_context(serve_in_thread(store, require_token=fhir_token))
        redirect_fhir = stack.enter_context(serve_in_thread(store, faults=Faults(redirect_to=recorder_url)))
        callers = [
            {
                "issuer": ISSUER,
                "jwks_url": f"{jwks_base}/a/jwks.json",
                "jku_allowlist": [f"{jwks_base}/a/rotated.json"],
                "algorithms": ["ES384", "RS384"],
                "tenants": [TENANT],
                "fhir_servers": [good_fhir, redirect_fhir],
            },
            {
                "issuer": WILDCARD_ISSUER,
                "jwks": {"keys": [wildcard_key.jwk()]},
                "fhir_servers": ["https://*"],
            },
        ]

        def config_for(port: int) -> Path:
            """A copy of hooks/ that trusts ``callers`` and knows its own URL (the tokens' audience)."""
            server = {"public_base_url": f"http://127.0.0.1:{port}"}
            return config_copy(tmp / f"port-{port}", server=server, callers=callers)

        service = stack.enter_context(start_service(config_for, workers=2))
        expected = "sqlite" if module_database == "sqlite" else "postgresql"
        assert requests.get(f"{service.base}/readyz", timeout=10).json()["database"] == expected
        yield Env(
            service,
            key,
            rsa_key,
            rotated_key,
            wildcard_key,
            attacker,
            jwks,
            recorder,
            good_fhir,
            redirect_fhir,
            fhir_token,
            jwks_base,
        )


def assert_refused(env: Env, response: requests.Response, reason: str, **facts) -> dict:
    """A bare 401 for the caller, and a log line saying why (matched on ``facts`` such as the jti)."""
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    event = env.service.wait_for_event(
        lambda e: e.get("event") == "caller refused" and all(e.get(k) == v for k, v in facts.items())
    )
    assert reason in event["reason"]
    return event


def get_discovery(env: Env, token: str, **headers) -> requests.Response:
    return requests.get(env.url("/cds-services"), headers={**bearer(token), **headers}, timeout=10)


def post(env: Env, path: str, token: str, body: dict) -> requests.Response:
    return requests.post(env.url(path), json=body, headers=bearer(token), timeout=30)


# --- accepted -----------------------------------------------------------------------------------------------


def test_a_valid_token_is_accepted_on_discovery_service_and_feedback(env):
    assert get_discovery(env, env.token("/cds-services")).status_code == 200

    answer = post(env, SIGN, env.token(SIGN, tenant=TENANT), hook_request(PID, small_patient(PID)))
    assert answer.status_code == 200
    cards = answer.json()["cards"]
    assert cards

    feedback = {
        "feedback": [
            {
                "card": cards[0]["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        ]
    }
    stored = post(env, FEEDBACK, env.token(FEEDBACK), feedback)
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"stored": 1}


def test_an_rs384_token_and_an_audience_array_naming_this_endpoint_are_accepted(env):
    token = env.rsa_key.token(claims(ISSUER, ["https://other.example/x", env.url("/cds-services")]))
    assert get_discovery(env, token).status_code == 200


def test_a_jku_on_the_issuers_allowlist_is_used_for_a_rotated_key(env):
    token = env.rotated_key.token(
        claims(ISSUER, env.url("/cds-services")), jku=f"{env.jwks_base}/a/rotated.json"
    )
    assert get_discovery(env, token).status_code == 200
    assert "/a/rotated.json" in env.jwks.requests


def test_preflight_and_health_need_no_token(env):
    assert requests.options(env.url(SIGN), timeout=10).status_code == 204
    assert requests.get(env.url("/healthz"), timeout=10).status_code == 200


# --- refused ------------------------------------------------------------------------------------------------


def test_no_token_or_another_scheme_is_refused(env):
    response = requests.get(env.url("/cds-services"), timeout=10)
    assert response.status_code == 401 and response.json() == {"error": "unauthorized"}
    response = requests.get(
        env.url("/cds-services"), headers={"Authorization": "Basic dXNlcjpwYXNz"}, timeout=10
    )
    assert response.status_code == 401 and response.json() == {"error": "unauthorized"}


def test_alg_none_is_refused(env):
    payload = claims(ISSUER, env.url("/cds-services"))
    token = unsigned_token({"alg": "none", "typ": "JWT", "kid": env.key.kid}, payload)
    assert_refused(env, get_discovery(env, token), "algorithm refused", jti=payload["jti"])


def test_hs256_signed_with_the_issuers_public_key_is_refused(env):
    payload = claims(ISSUER, env.url("/cds-services"))
    token = hmac_token({"alg": "HS256", "typ": "JWT", "kid": env.key.kid}, payload, env.key.public_pem())
    assert_refused(env, get_discovery(env, token), "algorithm refused", jti=payload["jti"])


def test_expired_token_is_refused(env):
    now = int(time.time())
    jti = str(uuid.uuid4())
    token = env.token("/cds-services", iat=now - 900, exp=now - 600, jti=jti)
    assert_refused(env, get_discovery(env, token), "expired", jti=jti)


def test_token_issued_in_the_future_beyond_the_clock_skew_is_refused(env):
    now = int(time.time())
    jti = str(uuid.uuid4())
    token = env.token("/cds-services", iat=now + 600, exp=now + 900, jti=jti)
    assert_refused(env, get_discovery(env, token), "not yet valid", jti=jti)


def test_wrong_audience_is_refused(env):
    jti = str(uuid.uuid4())
    discovery_token = env.token("/cds-services", jti=jti)  # valid, but for another endpoint
    assert_refused(env, post(env, SIGN, discovery_token, hook_request(PID, None)), "aud", jti=jti)


def test_audience_is_checked_against_the_configured_url_never_the_host_header(env):
    jti = str(uuid.uuid4())
    token = env.key.token(claims(ISSUER, "http://attacker.example/cds-services", jti=jti))
    response = get_discovery(env, token, Host="attacker.example")
    assert_refused(env, response, "aud", jti=jti)


def test_untrusted_issuer_is_refused(env):
    payload = claims("https://evil.test", env.url("/cds-services"))
    assert_refused(
        env, get_discovery(env, env.attacker.token(payload)), "issuer not trusted", jti=payload["jti"]
    )


def test_forged_signature_under_a_trusted_kid_is_refused(env):
    forger = Signer("ES384", kid=env.key.kid)
    jti = str(uuid.uuid4())
    token = env.token("/cds-services", signer=forger, jti=jti)
    assert_refused(env, get_discovery(env, token), "signature", jti=jti)


def test_jku_off_the_allowlist_is_refused_and_never_fetched(env):
    jti = str(uuid.uuid4())
    token = env.attacker.token(
        claims(ISSUER, env.url("/cds-services"), jti=jti), jku=f"{env.jwks_base}/evil/jwks.json"
    )
    assert_refused(env, get_discovery(env, token), "jku not on the issuer's allowlist", jti=jti)
    assert "/evil/jwks.json" not in env.jwks.requests


def test_unknown_kid_is_refused(env):
    stranger = Signer("ES384", kid="kid-nobody-published")
    jti = str(uuid.uuid4())
    assert_refused(
        env, get_discovery(env, env.token("/cds-services", signer=stranger, jti=jti)), "unknown kid", jti=jti
    )


def test_tenant_not_registered_for_the_issuer_is_refused(env):
    jti = str(uuid.uuid4())
    token = env.token("/cds-services", tenant="some-other-hospital", jti=jti)
    assert_refused(env, get_discovery(env, token), "tenant not allowed", jti=jti)


@pytest.mark.parametrize("claim", ["aud", "exp", "iat", "jti"])
def test_token_missing_a_required_claim_is_refused(env, claim):
    marker = str(uuid.uuid4())
    changes = {claim: None, **({"jti": marker} if claim != "jti" else {"nonce": marker})}
    token = env.token("/cds-services", **changes)
    response = get_discovery(env, token)
    assert response.status_code == 401 and response.json() == {"error": "unauthorized"}
    if claim != "jti":
        assert_refused(env, response, f"missing claims: {claim}", jti=marker)


def test_oversized_token_is_refused_before_parsing(env):
    token = env.token("/cds-services", padding="x" * 9000)
    assert_refused(env, get_discovery(env, token), "token larger than 8192 bytes", size=len(token))


def test_replayed_jti_is_refused_by_every_worker(env):
    """Replays from many fresh connections: both workers answer some, and each one refuses."""
    replays = 24
    for _ in range(5):  # rounds, until the worker that did not accept the token has refused a replay
        jti = str(uuid.uuid4())
        token = env.token("/cds-services", jti=jti)
        assert get_discovery(env, token).status_code == 200
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda _, t=token: get_discovery(env, t).status_code, range(replays)))
        assert statuses == [401] * replays

        def about_this_token(events, j=jti):
            return [e for e in events if e.get("jti") == j]

        env.service.wait_until(
            lambda: len(about_this_token(env.service.events())) == replays + 1, "every call in the log"
        )
        events = about_this_token(env.service.events())
        [accepted] = [e for e in events if e["event"] == "caller authenticated"]
        refusals = [e for e in events if e["event"] == "caller refused"]
        assert {e["reason"] for e in refusals} == {"jti already used (replay)"}
        if {e["worker_pid"] for e in refusals} - {accepted["worker_pid"]}:
            return
    pytest.fail("no replay reached the other worker in 5 rounds")


# --- FHIR callbacks -----------------------------------------------------------------------------------------


def test_an_allowlisted_fhir_server_is_called_with_the_token(env):
    body = with_fhir_server(hook_request(PID, None), env.good_fhir, env.fhir_token)
    response = post(env, SIGN, env.token(SIGN), body)
    assert response.status_code == 200
    assert response.json()["cards"]


def test_fhir_server_not_on_the_allowlist_gets_no_callback_and_a_412(env):
    token = secret("stolen-for-elsewhere")
    body = with_fhir_server(hook_request(PID, None), "https://fhir.attacker.example/r4", token)
    response = post(env, SIGN, env.token(SIGN), body)
    assert response.status_code == 412
    assert REFUSED in json.dumps(response.json())
    event = env.service.wait_for_event(
        lambda e: e.get("event") == "fhirServer refused" and e.get("host") == "fhir.attacker.example"
    )
    assert "allowlist" in event["reason"] and event["issuer"] == ISSUER


def test_fhir_server_on_a_private_address_gets_no_callback(env):
    """The wildcard issuer may name any public https host, never a loopback, private or link-local one."""
    recorder_port = env.recorder.server_address[1]
    before = env.recorder.connections
    servers = {
        f"https://localhost:{recorder_port}/fhir": "localhost",  # a name that resolves to loopback
        f"https://127.0.0.1:{recorder_port}/fhir": "127.0.0.1",
        f"https://[::ffff:127.0.0.1]:{recorder_port}/fhir": "::ffff:127.0.0.1",
        "https://10.20.30.40/fhir": "10.20.30.40",
        "https://169.254.169.254/latest/meta-data": "169.254.169.254",
    }
    for server, host in servers.items():
        body = with_fhir_server(hook_request(PID, None), server, secret("fhir-token"))
        response = post(env, SIGN, env.wildcard_key.token(claims(WILDCARD_ISSUER, env.url(SIGN))), body)
        assert response.status_code == 412, server
        event = env.service.wait_for_event(
            lambda e, h=host: (
                e.get("event") == "fhirServer refused"
                and e.get("host") == h
                and e.get("issuer") == WILDCARD_ISSUER
            )
        )
        assert "address" in event["reason"]
    assert env.recorder.connections == before


def test_redirecting_fhir_server_is_not_followed(env):
    before = env.recorder.connections
    body = with_fhir_server(hook_request(PID, None), env.redirect_fhir, secret("fhir-token-redirected"))
    response = post(env, SIGN, env.token(SIGN), body)
    assert response.status_code == 412
    assert "redirect" in json.dumps(response.json())
    assert env.recorder.connections == before


# --- hardening ----------------------------------------------------------------------------------------------


def test_a_100_mb_body_gets_413_and_the_server_stays_up(env):
    size = 100 * 1024 * 1024
    port = int(env.service.base.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("POST", SIGN)
    for name, value in {
        **bearer(env.token(SIGN)),
        "Content-Type": "application/json",
        "Content-Length": str(size),
    }.items():
        connection.putheader(name, value)
    connection.endheaders()
    chunk = b" " * (1024 * 1024)
    try:
        for _ in range(size // len(chunk)):
            connection.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may stop reading once it has refused the body
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {"error": "request body too large"}
    connection.close()
    assert get_discovery(env, env.token("/cds-services")).status_code == 200


def test_no_token_ever_appears_in_the_log(env):
    # a few more of each kind, so this test stands on its own
    assert get_discovery(env, env.token("/cds-services")).status_code == 200
    assert get_discovery(env, env.attacker.token(claims(ISSUER, env.url("/cds-services")))).status_code == 401
    body = with_fhir_server(
        hook_request(PID, None), "https://fhir.attacker.example/r4", secret("fhir-token-final")
    )
    assert post(env, SIGN, env.token(SIGN), body).status_code == 412
    env.service.wait_for_event(lambda e: e.get("event") == "fhirServer refused")
    log = env.service.log_text()
    assert "caller refused" in log and "caller authenticated" in log
    signatures = [t.rsplit(".", 1)[-1] for t in MINTED if "." in t]
    leaked = [t for t in MINTED if t in log] + [s for s in signatures if len(s) >= 16 and s in log]
    assert leaked == []
    assert "Bearer " not in log


# --- units: verifier, keys, replay store, policy, configuration ---------------------------------------------


def _spec_file(suffix: str) -> Path:
    return next(SPEC_EXAMPLES.glob(f"*{suffix}"))


def test_the_specifications_example_jwt_verifies_against_its_example_jwks(tmp_path):
    jwks = json.loads(_spec_file("jwt-example-jwks-public.json").read_text())
    header = _spec_file("jwt-example-authorization-header.txt").read_text().strip()
    issuer = TrustedIssuer(
        issuer="https://fhir-ehr.example.com/",
        jwks={k["kid"]: k for k in jwks["keys"]},
        jku_allowlist=frozenset({"https://fhir-ehr.example.com/jwk_uri"}),
        tenants=frozenset({"2ddd6c3a-8e9a-44c6-a305-52111ad302a2"}),
    )
    replay = ReplayStore(make_engine(f"sqlite:///{tmp_path / 'r.sqlite3'}"), clock=lambda: 1400000000)
    strict = Verifier([issuer], "https://cds.example.org", replay, JwksCache(), clock=lambda: 1400000000)
    with pytest.raises(AuthError, match="lifetime"):  # it lives 3.5 years, against the spec's own 5 minutes
        strict.verify(header.removeprefix("Authorization: "), "/cds-services/some-service")
    verifier = Verifier(
        [issuer],
        "https://cds.example.org",
        replay,
        JwksCache(),
        clock=lambda: 1400000000,
        allow_test_keys=True,
        max_lifetime=4 * 365 * 86400,
    )  # a clock inside the token's lifetime
    caller = verifier.verify(header.removeprefix("Authorization: "), "/cds-services/some-service")
    assert (caller.issuer, caller.tenant, caller.kid) == (
        "https://fhir-ehr.example.com/",
        "2ddd6c3a-8e9a-44c6-a305-52111ad302a2",
        "example-kid",
    )
    with pytest.raises(AuthError, match="replay"):
        verifier.verify(header.removeprefix("Authorization: "), "/cds-services/some-service")
    verifier.clock = time.time  # today the example is long expired
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(header.removeprefix("Authorization: "), "/cds-services/some-service")


def test_published_test_keys_are_trusted_only_in_dev_configurations():
    sandbox = json.loads(SANDBOX_JWKS.read_text())["keys"][0]
    spec = json.loads(_spec_file("jwt-example-jwks-public.json").read_text())["keys"][0]
    for jwk in (sandbox, spec):
        assert public_key(jwk, "ES384", allow_test_keys=True) is not None
        with pytest.raises(AuthError, match="only in dev"):
            public_key(jwk, "ES384", allow_test_keys=False)


def test_the_sandbox_is_trusted_only_by_the_dev_configuration_on_a_loopback_url(tmp_path):
    config = load_config(ROOT / "hooks-examples" / "sandbox-dev")
    [sandbox] = config.settings["callers"]
    assert sandbox["issuer"] == "https://sandbox.cds-hooks.org"
    assert sandbox["jwks"] == json.loads(SANDBOX_JWKS.read_text())
    replay = ReplayStore(make_engine(f"sqlite:///{tmp_path / 'r.sqlite3'}"))
    assert Verifier.from_config(config, replay, JwksCache()).allow_test_keys
    deployed = dataclasses.replace(
        config,
        settings={
            **config.settings,
            "server": {**config.section("server"), "public_base_url": "https://cds.example.org"},
        },
    )
    assert not Verifier.from_config(deployed, replay, JwksCache()).allow_test_keys
    assert Verifier.from_config(deployed, replay, JwksCache(), dev=True).allow_test_keys
    assert load_config(ROOT / "hooks").settings.get("callers") == []  # production installs register their own


def test_keys_are_refetched_on_an_unknown_kid_at_most_once_per_interval():
    old, new = Signer("ES384"), Signer("ES384")
    documents = {"/jwks.json": {"keys": [old.jwk()]}}
    now = [1000.0]
    with jwks_server(documents) as server:
        url = f"http://127.0.0.1:{server.server_port}/jwks.json"
        cache = JwksCache(clock=lambda: now[0], refresh_interval=30)
        assert cache.key(url, old.kid)["x"] == old.jwk()["x"]
        documents["/jwks.json"] = {"keys": [old.jwk(), new.jwk()]}  # the EHR rotates its key
        for _ in range(50):
            assert cache.key(url, "made-up-kid") is None
        assert cache.key(url, new.kid) is None  # still inside the interval: no fetch
        assert len(server.requests) == 1
        now[0] += 31
        assert cache.key(url, new.kid)["x"] == new.jwk()["x"]
        assert len(server.requests) == 2


def test_replay_store_is_shared_through_the_database(database_url):
    now = [1000.0]
    worker_a = ReplayStore(make_engine(database_url), clock=lambda: now[0], prune_every=0)
    worker_b = ReplayStore(make_engine(database_url), clock=lambda: now[0], prune_every=0)
    assert worker_a.first_use(ISSUER, "jti-1", expires_at=1300)
    assert not worker_b.first_use(ISSUER, "jti-1", expires_at=1300)
    assert worker_b.first_use("https://another-issuer.test", "jti-1", expires_at=1300)
    now[0] = 2000.0  # long expired: pruned (such a token fails the expiry check anyway)
    assert worker_b.first_use(ISSUER, "jti-2", expires_at=2300)
    assert worker_a.first_use(ISSUER, "jti-1", expires_at=2300)


def test_verifier_refuses_malformed_and_hostile_tokens(tmp_path):
    key = Signer("ES384")
    issuer = TrustedIssuer(issuer=ISSUER, jwks={key.kid: key.jwk()})
    verifier = Verifier(
        [issuer],
        "https://cds.example.org",
        ReplayStore(make_engine(f"sqlite:///{tmp_path}/r.db")),
        JwksCache(),
    )
    aud = "https://cds.example.org/cds-services"
    cases = {
        "not a compact JWS": "abc.def",
        "malformed token header": "!!!.e30.sig",
        "typ is not JWT": key.token(claims(ISSUER, aud), typ="at+jwt"),
        "JWS extensions": key.token(claims(ISSUER, aud), crit=["exp"]),
        "exp, iat and nbf must be numbers": key.token(claims(ISSUER, aud, exp="tomorrow")),
        "not yet valid": key.token(claims(ISSUER, aud, nbf=int(time.time()) + 3600)),
        "jti must be a string": key.token(claims(ISSUER, aud, jti="x" * 300)),
        "algorithm not allowed for this issuer": Signer("ES256", kid=key.kid).token(claims(ISSUER, aud)),
    }
    for reason, token in cases.items():
        with pytest.raises(AuthError, match=reason):
            verifier.verify(f"Bearer {token}", "/cds-services")
    duplicate = base64.urlsafe_b64encode(b'{"iss":"a","iss":"b"}').rstrip(b"=").decode()
    with pytest.raises(AuthError, match="malformed token payload"):
        verifier.verify(f"Bearer eyJhbGciOiJFUzM4NCJ9.{duplicate}.c2ln", "/cds-services")
    with pytest.raises(AuthError, match="no bearer token"):
        bearer_token("Bearer ")


def fake_resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("unknown host")
        return table[host]

    return resolve


def caller_with(servers: list[str]):
    from cds_service.auth import Caller

    return Caller(
        trusted=TrustedIssuer(issuer=ISSUER, jwks={}, fhir_servers=tuple(servers)),
        tenant=None,
        jti="j",
        kid="k",
    )


def test_fhir_policy_for_an_authenticated_caller():
    policy = FhirPolicy(
        dev=False,
        resolver=fake_resolver(
            {
                "a.hospital.org": ["203.0.113.10"],
                "b.hospital.org": ["10.1.2.3"],
                "c.hospital.org": ["8.8.8.8", "127.0.0.1"],
                "good.hospital.org": ["8.8.4.4"],
            }
        ),
    )
    caller = caller_with(
        [
            "https://fhir.hospital.org/r4",
            "https://10.0.0.5/fhir",
            "https://*.hospital.org",
            "http://127.0.0.1:9000/fhir",
        ]
    )
    allowed = [
        "https://fhir.hospital.org/r4",
        "https://fhir.hospital.org/r4/",
        "https://FHIR.hospital.org:443/r4/x",
        "https://10.0.0.5/fhir",
        "https://good.hospital.org/any",
        "https://good.hospital.org:8443/any",
        "http://127.0.0.1:9000/fhir",
    ]
    for url in allowed:
        assert policy.refusal(url, caller) is None, url
    refused = [
        "https://fhir.hospital.org/r4evil",
        "http://fhir.hospital.org/r4",
        "https://fhir.hospital.org:8443/r4",
        "https://a.hospital.org/",  # 203.0.113.0/24 is documentation space, not public
        "https://b.hospital.org/",
        "https://c.hospital.org/",
        "https://unknown.hospital.org/",
        "https://user:pw@fhir.hospital.org/r4",
        "https://fhir.hospital.org/r4/../admin",
        "https://fhir.hospital.org/r4/%2e%2e/admin",
        "https://fhir.hospital.org/r4?x=1",
        "ftp://fhir.hospital.org/r4",
        "https://hospital.org.attacker.example/",
        "https://10.0.0.6/fhir",
        "http://127.0.0.1:9001/fhir",
    ]
    for url in refused:
        assert policy.refusal(url, caller) is not None, url
    assert policy.refusal("https://fhir.hospital.org/r4", None).reason == "no authenticated caller"


def test_fhir_policy_in_dev_allows_public_https_and_loopback_only():
    policy = FhirPolicy(
        dev=True,
        resolver=fake_resolver(
            {
                "fhir.example.org": ["93.184.216.34"],
                "localhost": ["127.0.0.1", "::1"],
                "127.0.0.1": ["127.0.0.1"],
                "intranet.example.org": ["192.168.1.20"],
                "169.254.169.254": ["169.254.169.254"],
            }
        ),
    )
    for url in ["https://fhir.example.org/r4", "http://localhost:8080/fhir", "http://127.0.0.1:9/fhir"]:
        assert policy.refusal(url, None) is None, url
    for url in [
        "http://fhir.example.org/r4",
        "https://intranet.example.org/fhir",
        "http://169.254.169.254/",
        "https://nowhere.example.org/",
    ]:
        assert policy.refusal(url, None) is not None, url


def test_a_hanging_dns_resolver_cannot_hold_a_request_past_its_deadline():
    release = threading.Event()

    def hanging(host: str, port: int) -> list[str]:
        release.wait(10)
        return ["93.184.216.34"]

    policy = FhirPolicy(dev=True, resolver=hanging)
    started = time.monotonic()
    refusal = policy.refusal("https://fhir.example.org/r4", None, timeout=0.3)
    release.set()
    assert refusal is not None and "did not resolve within the deadline" in refusal.reason
    assert time.monotonic() - started < 5  # bounded by the timeout, not by the resolver


def test_configuration_refuses_hmac_none_private_keys_and_plain_http(tmp_path):
    settings_path = config_copy(tmp_path) / "settings.yaml"
    base = load_config(settings_path.parent).settings

    def problems(caller: dict) -> list[str]:
        return check_settings(
            {**base, "callers": [{"issuer": ISSUER, "jwks_url": "https://ehr.test/jwks", **caller}]},
            settings_path,
        )

    assert problems({}) == []
    assert problems({"algorithms": ["HS256"]})
    assert problems({"algorithms": ["none"]})
    assert problems({"algorithms": ["ES384", "HS512"]})
    assert problems({"jwks_url": "http://ehr.test/jwks"})
    assert problems({"jku_allowlist": ["http://attacker.example/jwks"]})
    assert problems({"fhir_servers": ["http://fhir.hospital.org/r4"]})
    assert problems({"fhir_servers": ["https://fhir.hospital.org/r4?x=1"]})
    assert problems({"jwks": {"keys": [{"kty": "EC", "kid": "k", "d": "secret"}]}})  # and jwks_url: one only
    no_keys = check_settings({**base, "callers": [{"issuer": ISSUER}]}, settings_path)
    assert no_keys
    private = check_settings(
        {
            **base,
            "callers": [{"issuer": ISSUER, "jwks": {"keys": [{"kty": "EC", "kid": "k", "d": "secret"}]}}],
        },
        settings_path,
    )
    assert private
