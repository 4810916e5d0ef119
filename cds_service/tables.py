"""Every table of the service's database, on one ``metadata``: what the migrations (``migrations/``) bring a
database to, and what ``tests/test_storage.py`` compares the migrated schema with.

Only definitions, no queries: the modules that read and write a table (``storage``, ``alert_memory``,
``auth``, ``admin_sessions``) import it from here, and so do the migrations, without importing those modules.
No patient data is stored in any of them.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

# Column types: what the service itself writes (uuids, finding ids, service ids) has a bounded String; what a
# caller sends (card, outcomeTimestamp, hookInstance, tenant, override reason) is Text, so every value the
# JSON Schemas admit fits on SQLite and PostgreSQL alike, and no caller value is under a btree index (an
# index entry is limited to about 2.7 kB on PostgreSQL). Changing a table needs a migration (migrations/).
shown_findings = Table(
    "shown_findings",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("shown_at", DateTime(timezone=True), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("tenant", Text),
    Column("hook_instance", Text, nullable=False),
    Column("card_uuid", String(36), nullable=False, index=True),
    Column("topic", String(64), nullable=False),
    Column("finding_id", String(8), nullable=False),
    Column("indicator", String(16), nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("tenant", Text),
    Column("card_uuid", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("outcome_timestamp", Text, nullable=False),
    Column("accepted_suggestions", JSON, nullable=False),
    Column("override_system", Text),
    Column("override_code", Text),
    Column("override_display", Text),
    Column("user_comment", Text),
)


seen_tokens = Table(
    "seen_tokens",  # callers' JWT ids, for replay protection across workers (auth.ReplayStore)
    metadata,
    Column("issuer", String(500), primary_key=True),  # a configured caller's issuer, exactly
    Column("jti", String(255), primary_key=True),  # auth.MAX_JTI_CHARS
    Column("expires_at", BigInteger, nullable=False, index=True),
)


shown_suggestions = Table(
    "shown_suggestions",  # which finding each shown suggestion answers: its feedback counts for that finding
    metadata,
    Column("id", Integer, primary_key=True),
    Column("shown_at", DateTime(timezone=True), nullable=False, index=True),
    Column("service_id", String(64), nullable=False),
    Column("card_uuid", String(36), nullable=False),
    Column("suggestion_uuid", String(200), nullable=False, index=True),
    Column("finding_id", String(8), nullable=False),
)

shown_alerts = Table(
    "shown_alerts",  # alert_memory: keyed hashes of (tenant, patient, order, finding) shown, never the ids
    metadata,
    Column("id", Integer, primary_key=True),
    Column("namespace", String(32), nullable=False),
    Column("key", String(64), nullable=False, index=True),
    Column("indicator", String(16), nullable=False),
    Column("shown_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

service_secrets = Table(
    "service_secrets",  # per-deployment secrets every worker and host shares (alert_memory's HMAC key)
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


# The admin page's sign-in (admin_sessions.py).
admin_secret = Table(
    "admin_secret",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("secret", String(64), nullable=False),
)
admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("token_sha256", String(64), nullable=False),
    Column("expires_at", Float, nullable=False),
)
admin_login_failures = Table(
    "admin_login_failures",
    metadata,
    Column("client", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_failure_at", Float, nullable=False),
)


# Every instance on one configuration (replicas.py): the last reload any instance made, and what each serves.
config_announcements = Table(
    "config_announcements",
    metadata,
    Column("id", Integer, primary_key=True),  # one row: the newest announcement
    Column("version", String(16), nullable=False),
    Column("announced_at", DateTime(timezone=True), nullable=False),
    Column("announced_by", String(200), nullable=False),
)
config_instances = Table(
    "config_instances",
    metadata,
    Column("instance", String(200), primary_key=True),  # host name and process id
    Column("version", String(16), nullable=False),
    Column("loaded_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False, index=True),
    Column("state", Text, nullable=False),
)
