"""A flow asked to stop (SIGTERM, SIGINT) stops promptly in every phase and says how it stopped.

While it starts (waiting for its scoring services) it gives up at once; while it scores it finishes the batches in
flight, within `stop_timeout_seconds`; after its run, a late SIGTERM (an uninstall right after a success) does
not turn its clean exit into death by signal.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flow_kit import (
    IN_FIELDS,
    Digits,
    StubScheduler,
    channel,
    digits_rows,
    flow_env,
    free_port,
    render_values,
    start_flow,
    write_bundle,
    write_digits_csv,
)

from scoring_flows.checkpoint import CheckpointStore
from scoring_flows.cli import load_values
from scoring_flows.runtime import Flow
from scoring_flows.settings import FlowSettings

OUT_FIELDS = [
    {"name": "id", "type": "integer", "format": "int64"},
    {"name": "label", "type": "integer", "format": "int64"},
    {"name": "probability", "type": "number", "format": "double"},
    {"name": "onnx_label", "type": "integer", "format": "int64"},
]


def csv_values(tmp: Path, digits: Digits, scheduler: StubScheduler, **bundle: Any) -> Path:
    channels = {
        "in": channel("source", "file", {"path": "data/in.csv", "format": "csv"}, IN_FIELDS),
        "out": channel("sink", "file", {"path": "out/scored.csv", "format": "csv"}, bundle.pop("out", OUT_FIELDS)),
    }
    folder = write_bundle(tmp / "bundle", digits, channels=channels, **bundle)
    return render_values(
        folder, tmp / "run" / "values.yaml", job_id=scheduler.job_id, scheduler_url=scheduler.url, token=scheduler.token
    )


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    """Until `text` is in the flow's log; a safety net, not a timing assertion."""
    deadline = time.monotonic() + 60
    while text not in (log.read_text() if log.exists() else ""):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log.read_text()}"
        time.sleep(0.05)


def test_a_flow_waiting_for_its_scoring_services_exits_on_sigterm_at_once_saying_so(
    tmp_path: Path, digits: Digits
) -> None:
    workdir = tmp_path / "work"
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 10))
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the services never become ready
    log = tmp_path / "flow.log"
    with StubScheduler() as scheduler:
        values = csv_values(tmp_path, digits, scheduler)
        env = flow_env({"digits-rf": dead, "digits-rf-onnx": dead})  # the readiness timeout stays at 300s
        proc = start_flow(values, "digits-flow", env, log, workdir)
        try:
            wait_for_line(
                log, "waiting for scoring service(s) digits-rf, digits-rf-onnx to be ready (at most 300s)", proc
            )
            os.killpg(proc.pid, signal.SIGTERM)
            # A flow that ignored the SIGTERM would wait for its services for 300s: this bound is only a net.
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    text = log.read_text()
    assert code == 0, text
    assert (
        "stopped (SIGTERM) while waiting for scoring service(s) digits-rf, digits-rf-onnx to be ready: nothing was read"
        in text
    )
    assert scheduler.completions == []  # a stop is not a failure of the scoring, nor its completion


class HangingService:
    """A V2 scoring service that is ready but never answers an inference request (until it is closed)."""

    def __init__(self) -> None:
        self.requests = 0
        self._release = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._release.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                request_line = head.split(b"\r\n", 1)[0]
                if request_line.startswith(b"POST"):
                    self.requests += 1
                    self._release.wait()  # never answers while the test runs
                    return
                body = b'{"extensions": []}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )

    def __enter__(self) -> HangingService:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._release.set()
        self._sock.close()


@pytest.fixture
def hanging() -> Iterator[HangingService]:
    with HangingService() as service:
        yield service


