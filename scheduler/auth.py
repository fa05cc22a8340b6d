"""Who is calling, and may they: bearer API tokens with scopes, and per-job tokens for the runners.

API tokens are configured hashed (`name:scope:sha256`, see `scheduler.settings`); a request presents the
plaintext as `Authorization: Bearer <token>`. Scopes nest: `admin` ⊇ `write` ⊇ `read`. Reads need `read`,
changes (deploy, start, cancel) need `write`. No token or an unknown one is 401 (with `WWW-Authenticate:
Bearer`), a token without the scope is 403.

Open mode: with no API token configured the server accepts unauthenticated requests, but only when it binds to
loopback (`SchedulerSettings.host` 127.0.0.1, ::1 or localhost); `check_open_mode` refuses anything else at
start. In open mode every caller acts as the local user (`ANONYMOUS`, named "local user (loopback, no tokens
configured)" in events such as "cancelled by ...") with the `admin` scope, and a bearer token that is not a
job token is ignored (a CLI that always sends its token still works against a laptop server).

Progress and completion reports (`/jobs/{id}/progress`, `/jobs/{id}/complete`) accept:
- the job's own token (`mjt_...`, see `scheduler.tokens`), which install puts into the job's values; the
  service checks it against the job's stored hash. Another job's token is refused with 401: job tokens cannot
  be told apart from forged ones without the job they belong to, so "valid for another job" is not knowable;
- an API token with the `write` scope: an operator or a Tekton task may end a job by hand, and `write` may
  already cancel any job;
- in open mode, no token at all. A job token that is presented is still checked, open mode or not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from scheduler.errors import SchedulerError
from scheduler.settings import SchedulerSettings, TokenScope
from scheduler.tokens import PREFIX as JOB_TOKEN_PREFIX

__all__ = [
    "ANONYMOUS",
    "LOCAL_USER_NAME",
    "LOOPBACK_HOSTS",
    "AdminPrincipal",
    "Authenticator",
    "Forbidden",
    "OpenModeRefused",
    "Principal",
    "ReadPrincipal",
    "Reporter",
    "ReporterCredential",
    "Unauthorized",
    "WritePrincipal",
    "check_open_mode",
    "is_loopback",
]

log = logging.getLogger(__name__)

LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
OPEN_MODE_WARNING: Final = "no API tokens configured: accepting unauthenticated requests on loopback only"
_RANK: Final[dict[str, int]] = {"read": 1, "write": 2, "admin": 3}


class Unauthorized(SchedulerError):
    """No credentials, or credentials that match nothing."""

    http_status = 401
    default_code = "unauthorized"


class Forbidden(SchedulerError):
    """Valid credentials without the scope the request needs."""

    http_status = 403
    default_code = "forbidden"


class OpenModeRefused(RuntimeError):
    """No API token is configured and the server would listen beyond loopback."""


@dataclass(frozen=True)
class Principal:
    """The caller of a request: the token's name (recorded as `created_by`) and its scope."""

    name: str
    scope: TokenScope
    authenticated: bool = True

    def allows(self, needed: TokenScope) -> bool:
        return _RANK[self.scope] >= _RANK[needed]


LOCAL_USER_NAME: Final = "local user (loopback, no tokens configured)"
"""Who an unauthenticated caller of a server in open mode is, as events and logs name it."""
ANONYMOUS: Final = Principal(name=LOCAL_USER_NAME, scope="admin", authenticated=False)


@dataclass(frozen=True)
class ReporterCredential:
    """What a progress or completion report was authenticated with: a principal, or a job token to check."""

    principal: Principal | None = None
    job_token: str | None = None


def is_loopback(host: str) -> bool:
    return host.strip().lower().strip("[]") in LOOPBACK_HOSTS


def check_open_mode(settings: SchedulerSettings) -> bool:
    """True when the server runs without tokens (open mode); raises `OpenModeRefused` if that is not allowed."""
    if settings.tokens:
        return False
    if not is_loopback(settings.host):
        raise OpenModeRefused(
            f"no API tokens are configured and the server would listen on {settings.host!r}: refusing to accept "
            "unauthenticated requests beyond loopback. Make a token with `modelops token new NAME` and set the "
            "MODELOPS_SCHEDULER_TOKENS entry it prints, or listen on 127.0.0.1."
        )
    return True


class Authenticator:
    """Checks bearer credentials against the configured tokens."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self._settings = settings
        self.open_mode = check_open_mode(settings)

    def principal(self, token: str | None, needed: TokenScope) -> Principal:
        """The caller behind `token` if it may do what needs `needed`; else `Unauthorized` or `Forbidden`."""
        if self.open_mode:
            return ANONYMOUS
        if not token:
            raise Unauthorized("this endpoint needs a bearer token: send 'Authorization: Bearer <token>'")
        found = self._settings.find_token(token)
        if found is None:
            raise Unauthorized("the bearer token is not valid", code="invalid_token")
        principal = Principal(found.name, found.scope)
        if not principal.allows(needed):
            raise Forbidden(
                f"token {found.name!r} has the {found.scope!r} scope; this needs {needed!r}",
                code="insufficient_scope",
                details={"token": found.name, "scope": found.scope, "needed": needed},
            )
        return principal

    def reporter(self, token: str | None) -> ReporterCredential:
        """The credential of a progress/completion report (the job token is checked by the service)."""
        if token and token.startswith(JOB_TOKEN_PREFIX):
            return ReporterCredential(job_token=token)
        return ReporterCredential(principal=self.principal(token, "write"))


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token (`read`, `write` or `admin` scope), or for progress and completion reports the "
    "job's own token (`mjt_...`).",
)


def _authenticator(request: Request) -> Authenticator:
    auth = getattr(request.app.state, "auth", None)
    if not isinstance(auth, Authenticator):  # pragma: no cover - create_app always sets it
        raise RuntimeError("the app has no authenticator: build it with scheduler.app.create_app")
    return auth


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials.strip() if credentials is not None else None


async def _read(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return _authenticator(request).principal(_token(credentials), "read")


async def _write(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return _authenticator(request).principal(_token(credentials), "write")


async def _admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return _authenticator(request).principal(_token(credentials), "admin")


async def _reporter(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ReporterCredential:
    return _authenticator(request).reporter(_token(credentials))


ReadPrincipal = Annotated[Principal, Depends(_read)]
"""A route parameter that requires the `read` scope."""
WritePrincipal = Annotated[Principal, Depends(_write)]
"""A route parameter that requires the `write` scope."""
AdminPrincipal = Annotated[Principal, Depends(_admin)]
"""A route parameter that requires the `admin` scope."""
Reporter = Annotated[ReporterCredential, Depends(_reporter)]
"""A route parameter for progress/completion reports: a job token, or a `write` API token."""
