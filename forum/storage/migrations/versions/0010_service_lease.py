"""service: the lease of the active process (a standby takes it over when it expires)

Revision ID: 0010_service_lease
Revises: 0009_preview

Two ``forum run`` processes on one database: the one holding the row's lease acts, the
other waits (issue #14). ``token`` is the fencing token, raised at every change of holder.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_service_lease"
down_revision: str | Sequence[str] | None = "0009_preview"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "service_lease",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=True),
        sa.Column("token", sa.Integer(), server_default="0", nullable=False),
        sa.Column("acquired_at", TIMESTAMP, nullable=True),
        sa.Column("renewed_at", TIMESTAMP, nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_service_lease"),
    )


def downgrade() -> None:
    op.drop_table("service_lease")
