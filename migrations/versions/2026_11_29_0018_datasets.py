"""datasets: uploaded data sets (metadata; the arrays are blobs), jobs.dataset_id

Revision ID: 0018_datasets
Revises: 0017_tenants
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0018_datasets"
down_revision: str | None = "0017_tenants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("n_samples", sa.Integer(), nullable=False),
        sa.Column("n_features", sa.Integer(), nullable=False),
        sa.Column("n_classes", sa.Integer(), nullable=True),
        sa.Column("n_targets", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("feature_names", JSONType, nullable=True),
        sa.Column("target_name", sa.String(200), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("upload_bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("blob_key", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_index(op.f("ix_datasets_tenant"), "datasets", ["tenant"])
    op.create_index("ix_datasets_created_at_id", "datasets", ["created_at", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dataset_id", sa.String(36), nullable=True))
        batch.create_index(op.f("ix_jobs_dataset_id"), ["dataset_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_dataset_id"))
        batch.drop_column("dataset_id")
    op.drop_index("ix_datasets_created_at_id", table_name="datasets")
    op.drop_index(op.f("ix_datasets_tenant"), table_name="datasets")
    op.drop_table("datasets")
