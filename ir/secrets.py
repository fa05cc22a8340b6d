"""How a Secret's key is named in a local process's environment: `MODELOPS_SECRET_<NAME>_<KEY>`.

One rule for data channels (`secretRef: {name, key}`) and model stores (`credentials.secretRef.name`, whose
keys the store knows): the name and the key upper-cased, every character other than A-Z and 0-9 as `_`.
On Kubernetes the chart sets the same variables from the Secret's keys, so a process reads them the same
way everywhere.
"""

from __future__ import annotations

import re

__all__ = ["secret_env_var"]

_NOT_ALNUM = re.compile(r"[^A-Z0-9]")


def secret_env_var(name: str, key: str) -> str:
    """`{name: pg-main, key: url}` -> `MODELOPS_SECRET_PG_MAIN_URL`."""
    return f"MODELOPS_SECRET_{_NOT_ALNUM.sub('_', name.upper())}_{_NOT_ALNUM.sub('_', key.upper())}"
