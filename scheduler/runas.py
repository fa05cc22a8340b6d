"""Run a job's components as another OS user on the local backend (`run_as_user`, docs/security.md).

The local deployer starts processes with `os.posix_spawn`, which cannot switch users. With `run_as_user`, it
spawns this file as a script instead (`python runas.py UID GID -- EXECUTABLE ARGV...`): it drops the
supplementary groups, sets the group and the user, then `exec`s the component, so the pid the scheduler
recorded is the component's. The log file is opened by the spawn, before the switch, so the component writes
it whatever its user; its run folder and values file are given to the user (`RunAs.own`).

Run as a script it imports nothing but the standard library: no scheduler package is loaded as root before
the switch. Switching needs root (or CAP_SETUID/CAP_SETGID); `resolve_run_as` refuses a user the server
cannot become, at start.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunAs", "RunAsRefused", "main", "resolve_run_as"]


class RunAsRefused(ValueError):
    """`run_as_user` names no user, or one this server cannot switch to."""


@dataclass(frozen=True)
class RunAs:
    """The user (and primary group) the components run as."""

    name: str
    uid: int
    gid: int
    home: str | None = None

    def wrap(self, executable: str, argv: list[str], env: Mapping[str, str]) -> tuple[str, list[str], dict[str, str]]:
        """The executable, argv and environment that start `executable argv[1:]` as this user."""
        script = [sys.executable, "-I", "-S", __file__, str(self.uid), str(self.gid), "--", executable, *argv[1:]]
        changed = dict(env)
        changed.update({"USER": self.name, "LOGNAME": self.name})
        if self.home:
            changed["HOME"] = self.home
        return sys.executable, script, changed

    def own(self, *paths: Path) -> None:
        """Give `paths` (the job's run folder, its subfolders and values file) to this user."""
        for path in paths:
            os.chown(path, self.uid, self.gid)

    def unreachable(self, path: Path) -> Path | None:
        """The first folder on the way to `path` this user may not search (so cannot reach what is below), or
        None. Judged from the mode bits, as the kernel would for this user and its primary group."""
        for folder in [*reversed(path.parents), path]:
            try:
                st = folder.stat()
            except FileNotFoundError:
                return None  # created later, by the server: its parents were searchable so far
            if st.st_uid == self.uid:
                allowed = st.st_mode & 0o100
            elif st.st_gid == self.gid:
                allowed = st.st_mode & 0o010
            else:
                allowed = st.st_mode & 0o001
            if not allowed:
                return folder
        return None

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid}, gid {self.gid})"


def resolve_run_as(user: str | None) -> RunAs | None:
    """The `RunAs` of a `run_as_user` setting (a name or a uid), None when unset or the server's own user.

    Raises `RunAsRefused` for an unknown user, or one the server cannot switch to (it does not run as root).
    """
    if user is None:
        return None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise RunAsRefused(f"run_as_user {user!r}: no such user on this machine") from None
        run_as = RunAs(name=user, uid=int(user), gid=int(user))  # a uid without an entry: its own group
    else:
        run_as = RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)
    if run_as.uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise RunAsRefused(
            f"run_as_user {user!r}: the server runs as uid {os.geteuid()}, not root, and cannot start processes as "
            f"uid {run_as.uid}: start it as root, or unset run_as_user"
        )
    return run_as


def main(args: list[str]) -> None:
    """`UID GID -- EXECUTABLE ARGV...`: become UID:GID, then exec the command (never returns)."""
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: runas.py UID GID -- EXECUTABLE [ARG...]\n")
        raise SystemExit(2)
    uid, gid = int(args[0]), int(args[1])
    executable, argv = args[3], [args[3], *args[4:]]
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:  # pragma: no cover - setuid raises rather than half-works
        sys.stderr.write(f"runas: could not become uid {uid}\n")
        raise SystemExit(1)
    os.execve(executable, argv, os.environ)


if __name__ == "__main__":
    main(sys.argv[1:])
