"""The database, on SQLite and on a real PostgreSQL: what callers send fits, rows are durable, migrations are
safe when instances start together, an outage gives 503 and heals, a reload opens no new pool."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import inspect

from cds_service import metrics
from cds_service.app import create_app
from cds_service.migrations import current, head
from cds_service.storage import Store, make_engine
from cds_service.tables import metadata
from tests.support import CDS_SERVICE, config_copy, hook_request, make_app, small_patient, with_fhir_server

PID = "store-p1"
SIGN = "/cds-services/tacrolimus-order-sign"


def _app(tmp_path, database_url: str, **changes):
    return make_app(tmp_path, feedback={"database_url": database_url}, **changes)


def test_every_value_the_schemas_admit_is_stored_and_the_valid_items_kept(tmp_path, database_url):
    client = _app(tmp_path, database_url).test_client()
    request = hook_request(PID, small_patient(PID))
    request["hookInstance"] = "h" * 250  # the schema allows 256
    cards = client.post(SIGN, json=request).get_json()["cards"]
    assert cards
    long_timestamp = "2026-01-02T03:04:05." + "1" * 80 + "+00:00"  # RFC 3339 puts no cap on the fraction
    assert len(long_timestamp) == 106
    items = [
        {
            "card": "c" * 300,
            "outcome": "accepted",
            "outcomeTimestamp": long_timestamp,
            "acceptedSuggestions": [{"id": "s" * 300}],
        },
        {
            "card": cards[0]["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-01-02T03:04:05Z",
            "overrideReason": {
                "reason": {"system": "urn:x:" + "s" * 600, "code": "k" * 300, "display": "d" * 700},
                "userComment": "nul \u0000 inside",
            },
        },
        {"card": "c-bad", "outcome": "maybe", "outcomeTimestamp": "2026-01-02T03:04:05Z"},
    ]
    answer = client.post(f"{SIGN}/feedback", json={"feedback": items})
    assert answer.status_code == 400, answer.get_json()
    assert answer.get_json()["stored"] == 2, answer.get_json()  # the bad one named, not the rest
    store = Store(make_engine(database_url))
    rows = store.feedback_rows()
    assert [len(r["card_uuid"]) for r in rows] == [300, 36]
    assert rows[0]["outcome_timestamp"] == long_timestamp
    assert rows[1]["override_display"] == "d" * 700 and rows[1]["user_comment"] == "nul \ufffd inside"
    shown = store.shown_rows()  # written before the answer left: no flush, no wait
    assert shown and {r["hook_instance"] for r in shown} == {"h" * 250}
    assert {r["card_uuid"] for r in shown} == {c["uuid"] for c in cards}


def test_feedback_is_counted_by_the_finding_on_its_card(tmp_path, database_url):
    client = _app(tmp_path, database_url).test_client()
    cards = client.post(SIGN, json=hook_request(PID, small_patient(PID))).get_json()["cards"]
    card = cards[0]
    finding = card["extension"]["org.example.tacrolimus-cds.findings"][0]["id"]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-01-02T03:04:05Z"}
    labels = {"service": "tacrolimus-order-sign", "finding": finding, "outcome": "overridden"}
    before = metrics.FEEDBACK.labels(**labels)._value.get()
    assert client.post(f"{SIGN}/feedback", json={"feedback": [item]}).status_code == 200
    assert metrics.FEEDBACK.labels(**labels)._value.get() == before + 1
    page = client.get("/metrics").get_data(as_text=True)
    assert (
        f'cds_feedback_total{{finding="{finding}",outcome="overridden",service="tacrolimus-order-sign"}}'
        in page
    )
    assert 'cds_stage_seconds_count{stage="rules"}' in page
    assert 'cds_hook_calls_total{service="tacrolimus-order-sign",status="200"}' in page


@pytest.mark.slow
def test_instances_starting_together_on_an_empty_database_all_start(tmp_path, database_url):
    config = config_copy(tmp_path, feedback={"database_url": database_url})
    upgrades = [
        subprocess.Popen(
            [CDS_SERVICE, "db", "upgrade", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [(p.wait(timeout=120), p.stdout.read()) for p in upgrades]
    assert [code for code, _ in outputs] == [0, 0, 0, 0], outputs
    engine = make_engine(database_url, migrate=False)
    with engine.connect() as connection:
        assert current(connection) == head()
    assert set(inspect(engine).get_table_names()) == {*metadata.tables, "alembic_version"}


def test_a_statement_that_fails_leaves_its_connection_usable(database_url):
    """A duplicate key the code expects (a replayed JWT, two workers making one secret) is refused; the pooled
    connection must still work after the client-side statement deadline has passed."""
    from sqlalchemy import insert, select
    from sqlalchemy.exc import IntegrityError

    from cds_service.storage import CLIENT_STATEMENT_SECONDS
    from cds_service.tables import admin_secret

    engine = make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(insert(admin_secret).values(id=1, secret="first"))
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert(admin_secret).values(id=1, secret="second"))
    time.sleep(CLIENT_STATEMENT_SECONDS + 0.5)
    with engine.connect() as connection:
        assert connection.execute(select(admin_secret.c.secret)).scalar_one() == "first"
    engine.dispose()


def test_the_migrated_schema_is_the_one_the_code_uses(database_url):
    """Every table and column in storage.py has its migration (types too, where the database has them)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(database_url)
    with engine.connect() as connection:
        postgres = engine.dialect.name == "postgresql"
        context = MigrationContext.configure(connection, opts={"compare_type": postgres})
        assert compare_metadata(context, metadata) == []


