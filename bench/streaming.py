"""Benchmark: a streaming job, from a record produced to its scored record at the sink (issue 14).

Two transports, each a source and a sink of the same kind: a Redis stream (consumer group, XADD) and a
RabbitMQ durable queue (prefetch, publisher confirms). For each, two systems consume the input and write the
scored records to the output:

- **flow + service**: `modelops flow` running a streaming flow (the digits-stream example's shape: batches of
  `--batch-size`, one score step) against `modelops scoring-service` serving the digits RandomForest
  (100 trees, depth 10, random_state 0, trained here on `load_digits`; the `digits-rf` model of
  examples/digits, `predict` -> label, `predict_proba` -> probability with `reduce: max`);
- **bare loop**: one in-process loop with the same forest, the limit: Redis `XREADGROUP` (COUNT batch size,
  BLOCK) -> `predict_proba` -> pipelined `XADD` + `XACK`; RabbitMQ: aio-pika consumer (same prefetch) -> take
  what has arrived -> `predict_proba` -> persistent publishes with confirms -> `ack(multiple)`; the same
  at-least-once contract as the flow's channels.

Every step of a run uses fresh stream / queue names (deleted afterwards) and three processes besides the
system under test, all children of this one:

- a **producer** sends records `id, ts, p0..p63` (digit images drawn with a fixed seed) at a fixed rate for
  `--duration` seconds; `ts` is the wall-clock time (`time.time()`) just before the record's bytes are written
  to the socket. It speaks the wire protocols itself (RESP for Redis, AMQP 0-9-1 frames built with pamqp for
  RabbitMQ): redis-py and aio-pika top out at ~8,000 and ~12,000 records/s on a whole core here, below the
  rates to be offered;
- a **sink reader** reads the output (raw `XREAD BLOCK` replies read as they arrive / a no-ack AMQP consumer)
  and keeps, per record, `arrival - ts`, the arrival being the time its reply or frame came off the socket;
- the system under test (flow + service, or the bare loop), started and ready (consumer group created /
  queue consumed) before the producer starts.

Figures per step: the offered rate (what the producer achieved), the sustained rate (records that arrived
at the sink in the steady window, after `--warmup` seconds, per second), produce-to-sink latency p50/p99/max
of the records produced in the steady window, and the backlog (records produced minus records arrived) over
the steady window: its slope by least squares. The backlog **grows** when that slope exceeds 2% of the
offered rate (and 20 records/s): the system does not keep up. Records still missing when the drain time is
over count with their age at that moment (so p99 is a lower bound, marked `>=`).

The search for the rate where the backlog starts to grow: the issue's rates (1,000, 5,000, 20,000/s), then
doubling above the highest sustained rate up to `--max-rate` until one grows, then `--refine` bisections
between the highest sustained and the lowest growing rate. A system's capacity is the highest sustained
(sink) rate of any of its steps (a step that grows gives the rate at which it drained).

CPU seconds of each process (from /proc, utime + stime) are shown per 1,000 records, to see where the time
goes. The load average is printed before and after each step.

Usage:
    flock /tmp/bench.lock .venv/bin/python bench/streaming.py [--transports redis,rabbitmq]
        [--systems flow,bare] [--duration 10] [--rates 1000,5000,20000] [--refine 2] [--batch-size 500]
Nothing fails on a slow figure (benchmarks report, they do not gate).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELOPS = str(Path(sys.executable).with_name("modelops"))
REDIS_URL = os.environ.get("MODELOPS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("MODELOPS_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PIXELS = [f"p{i}" for i in range(64)]
GROUP = "scorers"
SERVICE = "digits-rf"
FLOW = "digits-stream"
GROWTH_SHARE = 0.02
"""The backlog grows when its slope over the steady window is above this share of the offered rate ..."""
GROWTH_FLOOR = 20.0
"""... and above this many records/s (noise of a few batches in flight at low rates)."""


# ---------------------------------------------------------------------------------------------- wire helpers


def _redis_address() -> tuple[str, int, int]:
    from urllib.parse import urlparse

    url = urlparse(REDIS_URL)
    db = int(url.path.lstrip("/") or 0)
    return url.hostname or "127.0.0.1", url.port or 6379, db


def _bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


class Amqp:
    """A minimal blocking AMQP 0-9-1 client on one channel (pamqp frames): enough to publish without confirms
    and to consume without acks as fast as the socket goes, which aio-pika cannot on one core."""

    def __init__(self, url: str) -> None:
        from urllib.parse import unquote, urlparse

        from pamqp import commands, frame, header

        self.commands, self.frame = commands, frame
        parts = urlparse(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.sock.sendall(frame.marshal(header.ProtocolHeader(), 0))
        self.expect(commands.Connection.Start)
        user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
        self.send(
            commands.Connection.StartOk(
                client_properties={"product": "modelops bench"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
                locale="en_US",
            )
        )
        tune = self.expect(commands.Connection.Tune)
        self.frame_max = tune.frame_max or 131072
        self.send(commands.Connection.TuneOk(channel_max=1, frame_max=self.frame_max, heartbeat=0))
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.send(commands.Connection.Open(virtual_host=vhost))
        self.expect(commands.Connection.OpenOk)
        self.send(commands.Channel.Open(), 1)
        self.expect(commands.Channel.OpenOk)

    def send(self, command: Any, channel: int = 0) -> None:
        self.sock.sendall(self.frame.marshal(command, channel))

    def next_frame(self) -> Any:
        while True:
            if self.buffer:
                with contextlib.suppress(Exception):  # pamqp raises on a partial frame
                    consumed, _channel, value = self.frame.unmarshal(self.buffer)
                    self.buffer = self.buffer[consumed:]
                    return value
            data = self.sock.recv(1 << 16)
            if not data:
                raise SystemExit("RabbitMQ closed the connection")
            self.buffer += data

    def expect(self, kind: type) -> Any:
        while True:
            value = self.next_frame()
            if isinstance(value, kind):
                return value
            if isinstance(value, self.commands.Connection.Close | self.commands.Channel.Close):
                raise SystemExit(f"RabbitMQ refused: {value.reply_code} {value.reply_text}")

    def declare(self, queue: str, passive: bool = False) -> Any:
        self.send(self.commands.Queue.Declare(queue=queue, durable=True, passive=passive), 1)
        return self.expect(self.commands.Queue.DeclareOk)

    def delete(self, queue: str) -> None:
        self.send(self.commands.Queue.Delete(queue=queue), 1)
        self.expect(self.commands.Queue.DeleteOk)

    def publish_prefix(self, queue: str) -> bytes:
        return bytes(self.frame.marshal(self.commands.Basic.Publish(exchange="", routing_key=queue), 1))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(self.commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0))
            self.sock.close()


def _content(prefix: bytes, body: bytes) -> bytes:
    """Basic.Publish (pre-marshalled), a content header without properties, one body frame, on channel 1."""
    head = struct.pack(">BHIHHQH", 2, 1, 14, 60, 0, len(body), 0) + b"\xce"
    return prefix + head + struct.pack(">BHI", 3, 1, len(body)) + body + b"\xce"


# ---------------------------------------------------------------------------------------------- roles


def images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.asarray(load_digits().data, dtype=np.int64)


def producer(transport: str, name: str, rate: float, duration: float, out: Path) -> None:
    """Send records at `rate` for `duration` seconds; write the send log (time, cumulative count) to `out`."""
    pics = images()
    picks = np.random.default_rng(11).integers(0, len(pics), size=4096)
    total = int(rate * duration)
    if transport == "redis":
        host, port, db = _redis_address()
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if db:
            sock.sendall(_resp(b"SELECT", b"%d" % db))
        parts = [
            b"".join(_bulk(p.encode()) + _bulk(b"%d" % v) for p, v in zip(PIXELS, pic, strict=True)) for pic in pics
        ]
        head = b"*%d\r\n" % (3 + 2 * 66) + _bulk(b"XADD") + _bulk(name.encode()) + _bulk(b"*")

        def encode(n: int, ts: bytes) -> bytes:
            return head + _bulk(b"id") + _bulk(b"%d" % n) + _bulk(b"ts") + _bulk(ts) + parts[picks[n % 4096]]

        replies_per_record = 2  # "$<len>" and the entry id
    else:
        amqp = Amqp(AMQP_URL)
        amqp.declare(name)
        sock = amqp.sock
        prefix = amqp.publish_prefix(name)
        parts = [b"".join(b',"%s":%d' % (p.encode(), v) for p, v in zip(PIXELS, pic, strict=True)) for pic in pics]

        def encode(n: int, ts: bytes) -> bytes:
            return _content(prefix, b'{"id":%d,"ts":%s%s}' % (n, ts, parts[picks[n % 4096]]))

        replies_per_record = 0
    sock.setblocking(False)
    replies = 0
    errors = b""
    log_t: list[float] = []
    log_n: list[int] = []
    sent = 0
    started = time.time() + 0.05
    while time.time() < started:
        pass
    cpu = time.process_time()
    while sent < total:
        now = time.time()
        due = min(total, int((now - started) * rate) + 1)
        if due > sent:
            ts = b"%.6f" % now
            data = b"".join(encode(n, ts) for n in range(sent, due))
            sock.setblocking(True)
            sock.sendall(data)
            sock.setblocking(False)
            sent = due
            log_t.append(now)
            log_n.append(sent)
        with contextlib.suppress(BlockingIOError):
            while chunk := sock.recv(1 << 20):
                replies += chunk.count(b"\r\n")
                if b"-ERR" in chunk or b"\r\n-" in chunk:
                    errors += chunk[:200]
        wait = started + sent / rate - time.time()
        if wait > 0:
            time.sleep(wait)
    ended = time.time()
    cpu = time.process_time() - cpu
    sock.setblocking(True)
    sock.settimeout(30)
    while replies < replies_per_record * total:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        replies += chunk.count(b"\r\n")
        if b"-ERR" in chunk or b"\r\n-" in chunk:
            errors += chunk[:200]
    if errors:
        raise SystemExit(f"the producer's writes failed: {errors[:300]!r}")
    np.savez(out, t=np.array(log_t), n=np.array(log_n), started=started, ended=ended, total=total, cpu=cpu)


class _Stop:
    def __init__(self) -> None:
        self.stopping = False
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def stop(self, *_: object) -> None:
        self.stopping = True


def _write_count(path: Path, count: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(count))
    tmp.replace(path)


def sink_reader(transport: str, name: str, out: Path) -> None:
    """Read the output until SIGTERM; per record: produce time and arrival time. Writes its count every 0.1 s
    to `out`.count (how the driver knows the output is drained)."""
    stop = _Stop()
    produced: list[float] = []
    arrived: list[float] = []
    ids: list[int] = []
    counter = out.with_suffix(".count")
    last_count = time.monotonic()
    if transport == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        conn = client.connection_pool.get_connection()
        last = b"0-0"
        while not stop.stopping:
            conn.send_command("XREAD", "COUNT", 10000, "BLOCK", 100, "STREAMS", name, last)
            while not conn.can_read(timeout=0.2):
                pass
            now = time.time()
            reply = conn.read_response()
            if reply:  # RESP3 (redis-py 8's default): {stream: entries}; RESP2: [[stream, entries]]
                for _stream, entries in reply.items() if isinstance(reply, dict) else reply:
                    for entry_id, fields in entries:
                        values = dict(zip(fields[::2], fields[1::2], strict=True))
                        produced.append(float(values[b"ts"]))
                        ids.append(int(values[b"id"]))
                        arrived.append(now)
                        last = entry_id
            if time.monotonic() - last_count > 0.1:
                _write_count(counter, len(arrived))
                last_count = time.monotonic()
        client.connection_pool.release(conn)
        client.close()
    else:
        import orjson

        amqp = Amqp(AMQP_URL)
        amqp.declare(name)
        amqp.send(amqp.commands.Basic.Consume(queue=name, no_ack=True), 1)
        amqp.expect(amqp.commands.Basic.ConsumeOk)
        sock = amqp.sock
        sock.settimeout(0.1)
        buffer = amqp.buffer
        while not stop.stopping:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                data = b""
            now = time.time()
            if data:
                buffer += data
                pos = 0
                while len(buffer) - pos >= 8:
                    kind, _channel, size = struct.unpack_from(">BHI", buffer, pos)
                    if len(buffer) - pos < 8 + size:
                        break
                    if kind == 3:
                        record = orjson.loads(buffer[pos + 7 : pos + 7 + size])
                        produced.append(float(record["ts"]))
                        ids.append(int(record["id"]))
                        arrived.append(now)
                    pos += 8 + size
                buffer = buffer[pos:]
            if time.monotonic() - last_count > 0.1:
                _write_count(counter, len(arrived))
                last_count = time.monotonic()
        amqp.close()
    _write_count(counter, len(arrived))
    np.savez(out, produced=np.array(produced), arrived=np.array(arrived), ids=np.array(ids, dtype=np.int64))


def bare_loop(transport: str, source: str, sink: str, model: Path, batch_size: int, prefetch: int) -> None:
    """The limit: read what has arrived (at most a batch), predict_proba, write, acknowledge; until SIGTERM."""
    import joblib

    forest = joblib.load(model)
    classes = forest.classes_
    stop = _Stop()
    if transport == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        with contextlib.suppress(redis.ResponseError):
            client.xgroup_create(source, GROUP, id="0", mkstream=True)
        keys = [p.encode() for p in PIXELS]
        print("ready", flush=True)
        while not stop.stopping:
            reply = client.xreadgroup(GROUP, "bare", {source: ">"}, count=batch_size, block=500)
            if not reply:
                continue
            entries = reply[0][1]
            rows = [fields for _, fields in entries]
            features = np.array([[f[k] for k in keys] for f in rows]).astype(np.float32)
            proba = forest.predict_proba(features)
            labels, best = classes[proba.argmax(axis=1)], proba.max(axis=1)
            pipe = client.pipeline(transaction=False)
            for f, label, prob in zip(rows, labels.tolist(), best.tolist(), strict=True):
                pipe.xadd(sink, {"id": f[b"id"], "ts": f[b"ts"], "label": label, "probability": repr(prob)})
            pipe.xack(source, GROUP, *(entry_id for entry_id, _ in entries))
            pipe.execute()
        client.close()
        return

    import asyncio

    import aio_pika
    import orjson

    async def run() -> None:
        connection = await aio_pika.connect_robust(AMQP_URL)
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=prefetch)
        queue = await consume.declare_queue(source, durable=True)
        publish = await connection.channel(publisher_confirms=True)
        await publish.declare_queue(sink, durable=True)
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(inbox.put)
        print("ready", flush=True)
        exchange = publish.default_exchange
        while not stop.stopping:
            try:
                messages = [await asyncio.wait_for(inbox.get(), 0.5)]
            except TimeoutError:
                continue
            while len(messages) < batch_size and not inbox.empty():
                messages.append(inbox.get_nowait())
            records = [orjson.loads(m.body) for m in messages]
            features = np.array([[r[p] for p in PIXELS] for r in records], dtype=np.float32)
            proba = forest.predict_proba(features)
            labels, best = classes[proba.argmax(axis=1)].tolist(), proba.max(axis=1).tolist()
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            orjson.dumps({"id": r["id"], "ts": r["ts"], "label": label, "probability": prob}),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            content_type="application/json",
                        ),
                        routing_key=sink,
                    )
                    for r, label, prob in zip(records, labels, best, strict=True)
                )
            )
            await messages[-1].ack(multiple=True)
        await connection.close()

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------- set-up


def train(workdir: Path) -> Path:
    """The digits example's forest (deterministic), trained here so the example's artifacts are left alone."""
    path = workdir / "digits-rf.joblib"
    if path.exists():
        return path
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    digits = load_digits()
    forest = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0, n_jobs=1)
    forest.fit(digits.data.astype(np.float32), digits.target)
    joblib.dump(forest, path)
    return path


def write_bundle(workdir: Path, transport: str, model: Path, batch_size: int, prefetch: int) -> Path:
    """A streaming pipeline: `transport` source -> score with digits-rf -> `transport` sink, `ts` carried."""
    import yaml

    bundle = workdir / f"bundle-{transport}"
    bundle.mkdir(parents=True, exist_ok=True)
    secret = {"secretRef": {"name": "bench-broker", "key": "url"}}
    if transport == "redis":
        source_opts: dict[str, Any] = {"url": secret, "stream": "${params.input}", "consumerGroup": GROUP}
        sink_opts: dict[str, Any] = {"url": secret, "stream": "${params.output}"}
    else:
        source_opts = {"url": secret, "queue": "${params.input}", "prefetch": prefetch}
        sink_opts = {"url": secret, "queue": "${params.output}"}
    pixels = [{"name": p, "type": "integer", "format": "int32"} for p in PIXELS]
    ident = [{"name": "id", "type": "integer", "format": "int64"}, {"name": "ts", "type": "number", "format": "double"}]
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "modelops/v1",
            "kind": "ScoringPipeline",
            "metadata": {"name": f"bench-stream-{transport}"},
            "spec": {
                "mode": "streaming",
                "flows": [FLOW],
                "parameters": [
                    {"name": "input", "type": "string", "default": "in"},
                    {"name": "output", "type": "string", "default": "out"},
                ],
            },
        },
        {
            "apiVersion": "modelops/v1",
            "kind": "DataChannel",
            "metadata": {"name": "bench-in"},
            "spec": {
                "direction": "source",
                "type": transport,
                transport: source_opts,
                "schema": {"fields": ident + pixels},
            },
        },
        {
            "apiVersion": "modelops/v1",
            "kind": "DataChannel",
            "metadata": {"name": "bench-out"},
            "spec": {
                "direction": "sink",
                "type": transport,
                transport: sink_opts,
                "schema": {
                    "fields": [
                        *ident,
                        {"name": "label", "type": "integer", "format": "int64"},
                        {"name": "probability", "type": "number", "format": "double"},
                    ]
                },
            },
        },
        {
            "apiVersion": "modelops/v1",
            "kind": "ScoringFlow",
            "metadata": {"name": FLOW},
            "spec": {
                "source": "bench-in",
                "sinks": ["bench-out"],
                "batchSize": batch_size,
                "errorPolicy": {"mode": "fail"},
                "steps": [
                    {
                        "name": "score",
                        "score": {
                            "model": SERVICE,
                            "inputs": [{"input": "input", "fields": {"from": "p0", "to": "p63"}}],
                            "outputs": [
                                {"output": "predict", "field": "label"},
                                {"output": "predict_proba", "field": "probability", "reduce": "max"},
                            ],
                        },
                    }
                ],
            },
        },
    ]
    models = list(yaml.safe_load_all((ROOT / "examples" / "digits" / "models" / "digits-rf.yaml").read_text()))
    model_doc = next(m for m in models if m["metadata"]["name"] == SERVICE)  # the example's model, as it is
    model_doc["spec"]["uri"] = model.as_uri()
    model_doc["spec"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    docs.append(model_doc)
    (bundle / "pipeline.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return bundle


def render(bundle: Path, out: Path, params: dict[str, str]) -> Path:
    pairs = [part for key, value in params.items() for part in ("--param", f"{key}={value}")]
    done = subprocess.run([MODELOPS, "ir", "render", str(bundle), "-o", str(out), *pairs], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"modelops ir render {bundle} failed:\n{done.stdout.decode()}{done.stderr.decode()}")
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its own threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def started(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def service(values: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    log = workdir / "service.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [MODELOPS, "scoring-service", "--values", str(values), "--service", SERVICE, "--port", str(port)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/v2/models/{SERVICE}/ready", timeout=1, trust_env=False).status_code == 200:
                return proc, url
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"the scoring service did not start: see {log}")
        time.sleep(0.1)


def consumed(transport: str, name: str) -> bool:
    """Whether something consumes the input: the consumer group exists (Redis), a consumer is on it (RabbitMQ)."""
    if transport == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            return any(g["name"] == GROUP.encode() for g in client.xinfo_groups(name))
        except redis.ResponseError:
            return False
        finally:
            client.close()
    amqp = Amqp(AMQP_URL)
    try:
        return bool(amqp.declare(name).consumer_count)
    finally:
        amqp.close()


def backlog_of(transport: str, name: str) -> int:
    """Entries of the input not yet delivered to the group (Redis 7 lag) / messages ready (RabbitMQ)."""
    if transport == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        try:
            groups = client.xinfo_groups(name)
            return int(next((g.get("lag") or 0 for g in groups if g["name"] == GROUP.encode()), 0))
        except redis.ResponseError:
            return 0
        finally:
            client.close()
    amqp = Amqp(AMQP_URL)
    try:
        return int(amqp.declare(name).message_count)
    finally:
        amqp.close()


def clean(transport: str, names: list[str]) -> None:
    if transport == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.delete(*names)
        client.close()
        return
    amqp = Amqp(AMQP_URL)
    for name in names:
        amqp.delete(name)
    amqp.close()


# ---------------------------------------------------------------------------------------------- one step


@dataclass
class Step:
    transport: str
    system: str
    rate: int
    offered: float = 0.0
    sustained: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    censored: int = 0
    """Records of the steady window that had not arrived when the drain time was over."""
    slope: float = 0.0
    """The backlog's growth over the steady window, records/s."""
    backlog_end: int = 0
    """Records produced but not arrived when the producer stopped."""
    grows: bool = False
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds per 1,000 records produced, per process."""
    load: tuple[float, float] = (0.0, 0.0)
    note: str = ""


def analyse(step: Step, send: Any, sink: Any, warmup: float, drained_at: float) -> None:
    started, ended, total = float(send["started"]), float(send["ended"]), int(send["total"])
    log_t, log_n = send["t"], send["n"]
    produced, arrived = sink["produced"], sink["arrived"]
    step.offered = total / (ended - started)
    lo, hi = started + warmup, ended
    window = (produced >= lo) & (produced <= hi)
    step.sustained = float(((arrived >= lo) & (arrived <= hi)).sum() / (hi - lo))
    latency = (arrived[window] - produced[window]) * 1000
    # The window's records that never arrived: sent at the log's times, counted from what did arrive.
    expected = int(np.interp(hi, log_t, log_n) - np.interp(lo, log_t, log_n))
    step.censored = max(0, expected - int(window.sum()))
    if step.censored:
        age = (drained_at - np.linspace(lo, hi, step.censored)) * 1000
        latency = np.concatenate([latency, age])
    if len(latency):
        step.p50_ms, step.p99_ms, step.max_ms = (float(v) for v in np.percentile(latency, [50, 99, 100]))
    grid = np.arange(lo, hi, 0.1)
    if len(grid) >= 5:
        backlog = np.interp(grid, log_t, log_n) - np.searchsorted(np.sort(arrived), grid)
        step.slope = float(np.polyfit(grid - lo, backlog, 1)[0])
    step.backlog_end = int(total - (arrived <= ended).sum())
    step.grows = step.slope > max(GROWTH_SHARE * step.rate, GROWTH_FLOOR) or step.censored > 0


def run_step(
    transport: str,
    system: str,
    rate: int,
    args: argparse.Namespace,
    model: Path,
    bundle: Path,
    service_proc: subprocess.Popen[bytes] | None,
    service_url: str | None,
) -> Step:
    workdir: Path = args.workdir
    tag = secrets.token_hex(4)
    names = [f"bench:stream:{tag}:in", f"bench:stream:{tag}:out"]
    if transport == "rabbitmq":
        names = [n.replace(":", "-") for n in names]
    source, sink = names
    step = Step(transport, system, rate)
    load_before = os.getloadavg()[0]
    here = workdir / f"{transport}-{system}-{rate}-{tag}"
    here.mkdir(parents=True)
    broker_url = REDIS_URL if transport == "redis" else AMQP_URL
    try:
        if transport == "rabbitmq":  # both queues exist before anyone consumes or publishes (durable, no args)
            amqp = Amqp(AMQP_URL)
            amqp.declare(source)
            amqp.declare(sink)
            amqp.close()
        me = [sys.executable, __file__]
        with started(
            [*me, "--role", "sink", "--transport", transport, "--name", sink, "--out", str(here / "sink.npz")],
            here / "sink.log",
        ) as reader:
            if system == "flow":
                values = render(bundle, here / "values.yaml", {"input": source, "output": sink})
                env = {
                    **os.environ,
                    "MODELOPS_SECRET_BENCH_BROKER_URL": broker_url,
                    "MODELOPS_SERVICE_URLS": json.dumps({SERVICE: service_url}),
                    "PYTHONUNBUFFERED": "1",
                }
                cmd = [MODELOPS, "flow", "--values", str(values), "--flow", FLOW, "--checkpoint-dir", str(here / "ck")]
            else:
                env = None
                cmd = [
                    *me, "--role", "bare", "--transport", transport, "--name", source, "--sink", sink,
                    "--model", str(model), "--batch-size", str(args.batch_size), "--prefetch", str(args.prefetch),
                ]  # fmt: skip
            with started(cmd, here / f"{system}.log", env) as proc:
                deadline = time.monotonic() + 60
                while not consumed(transport, source):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"{system} did not start consuming: see {here / (system + '.log')}")
                    time.sleep(0.05)
                time.sleep(0.3)  # the sink reader is connected well before; the system reads
                watched = {system: proc.pid, "producer": 0, "sink reader": reader.pid}
                if service_proc is not None and system == "flow":
                    watched["service"] = service_proc.pid
                cpu0 = {k: cpu_seconds(pid) for k, pid in watched.items() if pid}
                send_out = here / "send.npz"
                producer_cmd = [*me, "--role", "producer", "--transport", transport, "--name", source]
                producer_cmd += ["--rate", str(rate), "--duration", str(args.duration), "--out", str(send_out)]
                prod = subprocess.Popen(producer_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                prod.wait()
                if prod.returncode != 0:
                    raise SystemExit(f"the producer failed: {prod.stderr.read().decode() if prod.stderr else ''}")
                total = int(rate * args.duration)
                drain_deadline = time.monotonic() + args.drain
                count_file = (here / "sink.npz").with_suffix(".count")
                while time.monotonic() < drain_deadline:
                    with contextlib.suppress(OSError, ValueError):
                        if int(count_file.read_text()) >= total:
                            break
                    if proc.poll() is not None:
                        raise SystemExit(f"{system} exited during the run: see {here / (system + '.log')}")
                    time.sleep(0.05)
                drained_at = time.time()
                cpu1 = {k: cpu_seconds(pid) for k, pid in watched.items() if pid}
                left = backlog_of(transport, source)
            reader.send_signal(signal.SIGTERM)
            reader.wait(30)
        send = np.load(send_out)
        got = np.load(here / "sink.npz")
        analyse(step, send, got, args.warmup, drained_at)
        per = 1000 / max(1, total)
        step.cpu = {k: (cpu1[k] - cpu0[k]) * per for k in cpu1}
        step.cpu["producer"] = float(send["cpu"]) * per  # its sending loop only
        ids = got["ids"]
        dupes = len(ids) - len(np.unique(ids))
        notes = []
        if dupes:
            notes.append(f"{dupes} duplicates")
        if left:
            notes.append(f"{left:,} never read")
        step.note = ", ".join(notes)
    finally:
        clean(transport, names)
    step.load = (load_before, os.getloadavg()[0])
    return step


def show(step: Step) -> None:
    ge = ">=" if step.censored else "  "
    cpu = " ".join(f"{k} {v:.2f}" for k, v in step.cpu.items())
    print(
        f"{step.transport:<9} {step.system:<5} {step.rate:>7,} {step.offered:>9,.0f} {step.sustained:>10,.0f} "
        f"{step.p50_ms:>8.1f} {ge}{step.p99_ms:>7.1f} {ge}{step.max_ms:>8.1f} {step.slope:>9,.0f} "
        f"{'GROWS' if step.grows else 'steady':<6} {step.load[0]:>4.2f}->{step.load[1]:<4.2f} | cpu s/1000: {cpu}"
        + (f" | {step.note}" if step.note else ""),
        flush=True,
    )


HEADER = (
    f"{'transport':<9} {'sys':<5} {'rate':>7} {'offered':>9} {'sustained':>10} {'p50 ms':>8} {'p99 ms':>9} "
    f"{'max ms':>10} {'slope/s':>9} {'backlog':<6} {'load':<10}"
)


def search(run: Callable[[int], Step], rates: list[int], refine: int, max_rate: int) -> list[Step]:
    """The issue's rates, doubling above the highest sustained one, then bisections: every step run."""
    steps = [run(rate) for rate in rates]
    ok = [s.rate for s in steps if not s.grows]
    bad = [s.rate for s in steps if s.grows]
    lo = max(ok, default=0)
    hi = min((r for r in bad if r > lo), default=None)
    while hi is None and lo and lo * 2 <= max_rate:
        step = run(lo * 2)
        steps.append(step)
        if step.grows:
            hi = step.rate
        else:
            lo = step.rate
    for _ in range(refine):
        if hi is None or not lo or hi - lo <= max(500, lo // 10):
            break
        mid = int(round((lo * hi) ** 0.5 / 500) * 500)
        if mid in (lo, hi):
            break
        step = run(mid)
        steps.append(step)
        if step.grows:
            hi = mid
        else:
            lo = mid
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transports", default="redis,rabbitmq")
    parser.add_argument("--systems", default="flow,bare")
    parser.add_argument("--rates", default="1000,5000,20000")
    parser.add_argument("--refine", type=int, default=2, help="bisections of the rate where the backlog grows")
    parser.add_argument("--max-rate", type=int, default=80_000)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of production per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds left out of the figures at the start")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for the output after production")
    parser.add_argument("--batch-size", type=int, default=500, help="flow batchSize and the bare loop's read size")
    parser.add_argument("--prefetch", type=int, default=1000, help="RabbitMQ prefetch of the flow and the bare loop")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "streaming")
    parser.add_argument("--role", choices=["producer", "sink", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--transport", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "producer":
        producer(args.transport, args.name, args.rate, args.duration, args.out)
        return
    if args.role == "sink":
        sink_reader(args.transport, args.name, args.out)
        return
    if args.role == "bare":
        bare_loop(args.transport, args.name, args.sink, args.model, args.batch_size, args.prefetch)
        return

    import shutil

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    args.workdir = args.workdir.resolve()
    transports = args.transports.split(",")
    systems = args.systems.split(",")
    rates = [int(r) for r in args.rates.split(",")]
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; "
        f"{args.duration:g}s per step ({args.warmup:g}s warm-up), batch size {args.batch_size}, "
        f"RabbitMQ prefetch {args.prefetch}",
        flush=True,
    )
    model = train(args.workdir)
    bundles = {t: write_bundle(args.workdir, t, model, args.batch_size, args.prefetch) for t in transports}
    service_proc: subprocess.Popen[bytes] | None = None
    service_url: str | None = None
    results: list[Step] = []
    try:
        if "flow" in systems:
            first = render(bundles[transports[0]], args.workdir / "values-service.yaml", {})
            service_proc, service_url = service(first, args.workdir)
        print(HEADER, flush=True)
        for transport in transports:
            for system in systems:

                def run(rate: int, transport: str = transport, system: str = system) -> Step:
                    step = run_step(transport, system, rate, args, model, bundles[transport], service_proc, service_url)
                    show(step)
                    return step

                results.extend(search(run, rates, args.refine, args.max_rate))
    finally:
        if service_proc is not None:
            service_proc.send_signal(signal.SIGTERM)
            try:
                service_proc.wait(30)
            except subprocess.TimeoutExpired:
                service_proc.kill()
    summary(results, transports, systems)
    (args.workdir / "results.json").write_text(json.dumps([asdict(s) for s in results], indent=2))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def summary(results: list[Step], transports: list[str], systems: list[str]) -> None:
    print()
    print(f"{'transport':<9} {'system':<6} {'max steady':>11} {'growing':>8} {'capacity':>10} {'p99 @1000/s':>12}")
    figures: dict[tuple[str, str], dict[str, float]] = {}
    for transport in transports:
        for system in systems:
            steps = [s for s in results if s.transport == transport and s.system == system]
            steady = max((s.rate for s in steps if not s.grows), default=0)
            growing = min((s.rate for s in steps if s.grows and s.rate > steady), default=0)
            capacity = max((s.sustained for s in steps), default=0.0)
            at_1000 = next((s for s in steps if s.rate == 1000), None)
            p99 = at_1000.p99_ms if at_1000 else float("nan")
            figures[transport, system] = {"steady": steady, "capacity": capacity, "p99": p99}
            print(f"{transport:<9} {system:<6} {steady:>11,} {growing or '-':>8} {capacity:>10,.0f} {p99:>10.1f}ms")
    for transport in transports:
        if (transport, "flow") in figures and (transport, "bare") in figures:
            flow, bare = figures[transport, "flow"], figures[transport, "bare"]
            ratio = flow["capacity"] / bare["capacity"] if bare["capacity"] else float("nan")
            steady = flow["steady"] / bare["steady"] if bare["steady"] else float("nan")
            print(
                f"{transport}: flow / bare loop capacity = {ratio:.2f}x (aim >= 0.7x), max steady rate {steady:.2f}x; "
                f"flow p99 at 1,000/s {flow['p99']:.1f} ms (aim <= 50 ms)"
            )


if __name__ == "__main__":
    main()
