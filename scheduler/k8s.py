"""The scheduler's only door to a Kubernetes cluster: a narrow, typed wrapper over the `kubernetes` client.

Only this module imports `kubernetes` (an import-linter contract in pyproject.toml checks it), for three
reasons: the client is an optional dependency (`modelops[k8s]`) that the local backend never needs; its
exceptions and models are wrapped here into our own errors (`NotFound`, `AlreadyExists`, `Gone`, `K8sError`,
each with the client's exception chained) and plain dicts; and the Tekton backend's tests replace this module's
`Kube` with an in-memory fake (tests/scheduler/fake_k8s.py) instead of faking a third-party client.

The client blocks: every method here does network I/O on the calling thread. The Tekton backend calls them
through `asyncio.to_thread`, and runs the PipelineRun watch on a thread of its own.

Tekton objects are read and written as the plain JSON dicts the API server returns (`tekton.dev/v1`), through
`CustomObjectsApi`; core objects (Secrets, pods, logs) through `CoreV1Api`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

__all__ = [
    "TEKTON_GROUP",
    "TEKTON_VERSION",
    "AlreadyExists",
    "Gone",
    "K8sError",
    "Kube",
    "KubeClient",
    "NotFound",
    "PodInfo",
    "Stream",
    "WatchEvent",
    "connect",
]

TEKTON_GROUP: Final = "tekton.dev"
TEKTON_VERSION: Final = "v1"
_PIPELINERUNS: Final = "pipelineruns"
_TASKRUNS: Final = "taskruns"
_MERGE_PATCH: Final = "application/merge-patch+json"
_REQUEST_TIMEOUT: Final = 30.0
"""Seconds any single non-streaming API call may take before it fails (connect and read)."""

ConfigMode = Literal["auto", "in-cluster", "kubeconfig"]


class K8sError(Exception):
    """A Kubernetes API call failed; `status` is the HTTP status when the server answered, else None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(K8sError):
    """The object (or its namespace) does not exist (HTTP 404)."""


class AlreadyExists(K8sError):
    """An object with that name exists already (HTTP 409 on create)."""


class Gone(K8sError):
    """The resourceVersion a watch resumed from is too old (HTTP 410): list again, then watch from the list's."""


@dataclass(frozen=True)
class WatchEvent:
    """One watch event: `type` is ADDED, MODIFIED, DELETED or BOOKMARK; `object` the object as a plain dict."""

    type: str
    object: dict[str, Any]


@dataclass(frozen=True)
class PodInfo:
    """What log streaming needs to know about a pod."""

    name: str
    phase: str
    containers: tuple[str, ...]
    """The pod's (non-init) container names in spec order: for a TaskRun, `step-<name>` per step, in order."""
    started: frozenset[str] = frozenset()
    """The containers that are running or have terminated: those whose log can be read."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """The pod's labels (e.g. `modelops.io/job-id`, `app.kubernetes.io/component` of the chart's pods)."""


class Stream(Protocol):
    """A blocking iterator over a long-lived response that another thread can end with `close()`."""

    def __iter__(self) -> Iterator[Any]: ...

    def close(self) -> None: ...


class Kube(Protocol):
    """What the Tekton backend asks of a cluster. `KubeClient` talks to a real one; tests use a fake."""

    def create_pipelinerun(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def get_pipelinerun(self, namespace: str, name: str) -> dict[str, Any]: ...

    def patch_pipelinerun_merge(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete_pipelinerun(self, namespace: str, name: str) -> None: ...

    def list_pipelineruns(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]: ...

    def watch_pipelineruns(
        self, namespace: str, label_selector: str, resource_version: str, timeout_seconds: int
    ) -> Stream: ...

    def list_taskruns(self, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def patch_secret_owner(self, namespace: str, name: str, owner: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete_secret(self, namespace: str, name: str) -> None: ...

    def read_pod_log(self, namespace: str, pod: str, container: str, follow: bool) -> Stream: ...

    def get_pod(self, namespace: str, name: str) -> PodInfo: ...

    def list_pods(self, namespace: str, label_selector: str) -> list[PodInfo]: ...


def _wrap(exc: BaseException, what: str) -> K8sError:
    """Our error for a failed call about `what`, by HTTP status (the caller chains `exc`)."""
    status = getattr(exc, "status", None)
    status = status if isinstance(status, int) and status > 0 else None
    detail = _api_message(exc) if status is not None else f"{type(exc).__name__}: {exc}"
    message = f"{what}: {detail}"
    if status == 404:
        return NotFound(message, status)
    if status == 409:
        return AlreadyExists(message, status)
    if status == 410:
        return Gone(message, status)
    return K8sError(message, status)


def _api_message(exc: BaseException) -> str:
    """The API server's own message from an `ApiException` body (a `Status` object), else its reason."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes | str) and body:
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and decoded.get("message"):
            return f"HTTP {getattr(exc, 'status', '?')}: {decoded['message']}"
    return f"HTTP {getattr(exc, 'status', '?')}: {getattr(exc, 'reason', None) or exc}"


