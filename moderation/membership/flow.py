"""The consent flow as a pure state machine: ``advance(state, input) -> (state, effects)``.

No I/O, no database, no clock: the bot derives a :class:`State` from what is stored (the
person's row and their consent status), turns a Matrix event into an input, calls
:func:`advance` and carries out the effects it returns (:mod:`.effects`). Time comes in
the inputs.

The rules it keeps (DESIGN.md "Membership and consent"):

- nobody is invited or admitted without an acceptance of the current charter version;
- leaving (or withdrawing publication) erases their words and ends the grant; nothing is
  published again without a new answer;
- whoever left, was denied or no longer consents cannot be approved;
- an answer applies to at most one question, and only once: a reply or a reaction binds
  to the question it targets; a bare answer written before the previous answer was
  recorded (a burst) is told the question was already answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from . import messages
from .text import (
    ACCEPT_REACTIONS,
    NO_REACTIONS,
    YES_REACTIONS,
    guess_language,
    is_acceptance,
    yes_no,
)

Step = Literal["none", "language", "charter", "publication", "approval", "member", "denied", "left"]
NONE: Step = "none"
LANGUAGE: Step = "language"
CHARTER: Step = "charter"
PUBLICATION: Step = "publication"
APPROVAL: Step = "approval"
MEMBER: Step = "member"
DENIED: Step = "denied"
LEFT: Step = "left"

Door = Literal["knock", "lobby", "dm", "restart"]
Method = str  # "reply", "reaction", "command", "left-rooms", "charter-expired"...

# Statuses of a moderator's approval request (as stored in :mod:`.models`).
REQUEST_PENDING = "pending"
REQUEST_APPROVED = "approved"
REQUEST_DENIED = "denied"
REQUEST_WITHDRAWN = "withdrawn"


@dataclass(frozen=True)
class Policy:
    """What the operator configured (``[membership]``)."""

    charter_version: int = 1
    approval: Literal["auto", "moderators"] = "auto"
    on_expiry: Literal["mute", "remove"] = "mute"


@dataclass(frozen=True)
class State:
    """Where one person is, derived from their row (:class:`.models.PersonRow`) and their
    consent status (:class:`forum.consent.ConsentStatus`)."""

    user_id: str = ""
    policy: Policy = Policy()
    step: Step = NONE
    lang: str | None = None
    dm: bool = False
    """A DM with the person is known."""
    offered: int | None = None
    """The charter version sent to them in the flow."""
    accepted: int | None = None
    """The charter version whose acceptance is current (None: none, or withdrawn)."""
    publication: bool = False
    question: str | None = None
    """The event of the step's pending question (language, charter, publication); None
    while it is not sent yet."""
    asked: frozenset[str] = frozenset()
    """Events of the flow's questions already answered."""
    reconsent: int | None = None
    """A newer charter version waiting for their acceptance."""
    reconsent_question: str | None = None
    deadline: datetime | None = None
    muted: bool = False
    request: bool = False
    """A request for approval waits for a moderator."""
    answered_at: datetime | None = None
    """When their last answer was recorded (their latest consent record)."""
    last_said: str | None = None
    """What their last bare answer meant (:func:`meaning`), if known: the same answer again,
    written before that one was recorded, is a burst."""
    consumed: frozenset[str] = frozenset()
    """Answer events already recorded (an answer counts once)."""
    entries: int = 0

    @property
    def pending(self) -> tuple[str, ...]:
        """The kinds of the flow's questions waiting for an answer."""
        out: list[str] = []
        if self.step in {LANGUAGE, CHARTER, PUBLICATION}:
            out.append(self.step)
        if self.reconsent is not None:
            out.append("reconsent")
        return tuple(out)


# --- inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entered:
    """Someone at a door. ``knocking``: a knock on ``knock_room`` still waits (a member
    knocking again after leaving one room); ``lang``: guessed from what they wrote."""

    door: Door
    knock_room: str | None = None
    lang: str | None = None
    knocking: bool = False


@dataclass(frozen=True)
class DmJoined:
    """The person joined the DM the bot opened."""


