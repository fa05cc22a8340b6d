"""`models:/NAME/VERSION`, `models:/NAME@ALIAS` and `models:/NAME/latest`: model folders from an MLflow registry.

The Secret the model names (`credentials.secretRef`) gives `tracking-uri` (required: the http(s) URL of the
MLflow tracking server that holds the registry) and, optionally, `token` (sent as a bearer token) or `username`
and `password` (basic auth). The service's own `MLFLOW_TRACKING_URI` is not a fallback: the model's Secret is
the one place that says which registry a model comes from, on a laptop as on a cluster. Database or file
tracking uris (`sqlite:`, `postgresql:`, `file:`, ...) are refused: a scoring service asks the tracking server,
it does not open the registry's database (whose uri would carry its password).

The version is resolved first (an alias or `latest` becomes a number), then the files of exactly that version
are downloaded through the server (`get_model_version_download_uri`: with `mlflow server --serve-artifacts`
an `mlflow-artifacts:/` uri, proxied by the server with the same credentials) into a staging folder in the
cache, and `registered_model_meta` is written beside them as `mlflow artifacts download -u models:/NAME/VERSION`
writes it. So the folder, and its sha256 (`artifacts.directory_sha256`), is what mlflow's own download of that
version gives, for a version, an alias or `latest` alike. It is verified against the sha256 when one is given,
must hold an `MLmodel`, and is moved into the cache slot named by the sha256 (else by the hash of the tracking
uri and `NAME/VERSION`, so an alias that moved downloads its new version). With a sha256, a cached folder that
has it is used without asking the server.

mlflow reads its credentials and HTTP settings from the environment at each request
(`utils.credentials.get_default_host_creds`, `utils.rest_utils.http_request`): for the duration of a fetch,
under a module lock, this module sets `MLFLOW_TRACKING_TOKEN` / `_USERNAME` / `_PASSWORD` from the Secret
(removing the service's own when the Secret lacks them, so they are never sent to another server),
`MLFLOW_HTTP_REQUEST_TIMEOUT` (the timeout, whole seconds), `MLFLOW_HTTP_REQUEST_MAX_RETRIES` = 1 with a small
backoff (a server that does not answer fails in seconds, not after minutes of retries) and no progress bar, then
restores what was there. Fetches in one process are therefore serial. mlflow still reads `~/.mlflow/credentials`
for a username and password when neither is set.

Every failure is a `ModelLoadError` naming the uri and the tracking server (its uri without user info or query):
an unknown registered model, version or alias, a server that refuses the connection or does not answer,
credentials refused (401/403), a wrong sha256, a folder that is not an MLflow model. Secret values are never
logged nor put in a message.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import mlflow.artifacts
import requests
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from scoring_services.artifacts import cache_slot, cached, directory_sha256
from scoring_services.errors import ModelLoadError

__all__ = ["ACCEPTED_FORMS", "RegistryModel", "fetch", "parse_models_uri"]

log = logging.getLogger(__name__)

ACCEPTED_FORMS = "models:/NAME/VERSION (a number), models:/NAME@ALIAS or models:/NAME/latest"
MLMODEL = "MLmodel"
REGISTERED_MODEL_META = "registered_model_meta"
"""What mlflow writes beside a model downloaded by its `models:/` uri (`ModelsArtifactRepository`)."""
_MAX_RETRIES = 1
_BACKOFF_FACTOR = 1  # seconds before the one retry (mlflow's default 2 with 7 retries waits minutes)
_CREDENTIAL_VARS = {
    "token": "MLFLOW_TRACKING_TOKEN",
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
}
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_REFUSED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"})
_DIGITS = re.compile(r"[0-9]+")
_env_lock = threading.Lock()


@dataclass(frozen=True)
class RegistryModel:
    """A parsed `models:/` uri: a registered model's name and one of a version, an alias, or latest."""

    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version or 'latest'}"


def parse_models_uri(uri: str) -> RegistryModel:
    """`models:/NAME/VERSION`, `models:/NAME@ALIAS` or `models:/NAME/latest`; anything else is refused.

    Refused: a stage (`models:/NAME/Production`, deprecated in mlflow), a logged model id (`models:/m-...`,
    not a registry entry), a path inside the model (`models:/NAME/1/sub`), a Databricks profile
    (`models://profile@databricks/...`)."""
    rest = uri[len("models:/") :] if uri.startswith("models:/") and not uri.startswith("models://") else None
    parts = rest.split("/") if rest else []
    if len(parts) == 2 and parts[0].strip() and "@" not in parts[0]:
        name, suffix = parts
        if _DIGITS.fullmatch(suffix):
            return RegistryModel(name, version=str(int(suffix)))
        if suffix.lower() == "latest":
            return RegistryModel(name)
    elif len(parts) == 1 and "@" in parts[0]:
        name, _, alias = parts[0].rpartition("@")
        if name.strip() and alias.strip() and "@" not in name:
            return RegistryModel(name, alias=alias)
    hint = ""
    if len(parts) == 1 and parts[0].startswith("m-"):
        hint = " (a logged model id is not a registry entry: register it and name its version)"
    elif len(parts) == 2 and parts[1] and not _DIGITS.fullmatch(parts[1]):
        hint = " (registry stages are deprecated in mlflow: give the version an alias)"
    raise ModelLoadError(f"model uri {uri!r} is not one the MLflow registry store reads{hint}: write {ACCEPTED_FORMS}")


