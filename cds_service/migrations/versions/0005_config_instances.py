"""The configuration every instance serves, and the last reload announced to all of them (issue 26).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made from the tables' definitions (create_all) before this migration ran already has them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "config_announcements" not in existing:
        op.create_table(
            "config_announcements",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("version", sa.String(16), nullable=False),
            sa.Column("announced_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("announced_by", sa.String(200), nullable=False),
        )
    if "config_instances" not in existing:
        op.create_table(
            "config_instances",
            sa.Column("instance", sa.String(200), primary_key=True),
            sa.Column("version", sa.String(16), nullable=False),
            sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("state", sa.Text, nullable=False),
        )
        op.create_index("ix_config_instances_seen_at", "config_instances", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_config_instances_seen_at", "config_instances")
    op.drop_table("config_instances")
    op.drop_table("config_announcements")
