"""The consent rules of DESIGN.md held by the flow over random sequences of inputs
(hypothesis): nobody admitted without an acceptance of the current charter; leaving or
withdrawing erases and ends the grant; nobody admitted again after leaving without a new
acceptance; approving who left does nothing; no answer counts twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moderation.membership import flow as f

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
ANSWER_IDS = [f"$a{i}" for i in range(6)]  # few: answers get replayed


@dataclass
class Ledger:
    """What the records the flow asked for say, independently of its state."""

    charter: int | None = None
    publication: bool = False
    left: bool = False
    """Left, and no charter accepted since."""
    granted_answers: list[str] = field(default_factory=list)


@dataclass
class World:
    state: f.State
    now: datetime = T0
    ledger: Ledger = field(default_factory=Ledger)
    asked: int = 0

    def tick(self, seconds: float = 1) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now

    def question_ids(self) -> list[str | None]:
        s = self.state
        return [None, s.question, s.reconsent_question, *sorted(s.asked), "$unknown"]


def answer_inputs(w: World, data: st.DataObject) -> f.Input:
    to = data.draw(st.sampled_from(w.question_ids()), label="to")
    event_id = data.draw(st.sampled_from(ANSWER_IDS), label="event")
    at = w.tick()
    sent_at = at - timedelta(seconds=data.draw(st.sampled_from([0, 0.5, 3])))
    method = "reply" if to is None else data.draw(st.sampled_from(["reply", "reaction"]))
    kind = data.draw(st.sampled_from(["language", "charter", "publication", "reconsent"]))
    if kind == "language":
        return f.LanguageChosen(event_id, method, at, to, sent_at, lang="fr")
    if kind == "charter":
        return f.CharterAnswered(event_id, method, at, to, sent_at, data.draw(st.booleans()))
    if kind == "publication":
        granted = data.draw(st.sampled_from([True, False, None]))
        return f.PublicationAnswered(event_id, method, at, to, sent_at, granted)
    return f.ReconsentAccepted(event_id, method, at, to, sent_at)


def progress(w: World, data: st.DataObject) -> f.Input:
    """The natural next step (so that sequences reach admission and beyond)."""
    s = w.state
    w.asked += 1
    event_id = data.draw(st.sampled_from([*ANSWER_IDS, f"$fresh{w.asked}"]), label="event")
    at = w.tick()
    if s.reconsent is not None and s.reconsent_question:
        return f.ReconsentAccepted(event_id, "reaction", at, s.reconsent_question)
    match s.step:
        case f.LANGUAGE:
            return f.LanguageChosen(event_id, "reply", at, s.question, lang="en")
        case f.CHARTER:
            return f.CharterAnswered(event_id, "reply", at, s.question, accepted=True)
        case f.PUBLICATION:
            granted = data.draw(st.booleans())
            return f.PublicationAnswered(event_id, "reaction", at, s.question, granted=granted)
        case f.APPROVAL:
            return f.Approved("@mod:x", f.REQUEST_PENDING if s.request else None)
        case _:
            return f.Entered("knock", "!room", "fr", knocking=True)


def an_input(w: World, data: st.DataObject) -> f.Input:
    kind = data.draw(
        st.sampled_from(
            [
                "progress",
                "progress",
                "progress",
                "enter",
                "joined",
                "reopened",
                "answer",
                "answer",
                "answer",
                "set",
                "withdraw",
                "left",
                "returned",
                "approve",
                "deny",
                "charter",
                "expire",
            ]
        ),
        label="kind",
    )
    s = w.state
    request = (
        f.REQUEST_PENDING
        if s.request
        else data.draw(
            st.sampled_from(
                [None, f.REQUEST_APPROVED, f.REQUEST_DENIED, f.REQUEST_WITHDRAWN, f.REQUEST_PENDING]
            )
        )
    )
    match kind:
        case "progress":
            return progress(w, data)
        case "enter":
            door = data.draw(st.sampled_from(["knock", "lobby", "dm", "restart"]))
            lang = data.draw(st.sampled_from([None, "fr", "en"]))
            return f.Entered(door, "!room", lang, knocking=data.draw(st.booleans()))
        case "joined":
            return f.DmJoined()
        case "reopened":
            return f.DmReopened()
        case "answer":
            return answer_inputs(w, data)
        case "set":
            event_id = data.draw(st.sampled_from(ANSWER_IDS))
            quotes = data.draw(st.integers(0, 2))
            return f.PublicationSet(data.draw(st.booleans()), event_id, w.tick(), quotes)
        case "withdraw":
            scope = data.draw(st.sampled_from(["publication", "charter"]))
            event_id = data.draw(st.sampled_from(ANSWER_IDS))
            return f.Withdrew(scope, event_id, w.tick(), data.draw(st.integers(0, 2)))
        case "left":
            return f.Left("left-rooms", w.tick(), kick=data.draw(st.booleans()))
        case "returned":
            return f.Returned()
        case "approve":
            return f.Approved("@mod:x", request)
        case "deny":
            return f.Denied("@mod:x", request, data.draw(st.sampled_from([None, "spam"])))
        case "charter":
            version = s.policy.charter_version + data.draw(st.integers(0, 1))
            return f.CharterChanged(version, w.now + timedelta(days=1))
        case _:
            return f.GraceExpired(w.tick(data.draw(st.sampled_from([1, 2 * 86400]))))


def check(w: World, event: f.Input, before: f.State, after: f.State, effects: f.Effects) -> None:
    ledger = w.ledger
    had_publication = ledger.publication
    records = [e for e in effects if isinstance(e, f.RecordConsent)]
    if isinstance(event, f.Answer | f.PublicationSet):
        # one answer, one question
        assert len(records) <= 1, (event, effects)
    for effect in effects:
        match effect:
            case f.RecordConsent(scope="charter", granted=True):
                ledger.charter, ledger.left = effect.version, False
                assert effect.event_id not in ledger.granted_answers, "an answer counted twice"
                assert effect.event_id is not None
                ledger.granted_answers.append(effect.event_id)
            case f.RecordConsent(scope="charter"):
                ledger.charter = None
            case f.RecordConsent(scope="publication"):
                if effect.granted:
                    assert effect.event_id not in ledger.granted_answers, "counted twice"
                    assert effect.event_id is not None
                    ledger.granted_answers.append(effect.event_id)
                ledger.publication = effect.granted
            case f.QueueAdmission() | f.InviteTo():
                hypothesis.event("admitted")
                # nobody admitted without an acceptance of the current charter
                assert ledger.charter == after.policy.charter_version, (event, effects)
                assert not ledger.left, "admitted again after leaving without a new acceptance"
            case f.Decide(approved=True):
                hypothesis.event("approved")
                assert before.step == f.APPROVAL
                assert before.request
            case _:
                pass
    if isinstance(event, f.Left):
        hypothesis.event("left")
        assert f.Erase() in effects, (event, effects)
    if (
        isinstance(event, f.Withdrew)
        and event.event_id not in before.consumed
        and (had_publication or event.quotes or event.scope == "charter")
    ):
        assert f.Erase() in effects, (event, effects)
        assert not ledger.publication
    if isinstance(event, f.Left) or f.Signal("member-left") in effects:
        ledger.left = True
        assert ledger.charter is None
        assert not ledger.publication
    if isinstance(event, f.Approved) and (before.step == f.LEFT or before.accepted is None):
        assert not any(isinstance(e, f.QueueAdmission | f.Decide) for e in effects)
        assert after.step == before.step
    # the state agrees with the records
    assert after.publication == ledger.publication, (event, effects, after)
    assert after.accepted == ledger.charter, (event, effects, after)


def feed_questions(w: World, effects: f.Effects) -> None:
    """What the executor does: each question it sends gets its event id."""
    for effect in effects:
        kind: Literal["language", "charter", "publication", "reconsent"] | None = None
        match effect:
            case f.AskLanguage():
                kind = "language"
            case f.SendCharter():
                kind = "charter"
            case f.AskPublication():
                kind = "publication"
            case f.AskReconsent():
                kind = "reconsent"
        if kind is not None:
            w.asked += 1
            w.state, more = f.advance(w.state, f.QuestionAsked(kind, f"$q{w.asked}"))
            assert more == ()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.builds(
        f.Policy,
        charter_version=st.just(1),
        approval=st.sampled_from(["auto", "moderators"]),
        on_expiry=st.sampled_from(["mute", "remove"]),
    ),
    data=st.data(),
)
def test_consent_rules_hold_over_any_sequence(policy: f.Policy, data: st.DataObject) -> None:
    w = World(f.State("@a:x", policy))
    for _ in range(data.draw(st.integers(1, 40), label="length")):
        event = an_input(w, data)
        before = w.state
        w.state, effects = f.advance(before, event)
        check(w, event, before, w.state, effects)
        feed_questions(w, effects)


def test_an_answer_never_counts_twice_by_replay() -> None:
    s = f.State("@a:x", f.Policy(), f.CHARTER, "fr", True, offered=1, question="$c")
    e = f.CharterAnswered("$a", "reply", T0, accepted=True)
    s, first = f.advance(s, e)
    assert any(isinstance(x, f.RecordConsent) for x in first)
    s, _ = f.advance(s, f.QuestionAsked("publication", "$p"))
    again = f.PublicationAnswered("$a", "reply", T0, granted=True)
    assert f.advance(s, again) == (s, ())


def test_withdrawing_quote_permissions_without_a_charter_erases() -> None:
    """Found by hypothesis: ``!retirer`` of someone whose charter consent ended (they left)
    but who still holds permissions to quote one message answered "accept the charter
    first" and erased nothing; a withdrawal is always possible."""
    s = f.State("@a:x", f.Policy(), f.LEFT, "fr", True)
    s2, effects = f.advance(s, f.Withdrew("publication", "$a0", T0, quotes=1))
    assert f.Erase() in effects
    assert f.RecordConsent("publication", False, None, "command", "$a0") in effects
    assert not s2.publication
