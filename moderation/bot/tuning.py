"""The moderation settings in force."""

from __future__ import annotations

from dataclasses import dataclass

from forum.settings import ModerationSection


@dataclass
class Tuning:
    """The ``[moderation]`` settings the protections and the steps read at each use: the
    configured ones, which tests and benchmarks may replace while the bot runs."""

    current: ModerationSection

    @property
    def reports_per_hour(self) -> int:
        """Reports one person may make in an hour (by DM, ``!report`` or the membership
        bot); beyond, they are told to wait and no case is opened
        (``moderation.reports_per_hour``)."""
        return self.current.reports_per_hour

    @reports_per_hour.setter
    def reports_per_hour(self, value: int) -> None:
        self.current = self.current.model_copy(update={"reports_per_hour": value})

    @property
    def glob_force_above(self) -> int:
        """A ban glob matching more members than this acts only with ``--force``
        (``moderation.glob_force_above``)."""
        return self.current.glob_force_above

    @glob_force_above.setter
    def glob_force_above(self, value: int) -> None:
        self.current = self.current.model_copy(update={"glob_force_above": value})
