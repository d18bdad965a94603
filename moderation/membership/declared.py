"""The membership bot's commands, declared once on the shared framework
(:mod:`moderation.commands`): the members' commands in their DM (:data:`dm`; the help,
``!aide COMMANDE`` and the parser are generated from it) and the management room's
``!approve`` / ``!deny`` (:data:`APPROVE`, :data:`DENY`; the moderation bot lists them in
its help). Pure: no I/O. The texts are msgids of the membership bot's catalogs
(``locale/<lang>/LC_MESSAGES/forum.po``), except those of approve/deny, which the
moderation bot shows (its own catalogs)."""

from __future__ import annotations

from moderation.commands import Arg, Command, Registry, _

from . import messages

dm = Registry()
"""The members' commands in their DM with the membership bot (French name first)."""

HELP = dm.declare(
    "aide",
    aliases=("help",),
    args=(Arg("command", "word", optional=True),),
    help=messages.HELP_HELP,
    details=_("With a command's name: what it does, its other names and examples."),
    examples=(_("{prefix}help"), _("{prefix}help status")),
)
STATUS = dm.declare(
    "statut",
    aliases=("status",),
    help=messages.HELP_STATUS,
    details=_(
        "Shows the charter version you accepted, whether your messages may be quoted in "
        "the public digest, your membership, your public name, and each permission you "
        "gave to quote one of your messages (numbered, for {prefix}withdraw N)."
    ),
    examples=(_("{prefix}status"),),
)
PUBLICATION = dm.declare(
    "publication",
    args=(Arg("answer", "word", label=_("yes|no")),),
    help=messages.HELP_PUBLICATION,
    details=_(
        "Yes: your messages may be quoted in the weekly public digest. No: they are not "
        "quoted any more, and quotes already published are removed from the public pages."
    ),
    examples=(_("{prefix}publication yes"), _("{prefix}publication no")),
)
WITHDRAW = dm.declare(
    "retirer",
    aliases=("withdraw",),
    args=(Arg("n", "word", optional=True),),
    help=messages.HELP_WITHDRAW,
    details=_(
        "Without N: every consent to be quoted ends. With N (the number {prefix}status "
        "shows, or the link of the message): only that permission ends."
    ),
    examples=(_("{prefix}withdraw"), _("{prefix}withdraw 2")),
)
PUBLIC_NAME = dm.declare(
    "nom-public",
    aliases=("public-name",),
    args=(Arg("name", "text", optional=True),),
    help=messages.HELP_PUBLIC_NAME,
    details=_(
        "The name shown with your quotes in the public digest. Someone else's name, or "
        "one that looks like it, is refused; your published quotes take the new name."
    ),
    examples=(_("{prefix}public-name"), _("{prefix}public-name Camille R.")),
)
LEAVE = dm.declare(
    "quitter",
    aliases=("leave",),
    help=messages.HELP_LEAVE,
    details=_(
        "You are removed from every room of the forum and your consent to the charter "
        "ends. Write to me here whenever you want to come back."
    ),
    examples=(_("{prefix}leave"),),
)
MY_DATA = dm.declare(
    "mes-donnees",
    aliases=("my-data",),
    help=messages.HELP_MY_DATA,
    details=_(
        "A summary to read here (consents, membership, public name, what each feature "
        "holds), and the whole of it as a JSON file."
    ),
    examples=(_("{prefix}my-data"),),
)
REPORT = dm.declare(
    "signaler",
    aliases=("report",),
    args=(Arg("message", "text"),),
    help=messages.HELP_REPORT,
    details=_(
        "Your report is passed to the moderators, who open a case; only you and they see it."
    ),
    examples=(
        _("{prefix}report https://matrix.to/#/!room:example.org/$event"),
        _("{prefix}report someone insults me in the general room"),
    ),
)

management = Registry()
"""The membership bot's commands in the management room."""

APPROVE: Command = management.declare(
    "approve",
    aliases=("approuver",),
    args=(Arg("user", "user"),),
    help=_("Let a person who asked to join in (approval by moderators)."),
    examples=(_("{prefix}approve @someone:example.org"),),
)
DENY: Command = management.declare(
    "deny",
    aliases=("refuser",),
    args=(Arg("user", "user"), Arg("reason", "text", optional=True)),
    help=_("Refuse a join request (the reason is told to the person)."),
    examples=(_("{prefix}deny @someone:example.org not part of the network"),),
)
