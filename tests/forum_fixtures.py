"""Kept for benchmarks/ only (see tests.benchmark_compat)."""

from tests.harness import CONFIG_DIR, forum_data, register_bots, settings_from

__all__ = ["CONFIG_DIR", "forum_data", "register_bots", "settings_from"]
