"""sweeps: a sweep row, its members (grid values, preflight risk), jobs.parent_sweep_id

Revision ID: 0016_sweeps
Revises: 0015_integration
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.db import NonFiniteFloat

revision: str = "0016_sweeps"
down_revision: str | None = "0015_integration"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("axes", JSONType, nullable=False),
        sa.Column("member_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    op.create_index(op.f("ix_sweeps_created_at"), "sweeps", ["created_at"])
    op.create_table(
        "sweep_members",
        sa.Column("sweep_id", sa.String(36), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("axis_values", JSONType, nullable=False),
        sa.Column("predicted_risk", sa.String(16), nullable=True),
        sa.Column("first_bad_step", sa.Integer(), nullable=True),
        sa.Column("peak_to_baseline", NonFiniteFloat(), nullable=True),
        sa.Column("final_loss", NonFiniteFloat(), nullable=True),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeps.id"],
                                name=op.f("fk_sweep_members_sweep_id_sweeps"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"],
                                name=op.f("fk_sweep_members_job_id_jobs"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("sweep_id", "idx", name=op.f("pk_sweep_members")),
    )
    op.create_index(op.f("ix_sweep_members_job_id"), "sweep_members", ["job_id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_sweep_id", sa.String(36), nullable=True))
        batch.create_foreign_key(op.f("fk_jobs_parent_sweep_id_sweeps"), "sweeps",
                                 ["parent_sweep_id"], ["id"], ondelete="SET NULL")
        batch.create_index(op.f("ix_jobs_parent_sweep_id"), ["parent_sweep_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_parent_sweep_id"))
        batch.drop_constraint(op.f("fk_jobs_parent_sweep_id_sweeps"), type_="foreignkey")
        batch.drop_column("parent_sweep_id")
    op.drop_index(op.f("ix_sweep_members_job_id"), table_name="sweep_members")
    op.drop_table("sweep_members")
    op.drop_index(op.f("ix_sweeps_created_at"), table_name="sweeps")
    op.drop_table("sweeps")
