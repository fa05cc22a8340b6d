"""The trust model (docs/security.md): who may deploy what runs code, and where a job may read and write.

A deployer writes the IR, so nothing in it is trusted: not its paths, not its uris, not its sha256 (the
author chooses the hash). What bounds a job is the operator's configuration, checked at deploy (the literal
paths and uris of the bundle, with the server's settings) and again at job start (the rendered values, with the
job's parameters and environment, which can move the data root and the model store):

- code-running runtimes (`CODE_RUNTIMES`): a model whose runtime runs code from its artifact (a `python`
  module, an `sklearn` or `torch` pickle) needs a deployer with the `code` (or `admin`) scope, or the setting
  `allow_code_runtimes`; otherwise 403 naming the model and the runtime. Every backend.
- remote model uris: their scheme must be in `allowed_uri_schemes` (default `https`), unless they lie under
  the server's own model store or artifact store. Every backend.
- artifact roots: a local model uri (`file://`, or a relative path the scoring service resolves against its
  working directory) must resolve, after symlinks, inside the artifact store, the model store (when a folder;
  without one, the server's working directory, where the local scoring services resolve relative uris) or
  `artifact_roots`; a job's `environment.modelStore` too. The local backend, whose components read this
  machine's files.
- data roots: a file source or sink (and a dead-letter sink) must resolve, after symlinks, inside the data
  root or `data_roots` (default `<home>/data`); a job's `environment.dataRoot` too. The local backend.

On the tekton backend paths are the pod's own (its volumes bound them), so only the first two apply.
Refusals name what (the model, the channel, the environment key), where it resolved and the roots.
"""

from __future__ import annotations

import glob as globlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import ir
from ir.models import PARAM_REF, uri_scheme
from scheduler.artifacts import artifact_folder
from scheduler.auth import Forbidden, Principal
from scheduler.errors import InvalidInput
from scheduler.settings import SchedulerSettings
from scheduler.values import data_root

__all__ = [
    "CODE_RUNTIMES",
    "CodeRuntimeForbidden",
    "OutsideRoots",
    "Roots",
    "check_bundle",
    "check_code_runtimes",
    "check_values",
    "roots_of",
]

CODE_RUNTIMES: Final = frozenset({"python", "sklearn", "torch", "mlflow"})
"""Runtimes that run code from their artifact: `python` imports a module, `sklearn` and `torch` unpickle,
`mlflow` imports the flavour's loader and unpickles what it saved."""

_WHY: Final = {
    "python": "imports and runs the artifact's Python code",
    "sklearn": "unpickles its artifact, which runs code",
    "torch": "unpickles its artifact (TorchScript), which runs code",
    "mlflow": "loads a pyfunc model (its loader module, pickles), which runs code",
}
_GLOB_CHARS: Final = frozenset("*?[")


class CodeRuntimeForbidden(Forbidden):
    """A deployer without the `code` scope deployed a model whose runtime runs code."""

    default_code = "code_runtime_forbidden"


class OutsideRoots(InvalidInput):
    """A path or uri of a job that resolves outside the roots the operator configured (or a refused scheme)."""

    default_code = "outside_roots"


@dataclass(frozen=True)
class Roots:
    """The folders a job's artifacts and data may resolve into, and the remote schemes it may use."""

    artifacts: tuple[Path, ...]
    data: tuple[Path, ...]
    schemes: frozenset[str]
    trusted_prefixes: tuple[str, ...]
    """Uri prefixes of the server's own stores (model store, artifact store): any scheme is fine under them."""


def roots_of(settings: SchedulerSettings) -> Roots:
    """The roots of a server with these settings (every folder absolute, symlinks resolved)."""
    artifacts = [artifact_folder(settings.home).parent]
    prefixes = [artifact_folder(settings.home).as_uri()]
    if settings.model_store:
        store = settings.model_store
        if store.startswith("/"):
            store = Path(store).as_uri()
        prefixes.append(store.rstrip("/") + "/")
        if store.startswith("file://"):
            artifacts.append(_file_path(store))
    elif settings.backend == "local":  # no model store: a scoring service resolves a relative uri against its cwd
        artifacts.append(Path.cwd())
    if settings.backend == "tekton":  # the artifact store of a pod: the scheduler's job-scoped route
        prefixes.append(f"{settings.public_url}/api/v1/jobs/")
    artifacts.extend(settings.artifact_roots)
    data = [root for root in [data_root(settings)] if root is not None]
    data.extend(settings.data_roots or [settings.home / "data"])
    return Roots(
        artifacts=_unique(path.expanduser().resolve() for path in artifacts),
        data=_unique(path.expanduser().resolve() for path in data),
        schemes=frozenset(settings.allowed_uri_schemes),
        trusted_prefixes=tuple(prefixes),
    )