class _ResponseLines:
    """Lines of a streamed HTTP response (`_preload_content=False`), closable from another thread."""

    def __init__(self, response: Any, what: str) -> None:
        self._response = response
        self._what = what
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[str]:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            lines: Iterator[str] = iter_resp_lines(self._response)  # type: ignore[no-untyped-call, unused-ignore]
            yield from lines
        except Exception as exc:
            if self._closed.is_set():
                return  # closed by close(): the socket went away under the read
            raise _wrap(exc, self._what) from exc
        finally:
            self._release()

    def close(self) -> None:
        self._closed.set()
        self._release()

    def _release(self) -> None:
        try:
            self._response.close()
            self._response.release_conn()
        except Exception:  # already closed, or the connection is gone: nothing left to release
            pass


class _PipelineRunWatch:
    """A `kubernetes.watch.Watch` over PipelineRuns, yielding `WatchEvent`s; `Gone` on HTTP 410."""

    def __init__(self, custom: Any, namespace: str, label_selector: str, resource_version: str, timeout: int) -> None:
        from kubernetes import watch

        self._watch: Any = watch.Watch()  # type: ignore[no-untyped-call, unused-ignore]
        self._closed = threading.Event()
        self._custom = custom
        self._args = (namespace, label_selector, resource_version, timeout)

    def __iter__(self) -> Iterator[WatchEvent]:
        namespace, selector, resource_version, timeout = self._args
        what = f"watch PipelineRuns in namespace {namespace!r} ({selector}) from resourceVersion {resource_version}"
        try:
            # A server-side timeout ends the stream now and then, and it disables the client's own silent
            # resume-after-410 (the backend must re-list itself, so that deletions in between are seen).
            for event in self._watch.stream(
                self._custom.list_namespaced_custom_object,
                TEKTON_GROUP,
                TEKTON_VERSION,
                namespace,
                _PIPELINERUNS,
                label_selector=selector,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=(_REQUEST_TIMEOUT, timeout + _REQUEST_TIMEOUT),
            ):
                raw = event.get("raw_object")
                yield WatchEvent(str(event.get("type")), raw if isinstance(raw, dict) else {})
        except Exception as exc:
            if self._closed.is_set():  # stopped by close(): the socket was shut down under the read
                return
            raise _wrap(exc, what) from exc

    def close(self) -> None:
        self._closed.set()
        self._watch.stop()


