"""First-run access to the admin page: the admin token when the configuration sets none.

An operator who starts betblock on the embedded defaults must be able to open the admin page
without editing a file first, and a token must never be guessable or printed where logs are
shipped. So when ``http.admin_token`` is unset and ``http.admin_token_file`` is set (the
default: ``admin-token`` in the data directory), a random token is generated into that file
(mode 0600, created exclusively, so two starts never race to different tokens) and reused on
every later start. The log names the page's address and the file, never the token;
``betblock admin-token`` prints it for the operator at the console.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import SecretStr

from config.settings import ConfigError, Settings

MIN_LENGTH = 16


def token_path(settings: Settings) -> Path | None:
    """The file that keeps the generated token, or None when generation is off."""
    name = settings.http.admin_token_file
    if name is None or str(name) in ("", "."):
        return None
    return name if name.is_absolute() else settings.data_dir / name


def read_or_create(path: Path) -> str:
    """The token in ``path``, generated there (0600) when the file does not exist yet."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return read_or_create(path)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token
    if len(token) < MIN_LENGTH:
        raise ConfigError(f"{path}: the admin token there is shorter than {MIN_LENGTH} characters; delete the file to get a new one")
    return token


def with_admin_token(settings: Settings) -> tuple[Settings, Path | None]:
    """``settings`` with the admin token filled in from the token file when none is
    configured, and the file it came from (None when the configuration set the token)."""
    if settings.http.admin_token is not None:
        return settings, None
    path = token_path(settings)
    if path is None:
        return settings, None
    token = read_or_create(path)
    http = settings.http.model_copy(update={"admin_token": SecretStr(token)})
    return settings.model_copy(update={"http": http}), path


def admin_url(settings: Settings) -> str:
    host, port = settings.http.address()
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else ("[::1]" if host == "::" else (f"[{host}]" if ":" in host else host))
    return f"http://{shown}:{port}/"
