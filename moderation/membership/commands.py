"""The members' commands in the DM (``!aide``, ``!statut``, ``!publication``, ``!retirer``,
``!nom-public``, ``!quitter``, ``!mes-donnees``, ``!signaler``); the help is generated from
them."""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from forum.consent import ConsentRecords
from forum.context import HeldPermission, PersonalData
from forum.events import Message
from forum.names import NameRefused
from forum.signals import PERMISSION_WITHDRAWN, REPORT, Signals
from forum.storage import utcnow

from . import flow, messages
from .consent import Conversation
from .export import export_file, export_person
from .models import MEMBER, PersonRow
from .public_name import PublicNaming
from .shared import Shared
from .text import normalise, yes_no

#: What the other features hold about a person: ``(user_id, lang)`` (see
#: :meth:`forum.context.Registrations.personal_data_of`).
PersonalDataOf = Callable[[str, str], Awaitable[list[PersonalData]]]
ALL = frozenset({"tout", "tous", "toutes", "all"})


async def nothing_held(user_id: str, lang: str) -> list[PersonalData]:
    return []


@dataclass(frozen=True)
class Command:
    names: tuple[str, ...]
    usage: str
    help: str
    run: Callable[[PersonRow, str, Message], Awaitable[None]]


class MemberCommands:
    def __init__(
        self,
        shared: Shared,
        conversation: Conversation,
        signals: Signals,
        personal_data: PersonalDataOf = nothing_held,
    ) -> None:
        self.shared = shared
        self.conversation = conversation
        self.signals = signals
        self.personal_data = personal_data
        self.commands = [
            Command(("aide", "help"), "", messages.HELP_HELP, self.help),
            Command(("statut", "status"), "", messages.HELP_STATUS, self.status),
            Command(("publication",), " oui|non", messages.HELP_PUBLICATION, self.publication),
            Command(("retirer", "withdraw"), " [N]", messages.HELP_WITHDRAW, self.withdraw),
            Command(
                ("nom-public", "public-name"),
                " [NAME]",
                messages.HELP_PUBLIC_NAME,
                self.public_name,
            ),
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
        lines = self.status_lines(lang, status.charter_version, status.publication, person)
        lines.append(self.public_name_line(lang, await self.naming.current(person.user_id)))
        if person.reconsent_version:
            lines.append(
                shared.t(lang, messages.STATUS_RECONSENT, version=person.reconsent_version)
            )
        held = await self.held(person.user_id, lang)
        if held:
            lines.append(shared.t(lang, messages.STATUS_QUOTES, prefix=shared.prefix))
            lines.extend(f"{i}. “{p.about}”" for i, p in enumerate(held, 1))
        await shared.say(ev.room_id, "\n".join(lines))

    def status_lines(
        self, lang: str, charter_version: int | None, publication: bool, person: PersonRow
    ) -> list[str]:
        t = self.shared.t
        return [
            t(lang, messages.STATUS_CHARTER, version=charter_version)
            if charter_version
            else t(lang, messages.STATUS_NO_CHARTER),
            t(lang, messages.STATUS_PUB_YES if publication else messages.STATUS_PUB_NO),
            t(
                lang,
                messages.STATUS_MEMBER if person.step == MEMBER else messages.STATUS_NOT_MEMBER,
            ),
        ]

    def public_name_line(self, lang: str, name: str | None) -> str:
        if name is None:
            return self.shared.t(lang, messages.STATUS_NO_PUBLIC_NAME)
        return self.shared.t(lang, messages.STATUS_PUBLIC_NAME, name=name)

    @property
    def naming(self) -> PublicNaming:
        return self.conversation.naming

    async def public_name(self, person: PersonRow, arg: str, ev: Message) -> None:
        """``!nom-public NAME``: the name under which the person may be quoted (a
        pseudonym is allowed; someone else's name, or a look-alike, is refused); their
        published quotes take it. Without NAME: the current one."""
        shared = self.shared
        lang = shared.lang_of(person)
        if not arg:
            current = await self.naming.current(person.user_id)
            text = (
                self.naming.told(lang, current)
                if current is not None
                else shared.t(lang, messages.PUBLIC_NAME_NONE, prefix=shared.prefix)
            )
            await shared.say(ev.room_id, text)
            return
        result = await self.naming.change(person.user_id, arg)
        if isinstance(result, NameRefused):
            await shared.say(ev.room_id, self.naming.refused_text(lang, result))
            return
        await shared.say(ev.room_id, shared.t(lang, messages.PUBLIC_NAME_CHANGED, name=result))

    async def held(self, user_id: str, lang: str) -> list[HeldPermission]:
        """The permissions the person gave other features (to quote one message), in the
        order ``!statut`` numbers them."""
        return [p for data in await self.personal_data(user_id, lang) for p in data.permissions]

    async def publication(self, person: PersonRow, arg: str, ev: Message) -> None:
        shared = self.shared
        lang = shared.lang_of(person)
        answer = yes_no(arg)
        if answer is None:
            await shared.say(
                ev.room_id, shared.t(lang, messages.USAGE_PUBLICATION, prefix=shared.prefix)
            )
            return
        quotes = 0 if answer else len(await self.held(person.user_id, lang))
        event = flow.PublicationSet(answer, ev.event_id, utcnow(), quotes)
        await self.conversation.advance(person.user_id, event)

    async def withdraw(self, person: PersonRow, arg: str, ev: Message) -> None:
        """``!retirer``: every consent to be quoted (the general one and each permission to
        quote one message); ``!retirer N``: the N-th permission ``!statut`` lists (or the
        one of a message's link or event id)."""
        shared = self.shared
        lang = shared.lang_of(person)
        held = await self.held(person.user_id, lang)
        if arg and arg.lower() not in ALL:
            chosen = pick(held, arg)
            if chosen is None:
                text = shared.t(lang, messages.NO_SUCH_PERMISSION, which=arg, prefix=shared.prefix)
                await shared.say(ev.room_id, text)
                return
            await self.signals.emit(PERMISSION_WITHDRAWN, user_id=person.user_id, key=chosen.key)
            await shared.say(
                ev.room_id, shared.t(lang, messages.QUOTE_WITHDRAWN, quote=chosen.about)
            )
            return
        event = flow.Withdrew("publication", ev.event_id, utcnow(), len(held))
        await self.conversation.advance(person.user_id, event)

    async def leave(self, person: PersonRow, arg: str, ev: Message) -> None:
        event = flow.Withdrew("charter", ev.event_id, utcnow())
        await self.conversation.advance(person.user_id, event)

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
        """Everything the forum holds about the person: a message to read (consents,
        membership, then each feature's part) and the whole of it as a JSON file."""
        shared = self.shared
        lang = shared.lang_of(person)
        data = await export_person(shared.sessionmaker, person.user_id)
        parts = await self.personal_data(person.user_id, lang)
        for part in parts:
            data[part.section] = dict(part.data)
        filename, raw = export_file(data, lang)
        gateway = shared.membership_gateway
        status = data["status"]
        own = self.status_lines(lang, status["charter_version"], status["publication"], person)
        public = data.get("public_name")
        own.append(self.public_name_line(lang, public["name"] if public else None))
        own.append(shared.t(lang, messages.MY_DATA_RECORDS, n=len(data["consent_records"])))
        sections = [(shared.t(lang, messages.MY_DATA_CONSENTS), own)]
        sections += [(part.title, list(part.lines)) for part in parts]
        plain, rich = summary(shared.t(lang, messages.MY_DATA), sections, filename)
        await shared.say(ev.room_id, plain, rich)
        await gateway.send_file(ev.room_id, raw, filename, "application/json")


def pick(held: list[HeldPermission], which: str) -> HeldPermission | None:
    """The permission ``which`` names: its number in ``!statut``'s list, or a link to (or
    the event id of) the message it is about."""
    which = which.strip()
    if which.isdigit():
        n = int(which)
        return held[n - 1] if 1 <= n <= len(held) else None
    found = re.search(r"\$[^/?\s]+", which.replace("%24", "$"))
    key = found.group(0) if found else which
    return next((p for p in held if p.key == key), None)


def summary(title: str, sections: list[tuple[str, list[str]]], filename: str) -> tuple[str, str]:
    """A person's data to read on a phone: a title, then each section's lines (plain and
    HTML), then the file's name."""
    plain = [title]
    rich = [f"<p><strong>{html.escape(title)}</strong></p>"]
    for heading, lines in sections:
        plain += ["", heading, *(f"• {line}" for line in lines)]
        items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
        rich.append(f"<p><strong>{html.escape(heading)}</strong></p><ul>{items}</ul>")
    plain += ["", f"📎 {filename}"]
    rich.append(f"<p>📎 {html.escape(filename)}</p>")
    return "\n".join(plain), "".join(rich)
