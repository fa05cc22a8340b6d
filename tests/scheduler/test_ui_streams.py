"""Streams paused in hidden tabs (static/streams.js): what the server side offers them.

A job page's log stream reopened after a pause is a new EventSource, which cannot send `Last-Event-ID`: it asks
for the lines after the last one it has with `?after=<n>`; a reconnecting EventSource's own header still wins.
Every page loads streams.js, and the Jobs list's results say which URL reloads them on resume.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_kit import READ, Api, running, settings_for

from scheduler.states import Task


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path, api_database_url)) as started:
        await started.deploy()
        yield started


async def test_a_log_stream_reopened_after_a_pause_sends_only_the_lines_after_the_ones_it_has(api: Api) -> None:
    job = await api.start_job()
    job_id = uuid.UUID(job["id"])
    api.backend.lines[(job_id, Task.INSTALL)] = ["one", "two", "three", "four"]
    path = f"/ui/jobs/{job_id}/logs/stream?component=install"
    await api.backend.follow_queue(job_id).put(None)  # the fake backend's live lines end at once
    resumed = await api.client.get(f"{path}&after=2", headers=READ)
    assert resumed.status_code == 200
    assert 'id="log-3"' in resumed.text and 'id="log-4"' in resumed.text
    assert 'id="log-1"' not in resumed.text and 'id="log-2"' not in resumed.text
    # a reconnecting EventSource knows best: its Last-Event-ID wins over the URL it was opened with
    await api.backend.follow_queue(job_id).put(None)
    reconnected = await api.client.get(f"{path}&after=2", headers={**READ, "Last-Event-ID": "3"})
    assert 'id="log-4"' in reconnected.text and 'id="log-3"' not in reconnected.text
    refused = await api.client.get(f"{path}&after=-1", headers=READ)
    assert refused.status_code == 422


async def test_every_page_loads_streams_js_and_the_job_list_says_how_it_resumes(api: Api) -> None:
    page = await api.client.get("/ui/jobs?state=RUNNING", headers=READ)
    assert page.status_code == 200
    assert "/ui/static/streams.js" in page.text
    assert 'data-stream-resume="/ui/jobs?state=RUNNING"' in page.text
    static = await api.client.get("/ui/static/streams.js")
    assert static.status_code == 200 and "visibilitychange" in static.text