@dataclass(frozen=True)
class DmReopened:
    """The person opened a new DM that replaces the old one."""


@dataclass(frozen=True)
class QuestionAsked:
    """The question of ``kind`` was sent as ``event_id``."""

    kind: Literal["language", "charter", "publication", "reconsent"]
    event_id: str


@dataclass(frozen=True)
class Answer:
    """What every answer carries: its event, the question it targets (a reply's or a
    reaction's target; None for a bare message), when it was sent and when it is handled."""

    event_id: str
    method: Method
    at: datetime
    to: str | None = None
    sent_at: datetime | None = None
    said: str | None = None
    """What a bare answer means (:func:`meaning`)."""


@dataclass(frozen=True)
class LanguageChosen(Answer):
    lang: str = ""


@dataclass(frozen=True)
class CharterAnswered(Answer):
    accepted: bool = False


@dataclass(frozen=True)
class PublicationAnswered(Answer):
    granted: bool | None = None
    """None: neither yes nor no."""


@dataclass(frozen=True)
class ReconsentAccepted(Answer):
    pass


@dataclass(frozen=True)
class PublicationSet:
    """``!publication oui|non`` outside the flow's question; ``quotes``: the permissions to
    quote one message they gave (withdrawn with a refusal)."""

    granted: bool
    event_id: str
    at: datetime
    quotes: int = 0


@dataclass(frozen=True)
class Withdrew:
    """``!retirer``: every consent of ``scope``; the charter's withdrawal ends the
    membership."""

    scope: Literal["publication", "charter"]
    event_id: str
    at: datetime
    quotes: int = 0


@dataclass(frozen=True)
class Left:
    """The membership ends: ``!quitter`` (``kick``), or they left every forum room."""

    method: Method
    at: datetime
    event_id: str | None = None
    kick: bool = False


@dataclass(frozen=True)
class Returned:
    """Someone who left writes in their DM: they come back."""


@dataclass(frozen=True)
class Approved:
    """A moderator approves; ``request``: the status of the request decided on (None:
    there is none)."""

    moderator: str
    request: str | None


@dataclass(frozen=True)
class Denied:
    moderator: str
    request: str | None
    reason: str | None = None


@dataclass(frozen=True)
class CharterChanged:
    version: int
    deadline: datetime


@dataclass(frozen=True)
class GraceExpired:
    at: datetime


@dataclass(frozen=True)
class GraceNear:
    """Time passes: at ``at``, a re-consent deadline less than ``before`` away is
    reminded of (once per deadline: the executor keys the reminder by it)."""

    at: datetime
    before: timedelta


Input = (
    Entered
    | DmJoined
    | DmReopened
    | QuestionAsked
    | LanguageChosen
    | CharterAnswered
    | PublicationAnswered
    | ReconsentAccepted
    | PublicationSet
    | Withdrew
    | Left
    | Returned
    | Approved
    | Denied
    | CharterChanged
    | GraceExpired
    | GraceNear
)

# --- effects --------------------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    msgid: str
    params: tuple[tuple[str, str | int | None], ...] = ()


@dataclass(frozen=True)
class OpenDm:
    pass


@dataclass(frozen=True)
class AskLanguage:
    if_joined: bool = False
    """Only once the person is in the DM (the bot opened it)."""


@dataclass(frozen=True)
class SendCharter:
    lang: str
    version: int
    if_joined: bool = False


@dataclass(frozen=True)
class AskPublication:
    lang: str


@dataclass(frozen=True)
class AskReconsent:
    version: int
    deadline: datetime


@dataclass(frozen=True)
class RemindReconsent:
    """A reminder of the re-consent question of ``version`` before ``deadline``."""

    version: int
    deadline: datetime


@dataclass(frozen=True)
class RecordConsent:
    scope: Literal["charter", "publication"]
    granted: bool
    version: int | None
    method: Method
    event_id: str | None


@dataclass(frozen=True)
class QueueAdmission:
    """Invites to every forum room and a welcome, through the outbox."""

    version: int
    entries: int


@dataclass(frozen=True)
class InviteTo:
    rooms: tuple[str, ...]


