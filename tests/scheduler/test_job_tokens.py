"""Per-job tokens are derived from the server secret, verifiable from the stored hash, and unguessable."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest

from scheduler.tokens import SECRET_ENV, job_token, job_token_hash, load_secret, verify_job_token


def test_a_job_token_is_stable_for_a_job_and_differs_between_jobs() -> None:
    secret = b"s" * 32
    first, second = uuid.uuid4(), uuid.uuid4()
    assert job_token(secret, first) == job_token(secret, str(first))
    assert job_token(secret, first) != job_token(secret, second)
    assert job_token(secret, first) != job_token(b"t" * 32, first)


def test_the_stored_hash_verifies_the_token_and_nothing_else() -> None:
    secret, job = b"k" * 32, uuid.uuid4()
    stored = job_token_hash(secret, job)
    assert verify_job_token(stored, job_token(secret, job))
    assert not verify_job_token(stored, job_token(secret, uuid.uuid4()))
    assert not verify_job_token(stored, "")


def test_the_secret_is_generated_once_into_a_private_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    first = load_secret(tmp_path)
    assert load_secret(tmp_path) == first
    mode = stat.S_IMODE((tmp_path / "job-token.key").stat().st_mode)
    assert mode == 0o600


def test_a_short_secret_from_the_environment_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        load_secret(tmp_path)
