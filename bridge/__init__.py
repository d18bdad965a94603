"""From rooms to the public: collector, curation, weekly digest, web pages, feed, export.

Entry points for the composition root: :func:`setup` (a component) and
:func:`add_commands` (``forum digest ...``).
"""

from __future__ import annotations

from bridge.cli import add_commands
from bridge.service import DigestService, setup

__all__ = ["DigestService", "add_commands", "setup"]
