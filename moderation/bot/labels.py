"""Audit actions ("ban", "mute:10m"...) as moderators and reporters read them (the
history, a case's outcome, the reporter's outcome message)."""

from __future__ import annotations

from collections.abc import Callable


def _(msg: str) -> str:
    """Marks a label for extraction; translated when shown."""
    return msg


# Audit actions as moderators read them (!history, the outcome of a case).
AUDIT_LABELS = {
    "ban": _("banned"),
    "unban": _("unbanned"),
    "kick": _("kicked"),
    "mute": _("muted"),
    "unmute": _("unmuted"),
    "warn": _("warned"),
    "redact": _("message redacted"),
    "dismiss": _("dismissed"),
    "refused": _("refused"),
}


def action_label(action: str, gettext: Callable[[str], str]) -> str:
    """An audit action ("ban", "mute:10m"...) in the bot's language."""
    name, _sep, detail = action.partition(":")
    label = AUDIT_LABELS.get(name)
    if label is None:
        return action
    return gettext(label) + (f" ({detail})" if detail else "")
