"""The scheduler's content-addressed artifact store: model artifacts that travel with a bundle.

`modelops pipeline deploy` and `modelops run` upload each relative model artifact of a bundle here
(`POST /api/v1/artifacts`) and deploy the IR with its uri rewritten to `modelops-artifact:sha256:<hex>`, so a
job started later, by anyone, from anywhere, finds it (`ir.render` turns that uri into a location with the
job's `global.artifactStore`, see `scheduler.values.artifact_store_uri`).

Layout, under `<home>/artifacts/`:

- `sha256/<hex>`: a file artifact, `<hex>` the sha256 of its bytes;
- `sha256/<hex>/`: a folder artifact (transformers models, python modules), uploaded as a tar (plain or gzip)
  and stored unpacked; `<hex>` is the sha256 of its manifest (`scoring_services.artifacts.directory_sha256`,
  the digest a Model's `sha256` declares for a folder);
- `tmp/`: uploads being received; moved into `sha256/` only once complete and hashed.

Writes are idempotent (a second upload of the same content changes nothing) and bounded
(`artifact_max_bytes`; a folder's tar by what it decompresses to, its headers and `MAX_FOLDER_MEMBERS`, read
through `ir.archive`). A stored artifact is never changed: it is only ever moved into place whole.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from ir.archive import ArchiveError, ArchiveLimits, ArchiveTooLarge, open_tar
from scheduler.errors import InvalidInput, SchedulerError
from scoring_services.artifacts import directory_sha256

__all__ = [
    "SHA256_PATTERN",
    "Artifact",
    "ArtifactStore",
    "ArtifactTooLarge",
    "artifact_folder",
]

SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
_SHA256: Final = re.compile(SHA256_PATTERN)
_CHUNK: Final = 1 << 20
MAX_FOLDER_MEMBERS: Final = 10_000
"""Members (files and folders) of one folder upload."""

ArtifactKind = Literal["file", "folder"]


def artifact_folder(home: Path) -> Path:
    """Where the artifacts of the server with this home are: `<home>/artifacts/sha256` (absolute)."""
    return (home / "artifacts" / "sha256").expanduser().resolve()


class ArtifactTooLarge(SchedulerError):
    """An upload (or the folder unpacked from it) is larger than `artifact_max_bytes`."""

    http_status = 413
    default_code = "payload_too_large"


@dataclass(frozen=True)
class Artifact:
    """A stored artifact: its sha256, whether it is a file or a folder, its size in bytes (a folder: the sum of
    its files), and whether this upload created it."""

    sha256: str
    kind: ArtifactKind
    size: int
    path: Path
    created: bool = False


def check_digest(value: str) -> str:
    """`value` if it is a sha256 (64 lower-case hex digits); `InvalidInput` otherwise."""
    if not _SHA256.match(value):
        raise InvalidInput(
            f"not a sha256: {value[:80]!r} (64 lower-case hexadecimal characters)", details={"sha256": value[:80]}
        )
    return value


class ArtifactStore:
    """The artifacts under `<home>/artifacts` (see the module docstring). Blocking: call it from a thread."""

    def __init__(self, home: Path, max_bytes: int) -> None:
        self.folder = artifact_folder(home)
        self.staging = self.folder.parent / "tmp"
        self.max_bytes = max_bytes

    def path(self, sha256: str) -> Path:
        return self.folder / check_digest(sha256)

    def get(self, sha256: str) -> Artifact | None:
        """The stored artifact with this sha256, or None."""
        path = self.path(sha256)
        if path.is_dir():
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            return Artifact(sha256, "folder", size, path)
        if path.is_file():
            return Artifact(sha256, "file", path.stat().st_size, path)
        return None

    def staged_file(self) -> Path:
        """A new empty file in `tmp/` for an upload to be received into (handed to `put_file`/`put_folder`)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.staging, prefix="upload-")
        os.close(fd)
        return Path(name)

    def put_file(self, staged: Path, declared: str | None = None) -> Artifact:
        """Store the received file `staged` (moved, or removed if already stored) as a file artifact; refused
        (`InvalidInput`) when `declared` is not its sha256."""
        try:
            if declared is not None:
                check_digest(declared)
            size = staged.stat().st_size
            if size > self.max_bytes:
                raise self.too_large()
            digest = hashlib.sha256()
            with staged.open("rb") as handle:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(chunk)
            sha256 = digest.hexdigest()
            _check_declared(declared, sha256)
            target = self.folder / sha256
            if target.exists():
                return Artifact(sha256, "file", size, target, created=False)
            os.chmod(staged, 0o444)
            os.replace(staged, target)
            return Artifact(sha256, "file", size, target, created=True)
        finally:
            staged.unlink(missing_ok=True)

    def put_folder(self, staged: Path, declared: str | None = None) -> Artifact:
        """Store the received tar (plain or gzip) `staged` as a folder artifact, unpacked; its sha256 is its
        manifest's. `staged` is removed."""
        unpacked = Path(tempfile.mkdtemp(dir=self.staging, prefix="folder-"))
        try:
            if declared is not None:
                check_digest(declared)
            self._unpack(staged, unpacked)
            sha256 = directory_sha256(unpacked)
            _check_declared(declared, sha256)
            target = self.folder / sha256
            total = sum(p.stat().st_size for p in unpacked.rglob("*") if p.is_file())
            if target.exists():
                return Artifact(sha256, "folder", total, target, created=False)
            try:
                os.replace(unpacked, target)
            except OSError:
                if not target.is_dir():  # else a concurrent upload of the same folder won the race
                    raise
                return Artifact(sha256, "folder", total, target, created=False)
            return Artifact(sha256, "folder", total, target, created=True)
        finally:
            staged.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)

    def _unpack(self, archive: Path, target: Path) -> None:
        """Extract the tar at `archive` through `ir.archive`: at most `max_bytes` decompressed, headers and
        member count bounded before they are read, files and folders only."""

        def accept(member: tarfile.TarInfo) -> None:
            if not (member.isfile() or member.isdir()):
                raise InvalidInput(
                    f"the folder archive holds {member.name!r}, which is not a file or a folder "
                    "(links and devices are refused)",
                    details={"member": member.name},
                )

        limits = ArchiveLimits(self.max_bytes, MAX_FOLDER_MEMBERS, "artifact_max_bytes")
        try:
            with archive.open("rb") as handle, open_tar(handle, limits) as tarred:
                tarred.extract_all(target, accept)
        except ArchiveTooLarge as exc:
            raise ArtifactTooLarge(str(exc), details={f"limit_{exc.unit}": exc.limit}) from None
        except (ArchiveError, OSError) as exc:  # OSError: a member the file system refuses (a name too long)
            raise InvalidInput(f"the body is not a readable tar of a folder: {exc}") from None
        if not any(p.is_file() for p in target.rglob("*")):
            raise InvalidInput("the folder archive holds no files")

    def tar(self, artifact: Artifact) -> Path:
        """A folder artifact as a gzip tar (its files at the top level) in a new file of `tmp/`, for a client
        that downloads it; the caller removes the file once sent."""
        target = self.staged_file()
        try:
            with tarfile.open(target, mode="w:gz") as archive:
                for item in sorted(p for p in artifact.path.rglob("*") if p.is_file()):
                    archive.add(item, arcname=item.relative_to(artifact.path).as_posix(), recursive=False)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    def too_large(self) -> ArtifactTooLarge:
        return ArtifactTooLarge(
            f"the artifact is larger than the server's limit of {self.max_bytes} bytes (artifact_max_bytes)",
            details={"limit_bytes": self.max_bytes},
        )


def _check_declared(declared: str | None, actual: str) -> None:
    if declared is not None and declared != actual:
        raise InvalidInput(
            f"sha256 mismatch: the request declares {declared}, the uploaded artifact has {actual}",
            code="sha256_mismatch",
            details={"declared": declared, "actual": actual},
        )
