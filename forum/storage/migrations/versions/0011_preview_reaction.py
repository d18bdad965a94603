"""digest preview: the reaction that decided an item

Revision ID: 0011_preview_reaction
Revises: 0010_service_lease

A moderator who holds an item with a reaction (✋) and then takes the reaction back (its
redaction) puts the item back, as a client's "remove reaction" is the natural undo. The
item keeps the id of the reaction event that decided it (none when a command decided);
a later decision clears it, so that taking back an older reaction undoes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_preview_reaction"
down_revision: str | Sequence[str] | None = "0010_service_lease"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("digest_review_items", sa.Column("decided_reaction", sa.Text(), nullable=True))
    op.create_index(
        "ix_digest_review_items_decided_reaction", "digest_review_items", ["decided_reaction"]
    )


def downgrade() -> None:
    op.drop_index("ix_digest_review_items_decided_reaction", "digest_review_items")
    op.drop_column("digest_review_items", "decided_reaction")