@dataclass(frozen=True)
class QueueApproval:
    """A pending request and its card in the management room."""


@dataclass(frozen=True)
class Decide:
    """Record the moderator's decision on the pending request."""

    approved: bool
    moderator: str
    reason: str | None = None


@dataclass(frozen=True)
class CloseRequests:
    reason: str


@dataclass(frozen=True)
class Kick:
    rooms: Literal["knocked", "forum"]
    reason: str | None = None
    """For "knocked" (a denial): the moderator's reason, after the translated "request
    declined"; for "forum": why they are removed."""


@dataclass(frozen=True)
class Erase:
    """Every stored word of theirs, through the outbox (retried until done)."""


@dataclass(frozen=True)
class Mute:
    pass


@dataclass(frozen=True)
class Unmute:
    pass


@dataclass(frozen=True)
class Notify:
    """A message to the person in their DM (``queued``: through the outbox, after the
    transaction) or to the moderators."""

    texts: tuple[Text, ...]
    to: Literal["person", "moderators"] = "person"
    queued: bool = False


@dataclass(frozen=True)
class ShowHelp:
    pass


@dataclass(frozen=True)
class Signal:
    name: Literal["publication-granted", "publication-withdrawn", "member-left"]


Effect = (
    OpenDm
    | AskLanguage
    | SendCharter
    | AskPublication
    | AskReconsent
    | RemindReconsent
    | RecordConsent
    | QueueAdmission
    | InviteTo
    | QueueApproval
    | Decide
    | CloseRequests
    | Kick
    | Erase
    | Mute
    | Unmute
    | Notify
    | ShowHelp
    | Signal
)
Effects = tuple[Effect, ...]


def say(*msgids: str, **params: str | int | None) -> Notify:
    return Notify(tuple(Text(m, tuple(sorted(params.items()))) for m in msgids))


def tell_moderators(msgid: str, **params: str | int | None) -> Notify:
    return Notify((Text(msgid, tuple(sorted(params.items()))),), to="moderators")


@dataclass(frozen=True)
class _Out:
    state: State
    effects: list[Effect] = field(default_factory=list)


# --- the machine ----------------------------------------------------------------------


def advance(state: State, event: Input) -> tuple[State, Effects]:
    """The next state and the effects to carry out, in order. An input that does not
    apply to the state returns the state unchanged and no effects."""
    new, effects = _advance(state, event)
    return new, tuple(effects)


def _advance(s: State, e: Input) -> tuple[State, list[Effect]]:  # noqa: PLR0911
    match e:
        case Entered():
            return _entered(s, e)
        case DmJoined():
            return s, _greet(s)
        case DmReopened():
            return _dm_reopened(s, e)
        case QuestionAsked():
            return _asked(s, e)
        case LanguageChosen():
            return _language(s, e)
        case CharterAnswered():
            return _charter(s, e)
        case PublicationAnswered():
            return _publication(s, e)
        case ReconsentAccepted():
            return _reconsent(s, e)
        case PublicationSet():
            return _publication_set(s, e)
        case Withdrew():
            return _withdrew(s, e)
        case Left():
            return _left(s, e)
        case Returned():
            return _returned(s, e)
        case Approved():
            return _approved(s, e)
        case Denied():
            return _denied(s, e)
        case CharterChanged():
            return _charter_changed(s, e)
        case GraceExpired():
            return _grace_expired(s, e)
        case GraceNear():
            return _grace_near(s, e)


def _entered(s: State, e: Entered) -> tuple[State, list[Effect]]:
    if s.step == MEMBER and s.accepted is not None:
        if e.knock_room and e.knocking and s.accepted == s.policy.charter_version:
            return s, [InviteTo((e.knock_room,))]
        return s, []
    opened = e.door == "dm" and s.step in {NONE, LANGUAGE} and s.question is None
    if s.dm and s.step not in {NONE, LEFT, DENIED} and not opened:
        # under way already: one DM, nothing twice; but a greeting that never went out (a
        # crash between recording the DM and sending it) goes out now, to a person in the DM
        return s, _greet(s, if_joined=True)
    lang = s.lang or e.lang
    effects: list[Effect] = [] if s.dm else [OpenDm()]
    joined = e.door != "dm"  # the person opened the DM themselves: they are in it
    new = replace(s, step=CHARTER if lang else LANGUAGE, lang=lang, dm=True, question=None)
    if lang:
        new = replace(new, offered=s.policy.charter_version)
        effects.append(SendCharter(lang, s.policy.charter_version, if_joined=joined))
    else:
        effects.append(AskLanguage(if_joined=joined))
    return new, effects


