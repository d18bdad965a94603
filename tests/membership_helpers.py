"""Kept for benchmarks/ only (see tests.benchmark_compat)."""

from tests.benchmark_compat import dm_invites, wait_bot_text, wait_dm
from tests.harness import CHARTER_FR, PUBLICATION_Q

__all__ = ["CHARTER_FR", "PUBLICATION_Q", "dm_invites", "wait_bot_text", "wait_dm"]
