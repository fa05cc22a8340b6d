"""An in-memory cluster behind our own `scheduler.k8s.Kube` interface, for the Tekton backend's tests.

`FakeKube` has the methods of `scheduler.k8s.KubeClient` with the same signatures, results and errors
(`NotFound`, `AlreadyExists`, `Gone`, `K8sError`), and keeps PipelineRuns, TaskRuns, Secrets and pods (with
their step logs) in memory. Every change gets a new resourceVersion, and changes to PipelineRuns go into a watch
history that `watch_pipelineruns` replays from any resourceVersion, blocking for new events like a real watch;
`expire_history()` plays the API server compacting it (a watch from before that answers 410 Gone).

The controller's part is played by the test, step by step, with the status shapes Tekton v1 (v0.70) writes:
`Succeeded` conditions with status/reason/message, `startTime`/`completionTime`, `childReferences`, TaskRuns
labelled `tekton.dev/pipelineRun`, `tekton.dev/pipelineTask`, `tekton.dev/memberOf` with `status.podName`, and
one `step-<name>` container per step in the TaskRun's pod. Garbage collection follows ownerReferences: deleting
a PipelineRun deletes its TaskRuns, pods and the Secrets it owns.

Imported as `fake_k8s` (tests/scheduler is on sys.path; see store_kit.py).
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from scheduler.k8s import AlreadyExists, Gone, K8sError, NotFound, PodInfo, WatchEvent

_BASE_TIME = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _matches(labels: Mapping[str, str], selector: str) -> bool:
    """Equality (`key=value`) and existence (`key`) requirements, comma-separated: what our code uses."""
    for requirement in filter(None, (part.strip() for part in selector.split(","))):
        if "=" in requirement:
            key, value = requirement.split("=", 1)
            if labels.get(key.rstrip("=")) != value:
                return False
        elif requirement not in labels:
            return False
    return True


@dataclass
class FakePod:
    name: str
    containers: list[str]
    logs: dict[str, list[str]] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    ended: set[str] = field(default_factory=set)
    phase: str = "Pending"
    labels: dict[str, str] = field(default_factory=dict)


class _Watch:
    """A `Stream` of `WatchEvent`s over the fake's history, from a resourceVersion on."""

    def __init__(self, kube: FakeKube, namespace: str, selector: str, resource_version: str) -> None:
        self._kube = kube
        self._namespace = namespace
        self._selector = selector
        self._from = int(resource_version)
        self._closed = False

    def __iter__(self) -> Iterator[WatchEvent]:
        kube = self._kube
        with kube._cond:
            if self._from < kube.compacted_before:
                raise Gone(f"too old resource version: {self._from} ({kube.compacted_before})", 410)
            generation = kube._watch_generation
            position = self._from
            while True:
                if self._closed:
                    return
                if kube._watch_generation != generation:
                    raise Gone(f"too old resource version: {position} ({kube.compacted_before})", 410)
                pending = [entry for entry in kube.history if entry[0] > position]
                if not pending:
                    kube._cond.wait(0.5)
                    continue
                version, kind, obj = pending[0]
                position = version
                meta = obj.get("metadata") or {}
                if meta.get("namespace") != self._namespace or not _matches(meta.get("labels") or {}, self._selector):
                    continue
                event = WatchEvent(kind, copy.deepcopy(obj))
                kube._cond.release()
                try:
                    yield event
                finally:
                    kube._cond.acquire()

    def close(self) -> None:
        with self._kube._cond:
            self._closed = True
            self._kube._cond.notify_all()


class _Lines:
    """A pod log `Stream`: the lines so far, and with `follow` the new ones until the container ends."""

    def __init__(self, kube: FakeKube, pod: FakePod, container: str, follow: bool) -> None:
        self._kube = kube
        self._pod = pod
        self._container = container
        self._follow = follow
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        kube = self._kube
        sent = 0
        with kube._cond:
            while True:
                lines = self._pod.logs.get(self._container, [])
                if sent < len(lines):
                    line = lines[sent]
                    sent += 1
                    kube._cond.release()
                    try:
                        yield line
                    finally:
                        kube._cond.acquire()
                    continue
                if not self._follow or self._closed or self._container in self._pod.ended:
                    return
                kube._cond.wait(0.5)

    def close(self) -> None:
        with self._kube._cond:
            self._closed = True
            self._kube._cond.notify_all()


