"""From rooms to the public: collector, curation, weekly digest, web pages, feed, export.

Entry point for the composition root: :data:`FEATURE` (the digest's setup and its
``forum digest ...`` commands).
"""

from __future__ import annotations

from bridge.cli import add_commands
from bridge.service import DigestService, setup
from forum.context import Feature

FEATURE = Feature("digest", setup, add_commands)

__all__ = ["FEATURE", "DigestService", "setup"]
