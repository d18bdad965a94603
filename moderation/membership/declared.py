"""The membership bot's commands, declared once on the shared framework
(:mod:`moderation.commands`): the members' commands in their DM (:data:`dm`; the help,
``!aide COMMANDE``, the parser and the parsing of the arguments come from it) and the
management room's ``!approve`` / ``!deny`` (:data:`APPROVE`, :data:`DENY`; the moderation
bot lists them in its help). Pure: no I/O. The texts are msgids of the membership bot's catalogs
(``locale/<lang>/LC_MESSAGES/forum.po``), except those of approve/deny, which the
moderation bot shows (its own catalogs)."""

from __future__ import annotations

from moderation.commands import Arg, Command, Registry, _

from . import messages
from .text import yes_no

dm = Registry()
"""The members' commands in their DM with the membership bot (French name first)."""


def member(
    fr: str, en: str, summary: str, details: str, *examples: str, args: tuple[Arg, ...] = ()
) -> Command:
    """Declare a DM command: its French name, its English one, what the list says of it,
    what ``!aide COMMANDE`` adds, its examples and its arguments (parsed by the registry)."""
    aliases = (en,) if en != fr else ()
    return dm.declare(fr, aliases=aliases, args=args, help=summary, details=details,
                      examples=examples)  # fmt: skip


HELP = member(
    "aide", "help", messages.HELP_HELP,
    _("With a command's name: what it does, its other names and examples."),
    _("{prefix}help"), _("{prefix}help status"),
    args=(Arg("command", "word", optional=True),),
)  # fmt: skip
STATUS = member(
    "statut", "status", messages.HELP_STATUS,
    _("Shows the charter version you accepted, whether your messages may be quoted in "
      "the public digest, your membership, your public name, and each permission you "
      "gave to quote one of your messages (numbered, for {prefix}withdraw N)."),
    _("{prefix}status"),
)  # fmt: skip
PUBLICATION = member(
    "publication", "publication", messages.HELP_PUBLICATION,
    _("Yes: your messages may be quoted in the weekly public digest. No: they are not "
      "quoted any more, and quotes already published are removed from the public pages."),
    _("{prefix}publication yes"), _("{prefix}publication no"),
    args=(Arg("answer", "text", label=_("yes|no"), convert=yes_no),),
)  # fmt: skip
WITHDRAW = member(
    "retirer", "withdraw", messages.HELP_WITHDRAW,
    _("Without N: every consent to be quoted ends. With N (the number {prefix}status "
      "shows, or the link of the message): only that permission ends."),
    _("{prefix}withdraw"), _("{prefix}withdraw 2"),
    args=(Arg("n", "word", optional=True),),
)  # fmt: skip
PUBLIC_NAME = member(
    "nom-public", "public-name", messages.HELP_PUBLIC_NAME,
    _("The name shown with your quotes in the public digest. Someone else's name, or "
      "one that looks like it, is refused; your published quotes take the new name."),
    _("{prefix}public-name"), _("{prefix}public-name Camille R."),
    args=(Arg("name", "text", optional=True),),
)  # fmt: skip
LEAVE = member(
    "quitter", "leave", messages.HELP_LEAVE,
    _("You are removed from every room of the forum and your consent to the charter "
      "ends. Write to me here whenever you want to come back."),
    _("{prefix}leave"),
)  # fmt: skip
MY_DATA = member(
    "mes-donnees", "my-data", messages.HELP_MY_DATA,
    _("A summary to read here (consents, membership, public name, what each feature "
      "holds), and the whole of it as a JSON file."),
    _("{prefix}my-data"),
)  # fmt: skip
REPORT = member(
    "signaler", "report", messages.HELP_REPORT,
    _("Your report is passed to the moderators, who open a case; only you and they see it."),
    _("{prefix}report https://matrix.to/#/!room:example.org/$event"),
    _("{prefix}report someone insults me in the general room"),
    args=(Arg("message", "text"),),
)  # fmt: skip

management = Registry()
"""The membership bot's commands in the management room."""


def user_id(token: str) -> str | None:
    """A user id as ``!approve`` and ``!deny`` take it (``@`` first; not a display name)."""
    return token if token.startswith("@") else None


USER = Arg("user", "user", convert=user_id)

APPROVE: Command = management.declare(
    "approve",
    aliases=("approuver",),
    args=(USER,),
    help=_("Let a person who asked to join in (approval by moderators)."),
    examples=(_("{prefix}approve @someone:example.org"),),
)
DENY: Command = management.declare(
    "deny",
    aliases=("refuser",),
    args=(USER, Arg("reason", "text", optional=True)),
    help=_("Refuse a join request (the reason is told to the person)."),
    examples=(_("{prefix}deny @someone:example.org not part of the network"),),
)
