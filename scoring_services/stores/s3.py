"""`s3://bucket/key` model artifacts: AWS S3, MinIO or any S3-compatible endpoint, through boto3.

The Secret the model names (`credentials.secretRef`) gives `endpoint` (an http(s) URL; none is AWS),
`region`, `access-key-id`, `secret-access-key` and `session-token`; without keys boto3's default chain is used
(an IAM role on a cluster, `AWS_*` variables, `~/.aws`). The IR holds none of them.

A key that is an object is a file; a key ending in `/`, or with no object but objects under `key/`, is a folder,
downloaded object by object (at most `MAX_ARCHIVE_MEMBERS` objects and `max_unpacked_bytes` in all). Both land
in the cache exactly as http(s) downloads do (`artifacts.cache_slot`: named by the sha256, or the hash of the
uri without one) and are verified on arrival: a file by its sha256, a folder by its manifest's
(`artifacts.directory_sha256`); a `.tar.gz`/`.tgz`/`.zip` object is unpacked as over http. With a sha256, an
artifact already in the cache is used without asking the store.

Every failure is a `ModelLoadError` naming the bucket and key (and the endpoint): a missing key or bucket,
access denied, a wrong sha256, an endpoint that does not answer (short connect timeout, one retry). Secret
values are never logged nor put in a message.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ir.secrets import secret_env_var
from scoring_services.artifacts import (
    MAX_ARCHIVE_MEMBERS,
    cache_slot,
    cached,
    directory_sha256,
    unpack,
)
from scoring_services.errors import ModelLoadError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

__all__ = ["S3Location", "fetch", "parse_s3_uri"]

log = logging.getLogger(__name__)
for _name in ("botocore", "boto3", "s3transfer"):
    # Their DEBUG lines print each request's headers, a session token among them: never below INFO unless a
    # logging configuration sets their level itself.
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.INFO)
_CHUNK = 1 << 20
_CONNECT_TIMEOUT_S = 5.0
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
_BAD_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"})


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str) -> S3Location:
    """`s3://bucket/some/key` -> bucket and key (an empty key is the whole bucket, as a folder)."""
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ModelLoadError(f"model uri {uri!r} names no bucket: write s3://BUCKET/KEY")
    return S3Location(bucket, key)


def _client(secrets: Mapping[str, str], secret: str | None, timeout_s: float) -> S3Client:
    endpoint = secrets.get("endpoint")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            where = f" ({secret_env_var(secret, 'endpoint')})" if secret else ""
            raise ModelLoadError(f"the s3 endpoint of secret '{secret}'{where} must be an http(s):// URL")
    key_id, key = secrets.get("access-key-id"), secrets.get("secret-access-key")
    if (key_id is None) != (key is None):
        have, lack = ("access-key-id", "secret-access-key") if key is None else ("secret-access-key", "access-key-id")
        lacking = secret_env_var(secret, lack) if secret else lack
        raise ModelLoadError(f"secret '{secret}' has the key '{have}' but not '{lack}' (locally {lacking})")
    config = Config(
        connect_timeout=min(_CONNECT_TIMEOUT_S, timeout_s),
        read_timeout=timeout_s,
        retries={"total_max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint else {},
    )
    region = secrets.get("region") or ("us-east-1" if endpoint else None)
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=key,
        aws_session_token=secrets.get("session-token") if key_id else None,
        config=config,
    )


def _failure(what: str, where: S3Location, endpoint: str, exc: Exception) -> ModelLoadError:
    """A `ModelLoadError` for a failed S3 call, saying which kind of failure in words."""
    at = f"{where} (endpoint {endpoint})"
    if isinstance(exc, ClientError):
        error: Mapping[str, Any] = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "NoSuchBucket":
            return ModelLoadError(f"{what} {at} failed: the bucket '{where.bucket}' does not exist")
        if code in _MISSING:
            return ModelLoadError(f"{what} {at} failed: no object '{where.key}' in bucket '{where.bucket}'")
        if code in _DENIED:
            return ModelLoadError(f"{what} {at} failed: access denied (check the credentials' permissions)")
        if code in _BAD_CREDENTIALS:
            return ModelLoadError(f"{what} {at} failed: the store refused the credentials ({code})")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return ModelLoadError(f"{what} {at} failed: {code or 'error'} (HTTP {status})")
    if isinstance(exc, NoCredentialsError):
        return ModelLoadError(
            f"{what} {at} failed: no credentials (name a Secret in the model's credentials.secretRef, "
            "or give the pod an identity boto3 finds)"
        )
    return ModelLoadError(f"{what} {at} failed: {exc}")


def _relative(prefix: str, key: str, where: S3Location) -> PurePosixPath | None:
    """The path of object `key` inside the folder `prefix`, None for a folder marker; refused when unsafe."""
    relative = key[len(prefix) :]
    if not relative or relative.endswith("/"):
        return None
    path = PurePosixPath(relative)
    if path.is_absolute() or any(part in ("", ".", "..") for part in relative.split("/")) or "\\" in relative:
        raise ModelLoadError(f"{where}: object key {key!r} is not a safe relative path inside the folder")
    return path


def _download_object(client: S3Client, bucket: str, key: str, handle: Any, digest: Any | None = None) -> None:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        for chunk in body.iter_chunks(_CHUNK):
            if digest is not None:
                digest.update(chunk)
            handle.write(chunk)
    finally:
        body.close()


def _fetch_file(
    client: S3Client,
    where: S3Location,
    endpoint: str,
    sha256: str | None,
    slot: tuple[Path, Path, str],
    max_unpacked_bytes: int,
) -> Path:
    target, folder, suffix = slot
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".download-")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                _download_object(client, where.bucket, where.key, handle, digest)
            except (ClientError, BotoCoreError) as exc:
                raise _failure("downloading", where, endpoint, exc) from exc
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ModelLoadError(
                f"sha256 mismatch for {where}: expected {sha256}, downloaded {digest.hexdigest()}; refusing to load it"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s to %s", where, target)
    if suffix:
        if sha256 is None:
            shutil.rmtree(folder, ignore_errors=True)  # named by its uri: what is there may be an older object
        return unpack(target, folder, max_unpacked_bytes, str(where))
    return target


def _list_folder(
    client: S3Client, where: S3Location, prefix: str, endpoint: str, max_bytes: int
) -> list[tuple[str, PurePosixPath]]:
    objects: list[tuple[str, PurePosixPath]] = []
    total = 0
    folder = S3Location(where.bucket, prefix)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item.get("Key", "")
                relative = _relative(prefix, key, folder)
                if relative is None:
                    continue
                objects.append((key, relative))
                total += int(item.get("Size", 0))
                if len(objects) > MAX_ARCHIVE_MEMBERS:
                    raise ModelLoadError(f"folder {folder} has more than {MAX_ARCHIVE_MEMBERS} objects")
                if total > max_bytes:
                    raise ModelLoadError(
                        f"folder {folder} holds more than {max_bytes} bytes (MODELOPS_SCORING_MAX_UNPACKED_BYTES)"
                    )
    except (ClientError, BotoCoreError) as exc:
        raise _failure("listing", folder, endpoint, exc) from exc
    return objects


def _fetch_folder(
    client: S3Client,
    where: S3Location,
    endpoint: str,
    sha256: str | None,
    folder: Path,
    max_bytes: int,
) -> Path:
    prefix = where.key if not where.key or where.key.endswith("/") else f"{where.key}/"
    objects = _list_folder(client, where, prefix, endpoint, max_bytes)
    if not objects:
        missing = f"no object '{where.key}' and " if where.key and not where.key.endswith("/") else ""
        raise ModelLoadError(
            f"{where} (endpoint {endpoint}): {missing}no objects under '{prefix}' in bucket '{where.bucket}'"
        )
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".download-"))
    try:
        for key, relative in objects:
            path = staging.joinpath(*relative.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as handle:
                try:
                    _download_object(client, where.bucket, key, handle)
                except (ClientError, BotoCoreError) as exc:
                    raise _failure("downloading", S3Location(where.bucket, key), endpoint, exc) from exc
        actual = directory_sha256(staging)
        if sha256 is not None and actual != sha256:
            raise ModelLoadError(
                f"sha256 mismatch for the folder {where}: expected {sha256}, its manifest has {actual}; "
                "refusing to load it"
            )
        if folder.exists():
            shutil.rmtree(folder)  # an earlier download of the same uri (without a sha256) or a broken one
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("downloaded the folder %s (%d objects) to %s", where, len(objects), folder)
    return folder


def fetch(
    uri: str,
    *,
    sha256: str | None,
    cache_dir: Path,
    secrets: Mapping[str, str],
    timeout_s: float,
    max_unpacked_bytes: int,
    secret: str | None = None,
) -> Path:
    """The local path of the artifact `uri` names (a file, or a folder), in `cache_dir`, verified.

    `secrets` are the keys of the model's Secret (`stores.secrets.store_secrets`), `secret` its name (errors
    name the variables to set, never their values)."""
    where = parse_s3_uri(uri)
    name = where.key.rstrip("/").rsplit("/", 1)[-1] or where.bucket
    cache_dir.mkdir(parents=True, exist_ok=True)
    slot = cache_slot(name if not where.key.endswith("/") else "", uri, sha256, cache_dir)
    hit = cached(uri, sha256, slot, max_unpacked_bytes)
    if hit is not None:
        return hit
    endpoint = secrets.get("endpoint") or "AWS"
    try:
        client = _client(secrets, secret, timeout_s)
    except (BotoCoreError, ValueError) as exc:  # e.g. a region that is not one
        raise ModelLoadError(f"cannot reach {where} (endpoint {endpoint}): {exc}") from exc
    if where.key and not where.key.endswith("/"):
        try:
            client.head_object(Bucket=where.bucket, Key=where.key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in _MISSING:
                raise _failure("reading", where, endpoint, exc) from exc
        except BotoCoreError as exc:
            raise _failure("reading", where, endpoint, exc) from exc
        else:
            return _fetch_file(client, where, endpoint, sha256, slot, max_unpacked_bytes)
    return _fetch_folder(client, where, endpoint, sha256, slot[1], max_unpacked_bytes)