class KubeClient:
    """`Kube` on a real cluster, through one `kubernetes.client.ApiClient` (see `connect`)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    # -- PipelineRuns and TaskRuns -----------------------------------------------------------------

    def create_pipelinerun(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        what = f"create a PipelineRun in namespace {namespace!r}"
        try:
            return _as_dict(
                self._custom.create_namespaced_custom_object(
                    TEKTON_GROUP,
                    TEKTON_VERSION,
                    namespace,
                    _PIPELINERUNS,
                    dict(body),
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            )
        except Exception as exc:
            raise _wrap(exc, what) from exc

    def get_pipelinerun(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return _as_dict(
                self._custom.get_namespaced_custom_object(
                    TEKTON_GROUP, TEKTON_VERSION, namespace, _PIPELINERUNS, name, _request_timeout=_REQUEST_TIMEOUT
                )
            )
        except Exception as exc:
            raise _wrap(exc, f"get PipelineRun {namespace}/{name}") from exc

    def patch_pipelinerun_merge(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386) to the PipelineRun, e.g. `{"spec": {"status": ...}}`."""
        try:
            return _as_dict(
                self._custom.patch_namespaced_custom_object(
                    TEKTON_GROUP,
                    TEKTON_VERSION,
                    namespace,
                    _PIPELINERUNS,
                    name,
                    dict(patch),
                    _content_type=_MERGE_PATCH,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            )
        except Exception as exc:
            raise _wrap(exc, f"merge-patch PipelineRun {namespace}/{name}") from exc

    def delete_pipelinerun(self, namespace: str, name: str) -> None:
        try:
            self._custom.delete_namespaced_custom_object(
                TEKTON_GROUP,
                TEKTON_VERSION,
                namespace,
                _PIPELINERUNS,
                name,
                propagation_policy="Background",
                _request_timeout=_REQUEST_TIMEOUT,
            )
        except Exception as exc:
            raise _wrap(exc, f"delete PipelineRun {namespace}/{name}") from exc

    def list_pipelineruns(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """The PipelineRuns matching the selector, and the list's resourceVersion (where a watch resumes)."""
        found = self._list_tekton(_PIPELINERUNS, "PipelineRuns", namespace, label_selector)
        items = [item for item in found.get("items") or [] if isinstance(item, dict)]
        return items, str((found.get("metadata") or {}).get("resourceVersion") or "")

    def _list_tekton(self, plural: str, what: str, namespace: str, label_selector: str) -> dict[str, Any]:
        try:
            return _as_dict(
                self._custom.list_namespaced_custom_object(
                    TEKTON_GROUP,
                    TEKTON_VERSION,
                    namespace,
                    plural,
                    label_selector=label_selector,
                    _request_timeout=_REQUEST_TIMEOUT,
                )
            )
        except Exception as exc:
            raise _wrap(exc, f"list {what} in namespace {namespace!r} ({label_selector})") from exc

    def watch_pipelineruns(
        self, namespace: str, label_selector: str, resource_version: str, timeout_seconds: int
    ) -> Stream:
        """A stream of `WatchEvent`s from `resource_version` on; it ends after `timeout_seconds` (resume from the
        last event's resourceVersion) and raises `Gone` when that resourceVersion is too old."""
        return _PipelineRunWatch(self._custom, namespace, label_selector, resource_version, timeout_seconds)

    def list_taskruns(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        found = self._list_tekton(_TASKRUNS, "TaskRuns", namespace, label_selector)
        return [item for item in found.get("items") or [] if isinstance(item, dict)]

    # -- Secrets -----------------------------------------------------------------------------------

    def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        name = (body.get("metadata") or {}).get("name")
        try:
            from kubernetes import client

            secret = client.V1Secret.from_dict(dict(body))
            if secret is None:
                raise ValueError("empty Secret body")
            created = self._core.create_namespaced_secret(namespace, secret, _request_timeout=_REQUEST_TIMEOUT)
        except Exception as exc:
            raise _wrap(exc, f"create Secret {namespace}/{name}") from exc
        return _metadata_only(created)

    def patch_secret_owner(self, namespace: str, name: str, owner: Mapping[str, Any]) -> dict[str, Any]:
        """Make `owner` (an ownerReference) the Secret's only owner: it is deleted with its owner."""
        patch = {"metadata": {"ownerReferences": [dict(owner)]}}
        try:
            patched = self._core.patch_namespaced_secret(
                name, namespace, patch, _content_type=_MERGE_PATCH, _request_timeout=_REQUEST_TIMEOUT
            )
        except Exception as exc:
            raise _wrap(exc, f"set the owner of Secret {namespace}/{name}") from exc
        return _metadata_only(patched)

    def delete_secret(self, namespace: str, name: str) -> None:
        try:
            self._core.delete_namespaced_secret(name, namespace, _request_timeout=_REQUEST_TIMEOUT)
        except Exception as exc:
            raise _wrap(exc, f"delete Secret {namespace}/{name}") from exc

    # -- pods --------------------------------------------------------------------------------------

    def get_pod(self, namespace: str, name: str) -> PodInfo:
        try:
            pod = self._core.read_namespaced_pod(name, namespace, _request_timeout=_REQUEST_TIMEOUT)
        except Exception as exc:
            raise _wrap(exc, f"get pod {namespace}/{name}") from exc
        return _pod_info(pod)

    def list_pods(self, namespace: str, label_selector: str) -> list[PodInfo]:
        """The pods matching the selector, by name (e.g. a job's component pods: `modelops.io/job-id=<id>`)."""
        try:
            found = self._core.list_namespaced_pod(
                namespace, label_selector=label_selector, _request_timeout=_REQUEST_TIMEOUT
            )
        except Exception as exc:
            raise _wrap(exc, f"list pods in namespace {namespace!r} ({label_selector})") from exc
        return sorted((_pod_info(pod) for pod in found.items or []), key=lambda info: info.name)

    def read_pod_log(self, namespace: str, pod: str, container: str, follow: bool) -> Stream:
        """The container's log as lines (without line breaks); with `follow`, until the container ends."""
        what = f"read the log of {namespace}/{pod} container {container}"
        try:
            response = self._core.read_namespaced_pod_log(
                pod,
                namespace,
                container=container,
                follow=follow,
                _preload_content=False,
                # Following has no read bound: a step may print nothing for hours.
                _request_timeout=None if follow else _REQUEST_TIMEOUT,
            )
        except Exception as exc:
            raise _wrap(exc, what) from exc
        return _ResponseLines(response, what)


def _pod_info(pod: Any) -> PodInfo:
    spec = pod.spec
    containers = tuple(str(c.name) for c in ((spec.containers if spec is not None else None) or []))
    phase = str(getattr(pod.status, "phase", None) or "Unknown")
    statuses = getattr(pod.status, "container_statuses", None) or []
    started = frozenset(
        str(s.name) for s in statuses if s.state is not None and (s.state.running or s.state.terminated)
    )
    labels = {str(k): str(v) for k, v in (getattr(pod.metadata, "labels", None) or {}).items()}
    name = str(getattr(pod.metadata, "name", None) or "")
    return PodInfo(name=name, phase=phase, containers=containers, started=started, labels=labels)


def _as_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise K8sError(f"unexpected API response of type {type(value).__name__} (expected a JSON object)")
    return value


def _metadata_only(secret: Any) -> dict[str, Any]:
    """A Secret's metadata as a dict, never its data: the token must not travel further than needed."""
    metadata = getattr(secret, "metadata", None)
    owners = getattr(metadata, "owner_references", None) or []
    return {
        "metadata": {
            "name": getattr(metadata, "name", None),
            "namespace": getattr(metadata, "namespace", None),
            "uid": getattr(metadata, "uid", None),
            "ownerReferences": [
                {"apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid} for o in owners
            ],
        }
    }


def connect(mode: ConfigMode = "auto", kubeconfig: Path | None = None, context: str | None = None) -> KubeClient:
    """A `KubeClient` for the configured cluster.

    `in-cluster`: the pod's service account (token and CA under /var/run/secrets/kubernetes.io/serviceaccount);
    `kubeconfig`: `kubeconfig` (default `$KUBECONFIG`, else `~/.kube/config`) and its `context` (default: the
    current one); `auto`: in-cluster when `KUBERNETES_SERVICE_HOST` is set (inside a pod), kubeconfig otherwise.
    Raises `K8sError` naming what was tried when no configuration can be loaded, or when the `kubernetes`
    package (the `modelops[k8s]` extra) is not installed.
    """
    try:
        from kubernetes import client, config
    except ImportError as exc:
        raise K8sError("the tekton backend needs the kubernetes client: pip install 'modelops[k8s]'") from exc
    in_cluster = mode == "in-cluster" or (mode == "auto" and bool(os.environ.get("KUBERNETES_SERVICE_HOST")))
    configuration = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call, unused-ignore]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call, unused-ignore]
                config_file=str(kubeconfig) if kubeconfig is not None else None,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except Exception as exc:
        where = (
            "the in-cluster service account"
            if in_cluster
            else f"kubeconfig {kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}"
            + (f" (context {context})" if context else "")
        )
        raise K8sError(f"cannot load the Kubernetes configuration from {where}: {exc}") from exc
    return KubeClient(client.ApiClient(configuration))
