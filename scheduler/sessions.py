"""Browser sessions: a signed cookie minted from an API token, carrying that token's scopes, and its CSRF token.

The web UI (`scheduler.ui`) cannot send `Authorization: Bearer` on every request (EventSource cannot send
headers at all), so signing in with a token sets the cookie `modelops_session` (HttpOnly, SameSite=Strict,
Secure when the server's public URL is https). Its value is signed with a key derived from the server's
job-token secret (`derive_key`) and holds:

- the token's name and a fingerprint of its configured hash: the session lives only as long as that token is
  configured with that hash, and it has the scope the token has *now* (lowering a token's scope or removing it
  takes effect on the next request, not at the session's expiry);
- a random CSRF token, which every unsafe request made with the cookie must echo in `X-CSRF-Token` (or the form
  field `csrf_token`); the pages put it in `<meta name="csrf-token">`;
- when it was issued: sessions end after `SESSION_MAX_AGE` seconds.

In open mode (no tokens configured, loopback only) there is no session; the CSRF token of unsafe UI requests is
then derived from the key (`open_mode_csrf`), so a page of another origin still cannot post.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from itsdangerous import BadSignature, URLSafeTimedSerializer

from scheduler.settings import SchedulerSettings, TokenSpec

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "SESSION_MAX_AGE",
    "Session",
    "SessionSigner",
    "derive_key",
]

SESSION_COOKIE: Final = "modelops_session"
CSRF_HEADER: Final = "X-CSRF-Token"
CSRF_FIELD: Final = "csrf_token"
SESSION_MAX_AGE: Final = 12 * 3600
"""Seconds a session lasts after sign-in."""
_SALT: Final = "modelops ui session v1"


def derive_key(secret: bytes) -> bytes:
    """The session-signing key, derived from the job-token secret (one secret to keep, two separate uses)."""
    return hmac.new(secret, b"modelops ui session key", hashlib.sha256).digest()


def _fingerprint(token: TokenSpec) -> str:
    return hashlib.sha256(f"{token.name}:{token.sha256}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Session:
    """A verified session: the configured token it was minted from, and its CSRF token."""

    token: TokenSpec
    csrf: str


class SessionSigner:
    """Mints and verifies session cookies for the tokens in `settings`."""

    def __init__(self, key: bytes, settings: SchedulerSettings) -> None:
        self._serializer = URLSafeTimedSerializer(key, salt=_SALT)
        self._key = key
        self._settings = settings

    def mint(self, token: TokenSpec) -> tuple[str, str]:
        """The cookie value for a session of `token`, and its CSRF token."""
        csrf = secrets.token_urlsafe(24)
        value = self._serializer.dumps({"n": token.name, "f": _fingerprint(token), "c": csrf})
        return value, csrf

    def verify(self, value: str | None) -> Session | None:
        """The session behind a cookie value; None when absent, forged, expired or its token is gone."""
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=SESSION_MAX_AGE)
        except BadSignature:  # SignatureExpired is a BadSignature
            return None
        if not isinstance(data, dict):
            return None
        name, fingerprint, csrf = data.get("n"), data.get("f"), data.get("c")
        if not (isinstance(name, str) and isinstance(fingerprint, str) and isinstance(csrf, str)):
            return None
        for token in self._settings.tokens:
            if token.name == name and hmac.compare_digest(_fingerprint(token), fingerprint):
                return Session(token, csrf)
        return None

    def open_mode_csrf(self) -> str:
        """The CSRF token of open mode (no sessions): fixed for this key, unknowable to other origins."""
        return hmac.new(self._key, b"open mode csrf", hashlib.sha256).hexdigest()[:32]

    @property
    def secure(self) -> bool:
        """Whether the cookie must be `Secure` (the server is reached over https)."""
        return self._settings.public_url.startswith("https://")
