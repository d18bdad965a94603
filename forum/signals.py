"""In-process signals between features (the membership bot tells the digest that a
person's publication consent ended, without either importing the other)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

#: A person's publication consent ended (withdrawal, leaving the forum), or they withdrew
#: every permission to quote them (``!retirer``, ``!publication non``, even with no general
#: consent given). kwargs: user_id
PUBLICATION_WITHDRAWN = "publication_withdrawn"
#: A person gave publication consent. kwargs: user_id
PUBLICATION_GRANTED = "publication_granted"
#: A person withdrew one permission a feature keeps (``HeldPermission`` of
#: :mod:`forum.context`: the digest's permission to quote one message). kwargs: user_id, key
PERMISSION_WITHDRAWN = "permission_withdrawn"
#: A person left every forum room or was removed. kwargs: user_id
MEMBER_LEFT = "member_left"

#: A person reported something to a bot other than the moderation bot (in a DM to the
#: membership bot). kwargs: reporter, body, formatted_body (or None), event_id
REPORT = "report"

#: The outbox kind (``forum.storage.Outbox``) of an erasure the digest owns and carries out:
#: delete every stored word of a person whose consent ended. Written in the same
#: transaction as the withdrawal or the leaving, so it is retried until done (the signals
#: above stay for other listeners; the digest's erasure comes from the outbox only).
#: payload: {"user_id": ...}. Executors must be idempotent.
ERASE_PERSON_KIND = "digest.erase"

Receiver = Callable[..., Awaitable[None]]


class Signals:
    def __init__(self) -> None:
        self._receivers: dict[str, list[Receiver]] = {}

    def connect(self, name: str, receiver: Receiver) -> None:
        self._receivers.setdefault(name, []).append(receiver)

    async def emit(self, name: str, **payload: Any) -> None:
        """Call every receiver in order; one failing is logged and does not stop the rest."""
        for receiver in self._receivers.get(name, []):
            try:
                await receiver(**payload)
            except Exception:
                log.exception("receiver %r of signal %s failed", receiver, name)
