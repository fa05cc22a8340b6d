"""Per-job tokens: what scoring flows (and Tekton tasks) present to report progress and completion.

A job token is derived, not stored: `HMAC-SHA256(server secret, job id)`. The database keeps only its
SHA-256 (`jobs.token_hash`), yet `install` can put the plaintext into the values at any time, also after a
server restart, without the plaintext ever being written to the database. The secret comes from
`MODELOPS_SCHEDULER_JOB_TOKEN_SECRET`, or is generated once into `<home>/job-token.key` (mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

from scheduler.settings import hash_token

PREFIX = "mjt_"
SECRET_ENV = "MODELOPS_SCHEDULER_JOB_TOKEN_SECRET"
SECRET_FILE = "job-token.key"
_MIN_SECRET_BYTES = 32


def job_token(secret: bytes, job_id: uuid.UUID | str) -> str:
    """The job's token: `mjt_` + url-safe base64 of HMAC-SHA256(secret, job id)."""
    mac = hmac.new(secret, str(uuid.UUID(str(job_id))).encode(), hashlib.sha256).digest()
    return PREFIX + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def job_token_hash(secret: bytes, job_id: uuid.UUID | str) -> str:
    """What the store keeps: the SHA-256 hex of the job token."""
    return hash_token(job_token(secret, job_id))


def verify_job_token(token_hash: str, presented: str) -> bool:
    """Constant-time check of a presented token against the stored hash."""
    return hmac.compare_digest(token_hash, hash_token(presented))


def load_secret(home: Path) -> bytes:
    """The server's job-token secret: from the environment, else from `<home>/job-token.key` (created once)."""
    from_env = os.environ.get(SECRET_ENV)
    if from_env:
        if len(from_env.encode()) < _MIN_SECRET_BYTES:
            raise ValueError(f"{SECRET_ENV} must be at least {_MIN_SECRET_BYTES} bytes long")
        return from_env.encode()
    path = home / SECRET_FILE
    if path.exists():
        data = path.read_bytes().strip()
        if len(data) < _MIN_SECRET_BYTES:
            raise ValueError(f"{path} holds a secret shorter than {_MIN_SECRET_BYTES} bytes: delete it to regenerate")
        return data
    home.mkdir(parents=True, exist_ok=True)
    data = secrets.token_urlsafe(48).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data + b"\n")
    finally:
        os.close(fd)
    return data
