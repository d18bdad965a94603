"""Every text the membership bot sends, in English (the msgids of its catalogs in
``locale/<lang>/LC_MESSAGES/forum.po``). Placeholders use ``str.format``."""

from __future__ import annotations

CHARTER_INTRO = (
    "Welcome to {forum}! Here is our charter (version {version}). To accept it, reply"
    ' "I accept" (or "yes"), or react with ✅ to this message.'
)
PUBLICATION_QUESTION = (
    "Thank you, your acceptance of the charter is recorded. One more question: each "
    "week a public digest of the discussions is published on the web. May your "
    'messages be quoted in it? Reply "yes" or "no" (or react 👍 / 👎 to this message). '
    "You can change this at any time with {prefix}publication yes|no."
)
WELCOME = (
    "You are invited to {forum} and its rooms: accept the invitations to join. Type "
    "{prefix}help to see what you can do here."
)
CARD = (
    "Membership request from {user}: the charter is accepted. Approve with "
    "{prefix}approve {user} or deny with {prefix}deny {user} reason, or react ✅ / ❌ "
    "to this message."
)
ASK_LANGUAGE = (
    "Which language would you like to use? Reply with the name of your language: {choices}."
)
PUBLICATION_YES = "Noted: your messages may be quoted in the public digest."
PUBLICATION_NO = "Noted: your messages will not be quoted in the public digest."
COMMANDS = "Commands:"
STATUS_CHARTER = "Charter: version {version} accepted."
STATUS_NO_CHARTER = "Charter: not accepted."
STATUS_PUB_YES = "Publication in the digest: yes."
STATUS_PUB_NO = "Publication in the digest: no."
STATUS_MEMBER = "Membership: member."
STATUS_NOT_MEMBER = "Membership: not a member."
HELP_HELP = "this help"
HELP_STATUS = "your consents and membership"
HELP_PUBLICATION = "may your messages be quoted in the public digest (yes/no)"
HELP_WITHDRAW = (
    "withdraw your consent to be quoted, and every permission to quote one of your "
    "messages (N: only the N-th permission listed by the status)"
)
HELP_LEAVE = "leave the forum (removed from every room, consent ended)"
HELP_MY_DATA = "everything stored about you, to read here and as a JSON file"
HELP_REPORT = "report a message to the moderators (paste its link) or describe the problem"
HELP_DETAILS = "Details and examples: {prefix}help COMMAND."
UNKNOWN_HELP_TOPIC = "Unknown command: {cmd}."
DID_YOU_MEAN = "Did you mean {cmd}?"
ALSO = "Also: {names}."
EXAMPLES = "Examples:"
REPORT_THANKS = "Thank you: your report was passed to the moderators."
STATUS_RECONSENT = "A new charter (version {version}) waits for your acceptance."
LEFT = (
    "You have left {forum}: you were removed from its rooms and your consent has "
    "ended. Write to me here whenever you want to come back."
)
MY_DATA = "Here is everything stored about you."
RECONSENT = (
    "The charter has changed (version {version}). Please read it and accept it by "
    'replying "I accept" or by reacting with ✅ to this message within {days} day(s); '
    "otherwise {consequence}."
)
RECONSENT_THANKS = "Thank you, your acceptance of charter version {version} is recorded."
RECONSENT_REMINDER = (
    "Reminder: the charter has changed (version {version}) and still waits for your "
    'acceptance. Reply "I accept" to the message above or react with ✅ to it within '
    "{hours} hour(s); otherwise {consequence}."
)
FLOOD = "You are sending too many messages; I will ignore them for a moment."
TOO_LONG = (
    "Your message is too long (more than {limit} characters); I did not read it. Type"
    " {prefix}help for help."
)
ONLY_MODERATORS = "Only moderators can do that."
NO_PENDING = "No pending request for {user}."
REQUEST_WITHDRAWN = (
    "{user} has left the forum or withdrawn their consent to the charter: their request "
    "is closed. Nothing was done."
)
ALREADY_APPROVED = "{user} was already approved. Nothing was done."
ALREADY_DENIED = "{user} was already denied. Nothing was done."
CHARTER_FIRST = "Please accept the charter first."
NOTHING_TO_WITHDRAW = "You had not agreed to be quoted: there is nothing to withdraw."
CONSEQUENCE_MUTE = "you will no longer be able to post in the forum rooms"
CONSEQUENCE_REMOVE = "you will be removed from the forum"
ALREADY_DM = "We already talk here: please write to me in this conversation."
WAITING_APPROVAL = "A moderator will review your request shortly. I will tell you the outcome here."
REQUEST_DECLINED = "Request declined"
DENIED = "Your request to join {forum} was declined."
APPROVED_BY = "{user} approved by {moderator}."
DENIED_BY = "{user} denied by {moderator}."
UNKNOWN_COMMAND = "Unknown command."
CHARTER_REMINDER = (
    'To join, please accept the charter: reply "I accept" or react with ✅ to the '
    "charter message. Type {prefix}help for help."
)
REASON = "Reason: {reason}"
MUTED = (
    "You have not accepted the new charter: you can no longer post in the forum "
    'rooms. Reply "I accept" or react with ✅ to the charter to post again.'
)
REMOVED = "You have not accepted the new charter: you were removed from the forum."
PUBLICATION_REMINDER = (
    'Please answer "yes" or "no": may your messages be quoted in the public digest?'
)
NOT_UNDERSTOOD = "I did not understand."
STATUS_QUOTES = (
    "Messages you allowed us to quote in the public digest (withdraw one with "
    "{prefix}withdraw N, all with {prefix}withdraw):"
)
QUOTES_WITHDRAWN = (
    "Your permission to quote {n} message(s) is withdrawn: they are removed from the public digest."
)
QUOTE_WITHDRAWN = (
    "Withdrawn: this message will no longer be quoted, it is removed from the public "
    "digest: “{quote}”"
)
NO_SUCH_PERMISSION = (
    "There is no permission to quote number {which}. Type {prefix}status to see them."
)
MY_DATA_CONSENTS = "Consents and membership"
MY_DATA_RECORDS = "Consent records: {n} (each one is in the file)."
WHICH_QUESTION = (
    "Several questions wait for your answer, so I recorded nothing. Reply to the message"
    " of the question you are answering (or react to it):\n{questions}"
)
NO_SUCH_QUESTION = (
    "This answers no question waiting for your answer (it was answered already, or it is"
    " not a question): nothing is recorded."
)
PENDING_CHARTER = "The charter (version {version}): do you accept it?"
PENDING_RECONSENT = "The new charter (version {version}): do you accept it?"
PENDING_PUBLICATION = "May your messages be quoted in the public digest?"
PUBLIC_NAME_IS = (
    "You may be quoted in the public digest under the name “{name}”. To change it (a "
    "pseudonym is allowed): {prefix}public-name NAME."
)
PUBLIC_NAME_NONE = (
    "You have no public name yet: your display name will be recorded as it when you agree"
    " to be quoted. To choose one (a pseudonym is allowed): {prefix}public-name NAME."
)
PUBLIC_NAME_CHANGED = (
    "Noted: your public name is now “{name}”. Your quotes in the public digest carry it "
    "within a few seconds."
)
PUBLIC_NAME_EMPTY = "Please give a name: {prefix}public-name NAME."
PUBLIC_NAME_TOO_LONG = "This name is too long: {limit} characters at most. Nothing was changed."
PUBLIC_NAME_INVISIBLE = (
    "This name holds invisible or control characters, or nothing visible: please choose "
    "a name made of visible characters. Nothing was changed."
)
PUBLIC_NAME_TAKEN = (
    "This name is, or looks like, the name of another member or of a moderator: please "
    "choose another one. Nothing was changed."
)
STATUS_PUBLIC_NAME = "Public name (when you are quoted): “{name}”."
STATUS_NO_PUBLIC_NAME = "Public name: none yet."
HELP_PUBLIC_NAME = (
    "the name under which you may be quoted in the public digest; a pseudonym is allowed "
    "(without NAME: see it)"
)
MEMBER = "member"
ALREADY_ANSWERED = (
    "This question was answered already: nothing more is recorded. To change your answer, "
    "type {prefix}publication yes|no, {prefix}withdraw or {prefix}leave ({prefix}status "
    "shows what is recorded)."
)
EDIT_NOT_ANSWER = (
    "An edited message does not change an answer: what was recorded stays as it was. To "
    "change your answer, type {prefix}publication yes|no, {prefix}withdraw or "
    "{prefix}leave ({prefix}status shows what is recorded)."
)
PERSONAL_DM = (
    "This conversation is personal to {owner}: I do not record anything you write here. "
    "To join {forum}, or for your own answers, open a direct chat with me yourself."
)
