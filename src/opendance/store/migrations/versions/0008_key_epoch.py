"""key epoch

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 13:00:00.000000

Every process caches authenticated keys. A one-row counter, bumped by a trigger whenever a
key's revocation, group or secret changes (whoever changes it: the CLI, another replica, SQL by
hand), tells every process at once that its cache is stale; on PostgreSQL the trigger also
sends a NOTIFY, so replicas learn of it without polling.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_COLUMNS = "revoked_at, user_group, secret_hash"


def upgrade() -> None:
    op.create_table(
        "key_epoch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO key_epoch (id, value) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION opendance_key_changed() RETURNS trigger AS $$
            BEGIN
                UPDATE key_epoch SET value = value + 1 WHERE id = 1;
                PERFORM pg_notify('opendance_keys', '');
                RETURN NULL;
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            f"CREATE TRIGGER api_keys_changed AFTER UPDATE OF {_COLUMNS} OR DELETE ON api_keys "
            "FOR EACH STATEMENT EXECUTE FUNCTION opendance_key_changed()"
        )
        return
    bump = "BEGIN UPDATE key_epoch SET value = value + 1 WHERE id = 1; END"
    op.execute(f"CREATE TRIGGER api_keys_changed AFTER UPDATE OF {_COLUMNS} ON api_keys {bump}")
    op.execute(f"CREATE TRIGGER api_keys_deleted AFTER DELETE ON api_keys {bump}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER api_keys_changed ON api_keys")
        op.execute("DROP FUNCTION opendance_key_changed()")
    else:
        op.execute("DROP TRIGGER api_keys_changed")
        op.execute("DROP TRIGGER api_keys_deleted")
    op.drop_table("key_epoch")
