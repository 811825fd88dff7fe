"""task change notify

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 10:00:00.000000

Every process keeps task views in memory and holds long-polls open, so it must hear of a
task's change made by another process. On PostgreSQL a trigger NOTIFYs `opendance_tasks` with
the task id on every update of a task row, whoever makes it (a replica, a worker, SQL by
hand); PostgreSQL delivers it at commit, once per task and transaction. Inserts are not
announced: nothing is cached or waited on for a task a process has not read yet. SQLite has
no NOTIFY; there the processes poll `ix_tasks_updated_at` (migration 0011), so nothing is
added.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION opendance_task_changed() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('opendance_tasks', NEW.id);
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        "CREATE TRIGGER tasks_changed AFTER UPDATE ON tasks "
        "FOR EACH ROW EXECUTE FUNCTION opendance_task_changed()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER tasks_changed ON tasks")
    op.execute("DROP FUNCTION opendance_task_changed()")
