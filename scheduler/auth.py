"""Who is calling, and may they: bearer API tokens with scopes, and per-job tokens for the runners.

API tokens are configured hashed (`name:scope:sha256`, see `scheduler.settings`); a request presents the
plaintext as `Authorization: Bearer <token>`. Scopes nest: `admin` ⊇ `write` ⊇ `read`. Reads need `read`,
changes (deploy, start, cancel) need `write`. No token or an unknown one is 401 (with `WWW-Authenticate:
Bearer`), a token without the scope is 403.

A browser signs in once (`POST /ui/login`) and then sends a session cookie instead (`scheduler.sessions`): the
same scopes as the token it was minted from, and every unsafe request made with it must carry its CSRF token.
A bearer header, when present, wins over the cookie.

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

Credentials are checked before the body is read (`AuthFirstRoute`, the route class of every API router): a
forged token with a malformed body is 401, not 422 — FastAPI parses a JSON body before it resolves the
dependencies, so without it the body's problems would be answered to anyone. For a job token the check is
against the job (`JobTokenChecker`, the app's service), so a forged `mjt_...` is 401 before the body too.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel

from scheduler.errors import SchedulerError
from scheduler.sessions import CSRF_HEADER, SESSION_COOKIE, Session, SessionSigner
from scheduler.settings import SchedulerSettings, TokenScope
from scheduler.tokens import PREFIX as JOB_TOKEN_PREFIX

__all__ = [
    "ANONYMOUS",
    "LOCAL_USER_NAME",
    "LOOPBACK_HOSTS",
    "AdminPrincipal",
    "AuthFirstRoute",
    "Authenticator",
    "Forbidden",
    "JobTokenChecker",
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
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_RANK: Final[dict[str, int]] = {"read": 1, "write": 2, "code": 3, "admin": 4}


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
    """Checks bearer credentials (or a browser session, `scheduler.sessions`) against the configured tokens."""

    def __init__(self, settings: SchedulerSettings) -> None:
        self._settings = settings
        self.open_mode = check_open_mode(settings)
        self.sessions: SessionSigner | None = None
        """Set by the app's lifespan once the secret the sessions are signed with is loaded."""

    def request_principal(self, request: Request, needed: TokenScope) -> Principal:
        """The caller of `request`: its bearer token, else its session cookie (whose unsafe requests must carry
        the session's CSRF token in `X-CSRF-Token`). A browser's cross-site unsafe request is refused in every
        mode, open mode included: another site's page must not cancel a laptop's jobs."""
        unsafe = request.method not in SAFE_METHODS
        if unsafe and request.headers.get("sec-fetch-site", "").lower() == "cross-site":
            raise Forbidden("a cross-site request may not change anything", code="cross_site_refused")
        token = _header_token(request)
        if self.open_mode or token is not None:
            return self.principal(token, needed)
        session = self.session_of(request)
        if session is None:
            return self.principal(None, needed)
        if unsafe and not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), session.csrf):
            raise Forbidden(
                f"a request made with a session cookie must carry its CSRF token in {CSRF_HEADER}", code="csrf_failed"
            )
        return self.scoped(Principal(session.token.name, session.token.scope), needed)

    def session_of(self, request: Request) -> Session | None:
        """The verified session of `request`'s cookie, if any (never in open mode)."""
        if self.open_mode or self.sessions is None:
            return None
        return self.sessions.verify(request.cookies.get(SESSION_COOKIE))

    @staticmethod
    def scoped(principal: Principal, needed: TokenScope) -> Principal:
        """`principal` if its scope covers `needed`; `Forbidden` otherwise."""
        if not principal.allows(needed):
            raise Forbidden(
                f"token {principal.name!r} has the {principal.scope!r} scope; this needs {needed!r}",
                code="insufficient_scope",
                details={"token": principal.name, "scope": principal.scope, "needed": needed},
            )
        return principal

    def principal(self, token: str | None, needed: TokenScope) -> Principal:
        """The caller behind `token` if it may do what needs `needed`; else `Unauthorized` or `Forbidden`."""
        if self.open_mode:
            return ANONYMOUS
        if not token:
            raise Unauthorized("this endpoint needs a bearer token: send 'Authorization: Bearer <token>'")
        found = self._settings.find_token(token)
        if found is None:
            raise Unauthorized("the bearer token is not valid", code="invalid_token")
        return self.scoped(Principal(found.name, found.scope), needed)

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
    return _authenticator(request).request_principal(request, "read")


