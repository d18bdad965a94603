"""The members' commands in the DM (``!aide``, ``!statut``, ``!publication``, ``!retirer``,
``!nom-public``, ``!quitter``, ``!mes-donnees``, ``!signaler``), declared in
:mod:`.declared`: the parser finds them by their declared names, the registry parses their
arguments (a bad one is answered with the usage line, as the moderation bot does) and the
help (``!aide``, ``!aide COMMANDE``) is generated from the declarations."""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable

from forum.consent import ConsentRecords
from forum.context import HeldPermission, PersonalData
from forum.events import Message
from forum.names import NameRefused
from forum.signals import PERMISSION_WITHDRAWN, REPORT, Signals
from forum.storage import utcnow
from moderation.commands import Command, UsageError, parse_line

from . import declared, flow, messages
from .consent import Conversation
from .export import export_file, export_person
from .models import MEMBER, PersonRow
from .public_name import PublicNaming
from .shared import Shared
from .text import normalise

#: What the other features hold about a person: ``(user_id, lang)`` (see
#: :meth:`forum.context.Registrations.personal_data_of`).
PersonalDataOf = Callable[[str, str], Awaitable[list[PersonalData]]]
ALL = frozenset({"tout", "tous", "toutes", "all"})


async def nothing_held(user_id: str, lang: str) -> list[PersonalData]:
    return []


