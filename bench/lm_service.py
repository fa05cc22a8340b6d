"""Benchmark: batched text generation in the scoring service (issue 14, "The LM service").

A GPT-2 causal LM with random weights built from a config (as the tests do), with a word-level tokenizer, in
two sizes: `tiny` (2 layers, 16 wide, 21 tokens) and `small` (GPT-2-small-sized: 12 layers, 768 wide, 50,257
tokens, 124M parameters). Prompts are 4 to 20 words; every request asks for `max_new_tokens` (default 16)
with greedy decoding, one prompt per request.

Two real scoring services run side by side as their own processes (`python -m scoring_services`), each
serving the same model folder with batching on: `batched` (the default `generationBatchSize`, 16) and
`one-at-a-time` (`generationBatchSize: 1`: one request per `generate`, the serving the issue's aim compares
with). Clients are asyncio tasks on httpx keep-alive connections, 1, 4 and 16 at a time, each sending its
next request when its answer came. The in-process peers run `model.generate` in this process, one prompt at a
time and all the prompts of a round together (left-padded, at most 16 per call). The runs are interleaved
(service batched, service one-at-a-time, per concurrency) after a warm-up.

Figures: generated tokens/s (the tokens of the continuations, counted by the tokenizer), requests/s, p50/p99
latency per request, and the ratio of batched to one-at-a-time serving. Nothing fails on a slow figure.

Usage:
    flock /tmp/bench.lock .venv/bin/python bench/lm_service.py [--model tiny|small] [--requests N]
                                                                [--new-tokens N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "good", "bad", "movie", "is", "was", "very", "not", "and", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<eos>"]


@dataclass
class Run:
    peer: str
    clients: int
    requests: int
    tokens: int
    seconds: float
    latencies: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def row(self) -> str:
        p50, p99 = (float(np.percentile(self.latencies, q)) * 1000 for q in (50, 99))
        return (
            f"| {self.peer} | {self.clients} | {self.requests} | {self.tokens_per_s:.1f} | "
            f"{self.requests / self.seconds:.2f} | {p50:.0f} | {p99:.0f} |"
        )


def build(folder: Path, size: str) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = [*SPECIAL, *WORDS]
    if size == "small":
        words += [f"w{i}" for i in range(50257 - len(words))]
        config = GPT2Config(vocab_size=len(words), n_positions=1024, eos_token_id=4, bos_token_id=4)
    else:
        config = GPT2Config(
            vocab_size=len(words), n_positions=256, n_embd=16, n_layer=2, n_head=2, eos_token_id=4, bos_token_id=4
        )
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="<eos>"
    ).save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def service(folder: Path, options: list[str], log: Path) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "scoring_services", "--model", f"lm=transformers:{folder.as_uri()}"]
    for item in options:
        args += ["--option", f"lm.{item}"]
    args += ["--port", str(port), "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the scoring service exited with {proc.returncode}: see {log}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the scoring service was not ready in 120 s: see {log}")
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def drive(url: str, prompts: list[str], clients: int, new_tokens: int, tokenizer: Any, peer: str) -> Run:
    pending = list(reversed(prompts))
    latencies: list[float] = []
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while pending:
            prompt = pending.pop()
            body = {
                "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [prompt]}],
                "parameters": {"max_new_tokens": new_tokens},
            }
            started = time.perf_counter()
            response = await http.post(f"{url}/v2/models/lm/infer", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{peer}: {response.status_code} {response.text}")
            text = response.json()["outputs"][0]["data"][0]
            tokens += len(tokenizer(text)["input_ids"])

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return Run(peer, clients, len(prompts), tokens, seconds, latencies)


def in_process(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int, batch: int) -> Run:
    import torch

    latencies: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        t0 = time.perf_counter()
        encoded = tokenizer(chunk, padding=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **encoded, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        texts = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
        tokens += sum(len(tokenizer(t)["input_ids"]) for t in texts)
        latencies += [time.perf_counter() - t0] * len(chunk)
    seconds = time.perf_counter() - started
    return Run(
        f"in-process generate, {'one at a time' if batch == 1 else f'batches of {batch}'}",
        1 if batch == 1 else batch,
        len(prompts),
        tokens,
        seconds,
        latencies,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--requests", type=int, default=64, help="requests per run (default 64)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-lm-"))
    folder = workdir / args.model
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        build(folder, args.model)
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) for _ in range(args.requests)]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
        f"{args.requests} requests per run, max_new_tokens {args.new_tokens}; load {os.getloadavg()}"
    )
    runs: list[Run] = []
    with ExitStack() as stack:
        batched = stack.enter_context(service(folder, [], workdir / "batched.log"))
        single = stack.enter_context(service(folder, ["generationBatchSize=1"], workdir / "single.log"))
        for url in (batched, single):  # warm-up
            asyncio.run(drive(url, prompts[:4], 4, args.new_tokens, tokenizer, "warm-up"))
        in_process(model, tokenizer, prompts[:4], args.new_tokens, 4)
        for clients in (int(c) for c in args.clients.split(",")):
            runs.append(asyncio.run(drive(batched, prompts, clients, args.new_tokens, tokenizer, "service, batched")))
            runs.append(
                asyncio.run(drive(single, prompts, clients, args.new_tokens, tokenizer, "service, one at a time"))
            )
        runs.append(in_process(model, tokenizer, prompts, args.new_tokens, 1))
        runs.append(in_process(model, tokenizer, prompts, args.new_tokens, 16))
    print("\n| peer | clients | requests | tokens/s | requests/s | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        print(run.row())
    print()
    by = {(r.peer, r.clients): r for r in runs}
    for clients in (int(c) for c in args.clients.split(",")):
        b, s = by[("service, batched", clients)], by[("service, one at a time", clients)]
        print(f"{clients} clients: batched / one-at-a-time serving = {b.tokens_per_s / s.tokens_per_s:.2f}x tokens/s")
    one = by[("in-process generate, one at a time", 1)]
    for clients in (int(c) for c in args.clients.split(",")):
        b = by[("service, batched", clients)]
        print(
            f"{clients} clients: service batched / in-process one at a time = {b.tokens_per_s / one.tokens_per_s:.2f}x"
        )
    print(f"load {os.getloadavg()}; workdir {workdir}")


if __name__ == "__main__":
    main()