def _greet(s: State, *, if_joined: bool = False) -> list[Effect]:
    if s.step == CHARTER and s.question is None and s.lang:
        return [SendCharter(s.lang, s.offered or s.policy.charter_version, if_joined=if_joined)]
    if s.step == LANGUAGE and s.question is None:
        return [AskLanguage(if_joined=if_joined)]
    return []


def _dm_reopened(s: State, e: DmReopened) -> tuple[State, list[Effect]]:
    if s.step in {LANGUAGE, CHARTER}:
        new = replace(s, question=None)
        return new, _greet(new)
    if s.step == PUBLICATION:
        return s, [AskPublication(s.lang or "")]
    return s, [ShowHelp()]


def _asked(s: State, e: QuestionAsked) -> tuple[State, list[Effect]]:
    if e.kind == "reconsent":
        if s.reconsent is None:
            return s, []
        return replace(s, reconsent_question=e.event_id), []
    if s.step != e.kind:
        return s, []
    return replace(s, question=e.event_id), []


def _check(s: State, e: Answer, kind: str, question: str | None) -> list[Effect] | None:
    """Whether answer ``e`` may answer the pending question of ``kind`` (event
    ``question``): None when it may, else what to do instead (maybe nothing)."""
    if e.event_id in s.consumed:
        return []  # a replay: it counted already
    if (
        e.to is None
        and e.method == "reply"
        and e.sent_at is not None
        and s.answered_at is not None
        and e.sent_at <= s.answered_at
        and e.said is not None
        and e.said == s.last_said
    ):
        # The same answer again, written before the last one was recorded: a burst.
        return [say(messages.ALREADY_ANSWERED)]
    if kind not in s.pending:
        if e.to is not None and e.to in s.asked:
            return [say(messages.ALREADY_ANSWERED)]
        return []
    if e.to is None or e.to == question or (question is None and e.to not in s.asked):
        return None
    if e.to in s.asked:
        return [say(messages.ALREADY_ANSWERED)]
    return []


def _retire(s: State) -> frozenset[str]:
    return s.asked | {s.question} if s.question else s.asked


def _language(s: State, e: LanguageChosen) -> tuple[State, list[Effect]]:
    refused = _check(s, e, LANGUAGE, s.question)
    if refused is not None:
        return s, refused
    version = s.policy.charter_version
    new = replace(s, step=CHARTER, lang=e.lang, offered=version, question=None, asked=_retire(s))
    return new, [SendCharter(e.lang, version)]


def _charter(s: State, e: CharterAnswered) -> tuple[State, list[Effect]]:
    refused = _check(s, e, CHARTER, s.question)
    if refused is not None:
        return s, refused
    if not e.accepted:
        return s, [say(messages.CHARTER_REMINDER)]
    version = s.offered or s.policy.charter_version
    new = replace(
        s,
        step=PUBLICATION,
        accepted=version,
        question=None,
        asked=_retire(s),
        answered_at=e.at,
        last_said=e.said,
        consumed=s.consumed | {e.event_id},
    )
    record = RecordConsent("charter", True, version, e.method, e.event_id)
    return new, [record, AskPublication(s.lang or "")]


def _admit(s: State) -> tuple[State, list[Effect]]:
    """Admission of someone whose charter acceptance is current."""
    entries = s.entries + 1
    new = replace(s, step=MEMBER, entries=entries, request=False)
    return new, [QueueAdmission(s.accepted or s.policy.charter_version, entries)]


