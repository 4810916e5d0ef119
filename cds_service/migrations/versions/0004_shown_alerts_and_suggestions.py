"""Findings already shown, as keyed hashes (alert_memory), its shared secret, and which finding each shown
suggestion answers (issue 11).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made from the tables' definitions (create_all) before this migration ran already has them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "shown_suggestions" not in existing:
        _shown_suggestions()
    if "shown_alerts" not in existing:
        _shown_alerts()
    if "service_secrets" not in existing:
        op.create_table(
            "service_secrets",
            sa.Column("name", sa.String(64), primary_key=True),
            sa.Column("value", sa.String(200), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )


def _shown_suggestions() -> None:
    op.create_table(
        "shown_suggestions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(36), nullable=False),
        sa.Column("suggestion_uuid", sa.String(200), nullable=False),
        sa.Column("finding_id", sa.String(8), nullable=False),
    )
    op.create_index("ix_shown_suggestions_shown_at", "shown_suggestions", ["shown_at"])
    op.create_index("ix_shown_suggestions_suggestion_uuid", "shown_suggestions", ["suggestion_uuid"])


def _shown_alerts() -> None:
    op.create_table(
        "shown_alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("namespace", sa.String(32), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_shown_alerts_key", "shown_alerts", ["key"])
    op.create_index("ix_shown_alerts_expires_at", "shown_alerts", ["expires_at"])


def downgrade() -> None:
    op.drop_table("service_secrets")
    op.drop_table("shown_alerts")
    op.drop_table("shown_suggestions")