class FakeKube:
    """`scheduler.k8s.Kube` in memory (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._versions = itertools.count(1000)
        self.resource_version = next(self._versions)
        self.pipelineruns: dict[tuple[str, str], dict[str, Any]] = {}
        self.taskruns: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], FakePod] = {}
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        """The PipelineRun watch history: (resourceVersion, event type, object)."""
        self.compacted_before = 0
        self._watch_generation = 0
        self.calls: list[tuple[str, Any]] = []
        """Every write: (method, arguments), e.g. ("patch_pipelinerun_merge", (ns, name, patch))."""
        self.failures: dict[str, K8sError] = {}
        """Method name -> the error its next call raises (once)."""
        self._names = itertools.count(1)

    # -- helpers for tests -------------------------------------------------------------------------

    @property
    def last_event_version(self) -> str:
        """The resourceVersion of the newest PipelineRun watch event."""
        with self._cond:
            return str(self.history[-1][0]) if self.history else str(self.resource_version)

    def fail_next(self, method: str, error: K8sError) -> None:
        with self._cond:
            self.failures[method] = error

    def expire_history(self) -> None:
        """Compact the watch history: watches from before now, open ones included, get 410 Gone."""
        with self._cond:
            self.compacted_before = self._bump()
            self._watch_generation += 1
            self._cond.notify_all()

    def run(self, name: str, namespace: str = "modelops") -> dict[str, Any]:
        with self._cond:
            return copy.deepcopy(self.pipelineruns[(namespace, name)])

    def only_run(self, namespace: str = "modelops") -> dict[str, Any]:
        with self._cond:
            runs = [run for (ns, _), run in self.pipelineruns.items() if ns == namespace]
            assert len(runs) == 1, f"expected one PipelineRun, found {len(runs)}"
            return copy.deepcopy(runs[0])

    # -- Kube --------------------------------------------------------------------------------------

    def create_pipelinerun(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._cond:
            self._maybe_fail("create_pipelinerun")
            self.calls.append(("create_pipelinerun", (namespace, copy.deepcopy(dict(body)))))
            run = copy.deepcopy(dict(body))
            meta = run.setdefault("metadata", {})
            if "name" not in meta:
                meta["name"] = f"{meta.get('generateName', '')}{next(self._names):05x}"
            if (namespace, meta["name"]) in self.pipelineruns:
                raise AlreadyExists(f"PipelineRun {namespace}/{meta['name']} already exists", 409)
            meta.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=self._time(),
                generation=1,
            )
            if (run.get("spec") or {}).get("status") == "PipelineRunPending":
                run["status"] = {"conditions": [self._condition("Unknown", "PipelineRunPending", "")]}
            self.pipelineruns[(namespace, meta["name"])] = run
            self._changed(run, "ADDED")
            return copy.deepcopy(run)

    def get_pipelinerun(self, namespace: str, name: str) -> dict[str, Any]:
        with self._cond:
            self._maybe_fail("get_pipelinerun")
            return copy.deepcopy(self._run(namespace, name))

    def patch_pipelinerun_merge(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        with self._cond:
            self._maybe_fail("patch_pipelinerun_merge")
            self.calls.append(("patch_pipelinerun_merge", (namespace, name, copy.deepcopy(dict(patch)))))
            run = self._run(namespace, name)
            patched = _merge_patch(run, patch)
            run.clear()
            run.update(patched)
            self._changed(run, "MODIFIED")
            return copy.deepcopy(run)

    def delete_pipelinerun(self, namespace: str, name: str) -> None:
        with self._cond:
            self._maybe_fail("delete_pipelinerun")
            self.calls.append(("delete_pipelinerun", (namespace, name)))
            run = self._run(namespace, name)
            del self.pipelineruns[(namespace, name)]
            self._changed(run, "DELETED")
            self._collect_garbage(namespace, run)

    def list_pipelineruns(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        with self._cond:
            self._maybe_fail("list_pipelineruns")
            found = [
                copy.deepcopy(run)
                for (ns, _), run in sorted(self.pipelineruns.items())
                if ns == namespace and _matches(run["metadata"].get("labels") or {}, label_selector)
            ]
            return found, str(self.resource_version)

    def watch_pipelineruns(
        self, namespace: str, label_selector: str, resource_version: str, timeout_seconds: int
    ) -> _Watch:
        with self._cond:
            self._maybe_fail("watch_pipelineruns")
        return _Watch(self, namespace, label_selector, resource_version)

    def list_taskruns(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        with self._cond:
            self._maybe_fail("list_taskruns")
            return [
                copy.deepcopy(taskrun)
                for (ns, _), taskrun in sorted(self.taskruns.items())
                if ns == namespace and _matches(taskrun["metadata"].get("labels") or {}, label_selector)
            ]

    def create_secret(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._cond:
            self._maybe_fail("create_secret")
            secret = copy.deepcopy(dict(body))
            name = secret["metadata"]["name"]
            self.calls.append(("create_secret", (namespace, name)))
            if (namespace, name) in self.secrets:
                raise AlreadyExists(f'secrets "{name}" already exists', 409)
            secret["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()))
            self.secrets[(namespace, name)] = secret
            self._bump()
            return {"metadata": {k: v for k, v in secret["metadata"].items() if k != "labels"}}

    def patch_secret_owner(self, namespace: str, name: str, owner: Mapping[str, Any]) -> dict[str, Any]:
        with self._cond:
            self._maybe_fail("patch_secret_owner")
            self.calls.append(("patch_secret_owner", (namespace, name, dict(owner))))
            secret = self.secrets.get((namespace, name))
            if secret is None:
                raise NotFound(f'secrets "{name}" not found', 404)
            secret["metadata"]["ownerReferences"] = [dict(owner)]
            self._bump()
            return {"metadata": dict(secret["metadata"])}

    def delete_secret(self, namespace: str, name: str) -> None:
        with self._cond:
            self._maybe_fail("delete_secret")
            self.calls.append(("delete_secret", (namespace, name)))
            if self.secrets.pop((namespace, name), None) is None:
                raise NotFound(f'secrets "{name}" not found', 404)
            self._bump()

    def get_pod(self, namespace: str, name: str) -> PodInfo:
        with self._cond:
            self._maybe_fail("get_pod")
            pod = self.pods.get((namespace, name))
            if pod is None:
                raise NotFound(f'pods "{name}" not found', 404)
            return self._info(pod)

    def list_pods(self, namespace: str, label_selector: str) -> list[PodInfo]:
        with self._cond:
            self._maybe_fail("list_pods")
            return [
                self._info(pod)
                for (ns, _), pod in sorted(self.pods.items())
                if ns == namespace and _matches(pod.labels, label_selector)
            ]

    def _info(self, pod: FakePod) -> PodInfo:
        return PodInfo(pod.name, pod.phase, tuple(pod.containers), frozenset(pod.started | pod.ended), dict(pod.labels))

    def read_pod_log(self, namespace: str, pod: str, container: str, follow: bool) -> _Lines:
        with self._cond:
            self._maybe_fail("read_pod_log")
            found = self.pods.get((namespace, pod))
            if found is None:
                raise NotFound(f'pods "{pod}" not found', 404)
            if container not in found.containers:
                raise K8sError(f"container {container} is not valid for pod {pod}", 400)
            return _Lines(self, found, container, follow)

    # -- the Tekton controller's part, played by the test --------------------------------------------

    def start_run(self, name: str, namespace: str = "modelops") -> None:
        """What the controller writes when a (no longer pending) run starts."""
        with self._cond:
            run = self._run(namespace, name)
            status = run.setdefault("status", {})
            status["startTime"] = self._time()
            status["conditions"] = [self._condition("Unknown", "Running", self._tally(run))]
            status["childReferences"] = []
            self._changed(run, "MODIFIED")

    def start_task(
        self, run_name: str, task: str, *, steps: tuple[str, ...] | None = None, namespace: str = "modelops"
    ) -> str:
        """A TaskRun of pipeline task `task` (`uninstall` is a finally task) with its pod; its name."""
        with self._cond:
            run = self._run(namespace, run_name)
            taskrun_name = f"{run_name}-{task}"
            pod_name = f"{taskrun_name}-pod"
            member_of = "finally" if task == "uninstall" else "tasks"
            self.taskruns[(namespace, taskrun_name)] = {
                "apiVersion": "tekton.dev/v1",
                "kind": "TaskRun",
                "metadata": {
                    "name": taskrun_name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": self._time(),
                    "labels": {
                        "app.kubernetes.io/managed-by": "tekton-pipelines",
                        "tekton.dev/pipeline": "modelops-scoring",
                        "tekton.dev/pipelineRun": run_name,
                        "tekton.dev/pipelineRunUID": run["metadata"]["uid"],
                        "tekton.dev/pipelineTask": task,
                        "tekton.dev/memberOf": member_of,
                        "tekton.dev/task": f"modelops-{task}",
                        **{k: v for k, v in (run["metadata"].get("labels") or {}).items() if k.startswith("modelops")},
                    },
                    "ownerReferences": [
                        {
                            "apiVersion": "tekton.dev/v1",
                            "kind": "PipelineRun",
                            "name": run_name,
                            "uid": run["metadata"]["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {
                    "taskRef": {"kind": "Task", "name": f"modelops-{task}"},
                    "serviceAccountName": "modelops-runner",
                },
                "status": {
                    "podName": pod_name,
                    "startTime": self._time(),
                    "conditions": [
                        self._condition("Unknown", "Running", "Not all Steps in the Task have finished executing")
                    ],
                    "steps": [{"name": step, "container": f"step-{step}"} for step in steps or (task,)],
                },
            }
            self.pods[(namespace, pod_name)] = FakePod(
                pod_name, [f"step-{step}" for step in steps or (task,)], phase="Running"
            )
            status = run.setdefault("status", {})
            status.setdefault("childReferences", []).append(
                {"apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": taskrun_name, "pipelineTaskName": task}
            )
            status["conditions"] = [self._condition("Unknown", self._running_reason(run), self._tally(run))]
            self._changed(run, "MODIFIED")
            return taskrun_name

    def step_started(self, run_name: str, task: str, step: str | None = None, namespace: str = "modelops") -> None:
        with self._cond:
            pod = self._pod_of(namespace, run_name, task)
            pod.started.add(f"step-{step or task}")
            self._cond.notify_all()

    def log(self, run_name: str, task: str, *lines: str, step: str | None = None, namespace: str = "modelops") -> None:
        """Lines a step prints (the step is started if it was not)."""
        with self._cond:
            pod = self._pod_of(namespace, run_name, task)
            container = f"step-{step or task}"
            pod.started.add(container)
            pod.logs.setdefault(container, []).extend(lines)
            self._cond.notify_all()

    def finish_task(
        self,
        run_name: str,
        task: str,
        *,
        succeeded: bool,
        reason: str | None = None,
        message: str | None = None,
        namespace: str = "modelops",
    ) -> None:
        """The TaskRun ends; its pod's steps terminate; the run's tally changes."""
        with self._cond:
            taskrun = self.taskruns[(namespace, f"{run_name}-{task}")]
            taskrun["status"]["completionTime"] = self._time()
            taskrun["status"]["conditions"] = [
                self._condition(
                    "True" if succeeded else "False",
                    reason or ("Succeeded" if succeeded else "Failed"),
                    message
                    or ("All Steps have completed executing" if succeeded else f'"step-{task}" exited with code 1'),
                )
            ]
            pod = self._pod_of(namespace, run_name, task)
            pod.ended.update(pod.containers)
            pod.phase = "Succeeded" if succeeded else "Failed"
            run = self._run(namespace, run_name)
            run["status"]["conditions"] = [self._condition("Unknown", self._running_reason(run), self._tally(run))]
            self._changed(run, "MODIFIED")

    def set_run_condition(
        self, run_name: str, status: str, reason: str, message: str, namespace: str = "modelops"
    ) -> None:
        """The run's `Succeeded` condition; a final one (True/False) also sets completionTime."""
        with self._cond:
            run = self._run(namespace, run_name)
            run_status = run.setdefault("status", {})
            run_status["conditions"] = [self._condition(status, reason, message)]
            if status in ("True", "False"):
                run_status["completionTime"] = self._time()
            self._changed(run, "MODIFIED")

    # -- what Helm's release runs, played by the test -------------------------------------------------

    def add_pod(
        self, namespace: str, name: str, labels: Mapping[str, str], containers: tuple[str, ...] = ("main",)
    ) -> None:
        """A running pod (e.g. a scoring service of a job's release, labelled as charts/modelops labels it)."""
        with self._cond:
            self.pods[(namespace, name)] = FakePod(
                name, list(containers), started=set(containers), phase="Running", labels=dict(labels)
            )
            self._bump()
            self._cond.notify_all()

    def pod_log(self, namespace: str, pod: str, *lines: str, container: str | None = None) -> None:
        """Lines a pod's container prints (the first container unless named)."""
        with self._cond:
            found = self.pods[(namespace, pod)]
            found.logs.setdefault(container or found.containers[0], []).extend(lines)
            self._cond.notify_all()

    def end_pod(self, namespace: str, pod: str, *, succeeded: bool = True) -> None:
        """The pod's containers terminate (a followed log ends)."""
        with self._cond:
            found = self.pods[(namespace, pod)]
            found.ended.update(found.containers)
            found.phase = "Succeeded" if succeeded else "Failed"
            self._cond.notify_all()

    def delete_pod(self, namespace: str, pod: str) -> None:
        """The pod is deleted (helm uninstall): its log is gone with it."""
        with self._cond:
            found = self.pods.pop((namespace, pod))
            found.ended.update(found.containers)
            self._cond.notify_all()

    # -- internals ---------------------------------------------------------------------------------

    def _maybe_fail(self, method: str) -> None:
        error = self.failures.pop(method, None)
        if error is not None:
            raise error

    def _bump(self) -> int:
        self.resource_version = next(self._versions)
        return self.resource_version

    def _time(self) -> str:
        return (_BASE_TIME + timedelta(seconds=self.resource_version - 1000)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _changed(self, run: dict[str, Any], kind: str) -> None:
        version = self._bump()
        run["metadata"]["resourceVersion"] = str(version)
        self.history.append((version, kind, copy.deepcopy(run)))
        self._cond.notify_all()

    def _run(self, namespace: str, name: str) -> dict[str, Any]:
        run = self.pipelineruns.get((namespace, name))
        if run is None:
            raise NotFound(f'pipelineruns.tekton.dev "{name}" not found', 404)
        return run

    def _pod_of(self, namespace: str, run_name: str, task: str) -> FakePod:
        taskrun = self.taskruns[(namespace, f"{run_name}-{task}")]
        return self.pods[(namespace, taskrun["status"]["podName"])]

    def _condition(self, status: str, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": "Succeeded",
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": self._time(),
        }

    def _running_reason(self, run: Mapping[str, Any]) -> str:
        spec_status = (run.get("spec") or {}).get("status")
        if spec_status == "CancelledRunFinally":
            return "CancelledRunningFinally"
        return "Running"

    def _tally(self, run: Mapping[str, Any]) -> str:
        """The message Tekton keeps on a running PipelineRun's condition."""
        name = run["metadata"]["name"]
        namespace = run["metadata"]["namespace"]
        done = failed = cancelled = 0
        for (ns, _), taskrun in self.taskruns.items():
            labels = taskrun["metadata"]["labels"]
            if ns != namespace or labels.get("tekton.dev/pipelineRun") != name:
                continue
            condition = taskrun["status"]["conditions"][0]
            if condition["status"] == "True":
                done += 1
            elif condition["status"] == "False":
                if condition["reason"] == "TaskRunCancelled":
                    cancelled += 1
                else:
                    failed += 1
        return f"Tasks Completed: {done + failed + cancelled} (Failed: {failed}, Cancelled {cancelled}), Skipped: 0"

    def _collect_garbage(self, namespace: str, owner: Mapping[str, Any]) -> None:
        uid = owner["metadata"]["uid"]

        def owned(obj: Mapping[str, Any]) -> bool:
            return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])

        for key in [key for key, secret in self.secrets.items() if key[0] == namespace and owned(secret)]:
            del self.secrets[key]
        for key in [key for key, taskrun in self.taskruns.items() if key[0] == namespace and owned(taskrun)]:
            pod = self.taskruns.pop(key)["status"].get("podName")
            self.pods.pop((namespace, pod), None)
        self._cond.notify_all()