def _redacted(tracking_uri: str) -> str:
    """The tracking uri without user info, query or fragment: what messages and logs may show."""
    parts = urlsplit(tracking_uri)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _tracking_uri(secrets: Mapping[str, str]) -> str:
    tracking_uri = secrets.get("tracking-uri")
    if not tracking_uri:
        raise ModelLoadError(
            "models:/ uris need the tracking server of the registry: the model's Secret (credentials.secretRef) "
            "needs the key 'tracking-uri', the http(s) URL of the MLflow tracking server"
        )
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelLoadError(
            f"the model's Secret key 'tracking-uri' must be the http(s):// URL of an MLflow tracking server "
            f"(got a '{parts.scheme}' uri); the registry's database or file store is not read directly"
        )
    have = [key for key in ("username", "password") if secrets.get(key)]
    if len(have) == 1:
        lack = "password" if have[0] == "username" else "username"
        raise ModelLoadError(f"the model's Secret has the key '{have[0]}' but not '{lack}' (basic auth needs both)")
    return tracking_uri


@contextmanager
def _mlflow_environment(secrets: Mapping[str, str], timeout_s: float) -> Iterator[None]:
    """mlflow's environment for one fetch (see the module docstring), restored afterwards, one fetch at a time."""
    wanted: dict[str, str | None] = {var: secrets.get(key) or None for key, var in _CREDENTIAL_VARS.items()}
    wanted |= {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(_MAX_RETRIES),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(_BACKOFF_FACTOR),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    with _env_lock:
        previous = {var: os.environ.get(var) for var in wanted}
        try:
            for var, value in wanted.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
            yield
        finally:
            for var, value in previous.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _failure(what: str, model: RegistryModel, tracking_uri: str, exc: Exception) -> ModelLoadError:
    """A `ModelLoadError` for a failed registry call, saying which kind of failure in words."""
    server = _redacted(tracking_uri)
    at = f"{what} {model} (tracking server {server}) failed"
    causes = list(_chain(exc))
    if any(isinstance(c, requests.exceptions.ConnectionError) for c in causes) or "Connection refused" in str(exc):
        if any(isinstance(c, requests.exceptions.ConnectTimeout) for c in causes):
            return ModelLoadError(f"{at}: the tracking server did not answer (connect timeout)")
        return ModelLoadError(f"{at}: cannot connect to the tracking server at {server} (connection refused?)")
    if any(isinstance(c, requests.exceptions.Timeout) for c in causes) or "timeout exception" in str(exc):
        return ModelLoadError(f"{at}: the tracking server did not answer in time (MLFLOW_HTTP_REQUEST_TIMEOUT)")
    if isinstance(exc, MlflowException) and exc.error_code in _REFUSED:
        return ModelLoadError(
            f"{at}: the tracking server refused the credentials ({exc.error_code}; check the model's Secret "
            "keys 'token' or 'username'/'password')"
        )
    text = str(exc).replace(tracking_uri.rstrip("/"), server.rstrip("/"))
    return ModelLoadError(f"{at}: {text}")


def _not_found(client: MlflowClient, model: RegistryModel, tracking_uri: str) -> ModelLoadError:
    """Which of the registered model, its version or its alias does not exist."""
    server = _redacted(tracking_uri)
    try:
        client.get_registered_model(model.name)
    except MlflowException as inner:
        if inner.error_code == _NOT_FOUND:
            return ModelLoadError(f"{model}: no registered model '{model.name}' on the tracking server {server}")
        return _failure("reading", model, tracking_uri, inner)
    if model.alias is not None:
        return ModelLoadError(f"{model}: registered model '{model.name}' has no alias '{model.alias}' (on {server})")
    if model.version is not None:
        return ModelLoadError(f"{model}: registered model '{model.name}' has no version {model.version} (on {server})")
    return ModelLoadError(f"{model}: registered model '{model.name}' has no versions (on {server})")


def _resolve(client: MlflowClient, model: RegistryModel, tracking_uri: str) -> tuple[str, str | None, str]:
    """The version number `model` names, its run id and its source."""
    try:
        if model.alias is not None:
            found = client.get_model_version_by_alias(model.name, model.alias)
        elif model.version is not None:
            found = client.get_model_version(model.name, model.version)
        else:
            escaped = model.name.replace("'", "\\'")
            versions = list(client.search_model_versions(f"name = '{escaped}'"))
            if not versions:
                raise _not_found(client, model, tracking_uri)
            found = max(versions, key=lambda v: int(v.version))
    except MlflowException as exc:
        # mlflow 3 answers an unknown alias with INVALID_PARAMETER_VALUE "Registered model alias X not found."
        missing_alias = model.alias is not None and "alias" in str(exc) and "not found" in str(exc)
        if exc.error_code == _NOT_FOUND or missing_alias:
            raise _not_found(client, model, tracking_uri) from exc
        raise _failure("resolving", model, tracking_uri, exc) from exc
    return str(found.version), found.run_id, str(found.source)


def _download(
    client: MlflowClient, model: RegistryModel, version: str, tracking_uri: str, staging: Path
) -> tuple[Path, str, int]:
    """The version's files into a folder under `staging`, with `registered_model_meta`: that folder, the
    download uri and the number of files."""
    exact = RegistryModel(model.name, version=version)
    server = _redacted(tracking_uri)
    try:
        download_uri = client.get_model_version_download_uri(model.name, version)
        # A folder uri lands in dst_path/<its last segment> ("artifacts" for a logged model): use what it returns.
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=download_uri, dst_path=str(staging), tracking_uri=tracking_uri
            )
        )
    except MlflowException as exc:
        raise _failure("downloading", exact, tracking_uri, exc) from exc
    except OSError as exc:
        raise ModelLoadError(f"downloading {exact} (tracking server {server}) failed: {exc}") from exc
    if not local.resolve().is_relative_to(staging.resolve()) or not (local / MLMODEL).is_file():
        raise ModelLoadError(
            f"{exact} (tracking server {server}): the version's files ({download_uri}) have no {MLMODEL} at their "
            "root: not an MLflow model folder"
        )
    meta = {"model_name": model.name, "model_version": version}
    (local / REGISTERED_MODEL_META).write_text(
        yaml.safe_dump(meta, default_flow_style=False, allow_unicode=True, sort_keys=True), encoding="utf-8"
    )
    return local, download_uri, sum(1 for p in local.rglob("*") if p.is_file())


