"""A scheduler that dies: runs one job with `LocalBackend` until it is RUNNING, says so, then waits to be killed.

Used by test_local_restart.py, which SIGKILLs this process (no shutdown, no cleanup: a crash) and then lets a
fresh `LocalBackend.recover()` deal with the job and the processes this one left behind.

    python restart_driver.py DATABASE_URL HOME JOB_ID [PUBLIC_URL]

PUBLIC_URL is where the job's flows report (`global.scheduler.url` of its values); default the settings' own.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/scheduler, for lifecycle_kit

from lifecycle_kit import SECRET, FakeCommands, settings_for, wait_for

from scheduler.backends.local import LocalBackend
from scheduler.db import create_engine
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.states import JobState
from scheduler.store import JobStore


async def main(database_url: str, home: Path, job_id: uuid.UUID, public_url: str | None) -> None:
    engine = create_engine(database_url)
    store = JobStore(engine)
    settings = settings_for(home, **({"public_url": public_url} if public_url else {}))
    backend = LocalBackend(store, settings, SECRET, LocalProcessDeployer(home / "jobs", FakeCommands()))
    await backend.start(job_id)
    job = await wait_for(store, job_id, JobState.RUNNING)
    print(f"RUNNING {job.id}", flush=True)
    await asyncio.Event().wait()  # until SIGKILL


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), uuid.UUID(sys.argv[3]), (sys.argv[4:] or [None])[0]))
