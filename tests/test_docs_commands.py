"""The commands shown in README.md and docs/*.md run: every shell block is run here or says why not.

A fenced block is a *shell block* when its info string is `sh`, `bash`, `shell`, `console` or empty. Each one
carries a marker, an HTML comment on the line right before its opening fence (invisible on GitHub):

- `<!-- runnable -->`: this test runs it. Extra words are `NAME=value` placeholders the reader fills in, exported
  before the block (`<!-- runnable TOKEN=mo_example -->`).
- `<!-- needs: cluster -->`: needs a Kubernetes cluster (and the images pushed); not run here.
- `<!-- not run: REASON -->`: anything else that cannot run here (e.g. `make test`, which runs this test); the
  reason is required.

Output, formats and diagrams are not shell blocks: fence them as `text` (or their language: `yaml`, `json`).
A new, unmarked shell block fails `test_every_shell_block_says_whether_it_runs`.

How the runnable blocks of one document run, in order, in one bash session (so `JOB=...` and a server started
with `&` carry over to the next block):

- in a copy of the checkout (tracked and untracked files, `.venv` and `.tools` linked), so nothing a command
  writes reaches the real one; the digits example is trained there first at a small size (`train.py --rows
  DIGITS_ROWS`), and `make demo` scores `DEMO_ROWS` rows;
- with a fresh `MODELOPS_HOME` and `HOME`, no `MODELOPS_SERVER`/`MODELOPS_TOKEN` from the caller, `PATH` starting
  with `.venv/bin` and `.tools/bin`, and `MODELOPS_SCHEDULER_PORT` a free port;
- `make` never reinstalls the checkout's virtualenv (it runs as `make -o install`);
- `sh`/`bash` blocks run as written under `set -euo pipefail`;
- `console` blocks: each `$ ` line (with its `\\` continuation lines) is one command, the lines up to the next
  `$ ` are its output as shown. A command shown without output must exit 0; a command shown with output must
  print those lines, in order (`…` matches anything, a trailing `  # comment` is not part of the line, lines
  starting with `#` are prose), whatever its exit status (the docs show failures on purpose);
- a command that starts a server in the background (`[NAME=value …] modelops serve … &`) is followed by
  waiting until the server answers on `MODELOPS_SCHEDULER_PORT`, and `MODELOPS_SERVER` then points at it, as
  the CLI's default would for a reader on port 8787;
- at the end the session's background jobs are stopped, then whatever is left in its process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_INFOS = frozenset({"sh", "bash", "shell", "console", ""})
DIGITS_ROWS = 2000
DEMO_ROWS = 2000
DOCUMENT_TIMEOUT_SECONDS = 240

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")
_PROMPT = "$ "
_MARKER_NAMES = re.compile(r"^(runnable|needs|not run)\b")  # a comment that means to be a marker


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    info: str
    marker: str | None  # the marker comment's body, e.g. "runnable", "needs: cluster"
    text: str

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.marker is not None and (self.marker == "runnable" or self.marker.startswith("runnable "))

    @property
    def placeholders(self) -> dict[str, str]:
        assert self.marker is not None
        found = {}
        for word in shlex.split(self.marker)[1:]:
            name, sep, value = word.partition("=")
            if not sep or not name.isidentifier():
                raise AssertionError(f"{self.where}: `{word}` in the runnable marker is not NAME=value")
            found[name] = value
        return found


@dataclass
class Command:
    block: Block
    line: int  # 1-based, in the document
    text: str
    shown: list[str] = field(default_factory=list)


def blocks(document: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the marker comment right before it (if any)."""
    lines = document.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{document.relative_to(ROOT)}:{index + 1}: the fence is never closed")
        marker = _MARKER.match(lines[index - 1]) if index > 0 else None
        body = "\n".join(line[indent:] if line[:indent].isspace() else line.lstrip() for line in lines[index + 1 : end])
        found.append(Block(document, index + 1, opening["info"].strip(), marker["body"] if marker else None, body))
        index = end + 1
    return found


def shell_blocks() -> Iterator[Block]:
    for document in DOCUMENTS:
        for block in blocks(document):
            if block.info.split(" ")[0] in SHELL_INFOS:
                yield block


def _known_marker(marker: str) -> bool:
    return (
        marker == "runnable"
        or marker.startswith("runnable ")
        or marker == "needs: cluster"
        or bool(re.fullmatch(r"not run: \S.*", marker))
    )


def console_commands(block: Block) -> list[Command]:
    """The `$ ` commands of a console block, each with the output lines shown after it."""
    commands: list[Command] = []
    lines = block.text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        number = block.line + 1 + index
        if line.startswith(_PROMPT):
            text = line[len(_PROMPT) :]
            while text.endswith("\\") and index + 1 < len(lines):
                index += 1
                text += "\n" + lines[index]
            commands.append(Command(block, number, text))
        elif line.strip():
            if not commands:
                raise AssertionError(f"{block.where}: output before the first `$ ` command: {line!r}")
            if not line.lstrip().startswith("#"):
                commands[-1].shown.append(re.sub(r"\s{2,}#\s.*$", "", line).rstrip())
        index += 1
    if not commands:
        raise AssertionError(f"{block.where}: a console block without a `$ ` command")
    return commands