def _recorded(granted: bool) -> str:
    return messages.PUBLICATION_YES if granted else messages.PUBLICATION_NO


def _publication(s: State, e: PublicationAnswered) -> tuple[State, list[Effect]]:
    refused = _check(s, e, PUBLICATION, s.question)
    if refused is not None:
        return s, refused
    if e.granted is None:
        return s, [say(messages.PUBLICATION_REMINDER)]
    new = replace(
        s,
        publication=e.granted,
        question=None,
        asked=_retire(s),
        answered_at=e.at,
        last_said=e.said,
        consumed=s.consumed | {e.event_id},
    )
    effects: list[Effect] = [
        RecordConsent("publication", e.granted, s.offered, e.method, e.event_id)
    ]
    if s.accepted != s.policy.charter_version:
        # The charter changed since they accepted it: the current one first.
        version = s.policy.charter_version
        new = replace(new, step=CHARTER, offered=version)
        effects.append(SendCharter(s.lang or "", version))
    elif s.policy.approval == "auto":
        new, admission = _admit(new)
        effects += admission
        effects.append(say(_recorded(e.granted)))
    else:
        new = replace(new, step=APPROVAL, request=True)
        effects.append(QueueApproval())
        effects.append(say(_recorded(e.granted), messages.WAITING_APPROVAL))
    if e.granted and not s.publication:
        effects.append(Signal("publication-granted"))
    if not e.granted and s.publication:
        effects[1:1] = [Erase()]
        effects.append(Signal("publication-withdrawn"))
    return new, effects


def _reconsent(s: State, e: ReconsentAccepted) -> tuple[State, list[Effect]]:
    refused = _check(s, e, "reconsent", s.reconsent_question)
    if refused is not None:
        return s, refused
    assert s.reconsent is not None
    version = s.reconsent
    asked = s.asked | {s.reconsent_question} if s.reconsent_question else s.asked
    new = replace(
        s,
        accepted=version,
        offered=version if s.step == MEMBER else s.offered,
        reconsent=None,
        reconsent_question=None,
        deadline=None,
        muted=False,
        asked=asked,
        answered_at=e.at,
        last_said=e.said,
        consumed=s.consumed | {e.event_id},
    )
    effects: list[Effect] = [RecordConsent("charter", True, version, e.method, e.event_id)]
    if s.muted:
        effects.append(Unmute())
    effects.append(say(messages.RECONSENT_THANKS, version=version))
    return new, effects


def _set_publication(
    s: State, granted: bool, event_id: str, at: datetime, quotes: int
) -> tuple[State, list[Effect]]:
    if s.step == PUBLICATION:
        answer = PublicationAnswered(event_id, "command", at, granted=granted)
        answered, answer_effects = _publication(s, answer)
        if not granted and quotes and not s.publication:
            answer_effects[1:1] = [Erase()]
            answer_effects.append(Signal("publication-withdrawn"))
        return answered, answer_effects
    if s.accepted is None and granted:
        return s, [say(messages.CHARTER_FIRST)]  # a withdrawal is always possible
    erase = not granted and (s.publication or quotes > 0)
    new = replace(s, publication=granted, answered_at=at, consumed=s.consumed | {event_id})
    effects: list[Effect] = [RecordConsent("publication", granted, s.offered, "command", event_id)]
    if erase:
        effects.append(Erase())
    if granted and not s.publication:
        effects.append(Signal("publication-granted"))
    if erase:
        effects.append(Signal("publication-withdrawn"))
    texts = [Text(_recorded(granted))]
    if quotes:
        texts.append(Text(messages.QUOTES_WITHDRAWN, (("n", quotes),)))
    effects.append(Notify(tuple(texts)))
    return new, effects


def _publication_set(s: State, e: PublicationSet) -> tuple[State, list[Effect]]:
    if e.event_id in s.consumed:
        return s, []
    return _set_publication(s, e.granted, e.event_id, e.at, e.quotes if not e.granted else 0)


