"""Kept for benchmarks/ only (see tests.benchmark_compat)."""

from tests.harness import FAST_MODERATION as FAST
from tests.harness import is_reply

__all__ = ["FAST", "is_reply"]