Handler = Callable[..., Awaitable[None]]
"""A command's handler: ``(person, ev, **values)``, the values of its declared arguments
(parsed by the registry) by name."""


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
        self.handlers: dict[str, Handler] = {
            declared.HELP.name: self.help,
            declared.STATUS.name: self.status,
            declared.PUBLICATION.name: self.publication,
            declared.WITHDRAW.name: self.withdraw,
            declared.PUBLIC_NAME.name: self.public_name,
            declared.LEAVE.name: self.leave,
            declared.MY_DATA.name: self.my_data,
            declared.REPORT.name: self.report,
        }
        """The handler of each declared command, by its name."""

    @property
    def commands(self) -> list[Command]:
        return declared.dm.commands

    def gettext(self, lang: str) -> Callable[[str], str]:
        return self.shared.i18n.gettext(lang)

    def help_text(self, lang: str) -> str:
        prefix, t = self.shared.prefix, self.gettext(lang)
        lines = [t(messages.COMMANDS)]
        for cmd in self.commands:
            names = " / ".join(prefix + n for n in cmd.names)
            usage = " ".join(a.usage(t) for a in cmd.args)
            lines.append(f"• {names}{' ' + usage if usage else ''}: {t(cmd.help)}")
        lines.append(t(messages.HELP_DETAILS).format(prefix=prefix))
        return "\n".join(lines)

    def details_text(self, lang: str, word: str) -> str:
        """``!aide COMMANDE``: the usage, what it does, the details, its other names and
        examples (or, for an unknown name, the nearest one and the list)."""
        prefix, t = self.shared.prefix, self.gettext(lang)
        name = find_name(word.removeprefix(prefix))
        cmd = declared.dm.find(name)
        if cmd is None:
            text = t(messages.UNKNOWN_HELP_TOPIC).format(cmd=prefix + name)
            closest = declared.dm.closest(name)
            if closest is not None:
                text += " " + t(messages.DID_YOU_MEAN).format(cmd=prefix + closest.name)
            return "\n".join([text, self.help_text(lang)])
        shown = name if name in cmd.names else cmd.name  # as the person wrote it
        lines = [cmd.usage(prefix, t, name=shown), t(cmd.help)]
        if cmd.details:
            lines.append(t(cmd.details).format(prefix=prefix))
        if len(cmd.names) > 1:
            others = ", ".join(prefix + n for n in cmd.names if n != shown)
            lines.append(t(messages.ALSO).format(names=others))
        if cmd.examples:
            lines.append(t(messages.EXAMPLES))
            lines.extend("  " + t(e).format(prefix=prefix) for e in cmd.examples)
        return "\n".join(lines)

    def with_help(self, lang: str, msgid: str) -> str:
        """``msgid``'s text, then the help."""
        return "\n".join([self.shared.t(lang, msgid), self.help_text(lang)])

    async def run(self, person: PersonRow, text: str, ev: Message) -> None:
        """``text``: the message without the command prefix. The command's arguments are
        parsed by the registry from its declaration: bad ones get the usage line and what
        is wrong, and nothing is done."""
        parts = text.split(maxsplit=1)
        name = find_name(parts[0]) if parts else ""
        cmd = declared.dm.find(name) if name else None
        lang = self.shared.lang_of(person)
        if cmd is None:
            await self.shared.say(ev.room_id, self.with_help(lang, messages.UNKNOWN_COMMAND))
            return
        try:
            values = parse_line(cmd, parts[1] if len(parts) > 1 else "")
        except UsageError as exc:
            shown = name if name in cmd.names else cmd.name  # as the person wrote it
            told = exc.told(self.shared.prefix, self.gettext(lang), name=shown)
            await self.shared.say(ev.room_id, told)
            return
        await self.handlers[cmd.name](person, ev, **values)

    async def help(self, person: PersonRow, ev: Message, command: str | None) -> None:
        lang = self.shared.lang_of(person)
        text = self.details_text(lang, command) if command else self.help_text(lang)
        await self.shared.say(ev.room_id, text)

    async def status(self, person: PersonRow, ev: Message) -> None:
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

    async def public_name(self, person: PersonRow, ev: Message, name: str | None) -> None:
        """``!nom-public NAME``: the name under which the person may be quoted (a
        pseudonym is allowed; someone else's name, or a look-alike, is refused); their
        published quotes take it. Without NAME: the current one."""
        shared = self.shared
        lang = shared.lang_of(person)
        if not name:
            current = await self.naming.current(person.user_id)
            text = (
                self.naming.told(lang, current)
                if current is not None
                else shared.t(lang, messages.PUBLIC_NAME_NONE, prefix=shared.prefix)
            )
            await shared.say(ev.room_id, text)
            return
        result = await self.naming.change(person.user_id, name)
        if isinstance(result, NameRefused):
            await shared.say(ev.room_id, self.naming.refused_text(lang, result))
            return
        await shared.say(ev.room_id, shared.t(lang, messages.PUBLIC_NAME_CHANGED, name=result))

    async def held(self, user_id: str, lang: str) -> list[HeldPermission]:
        """The permissions the person gave other features (to quote one message), in the
        order ``!statut`` numbers them."""
        return [p for data in await self.personal_data(user_id, lang) for p in data.permissions]

    async def publication(self, person: PersonRow, ev: Message, answer: bool) -> None:
        """``answer``: yes or no, in any language (the registry refuses anything else)."""
        lang = self.shared.lang_of(person)
        quotes = 0 if answer else len(await self.held(person.user_id, lang))
        event = flow.PublicationSet(answer, ev.event_id, utcnow(), quotes)
        await self.conversation.advance(person.user_id, event)

    async def withdraw(self, person: PersonRow, ev: Message, n: str | None) -> None:
        """``!retirer``: every consent to be quoted (the general one and each permission to
        quote one message); ``!retirer N``: the N-th permission ``!statut`` lists (or the
        one of a message's link or event id)."""
        shared = self.shared
        lang = shared.lang_of(person)
        held = await self.held(person.user_id, lang)
        if n and n.lower() not in ALL:
            chosen = pick(held, n)
            if chosen is None:
                text = shared.t(lang, messages.NO_SUCH_PERMISSION, which=n, prefix=shared.prefix)
                await shared.say(ev.room_id, text)
                return
            await self.signals.emit(PERMISSION_WITHDRAWN, user_id=person.user_id, key=chosen.key)
            await shared.say(
                ev.room_id, shared.t(lang, messages.QUOTE_WITHDRAWN, quote=chosen.about)
            )
            return
        event = flow.Withdrew("publication", ev.event_id, utcnow(), len(held))
        await self.conversation.advance(person.user_id, event)

    async def leave(self, person: PersonRow, ev: Message) -> None:
        event = flow.Withdrew("charter", ev.event_id, utcnow())
        await self.conversation.advance(person.user_id, event)

    async def report(self, person: PersonRow, ev: Message, message: str) -> None:
        """Pass a report to the moderation bot (which opens a case for the moderators): the
        whole message (``message``, its text, is required), with its formatting and links."""
        await self.signals.emit(
            REPORT,
            reporter=person.user_id,
            body=ev.body,
            formatted_body=ev.formatted_body,
            event_id=ev.event_id,
        )
        lang = self.shared.lang_of(person)
        await self.shared.say(ev.room_id, self.shared.t(lang, messages.REPORT_THANKS))

    async def my_data(self, person: PersonRow, ev: Message) -> None:
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


def find_name(word: str) -> str:
    """A command's name as declared: lowercase, accents and punctuation removed, words
    joined by hyphens (``!Mes-Données`` is ``mes-donnees``)."""
    return normalise(word).replace(" ", "-")


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