def _is_version(folder: Path, model: RegistryModel) -> bool:
    """Whether a cached folder can be what `model` names: for an explicit version, its `registered_model_meta`
    must name that version (so a uri with another version's sha256 fails as it would on a fresh cache); an
    alias or `latest` is pinned by the sha256 alone."""
    if model.version is None:
        return True
    try:
        meta = yaml.safe_load((folder / REGISTERED_MODEL_META).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(meta, dict) and meta == {"model_name": model.name, "model_version": model.version}


def fetch(
    uri: str,
    *,
    sha256: str | None,
    cache_dir: Path,
    secrets: Mapping[str, str],
    timeout_s: float,
) -> Path:
    """The local MLflow model folder `uri` names, in `cache_dir`, verified against `sha256` when given.

    `secrets` are the keys of the model's Secret (`stores.secrets.store_secrets`): `tracking-uri`, and
    optionally `token` or `username` and `password`."""
    model = parse_models_uri(uri)
    tracking_uri = _tracking_uri(secrets)
    server = _redacted(tracking_uri)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if sha256 is not None:
        hit = cached(uri, sha256, cache_slot("", uri, sha256, cache_dir), 0)
        if hit is not None and (hit / MLMODEL).is_file() and _is_version(hit, model):
            return hit
    with _mlflow_environment(secrets, timeout_s):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        version, run_id, source = _resolve(client, model, tracking_uri)
        if model.version != version:
            log.info("resolved %s to version %s (run %s, source %s) on %s", model, version, run_id, source, server)
        exact = RegistryModel(model.name, version=version)
        folder = cache_slot("", f"{tracking_uri}#{exact}", sha256, cache_dir)[1]
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".download-"))
        try:
            local, download_uri, files = _download(client, model, version, tracking_uri, staging)
            actual = directory_sha256(local)
            if sha256 is not None and actual != sha256:
                raise ModelLoadError(
                    f"sha256 mismatch for {model} (version {version}, tracking server {server}): expected "
                    f"{sha256}, its manifest has {actual}; refusing to load it"
                )
            if folder.exists():
                shutil.rmtree(folder)  # an earlier download of the same version (without a sha256) or a broken one
            os.replace(local, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("downloaded %s (version %s, %d files from %s) to %s", model, version, files, download_uri, folder)
    return folder
