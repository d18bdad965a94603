"""The service's secrets file: created once, private."""

from __future__ import annotations

from pathlib import Path

import pytest

from forum.credentials import load_or_create_secrets


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
