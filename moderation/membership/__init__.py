"""The membership bot: consent-based entry, publication consent, withdrawal, re-consent
and data rights (issue #3). Entry point: :func:`feature` (the bot's setup and its
``forum members ...`` commands)."""

from .bot import MembershipBot, Options, feature

__all__ = ["MembershipBot", "Options", "feature"]
