"""One real job end to end: the app served by uvicorn on a TCP port, the real `LocalBackend` deploying real
(fake) service and flow processes, and progress and completion reported to the API over HTTP with the job
token install put into the job's values. Also shows that `follow=true` logs arrive while the job still runs,
not only at its end."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from api_kit import READ, WRITE, YAML, settings_for
from lifecycle_kit import PIPELINE_YAML, FakeCommands, any_running, kill_processes, read_values, write_input

from scheduler.app import create_app
from scheduler.backends.local import LocalBackend
from scheduler.deployers.local import LocalProcessDeployer
from scheduler.settings import SchedulerSettings
from scheduler.store import JobStore


@asynccontextmanager
async def served(settings: SchedulerSettings, sock: socket.socket, commands: FakeCommands) -> AsyncIterator[str]:
    """The app with a LocalBackend running `commands`, served by uvicorn on `sock`; yields its base URL."""

    def factory(store: JobStore, config: SchedulerSettings, secret: bytes) -> LocalBackend:
        return LocalBackend(store, config, secret, LocalProcessDeployer(config.home / "jobs", commands))

    app = create_app(settings, backend_factory=factory)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", ws="none", http="h11"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if task.done() or time.monotonic() > deadline:
                await task
                raise AssertionError("uvicorn did not start")
            await asyncio.sleep(0.01)
        yield settings.public_url
    finally:
        server.should_exit = True
        await task


async def _poll(client: httpx.AsyncClient, job_id: str, states: set[str], within: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        job: dict[str, Any] = (await client.get(f"/api/v1/jobs/{job_id}", headers=READ)).json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job stayed {job['state']}: {job['reason']}: {job['message']}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_real_job_runs_through_the_local_backend_and_reports_over_http(
    api_database_url: str, tmp_path: Path
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = settings_for(
        tmp_path / "home",
        api_database_url,
        data_root=write_input(tmp_path).parent.parent,  # the pipeline reads data/in.csv relative to it
        port=port,
        readiness_timeout_seconds=20.0,
        uninstall_grace_seconds=5.0,
        poll_interval_seconds=0.05,
    )
    # The flow prints lines and runs until uninstall stops it; the test reports for it, over HTTP, with the job
    # token that install wrote into the job's values.
    commands = FakeCommands(flow=["--lines", "3"])
    processes: list[dict[str, Any]] = []
    try:
        async with (
            served(settings, sock, commands) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as client,
        ):
            deployed = await client.post(
                "/api/v1/pipelines", content=PIPELINE_YAML.replace("WAIT", "1h"), headers={**YAML, **WRITE}
            )
            assert deployed.status_code == 201, deployed.text
            created = await client.post("/api/v1/jobs", json={"pipeline": "scoring"}, headers=WRITE)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            running = await _poll(client, job_id, {"RUNNING", "FAILED"})
            assert running["state"] == "RUNNING", running
            processes = running["backend_ref"]["processes"]

            # follow the wait task's log: lines come while the job runs
            async with client.stream(
                "GET", f"/api/v1/jobs/{job_id}/logs", params={"task": "wait", "follow": "true"}, headers=READ
            ) as stream:
                assert stream.status_code == 200
                assert stream.headers["content-type"].startswith("text/plain")
                lines = stream.aiter_lines()
                first = await asyncio.wait_for(anext(lines), timeout=20)
                assert first
                job_now = (await client.get(f"/api/v1/jobs/{job_id}", headers=READ)).json()
                assert job_now["state"] == "RUNNING"  # the first line arrived before the job ended

                # report like the flow does, with the job token from its values: completion ends the job
                token = read_values(settings.home, uuid.UUID(job_id))["global"]["scheduler"]["token"]
                reporter = {"Authorization": f"Bearer {token}"}
                progress = await client.post(
                    f"/api/v1/jobs/{job_id}/progress", json={"read": 3, "written": 3}, headers=reporter
                )
                assert progress.status_code == 200, progress.text
                complete = await client.post(
                    f"/api/v1/jobs/{job_id}/complete", json={"succeeded": True, "message": "3 rows"}, headers=reporter
                )
                assert complete.status_code == 202, complete.text
                rest = [line async for line in lines]  # the stream ends once the wait task has ended
            assert any("wait: ended" in line for line in rest), rest

            finished = await _poll(client, job_id, {"SUCCEEDED", "FAILED", "CANCELLED"})
            assert finished["state"] == "SUCCEEDED", finished
            assert finished["completion"]["succeeded"] is True
            assert finished["progress"]["read"] == 3
            tasks = [event["task"] for event in finished["events"]]
            assert tasks.index("install") < tasks.index("wait") < tasks.index("uninstall")
            whole = await client.get(f"/api/v1/jobs/{job_id}/logs", headers=READ)
            assert whole.status_code == 200
            assert " install: " in whole.text and " uninstall: " in whole.text
            assert not any_running(processes)
    finally:
        sock.close()
        kill_processes(processes)  # only if the test failed half-way