def _withdrew(s: State, e: Withdrew) -> tuple[State, list[Effect]]:
    if e.event_id in s.consumed:
        return s, []
    if e.scope == "charter":
        new, effects = _left(s, Left("command", e.at, e.event_id, kick=True))
        return new, [*effects, say(messages.LEFT)]
    if not s.publication and not e.quotes:
        return s, [say(messages.NOTHING_TO_WITHDRAW)]
    return _set_publication(s, False, e.event_id, e.at, e.quotes)


def _left(s: State, e: Left) -> tuple[State, list[Effect]]:
    effects: list[Effect] = []
    if s.publication:
        effects.append(RecordConsent("publication", False, None, e.method, e.event_id))
    if s.accepted is not None:
        effects.append(RecordConsent("charter", False, s.accepted, e.method, e.event_id))
    effects.append(CloseRequests(e.method))
    if e.kick:
        effects.append(Kick("forum", e.method))
    effects.append(Erase())
    if s.muted:
        effects.append(Unmute())
    if s.publication:
        effects.append(Signal("publication-withdrawn"))
    effects.append(Signal("member-left"))
    consumed = s.consumed | {e.event_id} if e.event_id else s.consumed
    new = replace(
        s,
        step=LEFT if s.step != NONE else NONE,
        accepted=None,
        publication=False,
        reconsent=None,
        reconsent_question=None,
        deadline=None,
        muted=False,
        request=False,
        question=None,
        asked=_retire(s),
        answered_at=e.at if (s.publication or s.accepted is not None) else s.answered_at,
        consumed=consumed,
    )
    return new, effects


def _returned(s: State, e: Returned) -> tuple[State, list[Effect]]:
    if s.step != LEFT or not s.dm:
        return s, []
    version = s.policy.charter_version
    lang = s.lang or ""
    new = replace(s, step=CHARTER, offered=version, question=None)
    return new, [SendCharter(lang, version)]


def refusal(s: State, request: str | None) -> str | None:
    """Why a moderator's decision on the request (of status ``request``) cannot be
    carried out (a msgid), or None when it can: only a pending request of someone
    waiting for approval with the current charter accepted."""
    if (
        request == REQUEST_PENDING
        and s.step == APPROVAL
        and s.accepted is not None
        and s.accepted == s.policy.charter_version
    ):
        return None
    if request in {REQUEST_PENDING, REQUEST_WITHDRAWN} or s.step == LEFT:
        return messages.REQUEST_WITHDRAWN
    if request == REQUEST_APPROVED:
        return messages.ALREADY_APPROVED
    if request == REQUEST_DENIED:
        return messages.ALREADY_DENIED
    return messages.NO_PENDING


def _refused(s: State, request: str | None, why: str, user: str) -> tuple[State, list[Effect]]:
    effects: list[Effect] = []
    if request == REQUEST_PENDING:
        effects.append(CloseRequests("consent-ended"))  # it can never be decided
        s = replace(s, request=False)
    effects.append(tell_moderators(why, user=user))
    return s, effects


def _approved(s: State, e: Approved) -> tuple[State, list[Effect]]:
    why = refusal(s, e.request)
    if why is not None:
        return _refused(s, e.request, why, s.user_id)
    new, effects = _admit(s)
    return new, [
        Decide(True, e.moderator),
        *effects,
        tell_moderators(messages.APPROVED_BY, moderator=e.moderator, user=s.user_id),
    ]


def _denied(s: State, e: Denied) -> tuple[State, list[Effect]]:
    why = refusal(s, e.request)
    if why is not None:
        return _refused(s, e.request, why, s.user_id)
    new = replace(s, step=DENIED, request=False)
    texts = [Text(messages.DENIED)]
    if e.reason:
        texts.append(Text(messages.REASON, (("reason", e.reason),)))
    return new, [
        Decide(False, e.moderator, e.reason),
        Kick("knocked", e.reason),
        Notify(tuple(texts), queued=True),
        tell_moderators(messages.DENIED_BY, moderator=e.moderator, user=s.user_id),
    ]


