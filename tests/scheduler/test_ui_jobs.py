"""The Jobs page over HTTP (no browser), on SQLite and PostgreSQL: filters and text search from the query string,
cursor pages with Previous/Next, the htmx fragment and its pushed URL, escaping, what a read token sees, and the
page's server-sent event stream (a changed row, a new job at the top, keep-alives)."""

from __future__ import annotations

import asyncio
import html
import re
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from api_kit import READ, WRITE, Api, running, settings_for, tiny_documents

import scheduler.ui.jobs as jobs_ui
from scheduler.settings import hash_token
from scheduler.states import JobState
from scheduler.store import Job
from scheduler.ui.jobs import KeepAlive

pytestmark = pytest.mark.asyncio

PAGE = "/ui/jobs"
ROW_ID = re.compile(r'<tr id="job-([0-9a-f-]{36})"')


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """An app whose fake backend moves no job: jobs stay PENDING unless a test moves them."""
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as started:
        await started.deploy()
        yield started


def make_jobs(api: Api, count: int, pipeline: str = "tiny", created_by: str = "ci") -> list[Job]:
    """`count` PENDING jobs created straight in the store (fast), oldest first."""
    version = api.store.get_version(pipeline)
    made = []
    for _ in range(count):
        job, _ = api.store.create_job(
            version, backend="local", token_hash=hash_token(secrets.token_urlsafe(8)), created_by=created_by
        )
        made.append(job)
    return made


def start(api: Api, job: Job) -> Job:
    """Move a PENDING job to RUNNING (task wait), as a backend would."""
    api.store.transition(job.id, JobState.INSTALLING, task="install")
    return api.store.transition(job.id, JobState.RUNNING, task="wait")


def row_ids(page: str) -> list[str]:
    return ROW_ID.findall(page)


async def get(api: Api, url: str, **headers: str) -> httpx.Response:
    response = await api.client.get(url, headers={**READ, **headers})
    assert response.status_code == 200, response.text
    return response


async def test_the_page_lists_jobs_newest_first_with_their_columns(api: Api) -> None:
    first, second = make_jobs(api, 2)
    start(api, second)
    api.store.update_progress(second.id, read=1200, written=1100, failed=3)
    page = (await get(api, PAGE)).text
    assert row_ids(page) == [str(second.id), str(first.id)]
    assert '<span class="state state-RUNNING">RUNNING</span>' in page
    assert f'href="/ui/jobs/{second.id}"' in page and f">{second.id.hex[:8]}</a>" in page
    assert 'href="/ui/pipelines/tiny/versions/1"' in page
    assert "1,200" in page and "1,100" in page
    assert f'<time datetime="{second.created_at.isoformat().replace("+00:00", "Z")}"' in page
    assert 'sse-connect="/ui/jobs/stream"' in page
    assert '<th scope="col">State</th>' in page


async def test_filters_come_from_the_query_string_and_show_in_the_form(api: Api) -> None:
    await api.deploy(tiny_documents("other"))
    pending, running_job = make_jobs(api, 2)
    start(api, running_job)
    (other,) = make_jobs(api, 1, pipeline="other", created_by="root")

    by_state = (await get(api, f"{PAGE}?state=RUNNING")).text
    assert row_ids(by_state) == [str(running_job.id)]
    assert '<option value="RUNNING" selected>' in by_state
    assert 'sse-connect="/ui/jobs/stream?state=RUNNING"' in by_state
    by_pipeline = (await get(api, f"{PAGE}?pipeline=other")).text
    assert row_ids(by_pipeline) == [str(other.id)]
    assert '<option value="other" selected>' in by_pipeline and '<option value="tiny">' in by_pipeline
    by_text = (await get(api, f"{PAGE}?q=ROO")).text
    assert row_ids(by_text) == [str(other.id)] and 'value="ROO"' in by_text
    lower_state = (await get(api, f"{PAGE}?state=pending&pipeline=tiny&q=")).text  # blanks are no filter
    assert row_ids(lower_state) == [str(pending.id)]
    by_id = (await get(api, f"{PAGE}?q={pending.id.hex[:8]}")).text
    assert row_ids(by_id) == [str(pending.id)]


