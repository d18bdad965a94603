"""moderation bot: audit log, mutes, strikes, DM rooms, cases, state, joins, policy bans

Revision ID: 0004_moderation
Revises: 0002_consent
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_moderation"
down_revision: str | Sequence[str] | None = "0002_consent"
branch_labels: str | Sequence[str] | None = ("moderation",)
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "moderation_audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("rooms", _JSON, nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("dry_run", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_moderation_audit"),
    )
    op.create_index("ix_moderation_audit_created_at", "moderation_audit", ["created_at"])
    op.create_index("ix_moderation_audit_target", "moderation_audit", ["target"])
    op.create_table(
        "moderation_mutes",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("until", _TS, nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_moderation_mutes"),
    )
    op.create_table(
        "moderation_strikes",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("last_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_moderation_strikes"),
    )
    op.create_table(
        "moderation_dm_rooms",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_moderation_dm_rooms"),
    )
    op.create_index("ix_moderation_dm_rooms_room_id", "moderation_dm_rooms", ["room_id"])
    op.create_table(
        "moderation_cases",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=False),
        sa.Column("room_id", sa.Text(), nullable=True),
        sa.Column("event_id", sa.Text(), nullable=True),
        sa.Column("reported_user", sa.Text(), nullable=True),
        sa.Column("reporter", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("quoted", sa.Text(), nullable=True),
        sa.Column("card_event_id", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("handled_by", sa.Text(), nullable=True),
        sa.Column("handled_action", sa.String(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_moderation_cases"),
        sa.UniqueConstraint("external_id", name="uq_moderation_cases_external_id"),
    )
    op.create_index("ix_moderation_cases_card_event_id", "moderation_cases", ["card_event_id"])
    op.create_table(
        "moderation_state",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", _JSON, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_moderation_state"),
    )
    op.create_table(
        "moderation_first_joins",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("joined_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_moderation_first_joins"),
    )
    op.create_table(
        "moderation_policy_bans",
        sa.Column("rule_key", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("rule_key", "user_id", name="pk_moderation_policy_bans"),
    )


def downgrade() -> None:
    op.drop_table("moderation_policy_bans")
    op.drop_table("moderation_first_joins")
    op.drop_table("moderation_state")
    op.drop_index("ix_moderation_cases_card_event_id", table_name="moderation_cases")
    op.drop_table("moderation_cases")
    op.drop_index("ix_moderation_dm_rooms_room_id", table_name="moderation_dm_rooms")
    op.drop_table("moderation_dm_rooms")
    op.drop_table("moderation_strikes")
    op.drop_table("moderation_mutes")
    op.drop_index("ix_moderation_audit_target", table_name="moderation_audit")
    op.drop_index("ix_moderation_audit_created_at", table_name="moderation_audit")
    op.drop_table("moderation_audit")
