"""The moderation settings in force."""

from __future__ import annotations

from dataclasses import dataclass

from forum.settings import ModerationSection


@dataclass
class Tuning:
    """The ``[moderation]`` settings the protections and the steps read at each use: the
    configured ones, which tests and benchmarks may replace while the bot runs."""

    current: ModerationSection
    reports_per_hour: int = 5
    """Reports one person may make in an hour (by DM, ``!report`` or the membership bot);
    beyond, they are told to wait and no case is opened."""
    glob_force_above: int = 3
    """A ban glob matching more members than this acts only with ``--force``."""