async def test_an_empty_page_says_which_filters_found_nothing(api: Api) -> None:
    assert "No jobs yet" in (await get(api, PAGE)).text
    make_jobs(api, 1)
    page = (await get(api, f"{PAGE}?state=FAILED&pipeline=tiny&q=%3Cb%3Eoops")).text
    assert "No FAILED jobs of pipeline tiny matching “&lt;b&gt;oops”." in page
    assert '<table id="jobs-table" hidden>' in page  # kept for jobs the stream inserts


async def test_bad_filters_are_a_422_page_not_a_500(api: Api) -> None:
    for query in ("state=SLEEPING", "cursor=not-a-cursor", f"q={'x' * 201}"):
        response = await api.client.get(f"{PAGE}?{query}", headers=READ)
        assert response.status_code == 422, query
        assert response.headers["content-type"].startswith("text/html") and "Error 422" in response.text


async def test_next_and_previous_page_through_120_jobs_without_skipping_or_repeating(api: Api) -> None:
    made = make_jobs(api, 120)
    newest_first = [str(job.id) for job in reversed(made)]
    pages: list[list[str]] = []
    urls: list[str] = []
    url: str | None = PAGE
    while url is not None:
        urls.append(url)
        page = (await get(api, url)).text
        pages.append(row_ids(page))
        following = re.search(r'<a href="([^"]+)" rel="next"', page)
        url = html.unescape(following.group(1)) if following else None
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [job for p in pages for job in p] == newest_first
    assert "Page 3" in (await get(api, urls[2])).text
    # Previous walks the same pages back, to the first page (no cursor)
    url = urls[2]
    for expected in (pages[1], pages[0]):
        page = (await get(api, url)).text
        previous = re.search(r'<a href="([^"]+)" rel="prev"', page)
        assert previous is not None
        url = html.unescape(previous.group(1))
        assert row_ids((await get(api, url)).text) == expected
    assert url == PAGE
    # jobs created meanwhile do not shift the later pages
    make_jobs(api, 3)
    assert row_ids((await get(api, urls[1])).text) == pages[1]


async def test_htmx_gets_the_results_fragment_and_the_canonical_url_to_push(api: Api) -> None:
    make_jobs(api, 2)
    response = await get(
        api, f"{PAGE}?state=PENDING&pipeline=&q=", **{"HX-Request": "true", "HX-Target": "jobs-results"}
    )
    assert response.text.lstrip().startswith('<section id="jobs-results"')
    assert "<html" not in response.text and len(row_ids(response.text)) == 2
    assert response.headers["HX-Push-Url"] == "/ui/jobs?state=PENDING"
    # a history restore (back button, htmx) gets the whole page
    restore = await get(
        api, PAGE, **{"HX-Request": "true", "HX-Target": "jobs-results", "HX-History-Restore-Request": "true"}
    )
    assert "<html" in restore.text


async def test_what_a_user_typed_or_a_job_said_is_shown_as_text(api: Api) -> None:
    (job,) = make_jobs(api, 1, created_by="<i>mallory</i>")
    api.store.transition(job.id, JobState.FAILED, reason="ScoringFailed", message='<script>alert("x")</script>')
    page = (await get(api, f"{PAGE}?q=%3Cscript%3E")).text
    assert row_ids(page) == [str(job.id)]
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "<i>mallory</i>" not in page and "&lt;i&gt;mallory&lt;/i&gt;" in page
    assert 'value="&lt;script&gt;"' in page


async def test_a_read_token_sees_no_write_controls(api: Api) -> None:
    make_jobs(api, 1)
    as_reader = (await get(api, PAGE)).text
    assert "Start a job" not in as_reader and 'href="/ui/deploy"' not in as_reader
    as_writer = await api.client.get(PAGE, headers=WRITE)
    assert "Start a job" in as_writer.text


async def test_the_page_and_its_stream_need_a_session_when_tokens_are_configured(api: Api) -> None:
    for url in (PAGE, f"{PAGE}/stream"):
        response = await api.client.get(url)
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/login?next="), url


# ------------------------------------------------------------------------------------------------ the stream


async def test_keep_alive_yields_none_while_the_source_is_quiet_and_never_loses_its_item() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    closed = asyncio.Event()

    async def source() -> AsyncIterator[int]:
        try:
            while True:
                yield await queue.get()
        finally:
            closed.set()

    ticks = KeepAlive(source(), 0.05)
    assert await anext(ticks) is None
    assert await anext(ticks) is None
    await queue.put(7)
    assert await anext(ticks) == 7
    await ticks.aclose()
    assert closed.is_set()


