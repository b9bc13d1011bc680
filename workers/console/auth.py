"""Who may use the console: accounts, password hashes, the signing key, CSRF tokens.

* Passwords are hashed with argon2id (argon2-cffi's ``PasswordHasher`` defaults); settings hold
  only hashes (``http.users``).
* The session is starlette's signed cookie (itsdangerous, HttpOnly, SameSite=Lax, Secure by the
  rule of ``http.secure_cookies``); it carries the user name and a random CSRF nonce.
* Every form carries a CSRF token: the session's nonce signed with itsdangerous (salt
  ``kneenode-csrf``, expiring with the session). A POST without a token that verifies and
  matches the session's nonce is refused (403), login included.
* Without accounts the console is served only on a loopback ``jobs.http_host`` (else the node
  refuses to start: :func:`check_exposure`), as operator ``local``, with the same CSRF checks
  (another web site in the user's browser must not be able to post to 127.0.0.1) and a Host
  check against DNS rebinding.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import HttpSettings, Settings

LOCAL_USER = "local"
SECRET_FILE = "http-secret"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("not a password: used to spend the same time on unknown users")


@dataclass(frozen=True)
class User:
    """The user of a request; ``local`` (operator) when the node has no accounts."""

    name: str
    role: str

    @property
    def operator(self) -> bool:
        return self.role == "operator"


def hash_password(password: str) -> str:
    """An argon2id hash for ``http.users.<name>.password_hash``."""
    return _HASHER.hash(password)


def authenticate(http: HttpSettings, name: str, password: str) -> User | None:
    """The user when the password matches their hash, else None (unknown users cost the same)."""
    account = http.users.get(name)
    try:
        _HASHER.verify(account.password_hash if account else _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return None
    return User(name, account.role) if account else None


def is_loopback(host: str) -> bool:
    """Whether an address (or ``localhost``) is on the loopback interface only."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def check_exposure(settings: Settings) -> None:
    """Refuse to serve the console off loopback without accounts (one line at start)."""
    host = settings.jobs.http_host
    if not settings.http.users and not is_loopback(host):
        raise NodeError(ErrorCode.CONFIG_ERROR, f"jobs.http_host = {host!r} is not a loopback "
                        "address and http.users is empty: the console would be open to the "
                        "network", hint="add an account (`kneenode user add NAME --role "
                        "operator`) or set jobs.http_host = \"127.0.0.1\"")


def signing_key(settings: Settings) -> str:
    """``http.session_secret``, else the node's own random key (created once, mode 0600)."""
    if settings.http.session_secret:
        return settings.http.session_secret
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    try:  # O_EXCL: two processes starting at once agree on the first key written
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key)
        fh.flush()
        os.fsync(fh.fileno())
    return key


class Csrf:
    """Signed CSRF tokens bound to the session's nonce."""

    def __init__(self, key: str, max_age_s: int) -> None:
        self._signer = URLSafeTimedSerializer(key, salt="kneenode-csrf")
        self._max_age = max_age_s

    def token(self, session: dict[str, Any]) -> str:
        """The token for this session's forms (creates the session's nonce on first use)."""
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(24)
        return str(self._signer.dumps(session["csrf"]))

    def valid(self, session: dict[str, Any], token: str | None) -> bool:
        """Whether ``token`` was issued for this session and has not expired."""
        nonce = session.get("csrf")
        if not token or not nonce:
            return False
        try:
            got = self._signer.loads(token, max_age=self._max_age)
        except BadSignature:
            return False
        return hmac.compare_digest(str(got), str(nonce))


def session_user(settings: Settings, session: dict[str, Any]) -> User | None:
    """The logged-in user of a session (its account's current role), ``local`` without accounts;
    None when login is needed (no session, or an account removed since)."""
    users = settings.http.users
    if not users:
        return User(LOCAL_USER, "operator")
    name = session.get("user")
    account = users.get(name) if isinstance(name, str) else None
    return User(name, account.role) if account and isinstance(name, str) else None
