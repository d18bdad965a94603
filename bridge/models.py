"""Tables of the digest (migration ``0005_digest``).

Content tables hold only what consenting people wrote (or a message its author allowed
us to quote); the activity tables hold numbers and opaque hashes, never content.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from forum.storage.models import Base, UTCDateTime


class DigestMessage(Base):
    """A stored message: sanitised HTML and plain body, latest edit wins."""

    __tablename__ = "digest_messages"
    __table_args__ = (
        Index("ix_digest_messages_ts", "ts"),
        Index("ix_digest_messages_sender", "sender"),
    )

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    room_id: Mapped[str] = mapped_column(Text, nullable=False)
    topic: Mapped[str] = mapped_column(String(80), nullable=False)
    sender: Mapped[str] = mapped_column(Text, nullable=False)
    display_name: Mapped[str] = mapped_column(Text, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    reply_to: Mapped[str | None] = mapped_column(Text, nullable=True)
    thread_root: Mapped[str | None] = mapped_column(Text, nullable=True)
    edited: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    #: "consent" (publication consent) or "quote" (a per-message permission)
    basis: Mapped[str] = mapped_column(String(16), nullable=False, default="consent")
    #: the summariser's view of the body, computed once when stored or edited:
    #: distinct non-stop words (space-separated) and the length in words
    keywords: Mapped[str] = mapped_column(Text, nullable=False, default="")
    words: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class DigestReaction(Base):
    """A reaction to a stored or highlighted message (for counts; no sender kept)."""

    __tablename__ = "digest_reactions"
    __table_args__ = (Index("ix_digest_reactions_target", "target"),)

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    target: Mapped[str] = mapped_column(Text, nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)


class DigestActivity(Base):
    """One row per message or join of anyone: numbers only (sender as an opaque hash)."""

    __tablename__ = "digest_activity"
    __table_args__ = (Index("ix_digest_activity_ts", "ts"),)

    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    room_id: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)  # "message" | "join"
    who: Mapped[str] = mapped_column(String(32), nullable=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class DigestHighlight(Base):
    """A message marked for the digest by a moderator or an editor."""

    __tablename__ = "digest_highlights"

    target: Mapped[str] = mapped_column(Text, primary_key=True)
    room_id: Mapped[str] = mapped_column(Text, nullable=False)
    author: Mapped[str] = mapped_column(Text, nullable=False)
    heading: Mapped[str | None] = mapped_column(Text, nullable=True)
    marker_event_id: Mapped[str] = mapped_column(Text, nullable=False)
    marked_by: Mapped[str] = mapped_column(Text, nullable=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    #: "ok" (may be shown), "asking" (waiting for the author), "refused"
    status: Mapped[str] = mapped_column(String(16), nullable=False)


class QuotePermission(Base):
    """The author's answer for one message (a consent for this quote only)."""

    __tablename__ = "digest_quote_permissions"

    target: Mapped[str] = mapped_column(Text, primary_key=True)
    room_id: Mapped[str] = mapped_column(Text, nullable=False)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    dm_room_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    ask_event_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    asked_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    #: None while waiting, then True / False
    granted: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DigestWeek(Base):
    """A published week (``2026-W48``); its pages are rendered from the store."""

    __tablename__ = "digest_weeks"

    week: Mapped[str] = mapped_column(String(10), primary_key=True)
    built_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class DigestState(Base):
    """Small key/value facts (the last export directory)."""

    __tablename__ = "digest_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class DigestChanges(Base):
    """One row (``id`` 1; migration ``0006_digest_changes``): a counter bumped by every
    transaction that changes what the public digest shows, whichever process commits it,
    so that a running site sees changes it did not make."""

    __tablename__ = "digest_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    counter: Mapped[int] = mapped_column(BigInteger, nullable=False)


class DigestReview(Base):
    """A week's review by the moderators (migration ``0009_preview``): its preview was
    posted to the management room before the publication due at ``due``."""

    __tablename__ = "digest_reviews"

    week: Mapped[str] = mapped_column(String(10), primary_key=True)
    due: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    event_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: a moderator held the whole digest: it waits for a release
    held_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    released_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: the moderators were told, at the scheduled time, that it waits for them
    reminded: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class DigestReviewItem(Base):
    """A quote or a key point shown in a preview; its id is the short id moderators use.
    ``text`` is what the preview showed (a key point is published only as it was seen);
    erased with its author's words."""

    __tablename__ = "digest_review_items"
    __table_args__ = (
        Index("ix_digest_review_items_week", "week"),
        Index("ix_digest_review_items_target", "target"),
        Index("ix_digest_review_items_author", "author"),
        Index("ix_digest_review_items_event_id", "event_id"),
        Index("ix_digest_review_items_decided_reaction", "decided_reaction"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    week: Mapped[str] = mapped_column(String(10), nullable=False)
    #: "quote" | "key_point"
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    target: Mapped[str] = mapped_column(Text, nullable=False)
    author: Mapped[str] = mapped_column(Text, nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    #: "shown" (published with the week), "held" (kept out), "removed" (for good)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    decided_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: the item's own message in the preview's thread (a reaction on it decides)
    event_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the reaction that took the last decision (none: a command); taking it back undoes
    #: a hold
    decided_reaction: Mapped[str | None] = mapped_column(Text, nullable=True)


__all__ = [
    "DigestActivity",
    "DigestChanges",
    "DigestHighlight",
    "DigestMessage",
    "DigestReaction",
    "DigestReview",
    "DigestReviewItem",
    "DigestState",
    "DigestWeek",
    "QuotePermission",
]