async def next_chunk(events: AsyncIterator[str], seconds: float = 5.0) -> str:
    return await asyncio.wait_for(anext(events), seconds)


def event_of(chunk: str) -> tuple[str, str]:
    """(name, data) of one server-sent event chunk."""
    lines = chunk.rstrip("\n").split("\n")
    assert lines[0].startswith("event: "), chunk
    data = "\n".join(line.removeprefix("data: ") for line in lines[1:])
    return lines[0].removeprefix("event: "), data


async def test_the_stream_sends_a_changed_row_and_inserts_a_new_job_on_the_first_page(api: Api) -> None:
    await api.deploy(tiny_documents("other"))
    older, shown = make_jobs(api, 2)
    events = jobs_ui.job_list_events(api.service, jobs_ui.JobFilters(pipeline="tiny"))
    try:
        assert (await next_chunk(events)).startswith("retry: 3000\n: connected")
        start(api, shown)
        api.store.update_progress(shown.id, read=1234, written=1200, failed=0)
        name, row = event_of(await next_chunk(events))
        while "1,234" not in row:  # the feed may deliver the state change and the progress apart
            assert name == f"job-{shown.id}"
            name, row = event_of(await next_chunk(events))
        assert name == f"job-{shown.id}"
        assert row.startswith(f'<tr id="job-{shown.id}"') and "state-RUNNING" in row and "wait" in row

        make_jobs(api, 1, pipeline="other")  # another pipeline: not this page's
        (new,) = make_jobs(api, 1)
        name, row = event_of(await next_chunk(events))
        assert name == "new-job" and row.startswith(f'<tr id="job-{new.id}"')
        name, text = event_of(await next_chunk(events))
        assert name == "new-count" and text == "1 new job since this page was loaded."
        # the inserted job is followed from now on
        api.store.transition(new.id, JobState.CANCELLING, reason="Cancelled", message="<b>by</b> ci")
        name, row = event_of(await next_chunk(events))
        assert name == f"job-{new.id}" and "&lt;b&gt;by&lt;/b&gt; ci" in row
    finally:
        await events.aclose()
    assert older.id != new.id


async def test_a_later_page_gets_its_rows_updated_but_no_new_jobs(api: Api) -> None:
    made = make_jobs(api, jobs_ui.PAGE_SIZE + 1)
    first_page = await api.service.list_jobs(limit=jobs_ui.PAGE_SIZE)
    assert first_page.next_cursor is not None
    events = jobs_ui.job_list_events(api.service, jobs_ui.JobFilters(cursor=first_page.next_cursor))
    try:
        await next_chunk(events)
        make_jobs(api, 1)
        oldest = made[0]  # the only job of page 2
        api.store.transition(oldest.id, JobState.CANCELLING)
        name, row = event_of(await next_chunk(events))
        assert name == f"job-{oldest.id}" and "state-CANCELLING" in row
    finally:
        await events.aclose()


async def test_the_stream_says_keep_alive_when_nothing_changes_and_leaves_the_feed_when_closed(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_ui, "KEEPALIVE_SECONDS", 0.1)
    events = jobs_ui.job_list_events(api.service, jobs_ui.JobFilters())
    await next_chunk(events)
    assert await next_chunk(events) == ": keep-alive\n\n"
    assert api.service.feed.subscribers == 1
    await events.aclose()
    assert api.service.feed.subscribers == 0


async def test_the_stream_ends_when_the_server_stops(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as api:
        events = jobs_ui.job_list_events(api.service, jobs_ui.JobFilters())
        await next_chunk(events)
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.05)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)


async def test_on_an_empty_page_a_new_job_is_news_but_an_old_one_entering_the_filter_is_not(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_ui, "EMPTY_PAGE_MARGIN", timedelta(0))
    (old,) = make_jobs(api, 1)
    await asyncio.sleep(0.01)
    events = jobs_ui.job_list_events(api.service, jobs_ui.JobFilters(state=JobState.CANCELLING))
    try:
        await next_chunk(events)
        api.store.transition(old.id, JobState.CANCELLING)  # now matches, but was there before: not inserted
        (new,) = make_jobs(api, 1)
        api.store.transition(new.id, JobState.CANCELLING)
        name, row = event_of(await next_chunk(events))
        assert name == "new-job" and row.startswith(f'<tr id="job-{new.id}"')
    finally:
        await events.aclose()
