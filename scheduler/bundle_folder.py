"""The server side of "a bundle's relative model artifacts travel with the bundle": a bundle folder uploaded whole.

The UI's Deploy page sends what the user picked (YAML files, a folder, or one `.tar.gz`) as multipart. Its
route stages the files in a folder of the artifact store's `tmp/` (`stage_files`, `unpack_tarball`), and this
module does with that folder what `modelops pipeline deploy FOLDER` does on the client (`scheduler.artifact_upload`,
whose functions it reuses): load the IR files (`ir.load_bundle`), find each used Model's relative artifact in the
folder and hash it, and give the IR with those uris rewritten to `modelops-artifact:sha256:<hex>`
(`read_folder`); `store_artifacts` moves the artifacts into the content-addressed store before the deploy.

The browser need not send every file of a folder: to validate as the user picks, it sends the IR files and only
*lists* the others (`listed`); `read_folder` says which of the listed files the IR needs (`pending`), and the
deploy sends those. Every other file (data, scripts) is not part of the IR and is reported as ignored. A
relative uri that leaves the folder (`../x`) is refused: on the server, it would name the server's own files.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Final

import ir
from ir.archive import ArchiveError, ArchiveLimits, ArchiveTooLarge, open_tar
from ir.load import IR_SUFFIXES
from scheduler.artifact_upload import (
    ArtifactError,
    LocalArtifact,
    MissingArtifact,
    folder_tar,
    local_artifacts,
    rewritten_payload,
)
from scheduler.artifacts import MAX_FOLDER_MEMBERS, Artifact, ArtifactStore, ArtifactTooLarge
from scheduler.errors import InvalidInput

__all__ = [
    "MAX_PATH_DEPTH",
    "FolderBundle",
    "PendingArtifact",
    "clean_paths",
    "read_folder",
    "stage_files",
    "store_artifacts",
    "unpack_tarball",
]

MAX_PATH_DEPTH: Final = 32
"""Folders in one uploaded path (`a/b/c.yaml` is 3)."""
_NAME_MAX: Final = 255
_PLACEHOLDER_SHA: Final = "0" * 64


@dataclass(frozen=True)
class PendingArtifact:
    """A Model's relative artifact that is in the picked folder but was only listed, not sent (yet)."""

    model: str
    uri: str
    path: str
    """Its path in the folder (what the browser listed)."""
    declared_sha256: str | None


@dataclass(frozen=True)
class FolderBundle:
    """An uploaded bundle folder, read: the bundle, the deploy payload and what became of each file."""

    bundle: ir.Bundle
    files: dict[str, str]
    """The deploy payload (`BundleFormat.FILES`): the canonical IR with found artifacts' uris rewritten."""
    artifacts: list[LocalArtifact]
    pending: list[PendingArtifact]
    missing: list[MissingArtifact]
    ir_files: list[str]
    ignored: list[str]
    digest_known: bool = field(default=True)
    """False when a pending artifact declares no sha256: the digest is known once its bytes are."""

    @property
    def needed(self) -> list[str]:
        """The listed paths the deploy must send (pending artifacts; a folder artifact as its folder)."""
        return sorted({p.path for p in self.pending})


def clean_paths(raw: Iterable[str]) -> list[str]:
    """Relative POSIX paths as the browser sends them (`webkitRelativePath`), checked, with the top folder they all
    share stripped (a picked folder `digits/` gives `digits/pipeline.yaml`: the bundle is what is inside it).

    `InvalidInput` names a path that is absolute, climbs (`..`), is empty or too deep, or comes twice.
    """
    paths: list[PurePosixPath] = []
    for item in raw:
        path = PurePosixPath(item)
        problem = None
        if not item or "\x00" in item or "\\" in item:
            problem = "is empty or holds a NUL or a backslash"
        elif path.is_absolute() or any(part in ("", ".", "..") for part in item.split("/")):
            problem = "must be relative and stay inside the folder"
        elif len(path.parts) > MAX_PATH_DEPTH or any(len(part.encode()) > _NAME_MAX for part in path.parts):
            problem = f"is deeper than {MAX_PATH_DEPTH} folders or has a name longer than {_NAME_MAX} bytes"
        if problem:
            raise InvalidInput(f"uploaded file {item[:200]!r}: the path {problem}", details={"path": item[:200]})
        paths.append(path)
    tops = {p.parts[0] for p in paths}
    if paths and len(tops) == 1 and all(len(p.parts) > 1 for p in paths):
        paths = [PurePosixPath(*p.parts[1:]) for p in paths]
    out = [p.as_posix() for p in paths]
    seen: set[str] = set()
    for path_text in out:
        if path_text in seen:
            raise InvalidInput(f"uploaded file {path_text!r} comes twice", details={"path": path_text})
        seen.add(path_text)
    return out


