"""The browser tests' harness: a real scheduler, Debian's chromium driven by Playwright, axe-core, screenshots.

Its fixtures and hooks are made visible by tests/browser/conftest.py; test modules import the helpers from here
(`from browser_kit import ...`: `conftest` is not a name to import from, the whole suite has several).

- `ui_server`: the real scheduling server (`EmbeddedServer`: uvicorn on `create_app` in a thread, on a free
  loopback port) with SQLite in a temporary home, the LOCAL backend (real `modelops scoring-service` and
  `modelops flow` processes) and API tokens configured (`reader`: read, `writer`: write), so every page is
  reached through the sign-in form and its session cookie. `open_server`: a second one in open mode (no tokens,
  loopback: everybody is the local admin), for the deploy scenarios that start from an empty server.
- The digits example as the issue's scenarios use it: small models trained in a second (flow_kit's 10-tree
  forest, as sklearn and as ONNX), the example's folder laid out as after `train.py` (`digits_folder`), and the
  servers' data root holding `data/digits.csv` (the `input` default, 20,000 rows: a job runs a few seconds) and
  `data/long/*.csv` (a glob of 60 parts, for a job still running when the test cancels it).
- `browser`: one headless chromium per test module (`/usr/bin/chromium`, never a browser Playwright
  downloads); each test gets its own contexts through `browse` (`browse.page("writer")`, `browse.page("reader")`,
  `browse.page(None)`: no session), signed in once per session through the form.
- `check_page(page, name)`: axe-core in the light theme, the dark theme (the OS preference, emulated) and the
  dark theme chosen with the toggle; fails on serious or critical violations with a readable list. With a
  `name`, it also takes the page's screenshots (1280x800, light and dark), written to `docs/ui/<name>.png` and
  `docs/ui/<name>-dark.png` only once the test has passed.

Without /usr/bin/chromium the tests are skipped with a message saying how to install it, except under
`make test` (`MODELOPS_REQUIRE_BROWSER=1`), which installs chromium first and fails rather than skips.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# the digits helpers of the flow and end-to-end tests (flow_kit, e2e_kit)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scoring_flows"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_kit import relative_digits_example
from flow_kit import Digits, digits_rows, train_digits, write_digits_csv

from scheduler.client import SchedulerClient
from scheduler.embedded import EmbeddedServer
from scheduler.settings import SchedulerSettings, TokenSpec, hash_token
from scheduler.states import JobState

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
SCREENSHOTS = REPO / "docs" / "ui"

READ_TOKEN = "rd-browser-5b0e3c1d9a7f4e2b8c6d"
WRITE_TOKEN = "wr-browser-7c2a9e4f1b3d4a6e8f0c"
TOKENS = {"reader": READ_TOKEN, "writer": WRITE_TOKEN}

DIGITS_ROWS = 20_000
"""Rows of `data/digits.csv`, the input of the jobs that run to their end: a few seconds of scoring."""
LONG_PARTS, LONG_PART_ROWS = 60, 20_000
"""`data/long/part-NN.csv`: 1,200,000 rows in all (the parts are hard links of one file), far more than a
test waits for: the job cancelled by the tests is still scoring when they cancel it."""
LONG_INPUT = "data/long/part-*.csv"
SHORT_INPUT = "data/long/part-0[0-5].csv"
"""120,000 rows: a job whose progress is seen growing for a few seconds, then ends."""
SHORT_INPUT_ROWS = 6 * LONG_PART_ROWS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives Debian's chromium through Playwright (tests/browser)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so a fixture's teardown knows whether its test passed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# ------------------------------------------------------------------------------------------------ the digits


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return train_digits(tmp_path_factory.mktemp("digits-models"))


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Path:
    """examples/digits as a user has it after `train.py`: the IR, `artifacts/*.joblib|onnx`, `data/digits.csv`
    (a few rows: the jobs read the server's data root, the folder's data is what the upload leaves out)."""
    return relative_digits_example(tmp_path_factory.mktemp("upload"), digits, rows=50)


def _data_root(folder: Path, digits: Digits) -> Path:
    write_digits_csv(folder / "data" / "digits.csv", digits_rows(digits, DIGITS_ROWS))
    part = write_digits_csv(folder / "data" / "long-part.csv", digits_rows(digits, LONG_PART_ROWS, seed=11))
    (folder / "data" / "long").mkdir()
    for index in range(LONG_PARTS):
        os.link(part, folder / "data" / "long" / f"part-{index:02d}.csv")
    return folder


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory, digits: Digits) -> Path:
    return _data_root(tmp_path_factory.mktemp("data-root"), digits)


# ------------------------------------------------------------------------------------------------ servers


@dataclass
class UiServer:
    """A running scheduler: its URL, its settings and a REST client per token name (`api("writer")`)."""

    embedded: EmbeddedServer
    home: Path
    data_root: Path
    tokens: dict[str, str]
    _clients: dict[str, SchedulerClient] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.embedded.url

    def api(self, who: str = "writer") -> SchedulerClient:
        if who not in self._clients:
            self._clients[who] = SchedulerClient(self.url, self.tokens.get(who))
        return self._clients[who]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _settings(home: Path, data_root: Path, tokens: dict[str, str]) -> SchedulerSettings:
    scopes = {"reader": "read", "writer": "write"}
    return SchedulerSettings(
        home=home,
        tokens=[TokenSpec(name=name, scope=scopes[name], sha256=hash_token(value)) for name, value in tokens.items()],
        # the digits example scores a pickled sklearn model: a code-running runtime (docs/security.md)
        allow_code_runtimes=True,
        data_root=data_root,
        data_roots=[data_root],
        readiness_timeout_seconds=60.0,
        uninstall_grace_seconds=5.0,
        poll_interval_seconds=0.2,
    )



FLOW_ENVIRONMENT = {"MODELOPS_FLOW_PROGRESS_INTERVAL_SECONDS": "0.5"}
"""What the servers' flows inherit (the local backend passes its environment on): progress every 0.5 s instead
of 2 s, so a job of a few seconds reports several times and the pages are seen changing."""


def _serve(home: Path, data_root: Path, tokens: dict[str, str]) -> Iterator[UiServer]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FLOW_ENVIRONMENT.items():
            patch.setenv(name, value)
        embedded = EmbeddedServer(_settings(home, data_root, tokens), keep_tokens=bool(tokens))
        embedded.start()
        server = UiServer(embedded, home, data_root, dict(tokens))
        try:
            yield server
        finally:
            server.close()
            embedded.stop()  # cancels what still runs and waits for its uninstall


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[UiServer]:
    """The scheduler the scenarios use: tokens configured (sign-in), the local backend, the digits data."""
    yield from _serve(tmp_path_factory.mktemp("ui-home"), data_root, TOKENS)


@pytest.fixture(scope="session")
def open_server(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[UiServer]:
    """A second scheduler in open mode (no tokens, loopback), empty at start."""
    yield from _serve(tmp_path_factory.mktemp("open-home"), data_root, {})


@pytest.fixture(scope="session")
def digits_pipeline(ui_server: UiServer, digits_folder: Path) -> str:
    """The digits example deployed on `ui_server` (through the REST API, as `modelops pipeline deploy` does:
    the upload through the page has its own scenario); its name."""
    return ui_server.api("writer").deploy(digits_folder).name


# ------------------------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per test module. Not per session: Playwright's sync API runs its own event loop in
    this thread while it is started, and the asyncio tests of other folders (run later in the same session)
    could not run theirs."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), or run make test"
        if os.environ.get("MODELOPS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright must never fetch a browser of its own: only the system's chromium is used.
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class Browse:
    """Opens pages for one test: each call a new browser context (its own cookies and storage), signed in as
    `who` through the sign-in form (None: no session). Uncaught script errors and CSP refusals on any page
    fail the test (`problems`)."""

    browser: Any
    server: UiServer
    sessions: dict[tuple[str, str], Any]
    contexts: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def context(self, who: str | None = "writer", server: UiServer | None = None, **options: Any) -> Any:
        server = server or self.server
        state = self._session(server, who) if who is not None and server.tokens else None
        context = self.browser.new_context(
            base_url=server.url, viewport=VIEWPORT, reduced_motion="reduce", storage_state=state, **options
        )
        self.contexts.append(context)
        context.on("page", self._watch)
        return context

    def page(self, who: str | None = "writer", server: UiServer | None = None, **options: Any) -> Any:
        return self.context(who, server, **options).new_page()

    def _watch(self, page: Any) -> None:
        page.on("pageerror", lambda error: self.problems.append(f"{page.url}: script error: {error}"))

        def console(message: Any) -> None:
            if message.type == "error" and "Content Security Policy" in message.text:
                self.problems.append(f"{page.url}: {message.text}")

        page.on("console", console)

    def _session(self, server: UiServer, who: str) -> Any:
        """The storage state (the session cookie) of `who` signed in on `server`, made once per session."""
        key = (server.url, who)
        if key not in self.sessions:
            context = self.browser.new_context(base_url=server.url, viewport=VIEWPORT)
            try:
                page = context.new_page()
                sign_in(page, server.tokens[who])
                self.sessions[key] = context.storage_state()
            finally:
                context.close()
        return self.sessions[key]

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def sign_in(page: Any, token: str, next_path: str = "/ui/jobs") -> None:
    """Sign in through the form, and wait to be sent on to `next_path`."""
    page.goto(f"/ui/login?next={next_path}")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(next_path) + r"([?#].*)?$"))


@pytest.fixture(scope="session")
def _sessions() -> dict[tuple[str, str], Any]:
    return {}


@pytest.fixture
def browse(browser: Any, ui_server: UiServer, _sessions: dict[tuple[str, str], Any]) -> Iterator[Browse]:
    helper = Browse(browser, ui_server, _sessions)
    try:
        yield helper
    finally:
        helper.close()
    assert not helper.problems, "the pages had problems:\n" + "\n".join(helper.problems)


# ------------------------------------------------------------------------------------------------ axe, screenshots

AXE_FAILS_ON = frozenset({"serious", "critical"})
THEME_RULES = ["color-contrast", "link-in-text-block", "non-text-contrast"]
"""What a theme changes: colours. The dark runs check only these rules; the light run checks all of them."""
AXE_SKIPS = [".highlight .line:nth-child(n+61)", "#log .line:nth-child(n+101)"]
"""Long repetitive content axe checks only the start of: the lines of a highlighted YAML or of a log are
made of the same few kinds of token, and the full pages (5,000+ elements) took axe 10 s each on 2 busy cores."""
AXE_RUN = """async ([rules, skips]) => {
  const options = {resultTypes: ["violations"]};
  if (rules) {
    const known = new Set(axe.getRules().map((rule) => rule.ruleId));
    options.runOnly = {type: "rule", values: rules.filter((id) => known.has(id))};
  }
  return await axe.run({exclude: skips.map((selector) => [selector])}, options);
}"""


def _violations(page: Any, theme: str, rules: list[str] | None = None) -> list[str]:
    from axe_playwright_python.base import AXE_SCRIPT

    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(AXE_SCRIPT)  # once per document (evaluate is not subject to the page's CSP)
    results = page.evaluate(AXE_RUN, [rules, AXE_SKIPS])
    found = []
    for violation in results["violations"]:
        if violation.get("impact") not in AXE_FAILS_ON:
            continue
        for node in violation["nodes"][:5]:
            target = " ".join(str(part) for part in node.get("target", []))
            summary = " ".join((node.get("failureSummary") or "").split())
            found.append(
                f"[{theme}] {violation['impact']} {violation['id']}: {violation['help']}\n"
                f"    at {target}: {node.get('html', '')[:160]}\n    {summary}"
            )
        if len(violation["nodes"]) > 5:
            found.append(f"    … and {len(violation['nodes']) - 5} more of {violation['id']}")
    return found


PALETTE = """() => Array.from(document.querySelectorAll("*"), (element) => {
  const style = getComputedStyle(element);
  return [style.color, style.backgroundColor, style.borderTopColor, style.outlineColor].join(" ");
}).join("|")"""
"""The colours of every element as the page computes them. The dark theme chosen with the toggle must look like
the system's dark theme; axe's colour rules run again for it only when some colour differs."""


def _theme_of(page: Any) -> str:
    return str(page.evaluate("document.documentElement.dataset.theme || 'auto'"))


def _toggle_to(page: Any, wanted: str) -> None:
    toggle = page.locator("#theme-toggle")
    for _ in range(3):
        if _theme_of(page) == wanted:
            return
        toggle.click()
    assert _theme_of(page) == wanted, f"the theme toggle never reached {wanted!r}"


@dataclass
class Shots:
    """Screenshots taken during a test, written under docs/ui/ only if the test passes."""

    pending: dict[Path, bytes] = field(default_factory=dict)

    def take(self, page: Any, name: str) -> None:
        page.evaluate("() => window.scrollTo(0, 0)")  # the page as it opens, whatever the test scrolled to
        self.pending[SCREENSHOTS / f"{name}.png"] = page.screenshot(animations="disabled")

    def write(self) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for path, data in self.pending.items():
            path.write_bytes(data)


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Iterator[Shots]:
    taken = Shots()
    yield taken
    report = getattr(request.node, "report_call", None)
    if report is not None and report.passed:
        taken.write()


CheckPage = Callable[..., None]


@pytest.fixture
def check_page(shots: Shots) -> CheckPage:
    """`check_page(page, name=None)`: axe in light, dark (OS) and dark (toggle); screenshots when named."""

    def check(page: Any, name: str | None = None, *, wait: Callable[[], None] | None = None) -> None:
        found: list[str] = []
        page.emulate_media(color_scheme="light")
        _toggle_to(page, "auto")
        if wait is not None:
            wait()
        found += _violations(page, "light")
        if name:
            shots.take(page, name)
        page.emulate_media(color_scheme="dark")
        found += _violations(page, "dark (system)", THEME_RULES)
        system_dark = page.evaluate(PALETTE)
        if name:
            shots.take(page, f"{name}-dark")
        page.emulate_media(color_scheme="light")
        _toggle_to(page, "dark")
        if page.evaluate(PALETTE) != system_dark:  # the toggle's dark differs: it needs its own check
            found += _violations(page, "dark (toggle)", THEME_RULES)
        _toggle_to(page, "auto")
        assert not found, f"axe-core on {page.url}:\n" + "\n".join(found)

    return check


# ------------------------------------------------------------------------------------------------ jobs


def wait_for(what: str, probe: Callable[[], Any], within: float = 60.0, every: float = 0.2) -> Any:
    """Poll `probe` until it returns something truthy (a safety net for the API side, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:g}s")
        time.sleep(every)


