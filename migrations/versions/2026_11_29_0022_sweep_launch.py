"""sweep launch: sweeps.idempotency_key (unique, nullable), jobs.launched_from (JSON)

``sweeps.idempotency_key`` makes ``POST /v1/sweeps`` safe to retry as ``POST /v1/jobs`` is;
``jobs.launched_from`` records the sweep member a job was launched like
(``POST /v1/sweeps/{id}/launch``).

Revision ID: 0022_sweep_launch
Revises: 0021_store2
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0022_sweep_launch"
down_revision: str | None = "0021_store2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.create_unique_constraint(op.f("uq_sweeps_idempotency_key"), ["idempotency_key"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("launched_from", JSONType, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("launched_from")
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_constraint(op.f("uq_sweeps_idempotency_key"), type_="unique")
        batch.drop_column("idempotency_key")
