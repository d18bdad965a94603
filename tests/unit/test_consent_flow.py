"""Every transition of the consent flow (moderation/membership/flow.py), no homeserver."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from moderation.membership import flow as f
from moderation.membership import messages

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
AUTO = f.Policy(charter_version=1, approval="auto")
MODS = f.Policy(charter_version=1, approval="moderators")
LANGS = ("fr", "en")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def msgids(effects: tuple[f.Effect, ...]) -> list[str]:
    return [t.msgid for e in effects if isinstance(e, f.Notify) for t in e.texts]


def of(effects: tuple[f.Effect, ...], kind: type) -> list[f.Effect]:
    return [e for e in effects if isinstance(e, kind)]


def charter_state(policy: f.Policy = AUTO) -> f.State:
    return f.State("@a:x", policy, f.CHARTER, "fr", True, offered=1, question="$charter", entries=0)


def publication_state(policy: f.Policy = AUTO) -> f.State:
    return replace(
        charter_state(policy),
        step=f.PUBLICATION,
        accepted=1,
        question="$pub",
        asked=frozenset({"$charter"}),
        answered_at=at(0),
    )


def member_state(policy: f.Policy = AUTO, publication: bool = True) -> f.State:
    return replace(
        publication_state(policy),
        step=f.MEMBER,
        publication=publication,
        question=None,
        asked=frozenset({"$charter", "$pub"}),
        answered_at=at(1),
        entries=1,
    )


# --- entering ---------------------------------------------------------------------------


def test_knock_of_someone_new_opens_the_dm_and_sends_the_charter_when_joined():
    s, effects = f.advance(f.State("@a:x", AUTO), f.Entered("knock", "!space", lang="fr"))
    assert effects == (f.OpenDm(), f.SendCharter("fr", 1, if_joined=True))
    assert (s.step, s.lang, s.offered, s.dm, s.question) == (f.CHARTER, "fr", 1, True, None)


def test_lobby_join_without_a_language_asks_it():
    s, effects = f.advance(f.State("@a:x", AUTO), f.Entered("lobby"))
    assert effects == (f.OpenDm(), f.AskLanguage(if_joined=True))
    assert s.step == f.LANGUAGE


def test_dm_door_asks_the_language_at_once():
    s, effects = f.advance(f.State("@a:x", AUTO, dm=True), f.Entered("dm"))
    assert effects == (f.AskLanguage(if_joined=False),)
    assert s.step == f.LANGUAGE


def test_dm_door_of_someone_just_recorded_asks_the_language():
    s = f.State("@a:x", AUTO, f.LANGUAGE, dm=True)
    assert f.advance(s, f.Entered("dm"))[1] == (f.AskLanguage(if_joined=False),)
    asked = replace(s, question="$lang")
    assert f.advance(asked, f.Entered("dm")) == (asked, ())


def test_entering_again_while_under_way_does_nothing():
    s = charter_state()
    assert f.advance(s, f.Entered("knock", "!room")) == (s, ())


def test_entering_again_after_a_crash_before_the_greeting_greets_once_joined():
    """The DM was recorded but the process died before the charter went out (the
    person's join was handled meanwhile): found again at start-up, the knock sends the
    charter, if the person is in the DM (otherwise their join will)."""
    s = replace(charter_state(), question=None)
    assert f.advance(s, f.Entered("knock", "!room")) == (
        s,
        (f.SendCharter("fr", 1, if_joined=True),),
    )
    lang = f.State("@a:x", AUTO, f.LANGUAGE, dm=True)
    assert f.advance(lang, f.Entered("knock", "!room")) == (lang, (f.AskLanguage(if_joined=True),))


def test_member_knocking_again_is_invited_to_that_room_only():
    s = member_state()
    assert f.advance(s, f.Entered("knock", "!room", knocking=True)) == (
        s,
        (f.InviteTo(("!room",)),),
    )
    assert f.advance(s, f.Entered("knock", "!room", knocking=False)) == (s, ())


def test_member_with_an_old_charter_knocking_again_is_not_invited():
    s = replace(member_state(), policy=replace(AUTO, charter_version=2))
    assert f.advance(s, f.Entered("knock", "!room", knocking=True)) == (s, ())


def test_someone_who_left_enters_again_and_gets_the_charter():
    s = replace(member_state(), step=f.LEFT, accepted=None, publication=False)
    s2, effects = f.advance(s, f.Entered("knock", "!space"))
    assert effects == (f.SendCharter("fr", 1, if_joined=True),)
    assert s2.step == f.CHARTER


def test_denied_person_may_enter_again():
    s = replace(publication_state(MODS), step=f.DENIED)
    s2, _ = f.advance(s, f.Entered("lobby"))
    assert s2.step == f.CHARTER


# --- the DM -----------------------------------------------------------------------------


def test_dm_joined_greets_once():
    s = replace(charter_state(), question=None)
    assert f.advance(s, f.DmJoined())[1] == (f.SendCharter("fr", 1),)
    assert f.advance(charter_state(), f.DmJoined())[1] == ()
    lang = f.State("@a:x", AUTO, f.LANGUAGE, dm=True)
    assert f.advance(lang, f.DmJoined())[1] == (f.AskLanguage(),)


def test_dm_reopened():
    s, effects = f.advance(charter_state(), f.DmReopened())
    assert (s.question, effects) == (None, (f.SendCharter("fr", 1),))
    assert f.advance(publication_state(), f.DmReopened())[1] == (f.AskPublication("fr"),)
    assert f.advance(member_state(), f.DmReopened())[1] == (f.ShowHelp(),)


def test_question_asked_gives_the_question_its_identity():
    s = replace(charter_state(), question=None)
    assert f.advance(s, f.QuestionAsked("charter", "$c2"))[0].question == "$c2"
    assert f.advance(s, f.QuestionAsked("publication", "$p"))[0] == s  # not its step
    r = replace(member_state(), reconsent=2)
    assert f.advance(r, f.QuestionAsked("reconsent", "$r"))[0].reconsent_question == "$r"
    assert f.advance(member_state(), f.QuestionAsked("reconsent", "$r"))[0].reconsent is None


def test_language_chosen_sends_the_charter_in_that_language():
    s = f.State("@a:x", AUTO, f.LANGUAGE, dm=True, question="$lang")
    s2, effects = f.advance(s, f.LanguageChosen("$e", "reply", at(1), lang="en"))
    assert effects == (f.SendCharter("en", 1),)
    assert (s2.step, s2.lang, s2.question, "$lang" in s2.asked) == (f.CHARTER, "en", None, True)


# --- the charter ------------------------------------------------------------------------


def test_charter_accepted_is_recorded_with_its_version_then_publication_asked():
    s, effects = f.advance(charter_state(), f.CharterAnswered("$e", "reply", at(5), accepted=True))
    assert effects == (f.RecordConsent("charter", True, 1, "reply", "$e"), f.AskPublication("fr"))
    assert (s.step, s.accepted, s.answered_at) == (f.PUBLICATION, 1, at(5))
    assert "$e" in s.consumed
    assert "$charter" in s.asked


def test_charter_not_accepted_is_reminded_and_nothing_recorded():
    s = charter_state()
    s2, effects = f.advance(s, f.CharterAnswered("$e", "reply", at(5), accepted=False))
    assert s2 == s
    assert msgids(effects) == [messages.CHARTER_REMINDER]


def test_charter_reaction_on_another_message_does_nothing():
    s = charter_state()
    e = f.CharterAnswered("$e", "reaction", at(5), to="$other", accepted=True)
    assert f.advance(s, e) == (s, ())


def test_an_answer_replayed_counts_once():
    s, _ = f.advance(charter_state(), f.CharterAnswered("$e", "reply", at(5), accepted=True))
    again = f.PublicationAnswered("$e", "reply", at(6), granted=True)
    assert f.advance(s, again) == (s, ())


# --- publication ------------------------------------------------------------------------


def test_publication_yes_admits_automatically():
    s, effects = f.advance(
        publication_state(), f.PublicationAnswered("$y", "reply", at(5), granted=True)
    )
    assert effects == (
        f.RecordConsent("publication", True, 1, "reply", "$y"),
        f.QueueAdmission(1, 1),
        f.say(messages.PUBLICATION_YES),
        f.Signal("publication-granted"),
    )
    assert (s.step, s.publication, s.entries) == (f.MEMBER, True, 1)


def test_publication_no_with_moderators_queues_a_card():
    s, effects = f.advance(
        publication_state(MODS),
        f.PublicationAnswered("$n", "reaction", at(5), "$pub", granted=False),
    )
    assert effects == (
        f.RecordConsent("publication", False, 1, "reaction", "$n"),
        f.QueueApproval(),
        f.say(messages.PUBLICATION_NO, messages.WAITING_APPROVAL),
    )
    assert (s.step, s.request) == (f.APPROVAL, True)


def test_publication_neither_yes_nor_no_is_reminded():
    s = publication_state()
    assert msgids(f.advance(s, f.PublicationAnswered("$x", "reply", at(5)))[1]) == [
        messages.PUBLICATION_REMINDER
    ]


def test_publication_answer_with_an_old_charter_sends_the_current_one_first():
    s = replace(publication_state(), policy=replace(AUTO, charter_version=2))
    s2, effects = f.advance(s, f.PublicationAnswered("$y", "reply", at(5), granted=True))
    assert not of(effects, f.QueueAdmission)
    assert f.SendCharter("fr", 2) in effects
    assert (s2.step, s2.offered) == (f.CHARTER, 2)


def test_burst_second_answer_is_told_already_answered():
    oui = f.meaning("oui")
    first = f.CharterAnswered("$1", "reply", at(5), said=oui, accepted=True)
    s, _ = f.advance(charter_state(), first)
    second = f.PublicationAnswered("$2", "reply", at(6), sent_at=at(4.5), said=oui, granted=True)
    s2, effects = f.advance(s, second)
    assert s2 == s
    assert msgids(effects) == [messages.ALREADY_ANSWERED]


def test_a_different_answer_written_at_once_answers_the_next_question():
    """ "I accept" then "no" at once: the "no" is the publication answer."""
    first = f.CharterAnswered("$1", "reply", at(5), said=f.meaning("I accept"), accepted=True)
    s, _ = f.advance(charter_state(), first)
    no = f.PublicationAnswered("$2", "reply", at(6), sent_at=at(4.5), said=f.meaning("no"))
    s2, effects = f.advance(s, replace(no, granted=False))
    assert s2.step == f.MEMBER
    assert f.RecordConsent("publication", False, 1, "reply", "$2") in effects


def test_reply_to_an_answered_question_is_told_so():
    s = member_state()
    e = f.PublicationAnswered("$2", "reply", at(9), to="$pub", sent_at=at(9), granted=False)
    s2, effects = f.advance(s, e)
    assert s2 == s
    assert msgids(effects) == [messages.ALREADY_ANSWERED]


def test_reply_to_another_question_does_not_bind():
    s = publication_state()
    e = f.PublicationAnswered("$2", "reply", at(9), to="$unknown", sent_at=at(9), granted=True)
    assert f.advance(s, e) == (s, ())


# --- commands ---------------------------------------------------------------------------


def test_publication_command_during_the_question_answers_it():
    s, effects = f.advance(publication_state(), f.PublicationSet(True, "$c", at(5)))
    assert s.step == f.MEMBER
    assert of(effects, f.QueueAdmission)


def test_publication_command_before_the_charter_is_refused():
    s = f.State("@a:x", AUTO, f.CHARTER, "fr", True, offered=1)
    assert msgids(f.advance(s, f.PublicationSet(True, "$c", at(5)))[1]) == [messages.CHARTER_FIRST]


def test_publication_no_without_a_charter_still_withdraws_quote_permissions():
    """``!publication non`` of someone who left but still holds permissions to quote one
    message: recorded and erased (it answered "accept the charter first")."""
    s = f.State("@a:x", AUTO, f.LEFT, "fr", True)
    s2, effects = f.advance(s, f.PublicationSet(False, "$n", at(5), quotes=1))
    assert f.Erase() in effects
    assert not s2.publication


def test_publication_command_grant_and_refusal():
    s, effects = f.advance(member_state(publication=False), f.PublicationSet(True, "$c", at(5)))
    assert s.publication
    assert f.Signal("publication-granted") in effects
    assert not of(effects, f.Erase)
    s, effects = f.advance(s, f.PublicationSet(False, "$d", at(6), quotes=2))
    assert not s.publication
    assert of(effects, f.Erase)
    assert f.Signal("publication-withdrawn") in effects
    assert msgids(effects) == [messages.PUBLICATION_NO, messages.QUOTES_WITHDRAWN]


def test_publication_no_with_only_quote_permissions_erases():
    _, effects = f.advance(member_state(publication=False), f.PublicationSet(False, "$d", at(5), 1))
    assert of(effects, f.Erase)


def test_withdraw_publication():
    s, effects = f.advance(member_state(), f.Withdrew("publication", "$w", at(5)))
    assert not s.publication
    assert of(effects, f.Erase)
    assert f.RecordConsent("publication", False, 1, "command", "$w") in effects


def test_withdraw_with_nothing_granted():
    s = member_state(publication=False)
    assert f.advance(s, f.Withdrew("publication", "$w", at(5))) == (
        s,
        (f.say(messages.NOTHING_TO_WITHDRAW),),
    )


def test_withdraw_the_charter_ends_the_membership():
    s, effects = f.advance(member_state(), f.Withdrew("charter", "$q", at(5)))
    assert s.step == f.LEFT
    assert s.accepted is None
    assert f.Kick("forum", "command") in effects
    assert msgids(effects) == [messages.LEFT]


# --- leaving ----------------------------------------------------------------------------


def test_leaving_withdraws_everything_and_erases():
    s = replace(member_state(), muted=True, reconsent=2, deadline=at(100))
    s2, effects = f.advance(s, f.Left("left-rooms", at(5)))
    assert effects == (
        f.RecordConsent("publication", False, None, "left-rooms", None),
        f.RecordConsent("charter", False, 1, "left-rooms", None),
        f.CloseRequests("left-rooms"),
        f.Erase(),
        f.Unmute(),
        f.Signal("publication-withdrawn"),
        f.Signal("member-left"),
    )
    assert (s2.step, s2.accepted, s2.publication, s2.reconsent, s2.muted) == (
        f.LEFT,
        None,
        False,
        None,
        False,
    )


def test_leave_command_kicks():
    _, effects = f.advance(member_state(publication=False), f.Left("command", at(5), "$q", True))
    assert f.Kick("forum", "command") in effects
    assert f.Erase() in effects
    assert not any(isinstance(e, f.RecordConsent) and e.scope == "publication" for e in effects)


def test_someone_who_left_writing_again_gets_the_charter():
    s = replace(member_state(), step=f.LEFT, accepted=None, publication=False)
    s2, effects = f.advance(s, f.Returned())
    assert effects == (f.SendCharter("fr", 1),)
    assert s2.step == f.CHARTER
    assert f.advance(member_state(), f.Returned()) == (member_state(), ())


# --- moderators -------------------------------------------------------------------------


def approval_state() -> f.State:
    s, _ = f.advance(
        publication_state(MODS), f.PublicationAnswered("$y", "reply", at(5), granted=True)
    )
    return s


def test_approved_admits():
    s, effects = f.advance(approval_state(), f.Approved("@mod:x", f.REQUEST_PENDING))
    assert effects == (
        f.Decide(True, "@mod:x"),
        f.QueueAdmission(1, 1),
        f.tell_moderators(messages.APPROVED_BY, moderator="@mod:x", user="@a:x"),
    )
    assert s.step == f.MEMBER


def test_denied_kicks_the_knocks_and_tells_them():
    s, effects = f.advance(approval_state(), f.Denied("@mod:x", f.REQUEST_PENDING, "spam"))
    assert effects[:2] == (f.Decide(False, "@mod:x", "spam"), f.Kick("knocked", "spam"))
    assert effects[2] == f.Notify(
        (f.Text(messages.DENIED), f.Text(messages.REASON, (("reason", "spam"),))), queued=True
    )
    assert s.step == f.DENIED


def test_approving_someone_who_left_is_refused():
    s, _ = f.advance(approval_state(), f.Left("command", at(6), "$q", True))
    s2, effects = f.advance(s, f.Approved("@mod:x", f.REQUEST_WITHDRAWN))
    assert s2 == s
    assert effects == (f.tell_moderators(messages.REQUEST_WITHDRAWN, user="@a:x"),)


def test_approving_a_pending_request_of_someone_who_left_closes_it():
    s = replace(approval_state(), step=f.LEFT, accepted=None)
    s2, effects = f.advance(s, f.Approved("@mod:x", f.REQUEST_PENDING))
    assert effects[0] == f.CloseRequests("consent-ended")
    assert not s2.request
    assert not of(effects, f.QueueAdmission)


@pytest.mark.parametrize(
    ("status", "msgid"),
    [
        (f.REQUEST_APPROVED, messages.ALREADY_APPROVED),
        (f.REQUEST_DENIED, messages.ALREADY_DENIED),
        (None, messages.NO_PENDING),
    ],
)
def test_decisions_that_cannot_be_carried_out(status, msgid):
    s = member_state(MODS)
    assert f.advance(s, f.Denied("@mod:x", status)) == (
        s,
        (f.tell_moderators(msgid, user="@a:x"),),
    )


# --- a new charter ----------------------------------------------------------------------


def test_charter_changed_asks_members_again():
    s, effects = f.advance(member_state(), f.CharterChanged(2, at(100)))
    assert effects == (f.AskReconsent(2, at(100)),)
    assert (s.reconsent, s.deadline, s.policy.charter_version) == (2, at(100), 2)
    assert f.advance(s, f.CharterChanged(2, at(100)))[1] == ()  # asked once


def test_charter_changed_during_the_charter_step_sends_the_new_one():
    s, effects = f.advance(charter_state(), f.CharterChanged(2, at(100)))
    assert effects == (f.SendCharter("fr", 2),)
    assert s.offered == 2


def test_reconsent_accepted():
    s, _ = f.advance(member_state(), f.CharterChanged(2, at(100)))
    s, _ = f.advance(s, f.QuestionAsked("reconsent", "$r"))
    s = replace(s, muted=True)
    s2, effects = f.advance(s, f.ReconsentAccepted("$ok", "reaction", at(5), "$r"))
    assert effects == (
        f.RecordConsent("charter", True, 2, "reaction", "$ok"),
        f.Unmute(),
        f.say(messages.RECONSENT_THANKS, version=2),
    )
    assert (s2.accepted, s2.reconsent, s2.muted, s2.deadline) == (2, None, False, None)


def test_grace_expired_mutes_or_removes():
    s, _ = f.advance(member_state(), f.CharterChanged(2, at(100)))
    assert f.advance(s, f.GraceExpired(at(99))) == (s, ())
    muted, effects = f.advance(s, f.GraceExpired(at(100)))
    assert effects == (f.Mute(), f.say(messages.MUTED))
    assert muted.muted
    removing = replace(s, policy=replace(s.policy, on_expiry="remove"))
    gone, effects = f.advance(removing, f.GraceExpired(at(100)))
    assert gone.step == f.LEFT
    assert f.Kick("forum", "charter-expired") in effects
    assert msgids(effects)[-1] == messages.REMOVED


def test_grace_near_reminds_once_within_the_window():
    s, _ = f.advance(member_state(), f.CharterChanged(2, at(100)))
    window = timedelta(seconds=30)
    assert f.advance(s, f.GraceNear(at(69), window)) == (s, ())
    assert f.advance(s, f.GraceNear(at(70), window)) == (s, (f.RemindReconsent(2, at(100)),))
    assert f.advance(s, f.GraceNear(at(100), window)) == (s, ())  # too late: expired
    muted = replace(s, muted=True)
    assert f.advance(muted, f.GraceNear(at(80), window)) == (muted, ())
    assert f.advance(member_state(), f.GraceNear(at(80), window)) == (member_state(), ())


# --- reading what they wrote ------------------------------------------------------------


def reply(s: f.State, body: str, to: str | None = None, sent: float = 10) -> f.Input | None:
    return f.reply_input(
        s, body, event_id="$m", to=to, sent_at=at(sent), at=at(sent), languages=LANGS, primary="fr"
    )


@pytest.mark.parametrize("body", ["OUI!!", "Oui 👍", "ouí", "yes.", "d'accord", "  Yes 🙂 "])
def test_answers_in_any_form(body):
    answer = reply(publication_state(), body)
    assert isinstance(answer, f.PublicationAnswered)
    assert answer.granted is True


def test_reply_inputs_by_step():
    lang = f.State("@a:x", AUTO, f.LANGUAGE, dm=True)
    assert reply(lang, "English please") == f.LanguageChosen(
        "$m", "reply", at(10), None, at(10), f.meaning("English please"), lang="en"
    )
    charter = reply(charter_state(), "j'accepte")
    assert isinstance(charter, f.CharterAnswered)
    assert charter.accepted
    left = replace(member_state(), step=f.LEFT)
    assert reply(left, "hello") == f.Returned()
    assert reply(member_state(), "hello") is None
    reconsent = replace(member_state(), reconsent=2, reconsent_question="$r")
    assert isinstance(reply(reconsent, "I accept", to="$r"), f.ReconsentAccepted)
    assert reply(reconsent, "no", to="$r") is None
    assert isinstance(reply(member_state(), "oui", to="$pub"), f.PublicationAnswered)
    burst = replace(member_state(), last_said=f.meaning("yes"))
    assert msgids(f.advance(burst, reply(burst, "OUI !", sent=0.5))[1]) == [
        messages.ALREADY_ANSWERED
    ]
    assert f.advance(burst, reply(burst, "non", sent=0.5))[1] == ()


def test_reaction_inputs():
    def react(s: f.State, key: str, to: str) -> f.Input | None:
        return f.reaction_input(s, key, event_id="$r", to=to, at=at(5))

    assert isinstance(react(charter_state(), "✅", "$charter"), f.CharterAnswered)
    thumbs = react(charter_state(), "👍", "$charter")  # 👍 and ✅ both mean yes
    assert isinstance(thumbs, f.CharterAnswered)
    assert thumbs.accepted is True
    assert react(charter_state(), "👎", "$charter") is None
    reconsent = replace(member_state(), reconsent=2, reconsent_question="$r")
    assert isinstance(react(reconsent, "👍", "$r"), f.ReconsentAccepted)
    assert react(charter_state(), "🎉", "$charter") is None
    pub = react(publication_state(), "👎", "$pub")
    assert isinstance(pub, f.PublicationAnswered)
    assert pub.granted is False
    assert isinstance(react(member_state(), "👍", "$pub"), f.PublicationAnswered)
    assert react(member_state(), "👍", "$other") is None


# --- the state derived from what is stored ----------------------------------------------


def test_state_of_a_stored_person():
    from forum.consent import ConsentStatus
    from moderation.membership.effects import state_of
    from moderation.membership.models import PersonRow

    row = PersonRow(
        user_id="@a:x",
        dm_room_id="!dm",
        lang="fr",
        step="publication",
        door="knock",
        knocked_rooms=[],
        charter_event_id="$charter",
        charter_version=1,
        question_event_id="$pub",
        entries=0,
        reconsent_version=None,
        reconsent_event_id=None,
        grace_deadline=None,
        muted=False,
    )
    status = ConsentStatus("@a:x", 1, False, charter_at=at(3), publication_at=None)
    s = state_of(row, status, policy=AUTO, consumed=frozenset({"$e"}))
    assert s == replace(publication_state(), answered_at=at(3), consumed=frozenset({"$e"}))
    row.step = "member"
    member = state_of(row, status, policy=AUTO)
    assert (member.question, member.asked) == (None, frozenset({"$charter", "$pub"}))
    assert state_of(None, ConsentStatus("@b:x", None, False), policy=AUTO) == f.State("@b:x", AUTO)
