"""The flow loop: read a source in batches, run the steps, write the sinks in order, commit, report.

One `Flow` runs one entry of a values document's `scoringFlows`:

1. **Start.** Build the source, the sinks (and the dead-letter sink) and the steps (python functions are
   imported now); wait until every scoring service the flow calls is ready (`FlowSettings.ready_timeout_seconds`,
   then a clear failure).
2. **Resume.** For a batch source (`file`, `sql`) the checkpoint (`scoring_flows.checkpoint`) gives each sink its
   saved state; each sink answers with its watermark (a file sink cuts back what came after its last
   checkpoint, a SQL sink reads its own watermark row), and the source is opened at the lowest one. A sink
   whose watermark is higher skips the records below it. So a flow killed at any moment and started again with
   the same values writes every record exactly once.
3. **Loop.** Batches are read one after the other while up to `in_flight` of them go through the steps at the
   same time (score requests overlap; CPU work runs in worker threads). Results are written **in source
   order**: each sink gets its own fields and types (`data_channel.schema.conform`), then the error policy
   takes the records that failed (in the source, a step, or a sink's cast):
   - `fail`: the flow stops at the first failed record in source order, naming it (what was committed before
     stays committed; the job fails). An http source answers that request 422 instead and goes on;
   - `skip`: counted and logged (the first `logged_errors` one by one);
   - `deadLetter`: written to the dead-letter sink, with the reserved fields `error` (message), `errorField`,
     `errorStep`, `position` (where the record came from), `ordinal` and `record` (its values as JSON text)
     filled in where its schema declares them; other declared fields take the record's values of that name.
   Every `commit_interval_seconds` the sinks commit (non-transactional sinks first, SQL last), then the
   checkpoint is written, then queue sources acknowledge the committed batches.
4. **End.** A batch source exhausted: the last commit, `finish` on every sink (outputs move into place), a
   final checkpoint marked finished, the last progress report and `POST /complete {succeeded: true}` with
   counts, rate and outputs in the message; exit 0. SIGTERM or SIGINT: stop reading, finish the batches in
   flight, commit, acknowledge, exit 0 (no completion: the job was cancelled, or a streaming flow stops).
   A failure: `/complete {succeeded: false, message}` and exit 1.

Progress (`read`, `written`, `failed` totals) goes to the scheduler every `progress_interval_seconds` and to the
log; Prometheus metrics are served when `metrics_port` is set (`scoring_flows.metrics`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import signal
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import orjson
import pyarrow as pa

from data_channel import (
    ChannelContext,
    ChannelError,
    InputMissing,
    RecordError,
    Sink,
    Source,
    SourceBatch,
    conform,
    make_sink,
    make_source,
)
from data_channel.http import HttpExchange
from data_channel.schema import from_values
from ir.logformat import format_line
from ir.render import ScoringFlowValues, Values
from scoring_flows.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from scoring_flows.client import ScoringUnavailable, V2Client
from scoring_flows.metrics import FlowMetrics
from scoring_flows.settings import FlowSettings
from scoring_flows.steps import FlowBatch, FlowStep, StepError, build_steps

__all__ = ["DEAD_LETTER_FIELDS", "NOT_RECORDED_EXIT", "Flow", "FlowFailed", "NotRecorded", "SchedulerLink"]

DEAD_LETTER_FIELDS: Final = ("error", "errorField", "errorStep", "position", "ordinal", "record")
_LOG_EVERY_SECONDS: Final = 10.0
INVALID_INPUT: Final = "InvalidInput"
"""The completion reason of a flow whose input is not there (`data_channel.InputMissing`)."""

Log = Callable[[str], None]


class FlowFailed(Exception):
    """The flow cannot go on: the message says why (and which record, under the fail policy)."""


class NotRecorded(Exception):
    """The scoring is done and committed, but the scheduler did not accept the completion report in time.

    Not a failure of the scoring (so not reported as one): the flow exits with `NOT_RECORDED_EXIT`, and a
    restart (the local backend's supervision, or a Job's pod) finds its checkpoint finished and reports again."""


NOT_RECORDED_EXIT: Final = 75
"""Exit code of a flow whose completion the scheduler did not accept (EX_TEMPFAIL of sysexits.h: try again)."""


@dataclass
class Counters:
    read: int = 0
    written: int = 0
    failed: int = 0
    filtered: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"read": self.read, "written": self.written, "failed": self.failed, "filtered": self.filtered}


@dataclass(frozen=True)
class SchedulerLink:
    """Where progress and completion go: `global.scheduler.{url,token}` and `global.jobId` of the values."""

    url: str
    token: str | None
    job_id: str

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.token and self.job_id)


#: Environment variable holding the job token on Kubernetes: the chart keeps the token out of the values
#: ConfigMap and passes it from the release's `<release>-job-token` Secret instead.
JOB_TOKEN_ENV: Final = "MODELOPS_JOB_TOKEN"


def job_token(from_values: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The token flows present to the scheduler: `MODELOPS_JOB_TOKEN` when set (non-empty), else the values'."""
    env = os.environ if environ is None else environ
    return env.get(JOB_TOKEN_ENV) or from_values


