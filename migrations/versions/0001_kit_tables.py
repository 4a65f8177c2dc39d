"""The kit's first tables: migration progress (resume) and report, and the backup catalog.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "dagpg"


def upgrade() -> None:
    op.create_table(
        "migration_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("source_fingerprint", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),  # running | done | failed
        sa.Column("phase", sa.Text),
        sa.Column("dagster_version", sa.Text, nullable=False),
        sa.Column("plan", JSONB),  # what the source held when the migration started
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("report", JSONB),
        schema=SCHEMA,
    )
    op.create_table(
        "migration_steps",
        sa.Column(
            "migration_id",
            sa.Integer,
            sa.ForeignKey(f"{SCHEMA}.migration_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("step", sa.Text, primary_key=True),  # e.g. "runs", "event_logs:<run_id>"
        sa.Column("rows", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("detail", JSONB),
        sa.Column("finished_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        schema=SCHEMA,
    )
    # The backup catalog (dagpg.backup.catalog): one row per `dagpg backup`, kept in step with the
    # folders by backup, verify, prune and restore. The folders and their manifests are the truth.
    op.create_table(
        "backups",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False, server_default="manual"),  # manual | scheduled | pre-restore
        sa.Column("status", sa.Text, nullable=False),  # ok | failed
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("dump_sha256", sa.Text),
        sa.Column("verified_at", sa.DateTime(timezone=True)),
        sa.Column("verify_status", sa.Text),  # ok | failed
        sa.Column("verify_detail", sa.Text),
        sa.Column("restore_tested_at", sa.DateTime(timezone=True)),
        sa.Column("error", sa.Text),
        sa.Column("manifest", JSONB),
        schema=SCHEMA,
    )
    op.create_index("backups_finished_at", "backups", ["finished_at"], schema=SCHEMA)


def downgrade() -> None:
    op.drop_table("backups", schema=SCHEMA)
    op.drop_table("migration_steps", schema=SCHEMA)
    op.drop_table("migration_runs", schema=SCHEMA)
