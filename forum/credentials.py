"""The service's secrets file and the private-file writer it uses.

Generated passwords and secrets are kept in a JSON file of strings (``$FORUM_HOME/
secrets.json`` for the bots and the demo accounts), written with mode 0600. Nothing
happens at import time.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to ``path`` with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_or_create_secrets(path: Path, names: Iterable[str]) -> dict[str, str]:
    """The secrets named ``names`` from the JSON file ``path``, generating missing ones.

    Existing values are kept; new ones are random URL-safe strings. The file is written
    with mode 0600 (and an existing file is tightened to 0600). Returns every secret in
    the file, not only the ones asked for.
    """
    data: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the secrets file: {exc}") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise ValueError(f"{path}: expected a JSON object of strings")
        data = dict(loaded)
    missing = [n for n in names if n not in data]
    for name in missing:
        data[name] = secrets.token_urlsafe(24)
    if missing or not path.exists():
        write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return data
