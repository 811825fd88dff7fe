"""fair share between keys, service tiers and deadlines

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 22:50:00.000000

Each model's queue was first-in first-out across keys. Tasks now carry a tier, a fair-queuing
start tag and a deadline; `fair_shares` and `queue_clocks` hold the flows' state. Tasks already
pending keep their order (tag 0, default tier, no deadline).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tier", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("fair_tag", sa.Float(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("expires_at", sa.Float(), nullable=True))
        batch_op.create_index(
            "ix_tasks_fair_claim",
            ["status", "requested_model", "tier", "fair_tag", "created_seq"],
            unique=False,
        )
        batch_op.create_index("ix_tasks_status_expires", ["status", "expires_at"], unique=False)
        batch_op.create_index("ix_tasks_updated_at", ["updated_at"], unique=False)
    op.create_table(
        "fair_shares",
        sa.Column("requested_model", sa.String(length=200), nullable=False),
        sa.Column("tier", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.String(length=16), nullable=False),
        sa.Column("finish_tag", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("requested_model", "tier", "api_key_id"),
    )
    op.create_table(
        "queue_clocks",
        sa.Column("requested_model", sa.String(length=200), nullable=False),
        sa.Column("tier", sa.Integer(), nullable=False),
        sa.Column("virtual_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("requested_model", "tier"),
    )


def downgrade() -> None:
    op.drop_table("queue_clocks")
    op.drop_table("fair_shares")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_updated_at")
        batch_op.drop_index("ix_tasks_status_expires")
        batch_op.drop_index("ix_tasks_fair_claim")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("fair_tag")
        batch_op.drop_column("tier")
