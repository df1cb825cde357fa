"""HTTP basic auth for the metrics port (and, later, the HTTP endpoint).

The credentials file holds `user:password` lines (blank lines and `#` comments skipped),
the same secret Prometheus reads from its `basic_auth.password_file`; mount both from one
Kubernetes Secret. Passwords are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from pathlib import Path

REALM = "sparse-runtime"


class AuthFileError(ValueError):
    """A credentials file that cannot be used; the message names the file."""


def load_credentials(path: Path, flag: str = "--metrics-basic-auth-file") -> dict[str, str]:
    """user -> password from the file; AuthFileError names the file and line at fault."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"{flag} '{path}': cannot read: {exc}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise AuthFileError(f"{flag} '{path}' line {number}: expected user:password")
        users[user] = password
    if not users:
        raise AuthFileError(f"{flag} '{path}': no user:password line")
    return users


def allowed(authorization: str | None, users: dict[str, str]) -> bool:
    """Whether an Authorization header carries one of `users`' user:password."""
    if not authorization or not authorization.startswith("Basic "):
        return False
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, _, password = decoded.partition(":")
    expected = users.get(user)
    # NOTE: compare even for an unknown user, so timing does not tell which users exist
    return hmac.compare_digest(password.encode(), (expected or "\0" + password).encode()) and (
        expected is not None
    )
