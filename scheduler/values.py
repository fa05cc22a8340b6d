"""How the scheduler stores a pipeline's IR and renders it into the values of one job.

Both the REST API (deploy, the values preview, parameter checks at job creation) and `install` go through
these functions, so the preview is what install deploys:

- a pipeline version's IR is stored as `{"documents": bundle.canonical()}` (the store keeps JSON objects;
  the canonical IR is a list of documents, in canonical order, defaults made explicit);
- the global settings of a job come from the server's settings (`globals_for`): the job id, the URL flows
  report to, and the job's token (never in a preview).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Mapping
from typing import Any, Final

import ir
from scheduler.settings import SchedulerSettings

__all__ = ["PREVIEW_JOB_ID", "bundle_of", "globals_for", "render_values", "scheduler_url", "stored_ir"]

DOCUMENTS_KEY: Final = "documents"

PREVIEW_JOB_ID: Final = uuid.UUID(int=0)
"""The job id a values preview renders with: the nil UUID, which no real job gets."""

_WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})


def stored_ir(bundle: ir.Bundle) -> dict[str, Any]:
    """The JSON object a pipeline version stores for `bundle`."""
    return {DOCUMENTS_KEY: bundle.canonical()}


def bundle_of(document: Mapping[str, Any]) -> ir.Bundle:
    """The validated bundle of a stored IR document (raises `ir.IRValidationError` if it no longer validates)."""
    documents = document.get(DOCUMENTS_KEY)
    if not isinstance(documents, list):
        raise ir.IRValidationError([ir.Issue("<stored>", "", DOCUMENTS_KEY, "the stored IR has no document list")])
    return ir.bundle_from_canonical(documents)


def scheduler_url(settings: SchedulerSettings) -> str:
    """Where scoring flows report to: `settings.public_url` when the settings have it, else the bound address
    with a wildcard host replaced by loopback (right for the local backend)."""
    public = getattr(settings, "public_url", None)
    if isinstance(public, str) and public:
        return public
    host = settings.host
    if host in _WILDCARDS:
        host = "127.0.0.1" if host != "::" else "::1"
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{settings.port}"


def globals_for(
    settings: SchedulerSettings,
    job_id: uuid.UUID,
    token: str | None = None,
    environment: Mapping[str, Any] | None = None,
) -> ir.Globals:
    """The global settings (step 4 of rendering) of job `job_id`: from the server's settings, the job's
    `environment` (its `namespace`), and `token`, the job token (None in previews).

    Mirrors what the lifecycle's install renders with (`scheduler.lifecycle.Lifecycle.render`). Settings
    fields that an older `SchedulerSettings` lacks are left at the IR's defaults.
    """
    data: dict[str, Any] = {"jobId": str(job_id), "scheduler": {"url": scheduler_url(settings), "token": token}}
    registry, tag = getattr(settings, "image_registry", None), getattr(settings, "image_tag", None)
    if registry is not None and tag is not None:
        data["image"] = {"registry": registry, "tag": tag}
    for key, attribute in (("logLevel", "log_level"), ("sizeProfile", "size_profile"), ("modelStore", "model_store")):
        value = getattr(settings, attribute, None)
        if value is not None:
            data[key] = value
    namespace = (environment or {}).get("namespace")
    if namespace is not None:
        data["namespace"] = namespace
    return ir.make_globals(data)


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