def stage_files(folder: Path, files: Mapping[str, BinaryIO], max_bytes: int) -> None:
    """Write `files` (clean relative path → readable) below `folder`; `ArtifactTooLarge` past `max_bytes` in all."""
    total = 0
    for rel, source in files.items():
        target = folder.joinpath(*PurePosixPath(rel).parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("xb") as handle:
                while chunk := source.read(1 << 20):
                    total += len(chunk)
                    if total > max_bytes:
                        raise ArtifactTooLarge(
                            f"the upload is larger than the server's limit of {max_bytes} bytes (artifact_max_bytes)",
                            details={"limit_bytes": max_bytes},
                        )
                    handle.write(chunk)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise InvalidInput(
                f"uploaded file {rel!r} clashes with another one (a file and a folder of the same name)",
                details={"path": rel},
            ) from None


def unpack_tarball(archive: Path, folder: Path, max_bytes: int) -> Path:
    """Extract a bundle's `.tar.gz` into `folder` (bounded like a folder artifact: `max_bytes` decompressed,
    `MAX_FOLDER_MEMBERS` members; files and folders only) and return the bundle's root: the one folder the
    archive holds at its top, else `folder` itself."""

    def accept(member: tarfile.TarInfo) -> None:
        if not (member.isfile() or member.isdir()):
            raise InvalidInput(
                f"the archive holds {member.name!r}, which is not a file or a folder (links and devices are refused)",
                details={"member": member.name},
            )

    limits = ArchiveLimits(max_bytes, MAX_FOLDER_MEMBERS, "artifact_max_bytes")
    try:
        with archive.open("rb") as handle, open_tar(handle, limits) as tarred:
            tarred.extract_all(folder, accept)
    except ArchiveTooLarge as exc:
        raise ArtifactTooLarge(str(exc), details={f"limit_{exc.unit}": exc.limit}) from None
    except (ArchiveError, OSError) as exc:
        raise InvalidInput(f"{archive.name}: not a readable .tar.gz archive ({exc})") from None
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _is_ir_file(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    return rel.endswith(IR_SUFFIXES) and not any(part.startswith(".") for part in parts)


def _under(rel: str, root: str) -> bool:
    return rel == root or rel.startswith(root + "/")


def read_folder(folder: Path, listed: Collection[str] = ()) -> FolderBundle:
    """Read the bundle staged in `folder`, with `listed` naming the files the browser holds but did not send.

    Raises `ir.IRValidationError` (every problem, located) for a bad IR, a relative model uri that leaves the
    folder, or an artifact whose sha256 is not the one its Model declares.
    """
    folder = folder.resolve()
    bundle = ir.load_bundle(folder)
    issues: list[ir.Issue] = []
    for model in bundle.used_models():
        uri = model.spec.uri
        if ir.is_relative_uri(uri) and not _inside((folder / uri).resolve(), folder):
            origin = bundle.origins[("Model", model.metadata.name)]
            issues.append(origin.issue(("spec", "uri"), f"{uri!r} leaves the uploaded folder"))
    if issues:
        raise ir.IRValidationError(issues)
    try:
        artifacts, absent = local_artifacts(bundle, folder)
    except ArtifactError as exc:
        message = _relative(str(exc), folder)
        found = bundle.origins.get(("Model", exc.model or ""))
        issue = found.issue(("spec", "sha256"), message) if found else ir.Issue("<upload>", "", "", message)
        raise ir.IRValidationError([issue]) from None
    artifacts = list({a.path: a for a in artifacts}.values())
    pending: list[PendingArtifact] = []
    missing: list[MissingArtifact] = []
    declared = {m.metadata.name: m.spec.sha256 for m in bundle.used_models()}
    for item in absent:
        rel = item.path.relative_to(folder).as_posix()
        if any(_under(path, rel) for path in listed):
            pending.append(PendingArtifact(item.model, item.uri, rel, declared.get(item.model)))
        else:
            missing.append(item)
    stand_ins = [
        LocalArtifact(p.model, p.uri, folder / p.path, "file", p.declared_sha256 or _PLACEHOLDER_SHA) for p in pending
    ]
    body, _ = rewritten_payload(bundle, artifacts + stand_ins)
    files: dict[str, str] = json.loads(body)["files"]
    used_roots = [a.path.relative_to(folder).as_posix() for a in artifacts] + [p.path for p in pending]
    sent = _all_files(folder)
    ir_files = [rel for rel in sent if _is_ir_file(rel)]
    ignored = sorted(
        rel
        for rel in [*sent, *listed]
        if rel not in ir_files and not any(_under(rel, root) for root in used_roots)
    )
    digest_known = all(p.declared_sha256 for p in pending)
    return FolderBundle(bundle, files, artifacts, pending, missing, ir_files, ignored, digest_known)


def _relative(message: str, folder: Path) -> str:
    """A message without the staging folder's absolute path (the user knows the folder they picked)."""
    return message.replace(str(folder) + os.sep, "")


def store_artifacts(found: FolderBundle, store: ArtifactStore) -> list[Artifact]:
    """Move the folder's artifacts into `store` (the folder must be on the store's file system: its `tmp/`);
    `InvalidInput` when some were only listed (the deploy must send them)."""
    if found.pending:
        names = ", ".join(p.path for p in found.pending)
        raise InvalidInput(
            f"the model artifacts {names} were listed but not sent: send their content to deploy",
            details={"paths": [p.path for p in found.pending]},
        )
    stored: list[Artifact] = []
    for artifact in found.artifacts:
        if artifact.kind == "file":
            stored.append(store.put_file(artifact.path, artifact.sha256))
        else:
            packed = store.staged_file()
            packed.write_bytes(folder_tar(artifact.path))
            stored.append(store.put_folder(packed, artifact.sha256))
            shutil.rmtree(artifact.path, ignore_errors=True)
    return stored