def _unique(paths: Iterable[Path]) -> tuple[Path, ...]:
    return tuple(dict.fromkeys(paths))


def _file_path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _listed(roots: Iterable[Path]) -> str:
    return ", ".join(str(root) for root in roots) or "none"


# -- code-running runtimes ----------------------------------------------------------------------------------


def check_code_runtimes(bundle: ir.Bundle, by: Principal, settings: SchedulerSettings) -> None:
    """Raise `CodeRuntimeForbidden` (403) if `by` may not deploy the code-running models of `bundle`."""
    if settings.allow_code_runtimes or by.allows("code"):
        return
    found = [(m.metadata.name, m.spec.runtime) for m in bundle.used_models() if m.spec.runtime in CODE_RUNTIMES]
    if not found:
        return
    named = "; ".join(f"model '{name}' has runtime '{runtime}', which {_WHY[runtime]}" for name, runtime in found)
    raise CodeRuntimeForbidden(
        f"{named}: deploying it needs a token with the 'code' or 'admin' scope (token {by.name!r} has "
        f"{by.scope!r}), or the server setting allow_code_runtimes (MODELOPS_SCHEDULER_ALLOW_CODE_RUNTIMES)",
        details={
            "models": [{"model": name, "runtime": runtime} for name, runtime in found],
            "token": by.name,
            "scope": by.scope,
            "needed": "code",
        },
    )


# -- roots and schemes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    message: str
    details: dict[str, Any]


def _model_problem(name: str, uri: str, roots: Roots, local: bool, written: str | None = None) -> _Problem | None:
    """Why the resolved model uri `uri` of model `name` (`written` in the IR, if known) is refused, or None."""
    if ir.artifact_digest(uri) is not None:
        return None  # a stored artifact without an artifact store: the service refuses it, nothing is read
    if uri.startswith(roots.trusted_prefixes) and not uri.startswith("file://"):
        return None  # the server's own remote model store or artifact route (a file:// one is checked below)
    scheme = uri_scheme(uri)  # s3://b/k -> s3, models:/NAME/1 -> models
    if scheme and scheme != "file":
        if scheme in roots.schemes:
            return None
        allowed = ", ".join(sorted(roots.schemes)) or "none"
        return _Problem(
            f"model '{name}': uri {written or uri} uses the scheme '{scheme}', which this server does not allow "
            f"(allowed_uri_schemes: {allowed})",
            {"model": name, "uri": uri, "scheme": scheme, "allowed": sorted(roots.schemes)},
        )
    if not local:
        return None  # a path of the pod's own file system
    path = _file_path(uri) if scheme == "file" else Path.cwd() / uri  # a service resolves it against its cwd
    resolved = path.resolve()
    if _inside(resolved, roots.artifacts):
        return None
    return _Problem(
        f"model '{name}': uri {written or uri} resolves to {resolved}, outside the artifact roots "
        f"({_listed(roots.artifacts)})",
        {"model": name, "uri": written or uri, "path": str(resolved), "roots": [str(r) for r in roots.artifacts]},
    )


