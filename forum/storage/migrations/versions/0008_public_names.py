"""public names: the name under which a member may be quoted

Revision ID: 0008_public_names
Revises: 0007_failed_handlers

Issue #10 point 7: quotes carry the public name the member chose (their display name at
publication consent by default), never the live display name. One row per person; the
skeleton column finds look-alikes (``forum.names.skeleton``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_public_names"
down_revision: str | Sequence[str] | None = "0007_failed_handlers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "public_names",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("skeleton", sa.Text(), nullable=False),
        sa.Column("chosen", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_public_names"),
    )
    op.create_index("ix_public_names_skeleton", "public_names", ["skeleton"])


def downgrade() -> None:
    op.drop_index("ix_public_names_skeleton", table_name="public_names")
    op.drop_table("public_names")
