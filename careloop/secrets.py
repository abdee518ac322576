"""Deployment secrets: the pseudonymization key and the raw-vault key.

They come from `CARELOOP_PSEUDONYM_KEY` / `CARELOOP_VAULT_KEY` (hex or base64url) or from key files under
`home/keys/`, generated on first use with mode 0600. They are deliberately not settings fields, so they can never
appear in a settings dump, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from careloop.errors import ConfigError
from careloop.settings import Settings

_KEYS = {"pseudonym": "CARELOOP_PSEUDONYM_KEY", "vault": "CARELOOP_VAULT_KEY"}
KEY_BYTES = 32


def _decode(raw: str, env: str) -> bytes:
    raw = raw.strip()
    for decode in (bytes.fromhex, lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))):
        try:
            key = decode(raw)
        except (ValueError, binascii.Error):
            continue
        if len(key) >= 16:
            return key
    raise ConfigError(f"{env} must be at least 16 bytes, hex or base64url encoded")


def _key_file(settings: Settings, name: str) -> Path:
    return settings.path("keys") / f"{name}.key"


def load_key(settings: Settings, name: str) -> bytes:
    """The named secret key; generated into a 0600 file under home on first use."""
    if name not in _KEYS:
        raise ConfigError(f"unknown key {name!r}")
    env = _KEYS[name]
    if os.environ.get(env):
        return _decode(os.environ[env], env)
    path = _key_file(settings, name)
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"key file {path} is readable by others; run: chmod 600 {path}")
        return _decode(path.read_text(), str(path))
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(KEY_BYTES))
    return _decode(path.read_text(), str(path))
