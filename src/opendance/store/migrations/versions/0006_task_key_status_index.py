"""tasks (api_key_id, status) index

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 22:45:00.000000

Every create counts the key's unfinished tasks in its transaction (the per-key cap). With only
(api_key_id, created_seq) that count read every task row of the key; this index answers it
from the index alone, over the key's unfinished tasks.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_key_status", "tasks", ["api_key_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_tasks_key_status", table_name="tasks")
