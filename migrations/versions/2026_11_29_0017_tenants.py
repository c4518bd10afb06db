"""tenants: api_keys (hashed tenant keys), tenant_quotas, a tenant column on jobs and sweeps

Revision ID: 0017_tenants
Revises: 0016_sweeps
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_tenants"
down_revision: str | None = "0016_sweeps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("key_hash", sa.String(200), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_tenant"), "api_keys", ["tenant"])
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant", sa.String(100), nullable=False),
        sa.Column("max_running_jobs", sa.Integer(), nullable=True),
        sa.Column("max_queued_jobs", sa.Integer(), nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("tenant", name=op.f("pk_tenant_quotas")),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tenant", sa.String(100), nullable=True))
        batch.create_index("ix_jobs_tenant_status", ["tenant", "status"])
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("tenant", sa.String(100), nullable=True))
        batch.create_index(op.f("ix_sweeps_tenant"), ["tenant"])
    # webhooks.tenant exists since 0015_integration


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_index(op.f("ix_sweeps_tenant"))
        batch.drop_column("tenant")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_tenant_status")
        batch.drop_column("tenant")
    op.drop_table("tenant_quotas")
    op.drop_index(op.f("ix_api_keys_tenant"), table_name="api_keys")
    op.drop_table("api_keys")