class Reporter:
    """Progress and completion reports to the scheduler; problems are logged, never fatal to the scoring."""

    def __init__(self, link: SchedulerLink, log: Log, complete_timeout: float, flow: str | None = None) -> None:
        self.link = link
        self.log = log
        self.complete_timeout = complete_timeout
        self.flow = flow
        """The reporting flow's name: the scheduler waits for every flow of the pipeline to report."""
        self._http = httpx.AsyncClient(timeout=10.0, trust_env=False)
        self._warned = False

    def _url(self, what: str) -> str:
        return f"{self.link.url.rstrip('/')}/api/v1/jobs/{self.link.job_id}/{what}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.link.token}"}

    async def progress(
        self, counters: Counters, report: Mapping[str, Any] | None = None, *, until_accepted: bool = False
    ) -> bool:
        """Send the counters; a named flow sends its `report` too (state, size, rate, outputs, services).

        A periodic report is sent once: the next one carries newer counts. A flow's last report (`until_accepted`:
        done or failed, with the final counts) is retried like a completion, while the scheduler does not answer
        or answers 5xx, for at most `complete_timeout` seconds. Whether the scheduler accepted it."""
        if not self.link.enabled:
            return True
        body: dict[str, Any] = {"read": counters.read, "written": counters.written, "failed": counters.failed}
        if self.flow is not None:
            body.update({"flow": self.flow, "filtered": counters.filtered, **(report or {})})
        if until_accepted:
            return await self._post_until_accepted("progress", body, "the last progress report")
        try:
            response = await self._http.post(self._url("progress"), json=body, headers=self._headers())
            if response.status_code >= 400 and not self._warned:
                self._warned = True
                self.log(f"the scheduler refused a progress report: HTTP {response.status_code} {response.text[:200]}")
            return response.status_code < 400
        except httpx.HTTPError as exc:
            if not self._warned:
                self._warned = True
                self.log(f"cannot report progress to {self.link.url}: {exc!r} (will keep trying)")
            return False

    async def complete(self, succeeded: bool, message: str, reason: str | None = None) -> bool:
        """Report completion, retrying while the scheduler does not answer; whether it was recorded.

        `reason` classifies a failure the scheduler reports as more than `ScoringFailed` (`InvalidInput`)."""
        if not self.link.enabled:
            self.log("no scheduler to report completion to (no job id or token in the values)")
            return True
        body: dict[str, Any] = {"succeeded": succeeded, "message": message[:4000]}
        if self.flow is not None:
            body["flow"] = self.flow
        if reason is not None:
            body["reason"] = reason
        return await self._post_until_accepted("complete", body, "the completion report")

    async def _post_until_accepted(self, what: str, body: Mapping[str, Any], label: str) -> bool:
        """POST `body` to the job's `what` route until the scheduler accepts it (2xx, or 409: recorded before a
        restart), retrying connection errors and 5xx with back-off (0.2 s doubling to 5 s) for at most
        `complete_timeout` seconds: a scheduler that restarts meanwhile gets it once it is back. Another 4xx is
        final. Whether it was accepted."""
        deadline = time.monotonic() + self.complete_timeout
        delay = 0.2
        attempts = 0
        while True:
            attempts += 1
            problem: str
            try:
                response = await self._http.post(self._url(what), json=body, headers=self._headers())
                if response.status_code < 300 or response.status_code == 409:
                    if attempts > 1:
                        self.log(f"the scheduler accepted {label} after {attempts} attempts")
                    return True
                problem = f"HTTP {response.status_code} {response.text[:200]}"
                if response.status_code < 500:
                    self.log(f"the scheduler refused {label}: {problem}")
                    return False
            except httpx.HTTPError as exc:
                problem = repr(exc)
            if attempts == 1:
                self.log(
                    f"cannot send {label} to {self.link.url} ({problem}); retrying for at most "
                    f"{self.complete_timeout:g}s"
                )
            if time.monotonic() + delay > deadline:
                self.log(f"cannot send {label} to {self.link.url} within {self.complete_timeout:g}s: {problem}")
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        await self._http.aclose()


