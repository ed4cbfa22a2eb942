"""The names and keys people give: apps, users, OpenSSH public keys. Each check
returns the value or raises ConfigError with what a valid one looks like."""

from __future__ import annotations

import re

from peoplescloud.errors import ConfigError
from peoplescloud.state import normalize_key

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,29}$")
USER_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def check_app_name(name: str) -> str:
    if not APP_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid app name {name!r}: use 2-30 characters, a lowercase letter first, "
            "then lowercase letters, digits or '-'"
        )
    return name


def check_user_name(name: str) -> str:
    if not USER_NAME_RE.fullmatch(name):
        raise ConfigError(
            f"invalid user name {name!r}: up to 32 lowercase letters, digits, '-' or '_', "
            "a letter first"
        )
    return name


def check_public_key(text: str, origin: str) -> str:
    """An OpenSSH public key line as "type base64" (no comment), or ConfigError."""
    import asyncssh  # only the commands that take keys need it

    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError):
        raise ConfigError(
            f"{origin} is not an OpenSSH public key (e.g. ~/.ssh/id_ed25519.pub)"
        ) from None
    return normalize_key(key.export_public_key().decode())
