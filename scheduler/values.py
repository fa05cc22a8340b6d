"""How the scheduler stores a pipeline's IR and renders it into the values of one job.

Both the REST API (deploy, the values preview, parameter checks at job creation) and `install` go through
these functions, so the preview is what install deploys:

- a pipeline version's IR is stored as `{"documents": bundle.canonical()}` (the store keeps JSON objects;
  the canonical IR is a list of documents, in canonical order, defaults made explicit);
- the global settings of a job come from the server's settings (`globals_for`): the job id, images, log
  level, size profile, model store, artifact store, data root, the URL flows report to, and the job's token
  (never in a preview). These are the path rules of docs/scheduler.md ("Paths"); `ir.render` applies them.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import ir
from scheduler.artifacts import artifact_folder
from scheduler.settings import SchedulerSettings

__all__ = [
    "PREVIEW_JOB_ID",
    "artifact_store_uri",
    "bundle_of",
    "data_root",
    "globals_for",
    "render_values",
    "stored_ir",
]

DOCUMENTS_KEY: Final = "documents"

_BUNDLE_CACHE_SIZE: Final = 64

PREVIEW_JOB_ID: Final = uuid.UUID(int=0)
"""The job id a values preview renders with: the nil UUID, which no real job gets."""


def stored_ir(bundle: ir.Bundle) -> dict[str, Any]:
    """The JSON object a pipeline version stores for `bundle`."""
    return {DOCUMENTS_KEY: bundle.canonical()}


@dataclasses.dataclass(frozen=True)
class _StoredBundle(ir.Bundle):
    """A bundle rebuilt from a stored IR, with its digest computed once: `ir.render` asks for it on every
    render, and a bundle never changes."""

    stored_digest: str = dataclasses.field(default="", compare=False, repr=False)

    def digest(self) -> str:
        return self.stored_digest


def _memoised(bundle: ir.Bundle) -> ir.Bundle:
    fields = {field.name: getattr(bundle, field.name) for field in dataclasses.fields(bundle)}
    return _StoredBundle(**fields, stored_digest=bundle.digest())


class _BundleCache:
    """Bundles rebuilt from stored IR documents, by the identity of the document object.

    The store keeps each version's IR document in memory (versions are immutable), so the same object comes
    back for every job of a version and its bundle is built once. Each entry holds a reference to its
    document, so an id cannot be reused by another object while its entry exists.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[int, tuple[Mapping[str, Any], ir.Bundle]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, document: Mapping[str, Any]) -> ir.Bundle | None:
        with self._lock:
            entry = self._entries.get(id(document))
            if entry is None or entry[0] is not document:
                return None
            self._entries.move_to_end(id(document))
            return entry[1]

    def put(self, document: Mapping[str, Any], bundle: ir.Bundle) -> None:
        with self._lock:
            self._entries[id(document)] = (document, bundle)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


_bundles: Final = _BundleCache(_BUNDLE_CACHE_SIZE)


def bundle_of(document: Mapping[str, Any]) -> ir.Bundle:
    """The validated bundle of a stored IR document (raises `ir.IRValidationError` if it no longer validates).

    Built once per document object (a stored IR is never changed in place).
    """
    cached = _bundles.get(document)
    if cached is not None:
        return cached
    bundle = _memoised(_build_bundle(document))
    _bundles.put(document, bundle)
    return bundle


def _build_bundle(document: Mapping[str, Any]) -> ir.Bundle:
    documents = document.get(DOCUMENTS_KEY)
    if not isinstance(documents, list):
        raise ir.IRValidationError([ir.Issue("<stored>", "", DOCUMENTS_KEY, "the stored IR has no document list")])
    return ir.bundle_from_canonical(documents)


def globals_for(
    settings: SchedulerSettings,
    job_id: uuid.UUID,
    token: str | None = None,
    environment: Mapping[str, Any] | None = None,
) -> ir.Globals:
    """The global settings (step 4 of rendering) of job `job_id`: from the server's settings, the job's
    `environment` (its `namespace`; `modelStore`, which overrides the server's model store; `dataRoot`, which
    overrides the data root: `modelops run PATH` sets it to the bundle's folder), and `token`, the job token
    (None in previews).

    Install renders through `render_values` too (`scheduler.lifecycle.Lifecycle.render`), with the job token.
    """
    data: dict[str, Any] = {
        "jobId": str(job_id),
        "image": {"registry": settings.image_registry, "tag": settings.image_tag},
        "logLevel": settings.log_level,
        "logFormat": settings.log_format,
        "sizeProfile": settings.size_profile,
        "scheduler": {"url": settings.public_url, "token": token},
    }
    namespace = (environment or {}).get("namespace")
    if namespace is not None:
        data["namespace"] = namespace
    store = (environment or {}).get("modelStore", settings.model_store)
    if store is not None:
        data["modelStore"] = store
    data["artifactStore"] = artifact_store_uri(settings, job_id)
    root = (environment or {}).get("dataRoot", data_root(settings))
    if root is not None:
        data["dataRoot"] = str(root)
    return ir.make_globals(data)


def artifact_store_uri(settings: SchedulerSettings, job_id: uuid.UUID) -> str:
    """Where the components of job `job_id` fetch stored artifacts: on this machine (the local backend) the
    store's folder; on Kubernetes the scheduler's job-scoped artifact route, read with the job's token."""
    if settings.backend == "tekton":
        return f"{settings.public_url}/api/v1/jobs/{job_id}/artifacts"
    return artifact_folder(settings.home).as_uri()


def data_root(settings: SchedulerSettings) -> Path | None:
    """The folder relative file channel paths resolve against, unless a job's environment names another
    (`dataRoot`, which `modelops run PATH` sets to the bundle's folder): the `data_root` setting, else on the
    local backend the server's working directory; on Kubernetes unset (the flow pod's working directory)."""
    if settings.data_root is not None:
        return settings.data_root
    return Path.cwd() if settings.backend == "local" else None


def render_values(
    document: Mapping[str, Any],
    parameters: Mapping[str, Any],
    settings: SchedulerSettings,
    job_id: uuid.UUID = PREVIEW_JOB_ID,
    token: str | None = None,
    environment: Mapping[str, Any] | None = None,
) -> ir.Values:
    """Render a stored IR for a job; raises `ir.IRValidationError` for bad parameters or environment."""
    return ir.render(bundle_of(document), parameters, globals_for(settings, job_id, token, environment))