@pytest.fixture(scope="session")
def finished_jobs(ui_server: UiServer, digits_pipeline: str) -> dict[str, uuid.UUID]:
    """Two jobs of the digits pipeline in final states, started through the REST API: `succeeded` (the 20,000
    rows of data/digits.csv scored) and `cancelled` (cancelled while it installed)."""
    api = ui_server.api("writer")
    done = api.create_job(digits_pipeline, parameters={"scorer": "finished-job", "output": "out/finished.csv"})
    stopped = api.create_job(digits_pipeline, parameters={"input": LONG_INPUT, "output": "out/stopped.csv"})
    api.cancel_job(stopped.id)
    for job in (done, stopped):
        wait_for(f"job {job.id} finished", lambda job=job: api.get_job(job.id).terminal, within=120)
    assert api.get_job(done.id).state is JobState.SUCCEEDED, api.get_job(done.id).message
    assert api.get_job(stopped.id).state is JobState.CANCELLED
    return {"succeeded": done.id, "cancelled": stopped.id}


PASTE = """([id, text]) => {
  const field = document.getElementById(id);
  field.focus();
  field.value = text;
  field.dispatchEvent(new InputEvent("input", {bubbles: true, inputType: "insertFromPaste"}));
}"""


def paste(page: Any, element_id: str, text: str) -> None:
    """Put `text` into the field as a paste does: the whole value at once, one input event. (Playwright's `fill`
    of a 10 kB text into the deploy editor timed out after an earlier validation, though the page had the text.)"""
    page.evaluate(PASTE, [element_id, text])