async def _write(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return _authenticator(request).request_principal(request, "write")


async def _admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    return _authenticator(request).request_principal(request, "admin")


async def _reporter(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ReporterCredential:
    checked = getattr(request.state, "reporter", None)
    if isinstance(checked, ReporterCredential):
        return checked  # AuthFirstRoute checked it before the body was read
    return _authenticator(request).reporter(_token(credentials))


class JobTokenChecker(Protocol):
    """What checks a job token against its job (`SchedulerService.authorize_report`): raises 401 or 404."""

    async def authorize_report(self, job_id: uuid.UUID, credential: ReporterCredential) -> object: ...


_NEEDS: Final[dict[Callable[..., Any], TokenScope]] = {_read: "read", _write: "write", _admin: "admin"}


def _auth_dependency(dependant: Dependant) -> Callable[..., Any] | None:
    """The auth dependency (`_read`, `_write`, `_admin`, `_reporter`) a route declares, if any."""
    stack = list(dependant.dependencies)
    while stack:
        each = stack.pop()
        if each.call in _NEEDS or each.call is _reporter:
            return each.call
        stack.extend(each.dependencies)
    return None


def _header_token(request: Request) -> str | None:
    scheme, value = get_authorization_scheme_param(request.headers.get("authorization"))
    return (value.strip() or None) if scheme.lower() == "bearer" else None


async def _check_first(request: Request, needs: Callable[..., Any]) -> None:
    auth = _authenticator(request)
    token = _header_token(request)
    if needs is not _reporter:
        auth.request_principal(request, _NEEDS[needs])
        return
    credential = auth.reporter(token)
    if credential.job_token is not None:
        service = getattr(request.app.state, "service", None)
        raw = request.path_params.get("job_id")
        try:
            job_id = uuid.UUID(str(raw))
        except ValueError:
            return  # the route answers the bad path with 422; the token is checked against no job
        if service is None:
            return  # starting or stopping: the Service dependency answers 503
        checker: JobTokenChecker = service
        await checker.authorize_report(job_id, credential)
    request.state.reporter = credential


class AuthFirstRoute(APIRoute):
    """An API route whose credentials are checked before its body is read or validated (see the module doc)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs = _auth_dependency(self.dependant)
        known = _query_names(self.dependant)

        async def checked(request: Request) -> Response:
            if needs is not None:
                await _check_first(request, needs)
            _refuse_unknown_query(request, known)
            return await handler(request)

        return checked


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route takes, its dependencies' included."""
    names: set[str] = set()
    stack = [dependant]
    while stack:
        each = stack.pop()
        for param in each.query_params:
            model = param.field_info.annotation
            if isinstance(model, type) and issubclass(model, BaseModel):  # `Annotated[Model, Query()]`
                names.update(field.alias or name for name, field in model.model_fields.items())
            else:
                names.add(param.alias)
        stack.extend(each.dependencies)
    return frozenset(names)


def _refuse_unknown_query(request: Request, known: frozenset[str]) -> None:
    """A query parameter the route does not take is a 422, not silently ignored: `?stat=RUNNING` (a typo of
    `state`) would otherwise list every job as if it were filtered."""
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": f"unknown query parameter (this endpoint takes: {takes})",
                    "input": request.query_params.get(name),
                }
                for name in unknown
            ]
        )


ReadPrincipal = Annotated[Principal, Depends(_read)]
"""A route parameter that requires the `read` scope."""
WritePrincipal = Annotated[Principal, Depends(_write)]
"""A route parameter that requires the `write` scope."""
AdminPrincipal = Annotated[Principal, Depends(_admin)]
"""A route parameter that requires the `admin` scope."""
Reporter = Annotated[ReporterCredential, Depends(_reporter)]
"""A route parameter for progress/completion reports: a job token, or a `write` API token."""
