"""The keys of a model store's Secret, read from the environment as `MODELOPS_SECRET_<NAME>_<KEY>`.

A model names a whole Secret (`credentials: {secretRef: {name: minio}}`); the store reads the keys it knows
(`STORE_SECRET_KEYS`). Locally they are environment variables of the scoring service (the local backend passes
its own environment on); on Kubernetes the chart sets each from the Secret's key with `optional: true`, so a
Secret holds only the keys it needs. Values are never logged nor put in an error: errors name the variable.
"""

from __future__ import annotations

from collections.abc import Mapping

from ir.secrets import secret_env_var

__all__ = ["MLFLOW_SECRET_KEYS", "S3_SECRET_KEYS", "STORE_SECRET_KEYS", "store_secrets"]

S3_SECRET_KEYS = ("endpoint", "region", "access-key-id", "secret-access-key", "session-token")
"""What `s3://` reads: all optional (no endpoint is AWS; no keys is boto3's default chain, e.g. an IAM role)."""
MLFLOW_SECRET_KEYS = ("tracking-uri", "token", "username", "password")
"""What `models:/` reads: the tracking uri is required, the rest optional."""
STORE_SECRET_KEYS: Mapping[str, tuple[str, ...]] = {"s3": S3_SECRET_KEYS, "models": MLFLOW_SECRET_KEYS}
"""The keys each store scheme reads (the chart's `modelops.storeSecretKeys` lists the same)."""


def store_secrets(scheme: str, secret: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The keys of Secret `secret` that the store of `scheme` reads and that are set (non-empty) in `environ`.

    No secret named: an empty mapping (the store then uses its own defaults)."""
    if secret is None:
        return {}
    found: dict[str, str] = {}
    for key in STORE_SECRET_KEYS.get(scheme, ()):
        value = environ.get(secret_env_var(secret, key))
        if value:
            found[key] = value
    return found