def _charter_changed(s: State, e: CharterChanged) -> tuple[State, list[Effect]]:
    s = replace(s, policy=replace(s.policy, charter_version=e.version))
    if s.step == MEMBER:
        if not s.dm or s.accepted is None or s.accepted >= e.version or s.reconsent == e.version:
            return s, []
        deadline = s.deadline if s.reconsent == e.version and s.deadline else e.deadline
        new = replace(s, reconsent=e.version, reconsent_question=None, deadline=deadline)
        return new, [AskReconsent(e.version, deadline)]
    if s.step == CHARTER and s.offered is not None and s.offered < e.version and s.lang:
        new = replace(s, offered=e.version, question=None, asked=_retire(s))
        return new, [SendCharter(s.lang, e.version)]
    return s, []


def _grace_expired(s: State, e: GraceExpired) -> tuple[State, list[Effect]]:
    if s.deadline is None or e.at < s.deadline or s.reconsent is None:
        return s, []
    if s.policy.on_expiry == "mute":
        return replace(s, muted=True, deadline=None), [Mute(), say(messages.MUTED)]
    new, effects = _left(s, Left("charter-expired", e.at, kick=True))
    return new, [*effects, say(messages.REMOVED)]


def _grace_near(s: State, e: GraceNear) -> tuple[State, list[Effect]]:
    if s.reconsent is None or s.deadline is None or s.muted or s.step != MEMBER:
        return s, []
    if not s.deadline - e.before <= e.at < s.deadline:
        return s, []
    return s, [RemindReconsent(s.reconsent, s.deadline)]


# --- from what the person wrote to an input (pure; the bot calls these) ----------------


def reply_input(
    s: State,
    body: str,
    *,
    event_id: str,
    to: str | None,
    sent_at: datetime | None,
    at: datetime,
    languages: tuple[str, ...],
    primary: str,
) -> Input | None:
    """The input a message of the person (not a command) is, given where they are; None
    when it answers none of the flow's questions (another feature's, or not understood)."""
    common = (event_id, "reply", at, to, sent_at, meaning(body) if to is None else None)
    if s.reconsent is not None and to is not None and to == s.reconsent_question:
        return ReconsentAccepted(*common) if is_acceptance(body) else None
    answer_like = is_acceptance(body) or yes_no(body) is not None
    if to is not None and to in s.asked and answer_like:
        return PublicationAnswered(*common, granted=yes_no(body))  # told: answered already
    if s.step == LANGUAGE:
        return LanguageChosen(*common, lang=guess_language(body, languages) or primary)
    if s.step == CHARTER:
        return CharterAnswered(*common, accepted=is_acceptance(body))
    if s.step == PUBLICATION:
        return PublicationAnswered(*common, granted=yes_no(body))
    if s.step == LEFT:
        return Returned()
    if s.reconsent is not None and is_acceptance(body):
        return ReconsentAccepted(*common)
    if answer_like and to is None and sent_at and s.answered_at and sent_at <= s.answered_at:
        return PublicationAnswered(*common, granted=yes_no(body))  # maybe a burst
    return None


def meaning(body: str) -> str:
    """What an answer means, whatever its form ("OUI !!", "oui 👍" and "yes." alike)."""
    return f"accept={is_acceptance(body)} yes={yes_no(body)}"


def reaction_input(s: State, key: str, *, event_id: str, to: str, at: datetime) -> Input | None:
    """The input a reaction (``key`` without skin tones) of the person is; None when it is
    not an answer to one of the flow's questions."""
    common = (event_id, "reaction", at, to, None, None)
    if s.reconsent is not None and to == s.reconsent_question:
        return ReconsentAccepted(*common) if key in ACCEPT_REACTIONS else None
    if s.step == CHARTER and to == s.question:
        return CharterAnswered(*common, accepted=True) if key in ACCEPT_REACTIONS else None
    if s.step == PUBLICATION and to == s.question:
        if key in YES_REACTIONS or key in NO_REACTIONS:
            return PublicationAnswered(*common, granted=key in YES_REACTIONS)
        return None
    if to in s.asked and key in ACCEPT_REACTIONS | YES_REACTIONS | NO_REACTIONS:
        return PublicationAnswered(*common, granted=key in YES_REACTIONS)  # answered already
    return None
