"""The keeper's tables (`dagpg watch`): its heartbeat and state, and the actions it took.

Revision ID: 0002_keeper
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002_keeper"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "dagpg"


def upgrade() -> None:
    # One row per host whose keeper held the lock: `dagpg verify` reads last_pass_at (the
    # keeper's heartbeat); state carries consecutive findings across `dagpg watch --once` runs.
    op.create_table(
        "keeper",
        sa.Column("host", sa.Text, primary_key=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_pass_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interval_s", sa.Float, nullable=False),
        sa.Column("passes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("state", JSONB),
        schema=SCHEMA,
    )
    # Every restart and every run it ended: the restart budget (per service and hour) is
    # counted here, so a restarted keeper keeps it.
    op.create_table(
        "keeper_actions",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),  # restart | fail_run | cancel_run
        sa.Column("target", sa.Text, nullable=False),  # a service name or a run id
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("detail", JSONB),
        schema=SCHEMA,
    )
    op.create_index("keeper_actions_kind_target_at", "keeper_actions", ["kind", "target", "at"],
                    schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("keeper_actions", schema=SCHEMA)
    op.drop_table("keeper", schema=SCHEMA)
