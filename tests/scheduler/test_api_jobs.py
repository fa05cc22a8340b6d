"""`/api/v1/jobs` through httpx on SQLite and PostgreSQL, with the fake backend driving the jobs: create with
idempotency, validation before anything is written, listing and pagination, cancel, progress and completion
with per-job tokens, logs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api_kit import (
    ADMIN,
    READ,
    WRITE,
    Api,
    assert_error,
    bearer,
    changed,
    running,
    settings_for,
    tiny_documents,
)

from scheduler.states import JobState, Task

JOBS = "/api/v1/jobs"


@pytest.fixture
async def api(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with running(settings_for(tmp_path / "home", api_database_url)) as started:
        await started.deploy()
        yield started


@pytest.fixture
async def idle(api_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """An app whose fake backend records calls but moves no job: jobs stay where the API put them."""
    async with running(settings_for(tmp_path / "home", api_database_url), drive=False) as started:
        await started.deploy()
        yield started


# ------------------------------------------------------------------------------------------------ create


async def test_a_job_is_created_started_and_returned_with_201(api: Api) -> None:
    response = await api.client.post(
        JOBS,
        json={"pipeline": "tiny", "parameters": {"threshold": 0.7}, "environment": {"namespace": "scoring"}},
        headers=WRITE,
    )
    assert response.status_code == 201, response.text
    job = response.json()
    job_id = uuid.UUID(job["id"])
    assert api.backend.called("start") == [job_id]
    assert job["pipeline"] == "tiny"
    assert job["version"] == 1
    assert job["state"] == "RUNNING"  # the fake backend moved it on at once
    assert job["task"] == "wait"
    assert job["parameters"] == {"threshold": 0.7}
    assert job["environment"] == {"namespace": "scoring"}
    assert job["backend"] == "fake"
    assert job["progress"] == {
        "read": 0,
        "written": 0,
        "failed": 0,
        "filtered": 0,
        "total": None,
        "unit": None,
        "done": None,
        "flows": {},
    }
    assert job["completion"] is None


async def test_the_job_token_hash_is_derived_from_the_job_id(api: Api) -> None:
    job = await api.start_job()
    stored = api.store.get_job(job["id"])
    from scheduler.tokens import job_token_hash, load_secret

    assert stored.token_hash == job_token_hash(load_secret(api.settings.home), stored.id)


async def test_a_job_runs_the_latest_version_unless_told_otherwise(api: Api) -> None:
    await api.deploy(changed(tiny_documents(), "data/v2.csv"))
    latest = await api.start_job()
    first = await api.start_job(version=1)
    assert (latest["version"], first["version"]) == (2, 1)


async def test_an_idempotency_key_replays_the_same_job_with_200(api: Api) -> None:
    headers = {**WRITE, "Idempotency-Key": "nightly-2025-06-01"}
    body = {"pipeline": "tiny", "parameters": {"limit": 5}}
    first = await api.client.post(JOBS, json=body, headers=headers)
    again = await api.client.post(JOBS, json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert len(api.backend.called("start")) == 1


async def test_an_idempotency_key_reused_for_another_request_is_409(api: Api) -> None:
    headers = {**WRITE, "Idempotency-Key": "k-1"}
    assert (await api.client.post(JOBS, json={"pipeline": "tiny"}, headers=headers)).status_code == 201
    response = await api.client.post(JOBS, json={"pipeline": "tiny", "parameters": {"limit": 3}}, headers=headers)
    error = assert_error(response, 409, "idempotency_key_reused")
    assert error["details"]["differs"] == ["parameters"]


@pytest.mark.parametrize("body", [{"pipeline": "nope"}, {"pipeline": "tiny", "version": 9}])
async def test_an_unknown_pipeline_or_version_is_404_and_creates_nothing(api: Api, body: dict[str, object]) -> None:
    assert_error(await api.client.post(JOBS, json=body, headers=WRITE), 404)
    assert (await api.client.get(JOBS, headers=READ)).json()["items"] == []
    assert api.backend.called("start") == []


@pytest.mark.parametrize(
    ("parameters", "path"),
    [
        ({"limit": "many"}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"threshold": "high"}, "threshold"),
        ({"thresold": 0.2}, "thresold"),
        ({"input": True}, "input"),
    ],
)
async def test_bad_parameters_are_422_with_issues_and_create_nothing(
    api: Api, parameters: dict[str, object], path: str
) -> None:
    response = await api.client.post(JOBS, json={"pipeline": "tiny", "parameters": parameters}, headers=WRITE)
    error = assert_error(response, 422, "invalid_ir")
    assert [issue["path"] for issue in error["details"]] == [path]
    assert (await api.client.get(JOBS, headers=READ)).json()["items"] == []
    assert api.backend.called("start") == []


async def test_a_bad_namespace_in_the_environment_is_422_before_anything_is_created(api: Api) -> None:
    response = await api.client.post(
        JOBS, json={"pipeline": "tiny", "environment": {"namespace": "Not A Namespace"}}, headers=WRITE
    )
    assert_error(response, 422, "invalid_ir")
    assert (await api.client.get(JOBS, headers=READ)).json()["items"] == []


async def test_a_backend_that_cannot_start_the_job_leaves_it_failed_not_pending(api: Api) -> None:
    api.backend.fail_start = True
    response = await api.client.post(JOBS, json={"pipeline": "tiny"}, headers=WRITE)
    assert response.status_code == 201
    job = response.json()
    assert job["state"] == "FAILED"
    assert job["reason"] == "BackendStartFailed"
    assert "no capacity left" in job["message"]


# ------------------------------------------------------------------------------------------------ read


async def test_a_job_is_shown_with_its_events_and_timestamps(api: Api) -> None:
    created = await api.start_job()
    response = await api.client.get(f"{JOBS}/{created['id']}", headers=READ)
    assert response.status_code == 200
    job = response.json()
    assert [(e["from"], e["to"], e["task"]) for e in job["events"]] == [
        (None, "PENDING", None),
        ("PENDING", "INSTALLING", "install"),
        ("INSTALLING", "RUNNING", "wait"),
    ]
    assert job["started_at"] is not None
    assert job["finished_at"] is None
    assert job["reason"] == "Ready"


async def test_a_malformed_job_id_is_422_with_the_error_body(api: Api) -> None:
    for job_id in ["not-a-uuid", "1234", "%00", "00000000-0000-0000-0000-00000000000g"]:
        for method, suffix in [("GET", ""), ("POST", "/cancel"), ("GET", "/logs")]:
            response = await api.client.request(method, f"{JOBS}/{job_id}{suffix}", headers=WRITE)
            assert_error(response, 422, "invalid_request")


async def test_an_unknown_job_is_404(api: Api) -> None:
    unknown = uuid.uuid4()
    for method, suffix in [("GET", ""), ("POST", "/cancel"), ("GET", "/logs")]:
        response = await api.client.request(method, f"{JOBS}/{unknown}{suffix}", headers=WRITE)
        assert_error(response, 404, "job_not_found")


async def test_jobs_are_listed_newest_first_one_page_at_a_time(api: Api) -> None:
    created = [(await api.start_job())["id"] for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await api.client.get(JOBS, params=params, headers=READ)).json()
        pages += 1
        seen.extend(item["id"] for item in page["items"])
        assert "events" not in page["items"][0]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(created))


async def test_jobs_are_filtered_by_state_and_by_pipeline(api: Api) -> None:
    await api.deploy(tiny_documents("other"))
    keep = await api.start_job()
    cancelled = await api.start_job()
    other = (await api.client.post(JOBS, json={"pipeline": "other"}, headers=WRITE)).json()
    await api.client.post(f"{JOBS}/{cancelled['id']}/cancel", headers=WRITE)

    by_state = (await api.client.get(JOBS, params={"state": "CANCELLED"}, headers=READ)).json()
    assert [j["id"] for j in by_state["items"]] == [cancelled["id"]]
    by_pipeline = (await api.client.get(JOBS, params={"pipeline": "other"}, headers=READ)).json()
    assert [j["id"] for j in by_pipeline["items"]] == [other["id"]]
    both = (await api.client.get(JOBS, params={"pipeline": "tiny", "state": "RUNNING"}, headers=READ)).json()
    assert [j["id"] for j in both["items"]] == [keep["id"]]


async def test_the_state_filter_takes_any_case_and_jobs_are_found_by_the_start_of_their_id(api: Api) -> None:
    cancelled = await api.start_job()
    await api.client.post(f"{JOBS}/{cancelled['id']}/cancel", headers=WRITE)
    for state in ("cancelled", "Cancelled"):
        listed = (await api.client.get(JOBS, params={"state": state}, headers=READ)).json()
        assert [j["id"] for j in listed["items"]] == [cancelled["id"]], state
    for prefix in (cancelled["id"][:8], cancelled["id"][:13].upper()):
        found = (await api.client.get(JOBS, params={"id_prefix": prefix}, headers=READ)).json()
        assert [j["id"] for j in found["items"]] == [cancelled["id"]], prefix
    missing = "0000" if not cancelled["id"].startswith("0000") else "ffff"
    assert (await api.client.get(JOBS, params={"id_prefix": missing}, headers=READ)).json()["items"] == []


async def test_jobs_are_found_by_text_in_their_pipeline_creator_reason_message_or_id(api: Api) -> None:
    await api.deploy(tiny_documents("other"))
    failed = await api.start_job()
    api.store.transition(failed["id"], JobState.FAILED, reason="ScoringFailed", message="Disk 100%_full on /data")
    other = (await api.client.post(JOBS, json={"pipeline": "other"}, headers=ADMIN)).json()

    async def found(**params: str) -> list[str]:
        response = await api.client.get(JOBS, params=params, headers=READ)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await found(q="OTHER") == [other["id"]]  # pipeline name, any case
    assert await found(q="roo") == [other["id"]]  # created by the admin token "root"
    assert await found(q="scoringfailed") == [failed["id"]]  # reason
    assert await found(q="0%_full") == [failed["id"]]  # message; % and _ are themselves
    assert await found(q="1_0") == [] and await found(q="Disk%data") == []  # ... not wildcards
    assert await found(q=failed["id"][:6].upper()) == [failed["id"]]  # the start of the id
    assert await found(q=failed["id"][9:18]) == []  # the middle of an id is not its start
    assert await found(q="  ") == [other["id"], failed["id"]]  # blank: no filter
    assert await found(q="tiny", state="FAILED") == [failed["id"]]
    assert await found(q="tiny", state="RUNNING") == []


BAD_LIST_PARAMS: list[dict[str, str | int]] = [
    {"state": "SLEEPING"},
    {"limit": 0},
    {"limit": 501},
    {"limit": "ten"},
    {"cursor": "!!!"},
    {"cursor": "bm90LWEtY3Vyc29y"},
    {"pipeline": "Bad Name"},
    {"id_prefix": "274"},
    {"id_prefix": "not-hex"},
    {"q": "x" * 201},
]


async def test_bad_list_parameters_are_422(api: Api) -> None:
    for params in BAD_LIST_PARAMS:
        response = await api.client.get(JOBS, params=params, headers=READ)
        error = assert_error(response, 422)
        assert error["code"] in ("invalid_request", "invalid_cursor"), params


# ------------------------------------------------------------------------------------------------ cancel


async def test_cancel_is_202_and_the_backend_is_told(idle: Api) -> None:
    job = await idle.start_job()
    response = await idle.client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE)
    assert response.status_code == 202
    assert response.json()["state"] == "CANCELLING"
    assert response.json()["message"] == "cancelled by ci"
    assert idle.backend.called("cancel") == [uuid.UUID(job["id"])]


async def test_cancelling_a_cancelling_job_returns_it_unchanged(idle: Api) -> None:
    job = await idle.start_job()
    first = await idle.client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE)
    again = await idle.client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["state"] == "CANCELLING"
    assert len(idle.backend.called("cancel")) == 1
    events = idle.store.get_job(job["id"]).events or ()
    assert [e.to_state for e in events].count(JobState.CANCELLING) == 1


async def test_concurrent_cancels_record_one_cancel(idle: Api) -> None:
    job = await idle.start_job()
    responses = await asyncio.gather(*(idle.client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE) for _ in range(5)))
    assert {r.status_code for r in responses} == {202}
    events = idle.store.get_job(job["id"]).events or ()
    assert [e.to_state for e in events].count(JobState.CANCELLING) == 1


async def test_cancelling_a_finished_job_is_409(api: Api) -> None:
    job = await api.start_job()
    assert (await api.client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE)).json()["state"] == "CANCELLED"
    response = await api.client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE)
    error = assert_error(response, 409, "job_finished")
    assert error["details"]["state"] == "CANCELLED"


# ------------------------------------------------------------------------------------------------ reports


async def test_progress_is_recorded_with_the_job_token(api: Api) -> None:
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    response = await api.client.post(
        f"{JOBS}/{job['id']}/progress", json={"read": 100, "written": 90, "failed": 10}, headers=token
    )
    assert response.status_code == 200, response.text
    counters = ("read", "written", "failed")
    assert {k: response.json()["progress"][k] for k in counters} == {"read": 100, "written": 90, "failed": 10}
    lower = await api.client.post(f"{JOBS}/{job['id']}/progress", json={"read": 50}, headers=token)
    assert {k: lower.json()["progress"][k] for k in counters} == {"read": 100, "written": 90, "failed": 10}


def _flow_report(flow: str, read: int, **more: object) -> dict[str, object]:
    return {
        "flow": flow,
        "state": "running",
        "read": read,
        "written": read - 3,
        "failed": 1,
        "filtered": 2,
        "total": 1000,
        "unit": "records",
        "done": read,
        "rate": 250.5,
        "outputs": [f"file sink 'out' (/data/{flow}.csv)"],
        "services": {
            "digits": {
                "requests": 4,
                "rows": read,
                "errors": 1,
                "retries": 2,
                "latency_ms": {"mean": 12.5, "p50": 11.0, "p99": 30.25},
            }
        },
        **more,
    }


async def test_a_flow_report_with_its_size_and_services_is_kept_and_shown_per_flow(api: Api) -> None:
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    first = await api.client.post(f"{JOBS}/{job['id']}/progress", json=_flow_report("alpha", 400), headers=token)
    assert first.status_code == 200, first.text
    second = await api.client.post(
        f"{JOBS}/{job['id']}/progress", json=_flow_report("beta", 100, total=500), headers=token
    )
    assert second.status_code == 200, second.text
    shown = (await api.client.get(f"{JOBS}/{job['id']}", headers=READ)).json()
    progress = shown["progress"]
    # the job's figures are the sums over its flows
    assert (progress["read"], progress["written"], progress["failed"], progress["filtered"]) == (500, 494, 2, 4)
    assert (progress["total"], progress["unit"], progress["done"]) == (1500, "records", 500)
    alpha = progress["flows"]["alpha"]
    assert alpha["state"] == "running"
    assert (alpha["read"], alpha["written"], alpha["failed"], alpha["filtered"]) == (400, 397, 1, 2)
    assert (alpha["total"], alpha["unit"], alpha["done"], alpha["rate"]) == (1000, "records", 400, 250.5)
    assert alpha["outputs"] == ["file sink 'out' (/data/alpha.csv)"]
    assert alpha["services"]["digits"] == {
        "requests": 4,
        "rows": 400,
        "errors": 1,
        "retries": 2,
        "latency_ms": {"mean": 12.5, "p50": 11.0, "p99": 30.25},
    }
    assert alpha["at"] is not None
    assert progress["flows"]["beta"]["total"] == 500


async def test_a_late_flow_report_with_lower_counters_does_not_replace_the_flows_entry(api: Api) -> None:
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    url = f"{JOBS}/{job['id']}/progress"
    await api.client.post(url, json=_flow_report("alpha", 400, state="done"), headers=token)
    late = await api.client.post(url, json=_flow_report("alpha", 300), headers=token)
    assert late.status_code == 200, late.text
    flow = late.json()["progress"]["flows"]["alpha"]
    assert (flow["state"], flow["read"]) == ("done", 400)


async def test_the_jobs_size_is_unknown_while_one_flow_does_not_know_its_own(api: Api) -> None:
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    url = f"{JOBS}/{job['id']}/progress"
    await api.client.post(url, json=_flow_report("alpha", 400), headers=token)
    unsized = {k: v for k, v in _flow_report("beta", 10).items() if k not in ("total", "unit", "done")}
    response = await api.client.post(url, json=unsized, headers=token)
    progress = response.json()["progress"]
    assert (progress["total"], progress["unit"], progress["done"]) == (None, None, None)
    assert progress["read"] == 410


@pytest.mark.parametrize(
    "body",
    [
        {"read": 1, "state": "running"},
        {"read": 1, "total": 10, "unit": "records"},
        {"flow": "alpha", "total": 10},
        {"flow": "alpha", "unit": "lines", "total": 10},
        {"flow": "alpha", "state": "dancing"},
        {"flow": "Not A Name"},
        {"flow": "alpha", "rate": -1.0},
        {"flow": "alpha", "services": {"digits": {"requests": -1}}},
        {"flow": "alpha", "services": {"digits": {"latency_ms": {"mean": 1.0}}}},
    ],
)
async def test_a_malformed_flow_report_is_422(api: Api, body: dict[str, object]) -> None:
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    response = await api.client.post(f"{JOBS}/{job['id']}/progress", json=body, headers=token)
    assert response.status_code == 422, response.text


async def test_completion_with_the_job_token_ends_the_job(api: Api) -> None:
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    response = await api.client.post(
        f"{JOBS}/{job['id']}/complete", json={"succeeded": True, "message": "all scored"}, headers=token
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["completion"] == {"succeeded": True, "message": "all scored"}
    assert body["state"] == "SUCCEEDED"
    assert api.backend.called("completed") == [uuid.UUID(job["id"])]
    shown = (await api.client.get(f"{JOBS}/{job['id']}", headers=READ)).json()
    assert [e["task"] for e in shown["events"]][-2:] == ["uninstall", "uninstall"]


async def test_a_flow_reports_completion_by_name(api: Api) -> None:
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    unknown = await api.client.post(
        f"{JOBS}/{job['id']}/complete", json={"succeeded": True, "flow": "nope"}, headers=token
    )
    assert unknown.status_code == 422, unknown.text
    assert "tiny-batch" in unknown.json()["error"]["message"]
    assert api.backend.called("completed") == []
    done = await api.client.post(
        f"{JOBS}/{job['id']}/complete",
        json={"succeeded": True, "flow": "tiny-batch", "message": "9 rows"},
        headers=token,
    )
    assert done.status_code == 202, done.text
    assert (done.json()["state"], done.json()["completion"]) == ("SUCCEEDED", {"succeeded": True, "message": "9 rows"})
    assert done.json()["flow_completions"] == {"tiny-batch": {"succeeded": True, "message": "9 rows"}}


async def test_a_failed_completion_ends_the_job_failed(api: Api) -> None:
    job = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(job["id"])))
    body = (
        await api.client.post(
            f"{JOBS}/{job['id']}/complete", json={"succeeded": False, "message": "sink down"}, headers=token
        )
    ).json()
    assert (body["state"], body["message"]) == ("FAILED", "sink down")


@pytest.mark.parametrize("route", ["progress", "complete"])
async def test_reports_without_a_token_are_401(api: Api, route: str) -> None:
    job = await api.start_job()
    body = {"succeeded": True} if route == "complete" else {"read": 1}
    response = await api.client.post(f"{JOBS}/{job['id']}/{route}", json=body)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("route", ["progress", "complete"])
async def test_reports_with_another_jobs_token_are_refused(api: Api, route: str) -> None:
    job = await api.start_job()
    other = await api.start_job()
    token = bearer(api.service.job_token(uuid.UUID(other["id"])))
    body = {"succeeded": True} if route == "complete" else {"read": 1}
    response = await api.client.post(f"{JOBS}/{job['id']}/{route}", json=body, headers=token)
    assert_error(response, 401, "invalid_job_token")
    stored = api.store.get_job(job["id"])
    assert (stored.records_read, stored.completion) == (0, None)


@pytest.mark.parametrize("route", ["progress", "complete"])
async def test_reports_accept_a_write_token_but_not_a_read_token(api: Api, route: str) -> None:
    job = await api.start_job()
    body = {"succeeded": True} if route == "complete" else {"read": 1}
    assert_error(await api.client.post(f"{JOBS}/{job['id']}/{route}", json=body, headers=READ), 403)
    response = await api.client.post(f"{JOBS}/{job['id']}/{route}", json=body, headers=WRITE)
    assert response.status_code in (200, 202), response.text


async def test_a_forged_job_token_is_401(api: Api) -> None:
    job = await api.start_job()
    response = await api.client.post(
        f"{JOBS}/{job['id']}/progress", json={"read": 1}, headers=bearer("mjt_" + "A" * 43)
    )
    assert_error(response, 401, "invalid_job_token")


async def test_a_completion_on_a_cancelling_job_is_409(idle: Api) -> None:
    job = await idle.start_job()
    await idle.client.post(f"{JOBS}/{job['id']}/cancel", headers=WRITE)
    token = bearer(idle.service.job_token(uuid.UUID(job["id"])))
    response = await idle.client.post(f"{JOBS}/{job['id']}/complete", json={"succeeded": True}, headers=token)
    assert_error(response, 409, "job_not_running")


# ------------------------------------------------------------------------------------------------ logs


async def test_logs_are_plain_text_of_all_components_or_some_each_line_prefixed_with_its_component(api: Api) -> None:
    job = await api.start_job()
    everything = await api.client.get(f"{JOBS}/{job['id']}/logs", headers=READ)
    assert everything.status_code == 200
    assert everything.headers["content-type"].startswith("text/plain")
    assert everything.text == "[install] rendering values\n[install] deploying 1 service, 1 flow\n"
    assert api.backend.calls.count(("logs", uuid.UUID(job["id"]))) == 5  # 3 phases, 1 service, 1 flow
    wait_only = await api.client.get(f"{JOBS}/{job['id']}/logs", params={"task": "wait"}, headers=READ)
    assert wait_only.text == ""
    assert_error(await api.client.get(f"{JOBS}/{job['id']}/logs", params={"task": "build"}, headers=READ), 422)
    some = await api.client.get(
        f"{JOBS}/{job['id']}/logs", params=[("component", "install"), ("component", "tiny-batch")], headers=READ
    )
    assert some.text == "[install] rendering values\n[install] deploying 1 service, 1 flow\n"


async def test_the_log_components_of_a_job_are_its_phases_services_and_flows(api: Api) -> None:
    job = await api.start_job()
    response = await api.client.get(f"{JOBS}/{job['id']}/logs/components", headers=READ)
    assert response.status_code == 200
    assert response.json() == {"components": ["install", "wait", "uninstall", "service/tiny-rf", "flow/tiny-batch"]}


async def test_an_unknown_log_component_is_a_422_that_lists_the_jobs_components(api: Api) -> None:
    job = await api.start_job()
    response = await api.client.get(f"{JOBS}/{job['id']}/logs", params={"component": "flow/nope"}, headers=READ)
    body = assert_error(response, 422, "unknown_component")
    assert body["details"]["components"] == [
        "install",
        "wait",
        "uninstall",
        "service/tiny-rf",
        "flow/tiny-batch",
    ]
    assert "'flow/nope' names no log component" in body["message"]
    bad = await api.client.get(f"{JOBS}/{job['id']}/logs", params={"component": "flow/../x"}, headers=READ)
    assert_error(bad, 422)


async def test_following_logs_streams_lines_as_they_come_until_the_end(api: Api) -> None:
    job = await api.start_job()
    job_id = uuid.UUID(job["id"])
    queue = api.backend.follow_queue(job_id)

    async def produce() -> None:
        for n in range(3):
            await asyncio.sleep(0.01)
            await queue.put(f"wait: line {n}")
        await queue.put(None)

    producer = asyncio.create_task(produce())
    response = await api.client.get(f"{JOBS}/{job_id}/logs", params={"task": "install", "follow": "true"}, headers=READ)
    await producer
    assert response.status_code == 200
    assert response.text.splitlines() == [
        "[install] rendering values",
        "[install] deploying 1 service, 1 flow",
        "[install] wait: line 0",
        "[install] wait: line 1",
        "[install] wait: line 2",
    ]
    assert api.backend.calls.count(("logs", job_id)) == 1


async def test_the_service_can_be_called_without_http(api: Api) -> None:
    job, created = await api.service.create_job("tiny", parameters={"limit": 2})
    assert created
    assert job.state is JobState.RUNNING
    assert job.task is Task.WAIT
    assert job.events is None


@pytest.mark.asyncio
async def test_an_unknown_query_parameter_is_refused_naming_it(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        response = await api.client.get("/api/v1/jobs?stat=RUNNING", headers=READ)
        error = assert_error(response, 422, "invalid_request")
        assert "query.stat" in error["message"] and "state" in error["message"], error
        assert error["details"][0]["loc"] == ["query", "stat"]
