"""task deleted_at

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 10:00:00.000000

A delete through the OpenAI or Ark face marks the task deleted instead of removing the row:
its ledger entries, callbacks and idempotency keys still refer to it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleted_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
