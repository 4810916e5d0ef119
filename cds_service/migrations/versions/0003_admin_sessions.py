"""Admin sign-in on the database: the cookie-signing secret, sessions, failed-login counts (issue 12).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Databases that ran the admin sign-in before migrations knew it made these tables themselves.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "admin_secret" not in existing:
        op.create_table(
            "admin_secret",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("secret", sa.String(64), nullable=False),
        )
    if "admin_sessions" not in existing:
        op.create_table(
            "admin_sessions",
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("token_sha256", sa.String(64), nullable=False),
            sa.Column("expires_at", sa.Float, nullable=False),
        )
    if "admin_login_failures" not in existing:
        op.create_table(
            "admin_login_failures",
            sa.Column("client", sa.String(64), primary_key=True),
            sa.Column("failures", sa.Integer, nullable=False),
            sa.Column("last_failure_at", sa.Float, nullable=False),
        )
