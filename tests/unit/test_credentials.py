"""The service's secrets file: created once, private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from forum.credentials import load_or_create_secrets, private_dir


def test_secrets_store_keeps_values_private(tmp_path: Path) -> None:
    path = tmp_path / "home" / "secrets.json"
    first = load_or_create_secrets(path, ["bot", "demo"])
    assert set(first) == {"bot", "demo"}
    assert path.stat().st_mode & 0o777 == 0o600
    second = load_or_create_secrets(path, ["bot", "other"])
    assert second["bot"] == first["bot"]
    assert second["demo"] == first["demo"]
    assert set(second) == {"bot", "demo", "other"}
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_or_create_secrets(path, ["bot"])


def test_private_dir_makes_its_missing_parents_private_too(tmp_path):
    """The bots' crypto stores live in FORUM_HOME/crypto/<account>: the ``crypto`` made
    on the way is 0700 as well (mkdir's parents ignore its mode)."""
    os.umask(0o022)
    private_dir(tmp_path / "crypto" / "account")
    assert stat.S_IMODE((tmp_path / "crypto").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "crypto" / "account").stat().st_mode) == 0o700
