"""The membership bot's commands of the management room (approval of join requests): it
answers them and declares them (:mod:`moderation.membership.declared`); they are listed
here so that the help shows them and they are never taken for unknown commands."""

from __future__ import annotations

from moderation.membership.declared import management

from ..commands import registry

for _command in management.commands:
    registry.add(_command)
