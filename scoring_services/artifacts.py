"""Model artifacts: where a URI points, downloading http(s):// ones to a cache, and sha256 checks.

A model URI is a relative path (resolved against the model store, by default the working directory), a
`file://` URI, an `http(s)://` URL, or a model store's: `s3://bucket/key` (`stores.s3`) or `models:/NAME/VERSION`
(`stores.mlflow_registry`), whose endpoint and credentials are the keys of the model's Secret (`stores.secrets`).
Downloads land in the cache folder under their sha256 (or the hash of
the URL when none is given) and are verified before they are used; an archive (`.tar.gz`, `.tgz`, `.zip`) is
unpacked next to it, so folder artifacts (transformers models, python modules) can be served from a URL;
unpacking goes through `ir.archive`, bounded in what it decompresses to, its headers and its members.

The sha256 of a folder is defined as the sha256 of its manifest: one line `<sha256 of file>  <relative path>`
per file, sorted by path (what `sha256sum $(find . -type f | sort)` prints, with `./` removed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from ir.archive import ArchiveError, ArchiveLimits, extract_archive
from ir.models import uri_scheme
from scoring_services.errors import ModelLoadError
from scoring_services.stores.secrets import store_secrets

__all__ = [
    "ARCHIVE_SUFFIXES",
    "cache_slot",
    "cached",
    "directory_sha256",
    "file_sha256",
    "read_verified",
    "resolve_uri",
    "unpack",
    "verify",
]

log = logging.getLogger(__name__)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
FOLDER_KIND_HEADER = "X-Artifact-Kind"
"""The scheduler's artifact routes say with this header whether they send a file or a folder (as a gzip tar)."""
_CHUNK = 1 << 20
DEFAULT_MAX_UNPACKED_BYTES = 16 * 2**30
"""What a downloaded archive may decompress to (`ScoringSettings.max_unpacked_bytes`)."""
MAX_ARCHIVE_MEMBERS = 10_000


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_sha256(path: Path) -> str:
    """sha256 of the folder's manifest (see the module docstring)."""
    lines = [
        f"{file_sha256(item)}  {item.relative_to(path).as_posix()}\n"
        for item in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def verify(path: Path, sha256: str | None) -> None:
    """Raise `ModelLoadError` when `path` (a file or a folder) does not have the expected sha256."""
    if sha256 is None:
        return
    actual = directory_sha256(path) if path.is_dir() else file_sha256(path)
    if actual != sha256:
        raise ModelLoadError(
            f"sha256 mismatch for {path}: expected {sha256}, the artifact has {actual}; refusing to load it"
        )


def read_verified(path: Path, sha256: str | None) -> bytes:
    """The file's bytes, checked against `sha256` first: what is unpickled is exactly what was hashed."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model artifact {path}: {exc.strerror or exc}") from exc
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ModelLoadError(
                f"sha256 mismatch for {path}: expected {sha256}, the artifact has {actual}; refusing to load it"
            )
    return data


def _store_base(model_store: str | None) -> Path:
    if model_store is None:
        return Path.cwd()
    if model_store.startswith("file://"):
        return Path(unquote(urlsplit(model_store).path))
    if "://" in model_store:
        raise ModelLoadError(f"model store {model_store!r} must be a folder or a file:// URI")
    return Path(model_store)


def unpack(archive: Path, target: Path, max_bytes: int, source: str) -> Path:
    """Unpack `archive` into the folder `target` (once: a folder already there is the earlier unpacking)
    through `ir.archive`: at most `max_bytes` decompressed, headers and members bounded before they are read."""
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    limits = ArchiveLimits(max_bytes, MAX_ARCHIVE_MEMBERS, "MODELOPS_SCORING_MAX_UNPACKED_BYTES")
    try:
        extract_archive(archive, staging, limits)
        entries = list(staging.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        os.replace(root, target)
    except (OSError, ArchiveError) as exc:
        raise ModelLoadError(f"cannot unpack {source}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def cache_slot(name: str, identity: str, sha256: str | None, cache_dir: Path) -> tuple[Path, Path, str]:
    """Where a downloaded artifact lives in the cache: `(file, folder, archive suffix)`.

    `name` is the artifact's last path segment (its suffix says whether it is an archive), `identity` what it
    is downloaded from (its uri): the cache key is the sha256 when one is given, else the hash of `identity`.
    The file is `<key><suffix>`, an unpacked archive or a downloaded folder the folder `<key>`."""
    suffix = next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), "")
    key = sha256 or hashlib.sha256(identity.encode()).hexdigest()
    return cache_dir / f"{key}{suffix}", cache_dir / key, suffix


def cached(source: str, sha256: str | None, slot: tuple[Path, Path, str], max_unpacked_bytes: int) -> Path | None:
    """The cached artifact of `slot` when it is there and has `sha256` (never without a sha256: an artifact
    named only by its uri may have changed since), unpacked when it is an archive; else None."""
    if sha256 is None:
        return None
    target, folder, suffix = slot
    if not suffix and folder.is_dir() and directory_sha256(folder) == sha256:
        log.info("using cached download of %s (%s)", source, folder)
        return folder
    if target.is_file() and file_sha256(target) == sha256:
        log.info("using cached download of %s (%s)", source, target)
        return unpack(target, folder, max_unpacked_bytes, source) if suffix else target
    return None


def _download(
    url: str,
    sha256: str | None,
    cache_dir: Path,
    timeout_s: float,
    headers: Mapping[str, str] | None = None,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
) -> Path:
    name = urlsplit(url).path.rsplit("/", 1)[-1] or "artifact"
    cache_dir.mkdir(parents=True, exist_ok=True)
    slot = cache_slot(name, url, sha256, cache_dir)
    target, folder, suffix = slot
    key = folder.name
    hit = cached(url, sha256, slot, max_unpacked_bytes)
    if hit is not None:
        return hit
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=".download-")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with (
            os.fdopen(fd, "wb") as handle,
            httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True, headers=headers) as r,
        ):
            if r.status_code != 200:
                raise ModelLoadError(f"downloading {url} failed: HTTP {r.status_code}")
            for chunk in r.iter_bytes(_CHUNK):
                digest.update(chunk)
                handle.write(chunk)
            stored_folder = r.headers.get(FOLDER_KIND_HEADER) == "folder"
        if stored_folder and not suffix:
            # The scheduler's artifact store sends a folder as a gzip tar; its sha256 is the manifest's.
            os.replace(tmp, cache_dir / f"{key}.tar.gz")
            unpacked = unpack(cache_dir / f"{key}.tar.gz", folder, max_unpacked_bytes, url)
            verify(unpacked, sha256)
            log.info("downloaded %s to %s", url, unpacked)
            return unpacked
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ModelLoadError(
                f"sha256 mismatch for {url}: expected {sha256}, downloaded {digest.hexdigest()}; refusing to load it"
            )
        os.replace(tmp, target)
    except httpx.HTTPError as exc:
        raise ModelLoadError(f"downloading {url} failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s to %s", url, target)
    if suffix:
        return unpack(target, cache_dir / key, max_unpacked_bytes, url)
    return target


def resolve_uri(
    uri: str,
    *,
    sha256: str | None,
    model_store: str | None,
    cache_dir: Path,
    timeout_s: float = 120.0,
    headers: Mapping[str, str] | None = None,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    credentials: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Path, bool]:
    """A local path for `uri`, and whether its sha256 was already verified (downloads are checked on arrival).

    Archives downloaded over http(s) are verified as archives and returned unpacked; a folder from the
    scheduler's artifact store (answered with `X-Artifact-Kind: folder`) is unpacked and verified by its
    manifest. `headers` go with a download (the `fetch-model` init container sends the job's token). An
    archive that decompresses to more than `max_unpacked_bytes`, or whose headers or member count are past
    `ir.archive`'s bounds, is refused (`ModelLoadError` naming the limit) before it fills memory or disk.

    `s3://bucket/key` (`stores.s3`) and `models:/NAME/VERSION` or `models:/NAME@alias`
    (`stores.mlflow_registry`) are fetched into the cache the same way; their endpoint and credentials are the
    keys of the Secret named `credentials` (the model's `credentials.secretRef.name`), read from `environ`
    (default: this process's environment) as `MODELOPS_SECRET_<NAME>_<KEY>` (`stores.secrets`).
    """
    scheme = uri_scheme(uri)
    if scheme in ("http", "https"):
        return _download(uri, sha256, cache_dir, timeout_s, headers, max_unpacked_bytes), True
    if scheme in ("s3", "models"):
        secrets = store_secrets(scheme, credentials, os.environ if environ is None else environ)
        return _from_store(scheme, uri, sha256, cache_dir, timeout_s, max_unpacked_bytes, credentials, secrets), True
    if scheme == "file":
        path = Path(unquote(urlsplit(uri).path))
    elif scheme:
        raise ModelLoadError(
            f"uri scheme '{scheme}' is not supported: use a path, file://, http(s)://, s3:// or models:/"
        )
    else:
        path = Path(uri)
        if not path.is_absolute():
            path = _store_base(model_store) / path
    if not path.exists():
        raise ModelLoadError(f"model artifact {path} does not exist (uri {uri!r})")
    return path, False


def _from_store(
    scheme: str,
    uri: str,
    sha256: str | None,
    cache_dir: Path,
    timeout_s: float,
    max_unpacked_bytes: int,
    secret: str | None,
    secrets: Mapping[str, str],
) -> Path:
    """Fetch from a model store, its module imported only when a model uses it (boto3, mlflow)."""
    if scheme == "s3":
        try:
            from scoring_services.stores import s3
        except ImportError as exc:
            raise ModelLoadError(f"{uri}: s3:// artifacts need boto3 (pip install 'modelops[s3]'): {exc}") from exc
        return s3.fetch(
            uri,
            sha256=sha256,
            cache_dir=cache_dir,
            secrets=secrets,
            timeout_s=timeout_s,
            max_unpacked_bytes=max_unpacked_bytes,
            secret=secret,
        )
    try:
        from scoring_services.stores import mlflow_registry
    except ImportError as exc:
        raise ModelLoadError(
            f"{uri}: models:/ uris need the MLflow registry store (scoring_services.stores.mlflow_registry "
            f"and mlflow, pip install 'modelops[mlflow]'), which this installation lacks: {exc}"
        ) from exc
    path: Path = mlflow_registry.fetch(uri, sha256=sha256, cache_dir=cache_dir, secrets=secrets, timeout_s=timeout_s)
    return path
