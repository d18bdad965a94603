"""``forum check-config`` in its own process (a few seconds: not a unit test)."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib

import tomli_w

from forum.settings import DEFAULT_CONFIG

BASE = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))


def test_check_config_command(tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "forum", "check-config"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    data = copy.deepcopy(BASE)
    data["web"]["port"] = -1
    data["topics"][0]["slug"] = "Pas Bon"
    bad = tmp_path / "forum.toml"
    bad.write_text(tomli_w.dumps(data), encoding="utf-8")
    res = subprocess.run(
        [sys.executable, "-m", "forum", "check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert "web.port" in res.stderr
    assert "topics[0].slug" in res.stderr
    assert "'Pas Bon'" in res.stderr
