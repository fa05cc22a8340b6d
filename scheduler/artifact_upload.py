"""The client side of "a bundle's relative model artifacts travel with the bundle".

`modelops pipeline deploy PATH` and `modelops run PATH` (through `SchedulerClient.deploy`) find every Model of
the bundle whose `uri` is a relative path, resolve it against the bundle's folder (for a file or a `.tar.gz`,
the folder it is in), hash it (a file: sha256 of its bytes; a folder: of its manifest, as the scoring
services verify it), upload what the server does not have yet (`POST /api/v1/artifacts`), and deploy the IR
with that Model's `uri` rewritten to `modelops-artifact:sha256:<hex>` and its `sha256` set. So the stored IR
names exactly the bytes it was deployed with: its digest changes when an artifact changes, and any job of it,
started later by anyone, finds the artifact in the server's store.

A relative uri with nothing at its path is left as it is, for the server's model store (`model_store`); a
bundle with no artifact to upload is sent as it is (its files, so the server's errors name them).
"""

from __future__ import annotations

import copy
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ir
from scoring_services.artifacts import directory_sha256, file_sha256

__all__ = [
    "ArtifactError",
    "LocalArtifact",
    "MissingArtifact",
    "bundle_folder",
    "folder_tar",
    "local_artifacts",
    "rewritten_payload",
]


class ArtifactError(Exception):
    """A relative model artifact of the bundle cannot be used; the message names the model and the path."""

    def __init__(self, message: str, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model


@dataclass(frozen=True)
class LocalArtifact:
    """A Model's relative artifact on this machine."""

    model: str
    uri: str
    path: Path
    kind: Literal["file", "folder"]
    sha256: str


def bundle_folder(path: Path) -> Path:
    """The folder a bundle's relative paths resolve against: the folder itself, else the file's folder."""
    return (path if path.is_dir() else path.parent).resolve()


@dataclass(frozen=True)
class MissingArtifact:
    """A Model's relative uri with nothing at that path next to the bundle: left relative, for the server's
    model store (`MODELOPS_SCHEDULER_MODEL_STORE`); without one, starting a job of it is refused."""

    model: str
    uri: str
    path: Path


def local_artifacts(bundle: ir.Bundle, folder: Path) -> tuple[list[LocalArtifact], list[MissingArtifact]]:
    """Every used Model's relative artifact, resolved against `folder` and hashed, and those not found there;
    `ArtifactError` when one does not have the sha256 its Model declares."""
    found: list[LocalArtifact] = []
    missing: list[MissingArtifact] = []
    for model in bundle.used_models():
        uri = model.spec.uri
        if not ir.is_relative_uri(uri):
            continue
        name = model.metadata.name
        path = (folder / uri).resolve()
        if path.is_dir():
            kind: Literal["file", "folder"] = "folder"
            digest = directory_sha256(path)
        elif path.is_file():
            kind = "file"
            digest = file_sha256(path)
        else:
            missing.append(MissingArtifact(name, uri, path))
            continue
        declared = model.spec.sha256
        if declared is not None and declared != digest:
            raise ArtifactError(
                f"model {name}: sha256 mismatch for {path}: the Model declares {declared}, the {kind} has {digest}",
                model=name,
            )
        found.append(LocalArtifact(name, uri, path, kind, digest))
    return found, missing


def folder_tar(path: Path) -> bytes:
    """A folder artifact as the gzip tar `POST /api/v1/artifacts?kind=folder` takes (`__pycache__` left out,
    as the manifest leaves it out)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for item in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            archive.add(item, arcname=item.relative_to(path).as_posix(), recursive=False)
    return buffer.getvalue()


def rewritten_payload(bundle: ir.Bundle, artifacts: list[LocalArtifact]) -> tuple[bytes, str]:
    """The deploy body of `bundle` with each artifact's Model pointing at the stored artifact: the canonical
    documents as one JSON file (`{"files": {"<name>.ir.json": ...}}`)."""
    by_model = {artifact.model: artifact for artifact in artifacts}
    documents: list[dict[str, Any]] = copy.deepcopy(bundle.canonical())
    for document in documents:
        if document.get("kind") != "Model":
            continue
        artifact = by_model.get(document.get("metadata", {}).get("name"))
        if artifact is not None:
            document["spec"]["uri"] = ir.artifact_uri(artifact.sha256)
            document["spec"]["sha256"] = artifact.sha256
    files = {f"{bundle.name}.ir.json": json.dumps(documents, ensure_ascii=False)}
    return json.dumps({"files": files}).encode("utf-8"), "application/json"