async def test_a_flow_stopped_while_a_service_hangs_gives_up_its_batches_in_flight_after_the_stop_timeout(
    tmp_path: Path, digits: Digits, hanging: HangingService
) -> None:
    workdir = tmp_path / "work"
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 300))
    lines: list[str] = []
    with StubScheduler() as scheduler:
        values = csv_values(tmp_path, digits, scheduler, batch_size=100)
        runner = Flow(
            load_values(values),
            "digits-flow",
            settings=FlowSettings(stop_timeout_seconds=0.3, progress_interval_seconds=0.05),
            service_urls={"digits-rf": hanging.url, "digits-rf-onnx": hanging.url},
            workdir=workdir,
            values_path=values,
            log=lines.append,
        )
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 60
        while hanging.requests == 0:  # a batch is in flight, its score request unanswered
            assert time.monotonic() < deadline and not task.done(), lines
            await asyncio.sleep(0.02)
        runner.stop("SIGTERM")
        # The request timeout is 120s: a flow that waited for it would outlast this net.
        code = await asyncio.wait_for(task, 60)
    text = "\n".join(lines)
    assert code == 0, text
    assert "stopping (SIGTERM): finishing the batches in flight (at most 0.3s)" in text
    assert "giving up the batches in flight (not done within 0.3s): they are not committed" in text
    # How many of the 3 batches were read when the stop came depends on the read-ahead: none was written.
    assert re.search(r"stopped \(SIGTERM\) with batches in flight uncommitted: read [123]00, written 0, failed 0", text)
    saved = CheckpointStore(tmp_path / "run" / "checkpoints" / "digits-flow.json").load()
    assert saved is not None and saved.ordinal == 0  # nothing committed: a restart reads every record again
    assert scheduler.completions == []


async def test_a_second_stop_request_gives_up_the_batches_in_flight_at_once(
    tmp_path: Path, digits: Digits, hanging: HangingService
) -> None:
    workdir = tmp_path / "work"
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 100))
    lines: list[str] = []
    with StubScheduler() as scheduler:
        values = csv_values(tmp_path, digits, scheduler, batch_size=100)
        runner = Flow(
            load_values(values),
            "digits-flow",
            settings=FlowSettings(stop_timeout_seconds=600),
            service_urls={"digits-rf": hanging.url, "digits-rf-onnx": hanging.url},
            workdir=workdir,
            values_path=values,
            log=lines.append,
        )
        task = asyncio.create_task(runner.run())
        deadline = time.monotonic() + 60
        while hanging.requests == 0:
            assert time.monotonic() < deadline and not task.done(), lines
            await asyncio.sleep(0.02)
        runner.stop("SIGINT")
        runner.stop("SIGINT")  # Ctrl-C twice
        code = await asyncio.wait_for(task, 60)
    assert code == 0
    assert any("giving up the batches in flight (a second stop request (SIGINT))" in line for line in lines), lines


LATE_SIGTERM = """
import os, signal, sys
from pathlib import Path
from scoring_flows.cli import load_values
from scoring_flows.runtime import Flow
from scoring_flows.settings import FlowSettings

values = Path(sys.argv[1])
flow = Flow(load_values(values), "digits-flow", settings=FlowSettings(), workdir=Path(sys.argv[2]), values_path=values)

async def main() -> int:
    code = await flow.run()
    os.kill(os.getpid(), signal.SIGTERM)  # what an uninstall right after the success does
    await asyncio.sleep(0.5)
    return code

import asyncio
code = asyncio.run(main())
print("exit code", code, flush=True)
sys.exit(code)
"""


def test_a_sigterm_after_the_flow_finished_does_not_end_it_by_the_signal(tmp_path: Path, digits: Digits) -> None:
    workdir = tmp_path / "work"
    write_digits_csv(workdir / "data" / "in.csv", digits_rows(digits, 5))
    out = [{"name": "id", "type": "integer", "format": "int64"}, {"name": "scorer", "type": "string"}]
    steps = [{"name": "tag", "map": {"set": {"scorer": "late-sigterm"}}}]
    with StubScheduler() as scheduler:
        values = csv_values(tmp_path, digits, scheduler, out=out, steps=steps)
        done = subprocess.run(
            [sys.executable, "-c", LATE_SIGTERM, str(values), str(workdir)],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if not k.startswith("MODELOPS_FLOW_")},
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "flow digits-flow: SIGTERM while exiting: already stopping" in done.stdout
    assert done.stdout.rstrip().endswith("exit code 0")
    assert scheduler.completions[0]["succeeded"] is True
