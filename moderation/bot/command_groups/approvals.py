"""The membership bot's commands of the management room (approval of join requests): it
answers them; they are declared here so that the help lists them and they are never
taken for unknown commands."""

from __future__ import annotations

from ..commands import _, registry
from .targets import REASON, USER

registry.elsewhere(
    "approve",
    aliases=("approuver",),
    args=(USER,),
    help=_("Let a person who asked to join in (approval by moderators)."),
    examples=(_("{prefix}approve @someone:example.org"),),
)
registry.elsewhere(
    "deny",
    aliases=("refuser",),
    args=(USER, REASON),
    help=_("Refuse a join request (the reason is told to the person)."),
    examples=(_("{prefix}deny @someone:example.org not part of the network"),),
)
