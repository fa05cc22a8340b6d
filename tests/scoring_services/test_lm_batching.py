"""Batched text generation: concurrent requests to a causal LM are left-padded and generated together.

The model is a tiny GPT-2 built from a config with random weights. Each test holds the model's first
`generate` call until the other requests are queued behind it (read from the queue-depth metric), so the next
call coalesces them whatever the timing; the calls' batch sizes are recorded around the real `generate`.
Answers are compared with one in-process `generate` per prompt.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scoring_kit import infer_body, model_config, served, settings

from scoring_services.app import ScoringApp
from scoring_services.settings import ScoringSettings
from scoring_services.types import BatchingConfig, ModelConfig

pytest.importorskip("transformers")

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "good", "bad", "movie", "is", "was", "very", "not", "and", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "<eos>"]
EOS = 4
#: Prompts of 1 to 12 words.
PROMPTS = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(1 + i)) for i in range(12)]


def _folder(folder: Path, extra_words: list[str]) -> Path:
    """A word-level tokenizer over WORDS (+ extra_words) and a GPT-2 over WORDS alone, random weights."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate([*SPECIAL, *WORDS, *extra_words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="<eos>"
    )
    tokenizer.save_pretrained(folder)
    config = GPT2Config(
        vocab_size=len(SPECIAL) + len(WORDS), n_positions=64, n_embd=16, n_layer=2, n_head=2, eos_token_id=EOS
    )
    config.bos_token_id = EOS
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("lm"), [])


@pytest.fixture(scope="module")
def mismatched_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tokenizer knows 'boom', whose id is past the model's embeddings: generating from it fails."""
    return _folder(tmp_path_factory.mktemp("lm-mismatch"), ["boom"])