def shown_pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in line.strip().split("…")))


def missing_output(shown: list[str], actual: str) -> str | None:
    """The first shown line that is not in the actual output (in order), else None."""
    remaining = [line.strip() for line in actual.splitlines()]
    for line in shown:
        pattern = shown_pattern(line.strip())
        for position, candidate in enumerate(remaining):
            if pattern.fullmatch(candidate):
                remaining = remaining[position + 1 :]
                break
        else:
            return line
    return None


# ------------------------------------------------------------------------------------------ the script

_SERVE = re.compile(r"^\s*(\w+=\S*\s+)*modelops\s+serve\b.*&\s*(#.*)?$")  # NAME=value… modelops serve … &

_PREAMBLE = r"""
set -euo pipefail
make() { command make -o install "$@"; }
__wait_for_server() {
    export MODELOPS_SERVER="http://127.0.0.1:$MODELOPS_SCHEDULER_PORT"
    for _ in $(seq 300); do
        if curl -fsS -o /dev/null "$MODELOPS_SERVER/readyz" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "docs test: no server answered on $MODELOPS_SERVER within 30 s" >&2
    return 1
}
__stop_background() {
    local pids
    pids=$(jobs -p)
    if [[ -n "$pids" ]]; then kill -TERM $pids 2>/dev/null || true; wait $pids 2>/dev/null || true; fi
}
trap __stop_background EXIT
"""


def script(document_blocks: list[Block], results: Path) -> tuple[str, list[Command]]:
    """The bash script that runs a document's runnable blocks, and the console commands it checks."""
    parts = [_PREAMBLE]
    checked: list[Command] = []
    for block in document_blocks:
        parts.append(f"echo {shlex.quote(block.where)} > {shlex.quote(str(results / 'current'))}")
        for name, value in block.placeholders.items():
            parts.append(f"export {name}={shlex.quote(value)}")
        if block.info != "console":
            parts.append(block.text)
            continue
        for command in console_commands(block):
            number = len(checked)
            checked.append(command)
            out, rc = results / f"{number}.out", results / f"{number}.rc"
            parts.append(f"if {{ {command.text}\n}} >{shlex.quote(str(out))} 2>&1; then echo 0 >{rc}; "
                         f"else echo $? >{rc}; fi")  # fmt: skip
            if _SERVE.match(command.text):
                parts.append("__wait_for_server")
    parts.append(f"echo done > {shlex.quote(str(results / 'current'))}")
    return "\n".join(parts) + "\n", checked