LISTED_BAD_RECORDS: Final = 20
"""How many of a batch's bad records the failure of a `fail` flow names, one by one: enough to see a pattern
(every record of a column, one line in ten) without a message the size of the batch."""


def _bad_records(errors: Sequence[RecordError]) -> str:
    """The failure of a `fail` flow: the batch's bad records, each with its position and what is wrong."""
    if len(errors) == 1:
        return errors[0].describe()
    listed = "; ".join(error.describe() for error in errors[:LISTED_BAD_RECORDS])
    more = f"; and {len(errors) - LISTED_BAD_RECORDS} more" if len(errors) > LISTED_BAD_RECORDS else ""
    return f"{len(errors)} records of a batch failed: {listed}{more}"


class Flow:
    """Runs one flow of a values document (see the module docstring)."""

    def __init__(
        self,
        values: Values,
        name: str,
        *,
        settings: FlowSettings | None = None,
        service_urls: Mapping[str, str] | None = None,
        environ: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        values_path: Path | None = None,
        log: Log | None = None,
        fresh: bool = False,
    ) -> None:
        if name not in values.scoring_flows:
            known = ", ".join(sorted(values.scoring_flows)) or "none"
            raise FlowFailed(f"the values have no scoring flow '{name}' (flows: {known})")
        self.values = values
        self.name = name
        self.fresh = fresh
        """Start over: ignore (and remove) this flow's checkpoint, as `modelops flow --fresh`."""
        self.spec: ScoringFlowValues = values.scoring_flows[name]
        self.settings = settings or FlowSettings()
        self.service_urls = dict(service_urls or {})
        self.environ = dict(environ) if environ is not None else None
        self.workdir = workdir or Path.cwd()
        self.values_path = values_path
        self._print = log or (lambda line: print(line, flush=True))
        globals_ = values.global_
        self.link = SchedulerLink(
            globals_.scheduler.url, job_token(globals_.scheduler.token, self.environ), globals_.job_id
        )
        self.reporter = Reporter(self.link, self.log, self.settings.complete_timeout_seconds, self.name)
        self.metrics = FlowMetrics(name)
        self.counters = Counters()
        self._state = "starting"
        """What the progress reports say the flow does: starting, running, done, failed or stopped."""
        self._stopping = False
        self._stop_reason = ""
        self._doing: str | None = "starting"
        """What the flow does while it starts (before the first read); None once it reads: a stop request gives
        up the start at once, but lets the batches in flight finish."""
        self._main: asyncio.Task[None] | None = None
        self._given_up = False
        self._source: Source | None = None
        self._sinks: list[Sink] = []
        self._dead: Sink | None = None
        self._watermarks: dict[str, int] = {}
        self._steps: list[FlowStep] = []
        self._client: V2Client | None = None
        self._exchange: HttpExchange | None = None
        self._store: CheckpointStore | None = None
        self._checkpoint: Checkpoint | None = None
        self._position = 0
        self._read_written = 0
        self._uncommitted: list[SourceBatch] = []
        self._dirty = False
        self._logged_errors = 0
        self._started = time.monotonic()
        self._resumed_from = 0

    def log(self, message: str) -> None:
        """One line of the flow's log, in the format of its settings (`ir.logformat`: text or json)."""
        if self.settings.log_format == "json":
            self._print(format_line(message, "json", logger=f"scoring_flows.{self.name}"))
        else:
            self._print(format_line(f"flow {self.name}: {message}"))

    # -- entry point ---------------------------------------------------------------------------------------------

    def stop(self, reason: str = "a stop request") -> None:
        """Stop, as SIGTERM and SIGINT ask (`reason` names the signal).

        While starting (waiting for the scoring services, opening the channels): give up at once, nothing was
        read. Once reading: stop reading, finish and commit the batches in flight, within
        `stop_timeout_seconds`; past that, or on a second request, give them up uncommitted (a batch source
        resumes before them, a queue delivers them again).
        """
        if self._stopping:
            self._give_up(f"a second stop request ({reason})")
            return
        self._stopping = True
        self._stop_reason = reason
        if self._source is not None:
            self._source.stop()
        if self._client is not None:
            self._client.stop()
        if self._main is None:
            return  # not running yet: `run` sees `_stopping` and does not start
        if self._doing is not None:
            self._given_up = True
            self._main.cancel()
            return
        timeout = self.settings.stop_timeout_seconds
        self.log(f"stopping ({reason}): finishing the batches in flight (at most {timeout:g}s)")
        asyncio.get_running_loop().call_later(timeout, self._give_up, f"not done within {timeout:g}s")

    def _give_up(self, why: str) -> None:
        """Cancel the run: the batches in flight are not committed (what was committed stays)."""
        if self._main is not None and not self._main.done() and not self._given_up:
            self.log(f"giving up the batches in flight ({why}): they are not committed")
            self._given_up = True
            self._main.cancel()

    def _late_stop(self, reason: str) -> None:
        """A stop request once the run is over (e.g. uninstall after a success): the flow is exiting anyway."""
        self.log(f"{reason} while exiting: already stopping")

    async def run(self) -> int:
        """The exit code: 0 when done or stopped, 1 on failure (reported to the scheduler), `NOT_RECORDED_EXIT`
        when done but the scheduler did not accept the completion report."""
        loop = asyncio.get_running_loop()
        # CPU work of the steps (casts, tensors, encoding) runs in worker threads: one per core is enough, and
        # every extra thread costs a malloc arena of its own (tens of MB of resident memory).
        workers = max(2, min(self.settings.in_flight, os.cpu_count() or 2))
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="flow"))
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop, sig.name)
        self._main = asyncio.create_task(self._run(), name=f"flow {self.name}")
        if self._stopping:
            self._given_up = True
            self._main.cancel()
        try:
            await self._main
            if self._stopping:
                self.log(f"stopped ({self._stop_reason}): {self._stopped_summary()}")
            return 0
        except asyncio.CancelledError:
            if not self._given_up:
                raise  # cancelled from outside, not by a stop request
            if self._doing is not None:
                self.log(f"stopped ({self._stop_reason}) while {self._doing}: nothing was read")
            else:
                self.log(f"stopped ({self._stop_reason}) with batches in flight uncommitted: {self._stopped_summary()}")
            return 0
        except ScoringUnavailable as exc:
            if not self._stopping:
                return await self._failed(str(exc))
            # Asked to stop while a service is gone: what was not committed is not acknowledged (queues deliver
            # it again) nor checkpointed (a batch source resumes before it). Nothing is lost; stop as asked.
            self.log(f"stopped with batches in flight unfinished: {exc}")
            return 0
        except NotRecorded as exc:
            self.log(f"{exc}: exiting with {NOT_RECORDED_EXIT}; started again, the flow reports it again")
            return NOT_RECORDED_EXIT
        except (FlowFailed, ChannelError, StepError, CheckpointError) as exc:
            return await self._failed(str(exc), INVALID_INPUT if isinstance(exc, InputMissing) else None)
        except Exception as exc:
            self.log(f"FAILED with an unexpected error: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            await self.reporter.complete(False, f"flow {self.name}: internal error: {type(exc).__name__}: {exc}")
            return 1
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._late_stop, sig.name)
            await self._close()

    def _stopped_summary(self) -> str:
        c = self.counters
        counts = f"read {c.read:,}, written {c.written:,}, failed {c.failed:,}"
        if self._source is not None and self._source.finite:
            return f"{counts}; committed up to record {self._position:,} (a restart resumes there)"
        return f"{counts}; what was committed is acknowledged"

    async def _failed(self, message: str, reason: str | None = None) -> int:
        self.log(f"FAILED: {message}")
        await self._send_progress("failed")
        await self.reporter.complete(False, f"flow {self.name}: {message}", reason)
        return 1

    async def _close(self) -> None:
        for closer in [
            *(sink.close for sink in self._sinks),
            *([self._dead.close] if self._dead else []),
            *([self._source.close] if self._source else []),
            *(step.close for step in self._steps),
            *([self._client.close] if self._client else []),
            *([self._exchange.stop] if self._exchange else []),
            self.reporter.close,
        ]:
            try:
                await closer()
            except Exception as exc:  # closing must not hide the real outcome
                self.log(f"while closing: {type(exc).__name__}: {exc}")

    # -- start ---------------------------------------------------------------------------------------------------

    def _context(self) -> ChannelContext:
        channels = [self.spec.source, *self.spec.sinks, *([self.spec.dead_letter] if self.spec.dead_letter else [])]
        context = ChannelContext(workdir=self.workdir, consumer=f"{self.name}-{socket.gethostname()}")
        if self.environ is not None:
            context.environ = self.environ
        if any(c.spec.type == "http" for c in channels):
            self._exchange = HttpExchange.from_environ(context.environ)
            self._exchange.fail_requests = self.spec.error_policy == "fail"
            context.exchange = self._exchange
        return context

    def _checkpoint_path(self) -> Path:
        folder = self.settings.checkpoint_dir
        if folder is None:
            folder = (self.values_path.parent if self.values_path else self.workdir) / "checkpoints"
        return folder / f"{self.name}.json"

    async def _run(self) -> None:
        spec = self.spec
        context = self._context()
        self._source = make_source(spec.source.name, spec.source.spec, context)
        self._sinks = [make_sink(c.name, c.spec, context) for c in spec.sinks]
        if spec.dead_letter is not None:
            self._dead = make_sink(spec.dead_letter.name, spec.dead_letter.spec, context)
        if any(s.type == "http" for s in self._sinks) and self._source.type != "http":
            raise FlowFailed("an http sink answers the requests of an http source: this flow's source is not one")
        urls = {name: self.service_urls[name] for name in spec.services if name in self.service_urls}
        missing = [name for name in spec.services if name not in urls]
        if missing:
            raise FlowFailed(
                f"no URL for scoring service(s) {', '.join(missing)}: the local backend passes them in "
                "MODELOPS_SERVICE_URLS (JSON name -> URL); or give --service-url NAME=URL"
            )
        if spec.services:
            self._client = V2Client(
                urls,
                retry_seconds=self.settings.score_retry_seconds,
                request_timeout=self.settings.request_timeout_seconds,
                on_retry=self._on_retry,
                on_request=lambda service, seconds: self.metrics.score_seconds.labels(self.name, service).observe(
                    seconds
                ),
            )
        models = {name: self.values.scoring_services[name].model for name in spec.services}
        self._steps = build_steps(spec.steps, models, self._client, self.workdir)
        if self.settings.metrics_port is not None:
            port = self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
            self.log(f"Prometheus metrics on http://{self.settings.metrics_host}:{port}/metrics")
        what = f"{self._source.describe()} -> {', '.join(s.describe() for s in self._sinks)}"
        self.log(
            f"starting: {what}; {len(self._steps)} step(s), batches of {spec.batch_size}, errors: {spec.error_policy}"
        )
        await self._send_progress("starting")  # the scheduler shows the flow and its outputs from now on
        if self._client is not None:
            self._doing = f"waiting for scoring service(s) {', '.join(spec.services)} to be ready"
            await self._client.wait_ready(spec.services, self.settings.ready_timeout_seconds, self.log)
        self._doing = "opening its source and sinks"

        source = self._source
        resumable = source.resumable
        if resumable:
            self._store = CheckpointStore(self._checkpoint_path())
            if self.fresh and self._store.path.exists():
                self.log(f"starting over (--fresh): removing the checkpoint {self._store.path}")
                self._store.remove()
            self._checkpoint = self._store.load()
            if self._checkpoint is not None and (
                self._checkpoint.job_id != self._identity() or self._checkpoint.flow != self.name
            ):
                self.log(f"ignoring the checkpoint {self._store.path}: it belongs to another job")
                self._checkpoint = None
        checkpoint = self._checkpoint
        if checkpoint is not None:
            self._check_outputs(checkpoint)
        if checkpoint is not None and checkpoint.finished:
            self.log(f"already finished before a restart: {checkpoint.message}")
            saved = checkpoint.counters
            self.counters = Counters(**{k: int(saved.get(k, 0)) for k in ("read", "written", "failed", "filtered")})
            self._resumed_from = self.counters.read
            await self._send_progress("done")  # the final counts, which the scheduler may never have received
            if not await self.reporter.complete(True, checkpoint.message):
                raise NotRecorded("the scoring was done, but the scheduler did not record its completion")
            return
        # A fresh start is a new run: a sink that keeps its own watermark (SQL) must not resume the old one.
        fresh_id = uuid.uuid4().hex if self.fresh else (self.link.job_id or uuid.uuid4().hex)
        run_id = checkpoint.run_id if checkpoint is not None else fresh_id
        if resumable and checkpoint is None:
            self._checkpoint = checkpoint = Checkpoint(run_id=run_id, job_id=self._identity(), flow=self.name)
            assert self._store is not None
            self._store.save(checkpoint)  # before any sink commits: the run id must survive a crash
        for sink in [*self._sinks, *([self._dead] if self._dead else [])]:
            state = checkpoint.sinks.get(sink.name) if checkpoint is not None else None
            self._watermarks[sink.name] = await sink.open(f"{run_id}/{self.name}/{sink.name}", state)
        start = min(self._watermarks.values()) if resumable and self._watermarks else 0
        if checkpoint is not None and checkpoint.ordinal:
            saved = checkpoint.counters
            self.counters = Counters(**{k: int(saved.get(k, 0)) for k in ("read", "written", "failed", "filtered")})
            extra = max(0, start - checkpoint.ordinal)  # rows a SQL sink committed after the last checkpoint
            self.counters.read += extra
            self.counters.written += extra
            self._read_written = self.counters.read
        if start:
            self.log(f"resuming at record {start:,} (sink watermarks: {self._watermarks})")
        self._position = start
        self._resumed_from = start
        self._started = time.monotonic()  # rates count from the first read, not from the services' start-up
        await source.open(start, checkpoint.source if checkpoint is not None else None)
        await self._send_progress("running")  # the source's size, as soon as it is known
        self._doing = None
        exhausted = await self._loop(source)
        if exhausted and source.finite:
            await self._finish()
        elif not source.finite:
            # A stream flow ends when it is stopped: what it wrote is complete (a file sink moves into place).
            for sink in [*self._sinks, *([self._dead] if self._dead else [])]:
                await sink.finish()

    def _check_outputs(self, checkpoint: Checkpoint) -> None:
        """Refuse a checkpoint whose sinks' output was deleted since: resuming (or, once finished, reporting
        success) on top of it would leave a partial output or none. `--fresh` starts over instead."""
        assert self._store is not None
        for sink in [*self._sinks, *([self._dead] if self._dead else [])]:
            gone = sink.output_gone(checkpoint.sinks.get(sink.name))
            if gone is not None:
                done = "finished" if checkpoint.finished else f"{checkpoint.ordinal:,} records in"
                raise FlowFailed(
                    f"the checkpoint {self._store.path} ({done}) says {sink.describe()} wrote output, but {gone}: "
                    "run the flow again with --fresh to start over"
                )

    def _identity(self) -> str:
        """Which run a checkpoint belongs to: the job id; without one (a flow run by hand), the flow's values."""
        if self.link.job_id:
            return self.link.job_id
        digest = hashlib.sha256(self.spec.model_dump_json(by_alias=True).encode()).hexdigest()
        return f"values-{digest[:16]}"

    def _on_retry(self, service: str, problem: str) -> None:
        self.metrics.score_retries.labels(self.name, service).inc()
        self.log(f"scoring service {service}: {problem}; retrying")

    # -- the loop ------------------------------------------------------------------------------------------------

    async def _loop(self, source: Source) -> bool:
        """Read, process and write until the source ends (True) or the flow is stopped (False).

        A reader task reads batches and starts their processing; this coroutine writes them in order as they
        are done, so a queue source waiting for new messages never delays the commit of finished batches."""
        interval = self.settings.commit_interval_seconds
        if interval is None:
            interval = 1.0 if source.finite else 0.0
        window: asyncio.Queue[tuple[SourceBatch, asyncio.Task[FlowBatch]] | None] = asyncio.Queue(
            maxsize=self.settings.in_flight
        )
        started: set[asyncio.Task[FlowBatch]] = set()
        outcome: dict[str, bool] = {"exhausted": False}

        async def read() -> None:
            try:
                while not self._stopping:
                    batch = await source.read(self.spec.batch_size)
                    if batch is None:
                        outcome["exhausted"] = not self._stopping
                        break
                    self.counters.read += batch.end - batch.start
                    self.metrics.read.inc(batch.end - batch.start)
                    task = asyncio.create_task(self._process(batch))
                    started.add(task)
                    task.add_done_callback(started.discard)
                    await window.put((batch, task))
                    self.metrics.in_flight.set(window.qsize())
            except asyncio.CancelledError:
                # The writer failed and cancelled us; it no longer reads the window, so an end marker put
                # into a full window would block this task forever (and the writer waiting for it).
                raise
            except BaseException:
                await window.put(None)  # a source error: the writer drains the window, then `await reader` raises
                raise
            await window.put(None)

        reader = asyncio.create_task(read(), name="reader")
        progress = asyncio.create_task(self._report_progress(), name="progress")
        last_commit = time.monotonic()
        try:
            while True:
                item = await window.get()
                if item is None:
                    break
                await self._write(*item)
                self.metrics.in_flight.set(window.qsize())
                if time.monotonic() - last_commit >= interval or (window.empty() and not source.finite):
                    await self._commit()
                    last_commit = time.monotonic()
            await reader  # a source error surfaces here
            await self._commit()
        except BaseException:
            reader.cancel()
            pending = list(started)
            for task in pending:
                task.cancel()
            with contextlib.suppress(BaseException):
                await reader
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
            raise
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
            self.metrics.in_flight.set(0)
        await self._send_progress("stopped" if self._stopping else "running")
        self._log_progress()
        return outcome["exhausted"]

    async def _process(self, batch: SourceBatch) -> FlowBatch:
        started = time.monotonic()
        current = FlowBatch(batch.records, batch.ordinals, batch, list(batch.errors))
        for step in self._steps:
            current = await step.apply(current)
        self.metrics.batches.observe(time.monotonic() - started)
        return current

    async def _write(self, batch: SourceBatch, task: asyncio.Task[FlowBatch]) -> None:
        """Hand one processed batch to the sinks, in source order, and apply the error policy."""
        result = await task
        errors = list(result.errors)
        out_rows = result.records.num_rows
        sink_failed: set[int] = set()
        for sink in self._sinks:
            records, ordinals = result.records, result.ordinals
            mark = self._watermarks.get(sink.name, 0)
            if mark > batch.start:
                keep = ordinals >= mark
                records, ordinals = records.filter(pa.array(keep)), ordinals[keep]
            good, kept, bad = conform(records, sink.schema, ordinals, _by_ordinal(batch, ordinals))
            for error in bad:
                error.step = f"sink {sink.name}"
                sink_failed.add(error.ordinal)
            errors.extend(bad)
            await sink.write(good, kept, batch.token)
        errors.sort(key=lambda e: e.ordinal)
        batch.errors = errors
        failed_ordinals = {e.ordinal for e in errors}
        if errors:
            await self._policy(batch, errors)
        written = out_rows - len(sink_failed)
        failed = len(failed_ordinals)
        filtered = max(0, (batch.end - batch.start) - written - failed)
        self.counters.written += written
        self.counters.failed += failed
        self.counters.filtered += filtered
        self.metrics.written.inc(written)
        self.metrics.failed.inc(failed)
        self.metrics.filtered.inc(filtered)
        self._uncommitted.append(batch)
        self._read_written += batch.end - batch.start
        self._position = batch.end
        self._dirty = True

    async def _policy(self, batch: SourceBatch, errors: list[RecordError]) -> None:
        policy = self.spec.error_policy
        source = self._source
        if policy == "fail":
            if source is not None and source.answers_errors:
                return  # the requests that sent these records get the errors (422)
            raise FlowFailed(_bad_records(errors))
        if policy == "skip" or self._dead is None:
            for error in errors:
                if self._logged_errors < self.settings.logged_errors:
                    self._logged_errors += 1
                    self.log(f"skipped {error.describe()}")
                    if self._logged_errors == self.settings.logged_errors:
                        self.log("further skipped records are counted, not logged")
            return
        dead = self._dead
        mark = self._watermarks.get(dead.name, 0)
        rows = [e for e in errors if e.ordinal >= mark]
        if not rows:
            return
        columns: dict[str, list[Any]] = {f.name: [] for f in dead.schema.fields}
        for error in rows:
            record = {k: _jsonable(v) for k, v in (error.record or {}).items()}
            reserved = {
                "error": error.describe(),
                "errorField": error.field,
                "errorStep": error.step,
                "position": error.where,
                "ordinal": error.ordinal,
                "record": orjson.dumps(record, default=str).decode(),
            }
            for name in columns:
                columns[name].append(reserved[name] if name in reserved else record.get(name))
        ordinals = np.array([e.ordinal for e in rows], dtype=np.int64)
        good, kept, bad = from_values(columns, len(rows), dead.schema, ordinals, lambda row: rows[row].where)
        if bad:
            raise FlowFailed(f"the dead-letter sink '{dead.name}' cannot take a failed record: {bad[0].describe()}")
        await dead.write(good, kept, batch.token)

    async def _commit(self) -> None:
        if not self._dirty:
            return
        sinks = [*self._sinks, *([self._dead] if self._dead else [])]
        # Sinks that cannot keep their own watermark first; a SQL sink commits rows and watermark together last.
        ordered = [s for s in sinks if not s.keeps_watermark] + [s for s in sinks if s.keeps_watermark]
        states: dict[str, dict[str, Any]] = {}
        for sink in ordered:
            states[sink.name] = await sink.commit(self._position)
        self.metrics.commits.inc()
        if self._store is not None and self._checkpoint is not None and self._source is not None:
            self._checkpoint.ordinal = self._position
            self._checkpoint.sinks = states
            self._checkpoint.source = self._source.state()
            # `read` counts batches still in the steps too; the checkpoint keeps what matches its ordinal.
            self._checkpoint.counters = {**self.counters.as_dict(), "read": self._read_written}
            await asyncio.to_thread(self._store.save, self._checkpoint)
        if self._source is not None:
            for batch in self._uncommitted:
                await self._source.ack(batch)
        self._uncommitted = []
        self._dirty = False

    async def _finish(self) -> None:
        for sink in [*self._sinks, *([self._dead] if self._dead else [])]:
            await sink.finish()
        elapsed = time.monotonic() - self._started
        c = self.counters
        done = c.read - self._resumed_from
        rate = done / elapsed if elapsed > 0 else 0.0
        outputs = ", ".join(s.describe() for s in self._sinks)
        message = (
            f"{c.written:,} records written to {outputs}; {c.failed:,} failed, {c.filtered:,} filtered out; "
            f"{c.read:,} read in {elapsed:.1f}s ({rate:,.0f} records/s)"
        )
        if self._store is not None and self._checkpoint is not None:
            self._checkpoint.finished = True
            self._checkpoint.message = message
            self._checkpoint.counters = c.as_dict()
            await asyncio.to_thread(self._store.save, self._checkpoint)
        self.log(f"done: {message}")
        await self._send_progress("done")
        if not await self.reporter.complete(True, message):
            raise NotRecorded("the scoring is done, but the scheduler did not record its completion")

    # -- progress ------------------------------------------------------------------------------------------------

    async def _report_progress(self) -> None:
        last_log = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.progress_interval_seconds)
            await self._send_progress()
            if time.monotonic() - last_log >= _LOG_EVERY_SECONDS:
                last_log = time.monotonic()
                self._log_progress()

    async def _send_progress(self, state: str | None = None) -> None:
        """One progress report to the scheduler (`state` changes the flow's state first).

        The last report of a run (done or failed) carries the final counts: it is retried until the scheduler
        accepts it, like the completion report (`Reporter.progress`)."""
        if state is not None:
            self._state = state
        final = self._state in ("done", "failed")
        await self.reporter.progress(self.counters, await self._progress_report(), until_accepted=final)

    async def _progress_report(self) -> dict[str, Any]:
        """The flow's state, its source's size in records (or bytes), its rate, outputs and services' figures."""
        c = self.counters
        report: dict[str, Any] = {
            "state": self._state,
            "outputs": [sink.describe() for sink in self._sinks],
            "services": {name: f.report() for name, f in self._client.figures.items()} if self._client else {},
        }
        if self._state != "starting":
            elapsed = time.monotonic() - self._started
            report["rate"] = round((c.read - self._resumed_from) / elapsed, 3) if elapsed > 0 else 0.0
        if self._state == "done":
            report.update(total=c.read, unit="records", done=c.read)  # exact now, whatever was estimated
            return report
        try:
            size = await self._source.size() if self._source is not None else None
        except Exception as exc:  # a progress figure must never fail the scoring
            self.log(f"cannot tell the size of the source: {type(exc).__name__}: {exc}")
            size = None
        if size is None:
            return report
        if size.unit == "bytes":
            report.update(total=size.total, unit="bytes", done=size.done if size.done is not None else 0)
        elif size.backlog:
            report.update(total=c.read + size.total, unit="records", done=c.read)
        else:
            report.update(total=max(size.total, c.read), unit="records", done=c.read)
        return report

    def _log_progress(self) -> None:
        c = self.counters
        elapsed = time.monotonic() - self._started
        rate = (c.read - self._resumed_from) / elapsed if elapsed > 0 else 0.0
        self.log(
            f"read {c.read:,}, written {c.written:,}, failed {c.failed:,}, filtered {c.filtered:,} ({rate:,.0f}/s)"
        )


def _by_ordinal(batch: SourceBatch, ordinals: np.ndarray) -> Callable[[int], str]:
    def locate(row: int) -> str:
        return batch.describe(int(ordinals[row]))

    return locate


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
