"""The tables as they were before migrations: feedback, shown findings, seen JWT ids.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shown_findings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(200)),
        sa.Column("hook_instance", sa.String(200), nullable=False),
        sa.Column("card_uuid", sa.String(36), nullable=False),
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("finding_id", sa.String(8), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
    )
    op.create_index("ix_shown_findings_shown_at", "shown_findings", ["shown_at"])
    op.create_index("ix_shown_findings_card_uuid", "shown_findings", ["card_uuid"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(200)),
        sa.Column("card_uuid", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_timestamp", sa.String(64), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON, nullable=False),
        sa.Column("override_system", sa.String(500)),
        sa.Column("override_code", sa.String(200)),
        sa.Column("override_display", sa.String(500)),
        sa.Column("user_comment", sa.Text),
    )
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"])
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])
    op.create_table(
        "seen_tokens",
        sa.Column("issuer", sa.String(500), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_seen_tokens_expires_at", "seen_tokens", ["expires_at"])
