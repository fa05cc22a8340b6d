"""A scheduling server inside the current process, for `modelops run` when no server is configured.

`EmbeddedServer` runs uvicorn with `create_app` in a background thread, on a free loopback port, with the
settings of the environment (SQLite under `MODELOPS_HOME`, the local backend) except where it listens: the
address is its own, and it accepts no API tokens (open mode, loopback only, like a default `modelops serve`).
The embedded database is ours, so it is migrated on start; a database configured elsewhere
(`MODELOPS_SCHEDULER_DATABASE_URL` pointing at PostgreSQL) is only checked, as `modelops serve` does.

While it runs, the server holds `<home>/scheduler.lock` (see `HomeLock`): two local-backend schedulers on one
home would each "recover" the other's jobs as left over from a crash and tear them down. Its logs (uvicorn and
the scheduler's own) go to `<home>/logs/embedded-server.log`, not to the terminal the live view draws on.

It lives as long as one `modelops run`, so it leaves nothing running when it stops: `stop()` cancels every job
still active (normally none: the run's own job is finished, or was cancelled on Ctrl-C) and waits for their
uninstall. Jobs of an earlier `modelops run` that was killed are found by the backend's `recover()` at start
(re-attached, or failed with `SchedulerRestarted`); `modelops run` cancels those that are still active.

Tests use it too: `EmbeddedServer(settings, backend_factory=...)` is a real server on a real port.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Final, TextIO

import httpx
import uvicorn

from ir.logformat import formatter
from scheduler.app import BackendFactory, StartupRefused, create_app
from scheduler.client import ApiError, ClientError, SchedulerClient
from scheduler.db import SchemaStatus, check_schema, create_engine, upgrade
from scheduler.errors import StoreUnavailable
from scheduler.serving import Server
from scheduler.settings import SchedulerSettings
from scheduler.states import ACTIVE
from scheduler.store import MAX_PAGE_SIZE as MAX_PAGE
from scheduler.tokens import load_secret
from scheduler.ui import UI_PREFIX

__all__ = ["EmbeddedServer", "EmbeddedServerError", "HomeLock", "HomeLocked", "prepare_database"]

READY_TIMEOUT_SECONDS: Final = 60.0
"""How long start-up may take: migrating, `recover()` of jobs left by an earlier run, the first `/readyz`."""
STOP_TIMEOUT_SECONDS: Final = 60.0
"""How long a clean stop may take (the backend's close, open log streams) before the server is forced down."""
LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access", "scheduler", "ir")
LOG_FILE: Final = "logs/embedded-server.log"
LOCK_FILE: Final = "scheduler.lock"


class EmbeddedServerError(RuntimeError):
    """The embedded server could not start (or stop); the message says why."""


class HomeLocked(EmbeddedServerError):
    """Another local-backend scheduler uses this home; `holder` is what it wrote in the lock file."""

    def __init__(self, home: Path, holder: str) -> None:
        where = f" ({holder})" if holder else ""
        super().__init__(
            f"another modelops scheduler is using {home}{where}: use it with --server, or set MODELOPS_HOME to "
            "another folder"
        )
        self.holder = holder


class HomeLock:
    """An exclusive `flock` on `<home>/scheduler.lock`, held while a local-backend scheduler runs on `home`.

    The lock file says who holds it (`pid 1234 http://127.0.0.1:8787`), so the next one can say where it is.
    The kernel drops the lock when the process dies, however it dies: a stale file is never a problem.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / LOCK_FILE
        self._handle: TextIO | None = None

    def acquire(self, url: str) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise HomeLocked(self.home, holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} {url}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.truncate(0)
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

    @staticmethod
    def holder(home: Path) -> str | None:
        """What the holder of `home`'s lock wrote, or None when nobody holds it."""
        path = home / LOCK_FILE
        try:
            handle = path.open("r", encoding="utf-8")
        except FileNotFoundError:
            return None
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return None


def prepare_database(settings: SchedulerSettings, *, migrate: bool) -> str | None:
    """Make sure the schema is current; with `migrate`, upgrade it first. Returns the revision migrated from
    (None when nothing was done). Raises `EmbeddedServerError` with the schema check's message otherwise."""
    engine = create_engine(settings.database_url)
    try:
        check = check_schema(engine)
    except StoreUnavailable as exc:
        raise EmbeddedServerError(exc.message) from exc
    finally:
        engine.dispose()
    if check.ok:
        return None
    if not migrate or check.status is SchemaStatus.NEWER:
        raise EmbeddedServerError(check.message)
    try:
        upgrade(settings.database_url)
    except StoreUnavailable as exc:
        raise EmbeddedServerError(exc.message) from exc
    return check.current or "empty"


def _is_own_database(settings: SchedulerSettings) -> bool:
    """The database is an SQLite file: the embedded one (ours to migrate), not a shared server."""
    return settings.database_url.startswith("sqlite")


class EmbeddedServer:
    """The scheduler app served by uvicorn in a daemon thread on `127.0.0.1:<free port>`.

    `start()` returns once `/readyz` answers; `stop()` shuts uvicorn down (the app's lifespan closes the
    backend, leaving job states as they are). Also a context manager. `keep_tokens` keeps the API tokens of
    `settings` (tests of authentication); by default the embedded server accepts no token, like a loopback
    `modelops serve` without tokens.
    """

    def __init__(
        self,
        settings: SchedulerSettings | None = None,
        *,
        backend_factory: BackendFactory | None = None,
        log_file: Path | None = None,
        keep_tokens: bool = False,
    ) -> None:
        self._base = settings if settings is not None else SchedulerSettings()
        self._keep_tokens = keep_tokens
        self._backend_factory = backend_factory
        self._log_file = log_file if log_file is not None else self._base.home / LOG_FILE
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = HomeLock(self._base.home)
        self._log_handler: logging.Handler | None = None
        self._saved_loggers: dict[str, tuple[list[logging.Handler], bool, int]] = {}
        self.settings: SchedulerSettings | None = None
        self.url = ""
        self.migrated_from: str | None = None

    @property
    def log_file(self) -> Path:
        return self._log_file

    @property
    def ui_url(self) -> str:
        """The web UI of this server ('' before it starts)."""
        return f"{self.url}{UI_PREFIX}" if self.url else ""

    def start(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Bind a free port, prepare the database, start serving, and wait until `/readyz` answers."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            update: dict[str, object] = {"host": "127.0.0.1", "port": port, "public_url": self.url}
            if not self._keep_tokens:
                update["tokens"] = []
            self.settings = self._base.model_copy(update=update)
            self._lock.acquire(self.url)
            try:
                self.migrated_from = prepare_database(self.settings, migrate=_is_own_database(self.settings))
                load_secret(self.settings.home)  # as the lifespan will: a bad secret is one line here
                app = create_app(self.settings, backend_factory=self._backend_factory)
            except StartupRefused as exc:
                raise EmbeddedServerError(str(exc)) from None
            except (OSError, ValueError) as exc:
                raise EmbeddedServerError(f"the job-token secret is unusable: {exc}") from None
            self._route_logs()
            config = uvicorn.Config(
                app,
                log_config=None,
                log_level=logging.INFO,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=5,
            )
            self._server = Server(config)  # ends the event streams first when it stops
            self._thread = threading.Thread(
                target=self._server.run, kwargs={"sockets": [sock]}, name="modelops-embedded-server", daemon=True
            )
            self._thread.start()
        except BaseException:
            sock.close()
            self.stop(cancel_active=False)
            raise
        # From here on the socket belongs to uvicorn's server, which closes it when it stops.
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop(cancel_active=False)
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0, trust_env=False) as client:
            while True:
                if not self._thread.is_alive():
                    raise EmbeddedServerError(
                        f"the embedded scheduler stopped during start-up: see {self._log_file}{self._last_error()}"
                    )
                if self._server.started:
                    with contextlib.suppress(httpx.TransportError):
                        if client.get("/readyz").status_code == 200:
                            return
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"the embedded scheduler was not ready within {timeout:g}s: see {self._log_file}"
                    )
                time.sleep(0.02)

    def _last_error(self) -> str:
        """The last ERROR line of the log file, to say why start-up failed without sending people to it."""
        try:
            lines = self._log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-50:]
        except OSError:
            return ""
        errors = [line for line in lines if " ERROR " in line or "Refused" in line]
        return f" ({errors[-1].split(' ERROR ', 1)[-1]})" if errors else ""

    def active_jobs(self) -> list[uuid.UUID]:
        """The jobs of this scheduler that are not finished (none if it is not running)."""
        if self._thread is None or not self._thread.is_alive():
            return []
        with SchedulerClient(self.url) as client:
            return [job.id for state in sorted(ACTIVE) for job in client.list_jobs(state=state, limit=MAX_PAGE).items]

    def cancel_active(self, timeout: float = STOP_TIMEOUT_SECONDS) -> list[uuid.UUID]:
        """Cancel every job that is not finished and wait (up to `timeout`) until each is; returns their ids.

        An embedded scheduler lives as long as one `modelops run`: what it still runs when it stops (jobs left by
        an earlier run that was killed, which `recover()` re-attached to) would otherwise be left behind.
        """
        active = self.active_jobs()
        if not active:
            return []
        with SchedulerClient(self.url) as client:
            for job_id in active:
                with contextlib.suppress(ApiError):  # 409: it finished meanwhile
                    client.cancel_job(job_id)
            deadline = time.monotonic() + timeout
            pending = list(active)
            while pending and time.monotonic() < deadline:
                pending = [job_id for job_id in pending if not client.get_job(job_id).terminal]
                if pending:
                    time.sleep(0.1)
        return active

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS, *, cancel_active: bool = True) -> None:
        """Shut down: with `cancel_active`, cancel what still runs and wait for it; then uvicorn stops
        accepting and the app's lifespan closes the backend. Forced after `timeout`."""
        server, thread = self._server, self._thread
        try:
            if cancel_active and server is not None and thread is not None and thread.is_alive():
                with contextlib.suppress(ClientError):
                    self.cancel_active(timeout)
            if server is not None and thread is not None and thread.is_alive():
                server.should_exit = True
                thread.join(timeout)
                if thread.is_alive():
                    server.force_exit = True
                    thread.join(5.0)
        finally:
            self._server = None
            self._thread = None
            self._restore_logs()
            self._lock.release()

    def abandon(self) -> None:
        """Stop now, whatever is in flight (a second Ctrl-C): force uvicorn down, wait briefly for the backend."""
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        self.stop(timeout=5.0, cancel_active=False)

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- logs -------------------------------------------------------------------------------------

    def _route_logs(self) -> None:
        """Send the server's log records to the log file only (restored by `_restore_logs`)."""
        self._log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self._log_file, encoding="utf-8")
        handler.setFormatter(formatter(self._base.log_format))
        self._log_handler = handler
        for name in LOGGERS:
            logger = logging.getLogger(name)
            self._saved_loggers[name] = (list(logger.handlers), logger.propagate, logger.level)
            logger.handlers = [handler]
            logger.propagate = False
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)

    def _restore_logs(self) -> None:
        for name, (handlers, propagate, level) in self._saved_loggers.items():
            logger = logging.getLogger(name)
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(level)
        self._saved_loggers.clear()
        if self._log_handler is not None:
            self._log_handler.close()
            self._log_handler = None