def test_a_database_from_before_migrations_is_taken_over(database_url):
    from alembic import command

    from cds_service.migrations import alembic_config

    engine = make_engine(database_url, migrate=False)
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0001")  # the tables as create_all made them
        connection.commit()
        connection.exec_driver_sql("DROP TABLE alembic_version")
        connection.commit()
    make_engine(database_url)
    with engine.connect() as connection:
        assert current(connection) == head()


def test_a_reload_opens_no_new_connection_pool(tmp_path, database_url):
    app = _app(tmp_path, database_url)
    holder = app.extensions["cds_runtime"]
    engine = holder().store.engine
    for _ in range(5):
        assert holder.reload() == []
    assert holder().store.engine is engine


# --- a database that goes away and comes back ---------------------------------------------------------------


class Cable:
    """A TCP relay between the service and PostgreSQL that the test can unplug and plug in again."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connected = True
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.connected:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def unplug(self) -> None:
        self.connected = False
        for s in self.sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.sockets.clear()

    def plug(self) -> None:
        self.connected = True

    def close(self) -> None:
        self.unplug()
        self.listener.close()


@contextmanager
def cable_to(postgres_url: str) -> Iterator[tuple[Cable, str]]:
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    cable = Cable(url.port)
    try:
        yield cable, url.set(port=cable.port).render_as_string(hide_password=False)
    finally:
        cable.close()


def test_a_database_outage_gives_503_with_retry_after_and_heals_by_itself(tmp_path, postgres):
    database = postgres.new_database()
    try:
        with cable_to(database) as (cable, url):
            client = _app(tmp_path, url).test_client()
            item = {"card": "c-1", "outcome": "overridden", "outcomeTimestamp": "2026-01-02T03:04:05Z"}
            assert client.get("/readyz").status_code == 200
            cable.unplug()
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.get_json()["reason"] == "database does not answer"
            assert client.get("/healthz").status_code == 200  # liveness: the process itself is fine
            stored = client.post(f"{SIGN}/feedback", json={"feedback": [item]})
            assert stored.status_code == 503 and stored.headers["Retry-After"] == "5"
            assert "database" in stored.get_json()["error"]
            cable.plug()
            assert client.get("/readyz").status_code == 200
            assert client.post(f"{SIGN}/feedback", json={"feedback": [item]}).status_code == 200
        assert [r["card_uuid"] for r in Store(make_engine(database)).feedback_rows()] == ["c-1"]
    finally:
        postgres.drop_database(database)


def test_shown_findings_rows_lost_to_a_database_failure_are_logged_and_counted(tmp_path, postgres, caplog):
    database = postgres.new_database()
    try:
        with cable_to(database) as (cable, url):
            client = _app(tmp_path, url).test_client()
            before = metrics.SHOWN_ROWS_LOST._value.get()
            cable.unplug()
            answer = client.post(SIGN, json=hook_request(PID, small_patient(PID)))
            assert answer.status_code == 200 and answer.get_json()["cards"]  # advice does not wait on stats
            assert metrics.SHOWN_ROWS_LOST._value.get() > before
            assert any(r.getMessage() == "shown findings not stored" for r in caplog.records)
    finally:
        postgres.drop_database(database)


class _RecordingFhir(BaseHTTPRequestHandler):
    """A minimal FHIR server: the patient, and an empty Bundle for every search; keeps X-Request-ID."""

    def do_GET(self) -> None:
        self.server.request_ids.append(self.headers.get("X-Request-ID"))
        if self.path.startswith(f"/Patient/{PID}"):
            document = small_patient(PID)[0]
        else:
            document = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_request_id_is_echoed_or_made_and_sent_on_every_fhir_call(tmp_path):
    client = make_app(tmp_path).test_client()
    given = client.get("/healthz", headers={"X-Request-ID": "ehr-42.abc"})
    assert given.headers["X-Request-ID"] == "ehr-42.abc"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id;"}).headers["X-Request-ID"]
    assert made != "bad id;" and len(made) == 32
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingFhir)
    server.request_ids = []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        body = with_fhir_server(hook_request(PID, None), f"http://127.0.0.1:{server.server_port}", "t")
        ok_before = metrics.FHIR_REQUESTS.labels(outcome="ok")._value.get()
        client.post(SIGN, json=body, headers={"X-Request-ID": "call-7"})
        fhir_ok = metrics.FHIR_REQUESTS.labels(outcome="ok")._value.get() - ok_before
    finally:
        server.shutdown()
        server.server_close()
    assert len(server.request_ids) >= 5 and set(server.request_ids) == {"call-7"}
    assert fhir_ok == len(server.request_ids)  # cds_fhir_requests_total{outcome="ok"}: one per exchange


def test_authenticated_calls_answer_503_while_the_replay_table_is_unreachable(tmp_path, postgres):
    """Production mode: every JWT jti is recorded, so the database is needed before the rules run."""
    from tests.security_helpers import Signer, bearer, claims

    signer = Signer("ES384")
    issuer = "https://ehr-outage.test"
    database = postgres.new_database()
    try:
        with cable_to(database) as (cable, url):
            config = config_copy(
                tmp_path,
                feedback={"database_url": url},
                server={"public_base_url": "http://localhost"},
                callers=[{"issuer": issuer, "jwks": {"keys": [signer.jwk()]}}],
            )
            client = create_app(config_dir=config).test_client()
            body = hook_request(PID, small_patient(PID))

            def call():
                token = signer.token(claims(issuer, f"http://localhost{SIGN}"))
                return client.post(SIGN, json=body, headers=bearer(token))

            assert call().status_code == 200
            cable.unplug()
            refused = call()
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
            cable.plug()
            assert call().status_code == 200
    finally:
        postgres.drop_database(database)


def test_the_environment_wins_over_settings_yaml_for_deployment_values(tmp_path, monkeypatch, database_url):
    from cds_service.config import load_config

    config_dir = config_copy(tmp_path, feedback={"database_url": "sqlite:///does/not/matter.sqlite3"})
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    monkeypatch.setenv("CDS_PUBLIC_BASE_URL", "https://cds.example-hospital.org")
    config = load_config(config_dir)
    assert config.section("feedback")["database_url"] == database_url
    assert config.section("server")["public_base_url"] == "https://cds.example-hospital.org"
    assert (
        config.services["tacrolimus-order-sign"].settings["server"]["public_base_url"].startswith("https://")
    )
    client = create_app(config_dir=config_dir, dev=True)
    item = {"card": "c-env", "outcome": "overridden", "outcomeTimestamp": "2026-01-02T03:04:05Z"}
    assert client.test_client().post(f"{SIGN}/feedback", json={"feedback": [item]}).status_code == 200
    assert [r["card_uuid"] for r in Store(make_engine(database_url)).feedback_rows()] == ["c-env"]


def test_sqlite_writes_reach_the_database_file_within_seconds_without_a_request_waiting(tmp_path):
    """WAL checkpoints run in a background thread: rows committed by calls are in the main database file (not
    only in its write-ahead log) a moment later, though no request's commit ran the checkpoint."""
    engine = make_engine(f"sqlite:///{tmp_path / 'cds.sqlite3'}")
    cards = [
        {
            "uuid": "c1",
            "source": {"topic": {"code": "pregnancy"}},
            "extension": {"findings": [{"id": "P1", "indicator": "info"}]},
        }
    ]
    store = Store(engine)
    for i in range(20):
        assert store.record_shown("tacrolimus-order-sign", None, f"hook-{i}", cards) == 1
    deadline = time.monotonic() + 10
    while True:
        copy = tmp_path / "main-file-only.sqlite3"  # the database file alone, without its -wal file
        shutil.copyfile(tmp_path / "cds.sqlite3", copy)
        with closing(sqlite3.connect(copy)) as connection:
            try:
                rows = connection.execute("SELECT count(*) FROM shown_findings").fetchone()[0]
            except sqlite3.DatabaseError:
                rows = 0
        if rows == 20 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == 20
