"""The membership bot: consent-based entry, publication consent, withdrawal, re-consent
and data rights (issue #3). Entry points: :func:`setup` (component) and
:func:`add_commands` (``forum members ...``)."""

from .bot import MembershipBot, Options, make_setup, setup
from .cli import add_commands

__all__ = ["MembershipBot", "Options", "add_commands", "make_setup", "setup"]
