"""digest: a change counter, bumped by every transaction that changes the public digest

Revision ID: 0006_digest_changes
Revises: 0005_digest

Every process that writes the digest (the running service, ``forum digest build``,
another instance) bumps it as the last statement of its transaction; a running service
polls it to see changes it did not make (issue #10, point 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_digest_changes"
down_revision: str | Sequence[str] | None = "0005_digest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "digest_changes",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("counter", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_digest_changes"),
    )
    op.bulk_insert(table, [{"id": 1, "counter": 0}])


def downgrade() -> None:
    op.drop_table("digest_changes")