@functools.cache
def _loaded(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()


def reference(folder: Path, prompt: str, new_tokens: int) -> tuple[str, int]:
    """One in-process greedy `generate` of one prompt: its continuation and how many tokens it has."""
    import torch

    tokenizer, model = _loaded(folder)
    encoded = tokenizer([prompt], return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(
            **encoded, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    continuation = generated[0, encoded["input_ids"].shape[1] :]
    return tokenizer.decode(continuation, skip_special_tokens=True), int(continuation.shape[0])


class Recorder:
    """Wraps the served model's real `generate`: records each call's batch size; holds the first call until
    released, so the requests sent meanwhile queue behind it."""

    def __init__(self, app: ScoringApp, model: str) -> None:
        runtime: Any = app.plane.repository.get(model).runtime
        self.sizes: list[int] = []
        self.release = threading.Event()
        real: Callable[..., Any] = runtime.model.generate

        def generate(**kwargs: Any) -> Any:
            self.sizes.append(int(kwargs["input_ids"].shape[0]))
            if len(self.sizes) == 1:
                self.release.wait(10)
            return real(**kwargs)

        runtime.model.generate = generate


def queue_depth(text: str, model: str) -> float:
    prefix = f'modelops_scoring_queue_depth{{model="{model}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix) :])


async def burst(
    http: httpx.AsyncClient, recorder: Recorder, model: str, bodies: list[dict[str, Any]], refused: int = 0
) -> list[httpx.Response]:
    """The first body alone (its call is held), then the rest, released once all of them are queued (but
    `refused` of them, which are answered before they are queued)."""
    first = asyncio.ensure_future(http.post(f"/v2/models/{model}/infer", json=bodies[0]))
    while not recorder.sizes:
        await asyncio.sleep(0.005)
    rest = [asyncio.ensure_future(http.post(f"/v2/models/{model}/infer", json=body)) for body in bodies[1:]]
    queued = len(bodies) - 1 - refused
    for _ in range(2000):
        if queue_depth((await http.get("/metrics")).text, model) >= queued:
            break
        await asyncio.sleep(0.005)
    else:
        raise AssertionError(f"{queued} requests never queued behind the held call")
    recorder.release.set()
    return list(await asyncio.gather(first, *rest))


def body(prompts: list[str], new_tokens: int) -> dict[str, Any]:
    return infer_body("text", np.array(prompts), "BYTES", parameters={"max_new_tokens": new_tokens})


def texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert [o["name"] for o in outputs] == ["generated_text"]
    data: list[str] = outputs[0]["data"]
    return data


def lm_config(folder: Path, options: dict[str, Any] | None = None) -> ModelConfig:
    return model_config("lm", "transformers", folder, options=options, batching=BatchingConfig(True, 64, 5))


async def test_batched_generation_answers_what_one_generate_per_prompt_does(
    lm_folder: Path, scoring_settings: ScoringSettings
) -> None:
    new_tokens = 12
    want = {prompt: reference(lm_folder, prompt, new_tokens) for prompt in PROMPTS}
    # the padded rows of the batch include prompts that end (eos) before max_new_tokens and prompts that do not
    assert {length < new_tokens for _, length in want.values()} == {True, False}
    bodies = [body([prompt], new_tokens) for prompt in PROMPTS] + [body(PROMPTS[2:5], new_tokens)]
    async with served([lm_config(lm_folder)], scoring_settings) as (app, http):
        recorder = Recorder(app, "lm")
        responses = await burst(http, recorder, "lm", bodies)
    assert recorder.sizes == [1, len(PROMPTS) - 1 + 3]  # the first alone, then all the others together
    for response, sent in zip(responses, bodies, strict=True):
        prompts = sent["inputs"][0]["data"]
        assert texts(response) == [want[prompt][0] for prompt in prompts]


async def test_generation_calls_hold_at_most_generation_batch_size_prompts(lm_folder: Path, tmp_path: Path) -> None:
    new_tokens = 5
    want = {prompt: reference(lm_folder, prompt, new_tokens)[0] for prompt in PROMPTS}
    bodies = [body([prompt], new_tokens) for prompt in PROMPTS[:10]] + [body(PROMPTS[:7], new_tokens)]
    # one call in flight: with two, a full batch of 3 would start beside the held call
    one_call = settings(tmp_path, batch_concurrency=1)
    async with served([lm_config(lm_folder, {"generationBatchSize": 3})], one_call) as (app, http):
        recorder = Recorder(app, "lm")
        responses = await burst(http, recorder, "lm", bodies)
        metrics = (await http.get("/metrics")).text
    # 9 one-prompt requests queued: 3 calls of 3; the 7-prompt request runs alone, in chunks of 3, 3 and 1
    assert max(recorder.sizes) == 3
    assert sorted(recorder.sizes) == sorted([1, 3, 3, 3, 3, 3, 1])
    assert 'modelops_scoring_batch_size_bucket{le="4.0",model="lm"} 4.0' in metrics
    for response, sent in zip(responses, bodies, strict=True):
        assert texts(response) == [want[prompt] for prompt in sent["inputs"][0]["data"]]


async def test_requests_with_different_max_new_tokens_each_get_their_own(
    lm_folder: Path, scoring_settings: ScoringSettings
) -> None:
    budgets = [3 if i % 2 else 9 for i in range(len(PROMPTS))]
    want = [reference(lm_folder, prompt, n)[0] for prompt, n in zip(PROMPTS, budgets, strict=True)]
    bodies = [body([prompt], n) for prompt, n in zip(PROMPTS, budgets, strict=True)]
    async with served([lm_config(lm_folder)], scoring_settings) as (app, http):
        recorder = Recorder(app, "lm")
        responses = await burst(http, recorder, "lm", bodies)
    assert sorted(recorder.sizes) == [1, 5, 6]  # grouped by max_new_tokens: 9 (first, then 5 more) and 3 (6)
    assert [texts(r)[0] for r in responses] == want


async def test_a_bad_request_fails_alone(mismatched_folder: Path, scoring_settings: ScoringSettings) -> None:
    good = PROMPTS[:6]
    want = [reference(mismatched_folder, prompt, 6)[0] for prompt in good]
    bodies = [
        body([good[0]], 6),
        body([good[1]], 6),
        body(["the boom"], 6),  # tokenizes, but its id is past the model's embeddings: fails in generate
        body(["cat " * 60], 6),  # 60 + 6 tokens exceed the model's 64 positions: refused before it is queued
        body([""], 6),  # no tokens: refused before it is queued
        *(body([prompt], 6) for prompt in good[2:]),
    ]
    async with served([lm_config(mismatched_folder)], scoring_settings) as (app, http):
        recorder = Recorder(app, "lm")
        responses = await burst(http, recorder, "lm", bodies, refused=2)
    broken, long, empty = responses[2:5]
    assert broken.status_code == 500
    assert broken.json()["error"].startswith("model 'lm' failed: IndexError")
    assert long.status_code == 400
    assert long.json()["error"] == (
        "the prompt has 60 tokens and max_new_tokens is 6: 60 + 6 = 66 exceeds the model's context of 64 positions"
    )
    assert empty.status_code == 400
    assert empty.json()["error"] == "prompt 0 of the request has no tokens to continue"
    assert [texts(r)[0] for r in responses[:2] + responses[5:]] == want
    # the coalesced call of the 6 queued requests failed, then each ran alone
    assert recorder.sizes == [1, 6, 1, 1, 1, 1, 1, 1]
