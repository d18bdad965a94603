"""The moderation settings in force."""

from __future__ import annotations

from dataclasses import dataclass

from forum.settings import ModerationSection


@dataclass
class Tuning:
    """The ``[moderation]`` settings the protections and the steps read at each use: the
    configured ones, which tests and benchmarks may replace while the bot runs."""

    current: ModerationSection
