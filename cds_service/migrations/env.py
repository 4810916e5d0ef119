"""Alembic's entry point: runs on the connection ``cds_service.migrations.upgrade`` hands over."""

from alembic import context

from cds_service.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the service always passes its own connection
    raise RuntimeError("run migrations with `cds-service db upgrade`, not the alembic command")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
