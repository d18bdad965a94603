"""The digest's repository (the caller owns the transaction)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    event,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, aliased

from bridge.models import (
    DigestActivity,
    DigestChanges,
    DigestHighlight,
    DigestMessage,
    DigestReaction,
    DigestReview,
    DigestReviewItem,
    DigestState,
    DigestWeek,
    QuotePermission,
)
from bridge.summarize import keywords
from forum.consent import ConsentRow
from forum.storage.models import utcnow
from forum.storage.repositories import Repository, upsert

NEWSPAPER = "📰"
#: rows fetched at a time by the streaming reads of a week: small partitions die young,
#: sparing the garbage collector full passes (500 was the fastest on SQLite and PostgreSQL)
PARTITION = 500

_Row = TypeVar("_Row", bound=tuple[Any, ...])

#: ``Session.info`` keys: the transaction changed the digest; the hook is installed
_CHANGED = "digest_changed"
_HOOKED = "digest_change_hook"


def keyword_text(body: str) -> tuple[str, int]:
    words, length = keywords(body)
    return " ".join(sorted(words)), length


def _keyword_values(body: str) -> dict[str, Any]:
    text, length = keyword_text(body)
    return {"keywords": text, "words": length}


def _latest_record(scope: str) -> Any:
    """The id of the stored message's author's latest consent record of ``scope``."""
    record = aliased(ConsentRow)
    return (
        select(func.max(record.id))
        .where(record.user_id == DigestMessage.sender, record.scope == scope)
        .correlate(DigestMessage)  # the outer message, however deep it is nested
        .scalar_subquery()
    )


def covered(*, by_quote: bool = True) -> ColumnElement[bool]:
    """The stored message's author's consent covers it NOW (checked as an output is
    rendered, whatever erasure is still to come): the author has not left (their latest
    charter record is not a withdrawal), and either their publication consent in force
    started before the message was sent, or (``by_quote``) they allowed this message to
    be quoted and withdrew no publication consent since."""
    publication = aliased(ConsentRow)
    general = exists().where(
        publication.id == _latest_record("publication"),
        publication.granted.is_(True),
        publication.created_at <= DigestMessage.ts,
    )
    charter = aliased(ConsentRow)
    left = exists().where(charter.id == _latest_record("charter"), charter.granted.is_(False))
    if not by_quote:
        return and_(~left, general)
    refusal = aliased(ConsentRow)
    quote = exists().where(
        QuotePermission.target == DigestMessage.event_id,
        QuotePermission.user_id == DigestMessage.sender,
        QuotePermission.granted.is_(True),
        ~exists()
        .where(
            refusal.user_id == DigestMessage.sender,
            refusal.scope == "publication",
            refusal.granted.is_(False),
            or_(
                QuotePermission.answered_at.is_(None),
                refusal.created_at >= QuotePermission.answered_at,
            ),
        )
        .correlate(DigestMessage, QuotePermission),
    )
    return and_(~left, or_(general, quote))


def _week(start: datetime, end: datetime, basis: str) -> tuple[ColumnElement[bool], ...]:
    """The publishable stored messages of [start, end) on that basis ("consent" or
    "quote"): key points are drawn from the words a publication consent covers now."""
    return (
        DigestMessage.ts >= start,
        DigestMessage.ts < end,
        DigestMessage.basis == basis,
        covered(by_quote=False),
    )


def is_newspaper(key: str) -> bool:
    return key.replace("\ufe0f", "") == NEWSPAPER


def _bump_changes(session: Session) -> None:
    """``before_commit``: a transaction that changed the digest bumps the change counter
    as its last statement (so its row lock, on PostgreSQL, is held only while committing,
    and no two writers can wait on each other for it)."""
    if session.info.pop(_CHANGED, False):
        session.execute(
            update(DigestChanges)
            .where(DigestChanges.id == 1)
            .values(counter=DigestChanges.counter + 1)
        )


def _forget_changes(session: Session, *_: Any) -> None:
    session.info.pop(_CHANGED, None)


def _insert(session: AsyncSession, model: type) -> postgresql.Insert | sqlite.Insert:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


@dataclass(frozen=True)
class StoredMessage:
    event_id: str
    room_id: str
    topic: str
    sender: str
    display_name: str
    body: str
    html: str | None
    ts: datetime
    reply_to: str | None
    thread_root: str | None
    edited: bool
    basis: str


MESSAGE_COLUMNS = (
    DigestMessage.event_id,
    DigestMessage.room_id,
    DigestMessage.topic,
    DigestMessage.sender,
    DigestMessage.display_name,
    DigestMessage.body,
    DigestMessage.html,
    DigestMessage.ts,
    DigestMessage.reply_to,
    DigestMessage.thread_root,
    DigestMessage.edited,
    DigestMessage.basis,
)


@dataclass(frozen=True)
class Highlight:
    target: str
    room_id: str
    author: str
    heading: str | None
    marker_event_id: str
    status: str


class DigestStore(Repository):
    # --- changes -----------------------------------------------------------------------
    def changed(self) -> None:
        """This transaction changes what the public digest shows: on commit it bumps the
        change counter, which every process serving the site polls (:meth:`version`)."""
        sync = self.session.sync_session
        if not sync.info.get(_HOOKED):
            event.listen(sync, "before_commit", _bump_changes)
            event.listen(sync, "after_rollback", _forget_changes)
            sync.info[_HOOKED] = True
        sync.info[_CHANGED] = True

    async def consent_version(self) -> int:
        """The newest consent record's id: consent records are append-only (a withdrawal
        is a new record), so it moves whenever anyone's consent changes, and every output
        filtered by current consent must be rendered again."""
        value = await self.session.scalar(select(func.max(ConsentRow.id)))
        return int(value or 0)

    async def version(self) -> int:
        """The change counter: it moves whenever a committed transaction changed the
        digest, in this process or another."""
        value = await self.session.scalar(
            select(DigestChanges.counter).where(DigestChanges.id == 1)
        )
        return int(value or 0)

    # --- state ---------------------------------------------------------------------
    async def get_state(self, key: str) -> str | None:
        row = await self.session.get(DigestState, key)
        return row.value if row else None

    async def set_state(self, key: str, value: str) -> None:
        await upsert(self.session, DigestState, {"key": key}, {"value": value})

    async def who(self, user_id: str) -> str:
        """An opaque, keyed hash of a user id (for counting distinct people only)."""
        salt = await self.get_state("salt")
        if salt is None:
            salt = secrets.token_hex(16)
            stmt = _insert(self.session, DigestState).values(key="salt", value=salt)
            await self.session.execute(stmt.on_conflict_do_nothing(index_elements=["key"]))
            salt = await self.get_state("salt") or salt
        return hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]

    # --- activity (everyone, numbers only) --------------------------------------------
    async def add_activity(
        self, event_id: str, room_id: str, kind: str, user_id: str, ts: datetime
    ) -> None:
        self.changed()
        who = await self.who(user_id)
        stmt = _insert(self.session, DigestActivity).values(
            event_id=event_id, room_id=room_id, kind=kind, who=who, ts=ts
        )
        await self.session.execute(stmt.on_conflict_do_nothing(index_elements=["event_id"]))

    async def activity(self, start: datetime, end: datetime) -> dict[str, tuple[int, int, int]]:
        """room -> (messages, distinct participants, joins) in [start, end)."""
        window = (DigestActivity.ts >= start, DigestActivity.ts < end)
        msgs = await self.session.execute(
            select(
                DigestActivity.room_id,
                func.count(),
                func.count(func.distinct(DigestActivity.who)),
            )
            .where(DigestActivity.kind == "message", *window)
            .group_by(DigestActivity.room_id)
        )
        joins = await self.session.execute(
            select(DigestActivity.room_id, func.count(func.distinct(DigestActivity.who)))
            .where(DigestActivity.kind == "join", *window)
            .group_by(DigestActivity.room_id)
        )
        out: dict[str, tuple[int, int, int]] = {}
        for room, n, people in msgs:
            out[room] = (int(n), int(people), 0)
        for room, n in joins:
            m, p, _ = out.get(room, (0, 0, 0))
            out[room] = (m, p, int(n))
        return out

    # --- messages ------------------------------------------------------------------
    async def put_message(self, **values: Any) -> None:
        self.changed()
        if "keywords" not in values:
            values["keywords"], values["words"] = keyword_text(str(values["body"]))
        stmt = _insert(self.session, DigestMessage).values(**values)
        await self.session.execute(stmt.on_conflict_do_nothing(index_elements=["event_id"]))

    async def get_message(self, event_id: str) -> StoredMessage | None:
        row = (
            await self.session.execute(
                select(*MESSAGE_COLUMNS).where(DigestMessage.event_id == event_id)
            )
        ).first()
        return StoredMessage(*row) if row else None

    async def edit_message(self, event_id: str, sender: str, body: str, html: str | None) -> bool:
        """Replace the content (the old text is not kept). Only the author may edit."""
        result = await self.session.execute(
            update(DigestMessage)
            .where(DigestMessage.event_id == event_id, DigestMessage.sender == sender)
            .values(body=body, html=html, edited=True, **_keyword_values(body))
        )
        if result.rowcount:  # type: ignore[attr-defined]
            self.changed()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def relabel(self, user_id: str, name: str) -> bool:
        """The person's stored messages take ``name``, their public name (after they
        changed it; a change of display name relabels nothing)."""
        result = await self.session.execute(
            update(DigestMessage)
            .where(DigestMessage.sender == user_id, DigestMessage.display_name != name)
            .values(display_name=name)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            self.changed()
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def delete_message(self, event_id: str) -> bool:
        self.changed()
        result = await self.session.execute(
            delete(DigestMessage).where(DigestMessage.event_id == event_id)
        )
        await self.session.execute(delete(DigestReaction).where(DigestReaction.target == event_id))
        await self.session.execute(
            delete(DigestHighlight).where(DigestHighlight.target == event_id)
        )
        await self.session.execute(
            delete(QuotePermission).where(QuotePermission.target == event_id)
        )
        await self.session.execute(
            delete(DigestReviewItem).where(DigestReviewItem.target == event_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def erase_user(self, user_id: str) -> int:
        """Delete everything stored of ``user_id``'s words; the counts stay."""
        self.changed()
        ids = list(
            await self.session.scalars(
                select(DigestMessage.event_id).where(DigestMessage.sender == user_id)
            )
        )
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            await self.session.execute(
                delete(DigestReaction).where(DigestReaction.target.in_(chunk))
            )
        await self.session.execute(delete(DigestMessage).where(DigestMessage.sender == user_id))
        await self.session.execute(delete(DigestHighlight).where(DigestHighlight.author == user_id))
        await self.session.execute(
            delete(QuotePermission).where(QuotePermission.user_id == user_id)
        )
        await self.session.execute(
            delete(DigestReviewItem).where(DigestReviewItem.author == user_id)
        )
        return len(ids)

    async def stream_messages(
        self, start: datetime, end: datetime, *, basis: str | None = None
    ) -> AsyncIterator[StoredMessage]:
        stmt = select(*MESSAGE_COLUMNS).where(DigestMessage.ts >= start, DigestMessage.ts < end)
        if basis:
            stmt = stmt.where(DigestMessage.basis == basis)
        result = await self.session.stream(stmt.execution_options(yield_per=5000))
        async for rows in result.partitions():
            for row in rows:
                yield StoredMessage(*row)

    async def topic_keywords(
        self, start: datetime, end: datetime, basis: str = "consent"
    ) -> AsyncIterator[Sequence[tuple[str, str]]]:
        """Partitions of the week's (topic, keywords) rows: a build's first pass."""
        stmt = select(DigestMessage.topic, DigestMessage.keywords)
        async for rows in self._partitions(stmt.where(*_week(start, end, basis))):
            yield rows

    async def keyword_rows(
        self, start: datetime, end: datetime, basis: str = "consent"
    ) -> AsyncIterator[Sequence[tuple[str, str, str, int]]]:
        """Partitions of the week's (event_id, topic, keywords, words) rows: a build's
        second pass (and the benchmark's floor)."""
        stmt = select(
            DigestMessage.event_id,
            DigestMessage.topic,
            DigestMessage.keywords,
            DigestMessage.words,
        )
        async for rows in self._partitions(stmt.where(*_week(start, end, basis))):
            yield rows

    async def _partitions(self, stmt: Select[_Row]) -> AsyncIterator[Sequence[_Row]]:
        """Core rows straight from the connection (no ORM loading for plain columns), a
        partition at a time: memory is bounded by one partition, whatever the week."""
        conn = await self.session.connection()
        async with conn.stream(stmt.execution_options(yield_per=PARTITION)) as result:
            async for rows in result.tuples().partitions():
                yield rows

    async def bodies(self, ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(body, display name) of the given messages."""
        ids = list(ids)
        out: dict[str, tuple[str, str]] = {}
        for i in range(0, len(ids), 500):
            rows = await self.session.execute(
                select(
                    DigestMessage.event_id, DigestMessage.body, DigestMessage.display_name
                ).where(DigestMessage.event_id.in_(ids[i : i + 500]))
            )
            out.update({e: (b, n) for e, b, n in rows})
        return out

    async def messages(self, ids: Iterable[str]) -> dict[str, StoredMessage]:
        ids = list(ids)
        out: dict[str, StoredMessage] = {}
        for i in range(0, len(ids), 500):
            rows = await self.session.execute(
                select(*MESSAGE_COLUMNS).where(DigestMessage.event_id.in_(ids[i : i + 500]))
            )
            out.update({r[0]: StoredMessage(*r) for r in rows})
        return out

    # --- reactions -------------------------------------------------------------------
    async def add_reaction(self, event_id: str, target: str, key: str) -> None:
        self.changed()
        stmt = _insert(self.session, DigestReaction).values(
            event_id=event_id, target=target, key=key
        )
        await self.session.execute(stmt.on_conflict_do_nothing(index_elements=["event_id"]))

    async def delete_reaction(self, event_id: str) -> bool:
        self.changed()
        result = await self.session.execute(
            delete(DigestReaction).where(DigestReaction.event_id == event_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def reaction_counts(self, start: datetime, end: datetime) -> dict[str, int]:
        rows = await self.session.execute(
            select(DigestReaction.target, func.count())
            .join(DigestMessage, DigestMessage.event_id == DigestReaction.target)
            .where(DigestMessage.ts >= start, DigestMessage.ts < end)
            .group_by(DigestReaction.target)
        )
        return {t: int(n) for t, n in rows}

    # --- highlights ------------------------------------------------------------------
    async def mark(
        self,
        target: str,
        room_id: str,
        author: str,
        heading: str | None,
        marker_event_id: str,
        marked_by: str,
        status: str,
    ) -> None:
        self.changed()
        values = {
            "room_id": room_id,
            "author": author,
            "heading": heading,
            "marker_event_id": marker_event_id,
            "marked_by": marked_by,
            "ts": utcnow(),
            "status": status,
        }
        await upsert(self.session, DigestHighlight, {"target": target}, values)

    async def highlight(self, target: str) -> Highlight | None:
        row = await self.session.get(DigestHighlight, target)
        return _hl(row) if row else None

    async def unmark_by_marker(self, marker_event_id: str) -> bool:
        self.changed()
        result = await self.session.execute(
            delete(DigestHighlight).where(DigestHighlight.marker_event_id == marker_event_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def set_highlight_status(self, target: str, status: str) -> None:
        self.changed()
        await self.session.execute(
            update(DigestHighlight).where(DigestHighlight.target == target).values(status=status)
        )

    async def highlights(self, targets: Iterable[str] | None = None) -> list[Highlight]:
        stmt = select(DigestHighlight).where(DigestHighlight.status == "ok")
        rows = await self.session.scalars(stmt)
        wanted = None if targets is None else set(targets)
        return [_hl(r) for r in rows if wanted is None or r.target in wanted]

    async def highlights_between(self, start: datetime, end: datetime) -> list[Highlight]:
        rows = await self.session.scalars(
            select(DigestHighlight)
            .join(DigestMessage, DigestMessage.event_id == DigestHighlight.target)
            .where(
                DigestHighlight.status == "ok",
                DigestMessage.ts >= start,
                DigestMessage.ts < end,
                covered(),
            )
        )
        return [_hl(r) for r in rows]

    # --- per-message permissions ------------------------------------------------------
    async def ask(
        self, target: str, room_id: str, user_id: str, dm_room_id: str, ask_event_id: str
    ) -> None:
        values = {
            "room_id": room_id,
            "user_id": user_id,
            "dm_room_id": dm_room_id,
            "ask_event_id": ask_event_id,
            "asked_at": utcnow(),
            "granted": None,
            "answered_at": None,
        }
        await upsert(self.session, QuotePermission, {"target": target}, values)

    async def permission(self, target: str) -> QuotePermission | None:
        return await self.session.get(QuotePermission, target)

    async def open_questions(self, user_id: str) -> list[QuotePermission]:
        """The questions to ``user_id`` that wait for an answer, oldest first."""
        return list(
            await self.session.scalars(
                select(QuotePermission)
                .where(QuotePermission.user_id == user_id, QuotePermission.granted.is_(None))
                .order_by(QuotePermission.asked_at)
            )
        )

    async def permissions_of(self, user_id: str) -> list[QuotePermission]:
        """Every question asked to ``user_id`` and their answers, oldest first (a stable
        order: ``!statut`` numbers them, ``!retirer N`` withdraws one)."""
        return list(
            await self.session.scalars(
                select(QuotePermission)
                .where(QuotePermission.user_id == user_id)
                .order_by(QuotePermission.asked_at, QuotePermission.target)
            )
        )

    async def messages_of(self, user_id: str) -> list[StoredMessage]:
        """Every stored message of ``user_id``, oldest first."""
        rows = await self.session.execute(
            select(*MESSAGE_COLUMNS)
            .where(DigestMessage.sender == user_id)
            .order_by(DigestMessage.ts, DigestMessage.event_id)
        )
        return [StoredMessage(*r) for r in rows]

    async def withdraw_quote(self, target: str, user_id: str) -> bool:
        """The author withdraws their permission to quote ``target``: the answer becomes a
        refusal (they are not asked again), the stored words and their reactions are
        deleted, the mark shows nothing. False when it is not theirs."""
        permission = await self.permission(target)
        if permission is None or permission.user_id != user_id:
            return False
        self.changed()
        permission.granted, permission.answered_at = False, utcnow()
        await self.session.execute(
            delete(DigestMessage).where(
                DigestMessage.event_id == target, DigestMessage.sender == user_id
            )
        )
        await self.session.execute(delete(DigestReaction).where(DigestReaction.target == target))
        await self.session.execute(
            delete(DigestReviewItem).where(DigestReviewItem.target == target)
        )
        await self.set_highlight_status(target, "refused")
        return True

    async def question_by_ask_event(self, ask_event_id: str) -> QuotePermission | None:
        return (
            await self.session.scalars(
                select(QuotePermission).where(QuotePermission.ask_event_id == ask_event_id)
            )
        ).first()

    async def answer(self, target: str, granted: bool) -> None:
        self.changed()
        await self.session.execute(
            update(QuotePermission)
            .where(QuotePermission.target == target)
            .values(granted=granted, answered_at=utcnow())
        )

    # --- published weeks --------------------------------------------------------------
    async def publish(self, week: str) -> None:
        self.changed()
        await upsert(self.session, DigestWeek, {"week": week}, {"built_at": utcnow()})

    async def weeks(self) -> list[str]:
        return list(
            await self.session.scalars(select(DigestWeek.week).order_by(DigestWeek.week.desc()))
        )

    # --- the moderators' review (preview) -----------------------------------------------
    async def review(self, week: str) -> DigestReview | None:
        return await self.session.get(DigestReview, week)

    async def pending_reviews(self) -> list[DigestReview]:
        """The reviewed weeks not published yet, oldest first."""
        published = select(DigestWeek.week).where(DigestWeek.week == DigestReview.week)
        return list(
            await self.session.scalars(
                select(DigestReview).where(~exists(published)).order_by(DigestReview.week)
            )
        )

    async def add_review(self, week: str, due: datetime, posted_at: datetime) -> DigestReview:
        row = DigestReview(week=week, due=due, posted_at=posted_at, reminded=False)
        self.session.add(row)
        await self.session.flush()
        return row

    async def review_items(self, week: str) -> list[DigestReviewItem]:
        return list(
            await self.session.scalars(
                select(DigestReviewItem)
                .where(DigestReviewItem.week == week)
                .order_by(DigestReviewItem.id)
            )
        )

    async def review_item(self, item_id: int) -> DigestReviewItem | None:
        return await self.session.get(DigestReviewItem, item_id)

    async def review_item_by_event(self, event_id: str) -> DigestReviewItem | None:
        """The item whose message in the preview's thread is ``event_id``."""
        return (
            await self.session.scalars(
                select(DigestReviewItem).where(DigestReviewItem.event_id == event_id)
            )
        ).first()

    async def set_item_events(self, events: dict[int, str]) -> None:
        for item_id, event_id in events.items():
            await self.session.execute(
                update(DigestReviewItem)
                .where(DigestReviewItem.id == item_id)
                .values(event_id=event_id)
            )

    async def add_review_item(
        self, week: str, kind: str, target: str, author: str, text: str
    ) -> DigestReviewItem:
        row = DigestReviewItem(
            week=week, kind=kind, target=target, author=author, text=text, status="shown"
        )
        self.session.add(row)
        await self.session.flush()
        return row

    async def decide(
        self, item: DigestReviewItem, status: str, by: str, reaction: str | None = None
    ) -> None:
        """A moderator's decision on a previewed item (the public outputs change);
        ``reaction``: the reaction event that took it (taking it back undoes a hold)."""
        self.changed()
        item.status, item.decided_by, item.decided_at = status, by, utcnow()
        item.decided_reaction = reaction

    async def review_item_by_reaction(self, event_id: str) -> DigestReviewItem | None:
        """The item whose last decision the reaction ``event_id`` took."""
        return (
            await self.session.scalars(
                select(DigestReviewItem).where(DigestReviewItem.decided_reaction == event_id)
            )
        ).first()

    async def removed_targets(self) -> set[str]:
        """The messages a moderator removed from the digest for good (as a quote or as
        the source of a key point)."""
        return set(
            await self.session.scalars(
                select(DigestReviewItem.target).where(DigestReviewItem.status == "removed")
            )
        )


def _hl(row: DigestHighlight) -> Highlight:
    return Highlight(
        row.target, row.room_id, row.author, row.heading, row.marker_event_id, row.status
    )
