"""Every value a caller sends is Text, so whatever the schemas admit fits (issue 14: 500s on PostgreSQL).

A 300-character card, a 103-character outcomeTimestamp or a 250-character hookInstance overflowed VARCHAR
columns that SQLite never enforced. The index on feedback.card_uuid goes: no query uses it, and a long card
value would overflow a PostgreSQL btree entry. On SQLite lengths are not enforced, so only the index changes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

WIDENED = {
    "shown_findings": ("tenant", "hook_instance"),
    "feedback": (
        "tenant",
        "card_uuid",
        "outcome_timestamp",
        "override_system",
        "override_code",
        "override_display",
    ),
}


def upgrade() -> None:
    op.drop_index("ix_feedback_card_uuid", table_name="feedback")
    if op.get_bind().dialect.name == "sqlite":
        return
    for table, columns in WIDENED.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.Text())
