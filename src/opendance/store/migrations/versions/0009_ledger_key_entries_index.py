"""ledger key entries index

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 13:30:00.000000

`GET /v1/usage` pages a key's ledger entries by id: (api_key_id, id) serves it in order, and
replaces the index on api_key_id alone.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_entries_key_id", ["api_key_id", "id"], unique=False)
        batch_op.drop_index("ix_ledger_entries_api_key_id")


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_entries_api_key_id", ["api_key_id"], unique=False)
        batch_op.drop_index("ix_ledger_entries_key_id")
