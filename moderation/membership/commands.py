"""The members' commands in the DM (``!aide``, ``!statut``, ``!publication``, ``!retirer``,
``!quitter``, ``!mes-donnees``, ``!signaler``); the help is generated from them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from forum.consent import ConsentRecords
from forum.events import Message
from forum.signals import PUBLICATION_GRANTED, PUBLICATION_WITHDRAWN, REPORT, Signals

from . import messages
from .consent import Conversation
from .export import export_file, export_person
from .leaving import Leaving
from .models import MEMBER, PUBLICATION, PersonRow
from .shared import Shared
from .text import normalise, yes_no


@dataclass(frozen=True)
class Command:
    names: tuple[str, ...]
    usage: str
    help: str
    run: Callable[[PersonRow, str, Message], Awaitable[None]]


class MemberCommands:
    def __init__(
        self, shared: Shared, conversation: Conversation, leaving: Leaving, signals: Signals
    ) -> None:
        self.shared = shared
        self.conversation = conversation
        self.leaving = leaving
        self.signals = signals
        self.commands = [
            Command(("aide", "help"), "", messages.HELP_HELP, self.help),
            Command(("statut", "status"), "", messages.HELP_STATUS, self.status),
            Command(("publication",), " oui|non", messages.HELP_PUBLICATION, self.publication),
            Command(("retirer", "withdraw"), "", messages.HELP_WITHDRAW, self.withdraw),
            Command(("quitter", "leave"), "", messages.HELP_LEAVE, self.leave),
            Command(("mes-donnees", "my-data"), "", messages.HELP_MY_DATA, self.my_data),
            Command(("signaler", "report"), " …", messages.HELP_REPORT, self.report),
        ]

    def help_text(self, lang: str) -> str:
        prefix = self.shared.prefix
        lines = [self.shared.t(lang, messages.COMMANDS)]
        for cmd in self.commands:
            names = " / ".join(f"{prefix}{n}{cmd.usage}" for n in cmd.names)
            lines.append(f"• {names}: {self.shared.t(lang, cmd.help)}")
        return "\n".join(lines)

    def with_help(self, lang: str, msgid: str) -> str:
        """``msgid``'s text, then the help."""
        return "\n".join([self.shared.t(lang, msgid), self.help_text(lang)])

    async def run(self, person: PersonRow, text: str, ev: Message) -> None:
        """``text``: the message without the command prefix."""
        parts = text.split(maxsplit=1)
        name = normalise(parts[0]).replace(" ", "-") if parts else ""
        arg = parts[1].strip() if len(parts) > 1 else ""
        for cmd in self.commands:
            if name in cmd.names:
                await cmd.run(person, arg, ev)
                return
        lang = self.shared.lang_of(person)
        await self.shared.say(ev.room_id, self.with_help(lang, messages.UNKNOWN_COMMAND))

    async def help(self, person: PersonRow, arg: str, ev: Message) -> None:
        await self.shared.say(ev.room_id, self.help_text(self.shared.lang_of(person)))

    async def status(self, person: PersonRow, arg: str, ev: Message) -> None:
        shared = self.shared
        lang = shared.lang_of(person)
        async with shared.sessionmaker() as s:
            status = await ConsentRecords(s).status(person.user_id)
        lines = [
            shared.t(lang, messages.STATUS_CHARTER, version=status.charter_version)
            if status.charter_version
            else shared.t(lang, messages.STATUS_NO_CHARTER),
            shared.t(
                lang, messages.STATUS_PUB_YES if status.publication else messages.STATUS_PUB_NO
            ),
            shared.t(
                lang,
                messages.STATUS_MEMBER if person.step == MEMBER else messages.STATUS_NOT_MEMBER,
            ),
        ]
        if person.reconsent_version:
            lines.append(
                shared.t(lang, messages.STATUS_RECONSENT, version=person.reconsent_version)
            )
        await shared.say(ev.room_id, "\n".join(lines))

    async def publication(self, person: PersonRow, arg: str, ev: Message) -> None:
        shared = self.shared
        lang = shared.lang_of(person)
        answer = yes_no(arg)
        if answer is None:
            await shared.say(
                ev.room_id, shared.t(lang, messages.USAGE_PUBLICATION, prefix=shared.prefix)
            )
            return
        if person.step == PUBLICATION:
            await self.conversation.answer_publication(
                person.user_id, answer, "command", ev.event_id
            )
            return
        async with shared.sessionmaker() as s:
            status = await ConsentRecords(s).status(person.user_id)
        if status.charter_version is None:
            await shared.say(ev.room_id, shared.t(lang, messages.CHARTER_FIRST))
            return
        await self.set_publication(person, answer, ev.event_id, status.publication)

    async def set_publication(
        self, person: PersonRow, granted: bool, event_id: str, before: bool
    ) -> None:
        """A member changes their publication consent (``before``: what it was)."""
        async with self.shared.sessionmaker() as s, s.begin():
            await ConsentRecords(s).add(
                person.user_id,
                "publication",
                granted,
                method="command",
                charter_version=person.charter_version,
                event_id=event_id,
            )
        if granted and not before:
            await self.signals.emit(PUBLICATION_GRANTED, user_id=person.user_id)
        if before and not granted:
            await self.signals.emit(PUBLICATION_WITHDRAWN, user_id=person.user_id)
        assert person.dm_room_id is not None
        recorded = self.conversation.recorded_text(self.shared.lang_of(person), granted)
        await self.shared.say(person.dm_room_id, recorded)

    async def withdraw(self, person: PersonRow, arg: str, ev: Message) -> None:
        async with self.shared.sessionmaker() as s:
            status = await ConsentRecords(s).status(person.user_id)
        if not status.publication:
            lang = self.shared.lang_of(person)
            await self.shared.say(ev.room_id, self.shared.t(lang, messages.NOTHING_TO_WITHDRAW))
            return
        await self.set_publication(person, False, ev.event_id, True)

    async def leave(self, person: PersonRow, arg: str, ev: Message) -> None:
        shared = self.shared
        lang = shared.lang_of(person)
        await self.leaving.end_membership(person.user_id, "command", ev.event_id, kick=True)
        await shared.say(
            ev.room_id, shared.t(lang, messages.LEFT, forum=shared.forum_name_in(lang))
        )

    async def report(self, person: PersonRow, arg: str, ev: Message) -> None:
        """Pass a report to the moderation bot (which opens a case for the moderators)."""
        await self.signals.emit(
            REPORT,
            reporter=person.user_id,
            body=ev.body,
            formatted_body=ev.formatted_body,
            event_id=ev.event_id,
        )
        lang = self.shared.lang_of(person)
        await self.shared.say(ev.room_id, self.shared.t(lang, messages.REPORT_THANKS))

    async def my_data(self, person: PersonRow, arg: str, ev: Message) -> None:
        shared = self.shared
        lang = shared.lang_of(person)
        data = await export_person(shared.sessionmaker, person.user_id)
        filename, raw = export_file(data, lang)
        gateway = shared.membership_gateway
        mxc = await gateway.upload(raw, "application/json", filename)
        await shared.say(ev.room_id, shared.t(lang, messages.MY_DATA))
        await gateway.send_event(
            ev.room_id,
            "m.room.message",
            {
                "msgtype": "m.file",
                "body": filename,
                "filename": filename,
                "url": mxc,
                "info": {"mimetype": "application/json", "size": len(raw)},
            },
        )