def _glob_base(path: Path) -> Path:
    parts: list[str] = []
    for part in path.parts:
        if any(c in _GLOB_CHARS for c in part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(path.anchor or ".")


def _data_problem(what: str, channel: str, raw: str, roots: Roots) -> _Problem | None:
    path = Path(os.path.expanduser(raw))
    path = path if path.is_absolute() else Path.cwd() / path
    candidates = [path]
    if any(c in _GLOB_CHARS for c in str(path)):
        candidates = [_glob_base(path), *(Path(p) for p in globlib.iglob(str(path), recursive=True))]
    for candidate in candidates:
        resolved = candidate.resolve()
        if not _inside(resolved, roots.data):
            return _Problem(
                f"{what} '{channel}': {raw} resolves to {resolved}, outside the data roots ({_listed(roots.data)})",
                {"channel": channel, "path": str(resolved), "roots": [str(r) for r in roots.data]},
            )
    return None


def _environment_problems(environment: Mapping[str, Any], roots: Roots) -> list[_Problem]:
    problems: list[_Problem] = []
    root = environment.get("dataRoot")
    if isinstance(root, str) and root:
        resolved = Path(os.path.expanduser(root)).resolve()
        if not _inside(resolved, roots.data):
            problems.append(
                _Problem(
                    f"environment.dataRoot {root} resolves to {resolved}, outside the data roots "
                    f"({_listed(roots.data)})",
                    {"field": "environment.dataRoot", "path": str(resolved), "roots": [str(r) for r in roots.data]},
                )
            )
    store = environment.get("modelStore")
    if isinstance(store, str) and store:
        uri = Path(store).as_uri() if store.startswith("/") else store
        if uri.startswith("file://") or "://" not in uri:  # a remote one: its models' uris are checked
            resolved = (_file_path(uri) if uri.startswith("file://") else Path(uri)).resolve()
            if not _inside(resolved, roots.artifacts):
                problems.append(
                    _Problem(
                        f"environment.modelStore {store} resolves to {resolved}, outside the artifact roots "
                        f"({_listed(roots.artifacts)})",
                        {
                            "field": "environment.modelStore",
                            "path": str(resolved),
                            "roots": [str(r) for r in roots.artifacts],
                        },
                    )
                )
    return problems


def _raise(problems: list[_Problem]) -> None:
    if problems:
        raise OutsideRoots(
            "; ".join(problem.message for problem in problems),
            details={"problems": [{"message": p.message, **p.details} for p in problems]},
        )


def check_bundle(bundle: ir.Bundle, settings: SchedulerSettings, *, local: bool) -> None:
    """At deploy: the literal model uris and file paths of `bundle`, resolved with the server's settings
    (parameterised ones are checked at job start). Raises `OutsideRoots` (422) listing every problem."""
    roots = roots_of(settings)
    globals_ = ir.make_globals(
        {
            **({"modelStore": settings.model_store} if settings.model_store else {}),
            **({"dataRoot": str(root)} if (root := data_root(settings)) is not None else {}),
        }
    )
    problems: list[_Problem] = []
    for model in bundle.used_models():
        uri = model.spec.uri
        if PARAM_REF.search(uri):
            continue
        problem = _model_problem(model.metadata.name, ir.resolve_model_uri(uri, globals_), roots, local, uri)
        if problem:
            problems.append(problem)
    if local:
        for channel in bundle.used_channels():
            file = channel.spec.file
            if file is None or PARAM_REF.search(file.path):
                continue
            path = ir.resolve_data_path(file.path, globals_.data_root)
            problem = _data_problem("file channel", channel.metadata.name, path, roots)
            if problem:
                problems.append(problem)
    _raise(problems)


def check_values(
    values: ir.Values, environment: Mapping[str, Any], settings: SchedulerSettings, *, local: bool
) -> None:
    """At job start: the rendered model uris and file paths of a job, and its environment's data root and
    model store. Raises `OutsideRoots` (422) listing every problem."""
    roots = roots_of(settings)
    problems = _environment_problems(environment, roots) if local else []
    for name, service in sorted(values.scoring_services.items()):
        problem = _model_problem(name, service.model.uri, roots, local)
        if problem:
            problems.append(problem)
    if local:
        seen: set[str] = set()
        for flow in values.scoring_flows.values():
            sinks = [*flow.sinks, *([flow.dead_letter] if flow.dead_letter else [])]
            for role, channel in [("source", flow.source), *(("sink", sink) for sink in sinks)]:
                file = channel.spec.file
                if channel.spec.type != "file" or file is None or channel.name in seen:
                    continue
                seen.add(channel.name)
                problem = _data_problem(f"file {role}", channel.name, file.path, roots)
                if problem:
                    problems.append(problem)
    _raise(problems)
