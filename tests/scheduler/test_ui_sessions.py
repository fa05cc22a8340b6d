"""Sign-in, the session cookie and CSRF, over HTTP (no browser): what every UI page and stream relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_kit import (
    READ_TOKEN,
    WRITE,
    WRITE_TOKEN,
    running,
    settings_for,
)

from scheduler.sessions import CSRF_HEADER, SESSION_COOKIE

pytestmark = pytest.mark.asyncio


async def _sign_in(api, token: str) -> str:  # type: ignore[no-untyped-def]
    response = await api.client.post("/ui/login", data={"token": token, "next": "/ui/pipelines"})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/pipelines"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    return str(api.client.cookies[SESSION_COOKIE])


async def _csrf(api) -> str:  # type: ignore[no-untyped-def]
    page = await api.client.get("/ui/login?next=/ui/jobs")
    assert page.status_code == 303  # signed in: the form sends you on
    from scheduler.sessions import SessionSigner

    signer: SessionSigner = api.app.state.auth.sessions
    session = signer.verify(api.client.cookies[SESSION_COOKIE])
    assert session is not None
    return session.csrf


async def test_pages_redirect_to_sign_in_and_the_form_opens_a_session(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        response = await api.client.get("/ui/pipelines?x=1")
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/login?next=%2Fui%2Fpipelines%3Fx%3D1"
        form = await api.client.get("/ui/login")
        assert form.status_code == 200 and 'name="token"' in form.text
        wrong = await api.client.post("/ui/login", data={"token": "nope", "next": "/ui/jobs"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        await _sign_in(api, WRITE_TOKEN)
        # the cookie works on the API too, for reads
        listed = await api.client.get("/api/v1/pipelines")
        assert listed.status_code == 200, listed.text


async def test_next_never_leaves_the_ui(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        for evil in ("https://evil.example/", "//evil.example/ui/", "/api/v1/jobs", "/ui\\..\\x"):
            response = await api.client.post("/ui/login", data={"token": WRITE_TOKEN, "next": evil})
            assert response.headers["location"] == "/ui/jobs", evil


async def test_a_write_with_the_cookie_needs_the_csrf_token(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        await api.deploy()
        job = await api.start_job()
        await _sign_in(api, WRITE_TOKEN)
        refused = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
        forged = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers={CSRF_HEADER: "guess"})
        assert forged.status_code == 403
        csrf = await _csrf(api)
        accepted = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers={CSRF_HEADER: csrf})
        assert accepted.status_code == 202, accepted.text


async def test_a_read_session_cannot_write_and_a_cross_site_post_is_refused(
    api_database_url: str, tmp_path: Path
) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        await api.deploy()
        job = await api.start_job()
        await _sign_in(api, READ_TOKEN)
        csrf = await _csrf(api)
        refused = await api.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers={CSRF_HEADER: csrf})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
        cross = await api.client.post(
            f"/api/v1/jobs/{job['id']}/cancel", headers={**WRITE, "Sec-Fetch-Site": "cross-site"}
        )
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "cross_site_refused"


async def test_a_forged_or_orphaned_cookie_is_no_session(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url)) as api:
        api.client.cookies.set(SESSION_COOKIE, "eyJuIjoiY2kifQ.forged.signature")
        response = await api.client.get("/api/v1/pipelines")
        assert response.status_code == 401
    # a session minted under one token configuration dies when its token is removed
    async with running(settings_for(tmp_path, api_database_url)) as api:
        value = (await _sign_in(api, WRITE_TOKEN))
    from api_kit import TOKENS

    others = [t for t in TOKENS if t.name != "ci"]
    async with running(settings_for(tmp_path, api_database_url, tokens=others)) as api:
        api.client.cookies.set(SESSION_COOKIE, value)
        assert (await api.client.get("/api/v1/pipelines")).status_code == 401


async def test_open_mode_needs_no_sign_in(api_database_url: str, tmp_path: Path) -> None:
    async with running(settings_for(tmp_path, api_database_url, tokens=[])) as api:
        response = await api.client.get("/ui/login")
        assert response.status_code == 303 and response.headers["location"] == "/ui/jobs"
        root = await api.client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/ui/jobs"