# ------------------------------------------------------------------------------------------ the sandbox


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _checkout_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def trained_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout with the digits example trained at DIGITS_ROWS rows."""
    copy = tmp_path_factory.mktemp("checkout")
    for name in _checkout_files():
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)  # keeps mtimes: make sees what it sees in the checkout
    for linked in (".venv", ".tools"):
        (copy / linked).symlink_to(ROOT / linked)
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "examples/digits/train.py", "--rows", str(DIGITS_ROWS)],
        cwd=copy,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return copy


def _environment(checkout: Path, home: Path) -> dict[str, str]:
    keep = {name: value for name, value in os.environ.items() if name in {"LANG", "LC_ALL", "TZ", "TMPDIR"}}
    return {
        **keep,
        "PATH": f"{checkout / '.venv' / 'bin'}:{checkout / '.tools' / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home / "user"),
        "MODELOPS_HOME": str(home / "modelops"),
        "MODELOPS_SCHEDULER_PORT": str(_free_port()),
        "DEMO_ROWS": str(DEMO_ROWS),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }


# ------------------------------------------------------------------------------------------ the tests


def test_every_shell_block_says_whether_it_runs() -> None:
    unmarked = [f"{b.where} ```{b.info}" for b in shell_blocks() if b.marker is None]
    assert unmarked == [], (
        "shell blocks without `<!-- runnable -->`, `<!-- needs: cluster -->` or `<!-- not run: REASON -->` on the "
        "line before (fence output and formats as `text`):\n" + "\n".join(unmarked)
    )


def test_every_marker_is_a_known_one_on_a_shell_block() -> None:
    wrong = []
    for document in DOCUMENTS:
        for block in blocks(document):
            if block.marker is None or not _MARKER_NAMES.match(block.marker):
                continue  # some other HTML comment
            if block.info.split(" ")[0] not in SHELL_INFOS:
                wrong.append(f"{block.where}: a `{block.marker}` marker on a ```{block.info} block")
            elif not _known_marker(block.marker):
                wrong.append(f"{block.where}: unknown marker `{block.marker}`")
    assert wrong == []


def test_a_console_block_is_split_into_commands_with_their_shown_output() -> None:
    block = Block(ROOT / "README.md", 10, "console", "runnable", "$ a \\\n    --b\nout 1   # note\n# prose\n$ c\n")
    commands = console_commands(block)
    assert [(c.line, c.text, c.shown) for c in commands] == [(11, "a \\\n    --b", ["out 1"]), (15, "c", [])]


def test_shown_output_matches_in_order_with_ellipses_as_wildcards() -> None:
    actual = "MODELOPS_TOKEN=mo_abc123\nMODELOPS_SCHEDULER_TOKENS=ci:write:9f00\n"
    assert missing_output(["MODELOPS_TOKEN=mo_…", "MODELOPS_SCHEDULER_TOKENS=ci:write:…"], actual) is None
    assert missing_output(["MODELOPS_SCHEDULER_TOKENS=ci:write:…", "MODELOPS_TOKEN=mo_…"], actual) == (
        "MODELOPS_TOKEN=mo_…"
    )
    assert missing_output(["MODELOPS_TOKEN=mo_x…"], actual) == "MODELOPS_TOKEN=mo_x…"


RUNNABLE = {doc: [b for b in shell_blocks() if b.document == doc and b.runnable] for doc in DOCUMENTS}


def run_blocks(document_blocks: list[Block], checkout: Path, work: Path) -> list[str]:
    """Run blocks in one bash session in `checkout` (scratch files under `work`); the problems found."""
    results = work / "results"
    results.mkdir()
    for folder in ("user", "modelops"):
        (work / "home" / folder).mkdir(parents=True)
    text, commands = script(document_blocks, results)
    (work / "docs.sh").write_text(text)
    process = subprocess.Popen(
        ["bash", str(work / "docs.sh")],
        cwd=checkout,
        env=_environment(checkout, work / "home"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=DOCUMENT_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate()
        pytest.fail(f"{(results / 'current').read_text().strip()}: still running after {DOCUMENT_TIMEOUT_SECONDS} s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what the session left behind (its own group)
    current = (results / "current").read_text().strip() if (results / "current").exists() else "the preamble"
    problems = []
    if process.returncode != 0 or current != "done":
        problems.append(f"{current}: the block failed (exit {process.returncode}):\n{_tail(output)}")
    for number, command in enumerate(commands):
        rc_file = results / f"{number}.rc"
        if not rc_file.exists():
            break  # not reached
        rc, actual = int(rc_file.read_text()), (results / f"{number}.out").read_text()
        where = f"{command.block.where.rpartition(':')[0]}:{command.line}: $ {command.text}"
        if command.shown:
            missing = missing_output(command.shown, actual)
            if missing is not None:
                problems.append(f"{where}\n  shows {missing!r}, which it did not print (exit {rc}):\n{_tail(actual)}")
        elif rc != 0:
            problems.append(f"{where}\n  exit {rc}:\n{_tail(actual)}")
    return problems


def test_the_runner_reports_a_failing_command_a_missing_output_and_a_failing_block(tmp_path: Path) -> None:
    doc = ROOT / "README.md"
    console = (
        "$ echo one\none\n$ false\n$ echo two; exit_code_is_ignored_when_output_is_shown\ntwo\n$ echo three\nfour\n"
    )
    shell = 'X=kept\n[[ "$X" == kept ]]\nfalse\necho never'
    after = "$ echo not reached"
    blocks_ = [Block(doc, 1, "console", "runnable", console), Block(doc, 20, "sh", "runnable", shell),
               Block(doc, 30, "console", "runnable", after)]  # fmt: skip
    (tmp_path / "checkout").mkdir()
    problems = run_blocks(blocks_, tmp_path / "checkout", tmp_path)
    assert [problem.split("\n")[0] for problem in problems] == [
        "README.md:20: the block failed (exit 1):",
        "README.md:4: $ false",
        "README.md:7: $ echo three",
    ]
    assert "shows 'four', which it did not print (exit 0)" in problems[2]


def test_a_placeholder_in_the_marker_is_exported_and_a_server_started_in_the_background_is_waited_for(
    tmp_path: Path,
) -> None:
    block = Block(ROOT / "README.md", 1, "console", "runnable NAME=value", '$ echo "$NAME"\nvalue\n')
    (tmp_path / "checkout").mkdir()
    assert run_blocks([block], tmp_path / "checkout", tmp_path) == []
    assert _SERVE.match("modelops serve &   # http://127.0.0.1:8787")
    assert _SERVE.match("MODELOPS_SCHEDULER_DATA_ROOT=examples/digits modelops serve --workers 2 &")
    assert not _SERVE.match("modelops serve")


@pytest.mark.slow
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if RUNNABLE[d]], ids=lambda d: str(d.relative_to(ROOT)))
def test_the_runnable_blocks_of_each_document_run(document: Path, trained_checkout: Path, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(trained_checkout, checkout, symlinks=True)
    problems = run_blocks(RUNNABLE[document], checkout, tmp_path)
    assert not problems, "\n\n".join(problems)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])
