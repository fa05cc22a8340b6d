"""Hugging Face transformers runtime: a local model folder (config, weights, tokenizer), on CPU.

Tasks (option `task`; default from the architecture: `...ForSequenceClassification` -> text-classification,
`...ForCausalLM`/`...LMHeadModel` -> text-generation, anything else -> feature-extraction):
- `text-classification`: input `text` BYTES [-1]; outputs `label` BYTES [-1] (the config's id2label),
  `score` FP32 [-1] (its softmax probability) and `logits` FP32 [-1, labels];
- `feature-extraction`: outputs `embedding` FP32 [-1, hidden] (mean of the last hidden states over the
  attention mask);
- `text-generation`: output `generated_text` BYTES [-1], the continuation only (greedy decoding, so answers
  are reproducible). Concurrent requests are batched: the batcher coalesces requests with the same parameters
  (so the same `max_new_tokens`) into one call of at most `generationBatchSize` prompts (option, default 16;
  a larger request is generated in chunks of that many), the prompts are left-padded (the pad token is the
  tokenizer's, else its eos token) and generated together, and each row's continuation is cut after the
  prompt's padded length. With the attention mask and positions taken from it, a padded row computes what the
  prompt alone does, and greedy decoding picks the same tokens (tested against one `generate` per prompt on
  prompts of different lengths); a row that ends (eos) early is padded, and the padding decodes to nothing.
  A coalesced call that fails is retried request by request, so one bad request fails alone.

Token budget (option `maxTokens`, default 256, as the seeds' LM service has it): for generation, prompt tokens
plus `max_new_tokens` (request parameter, else option `maxNewTokens`, default 32) must not exceed it; for the
other tasks, the text's tokens must not. Over budget the request is refused with 400 naming the counts,
before it is queued; so are, for generation, a prompt of no tokens (nothing to continue) and a prompt + new
tokens beyond the model's context (`max_position_embeddings` of its config). Other options: `threads`
(torch.set_num_threads, process-wide).

Loading never reaches a hub: `local_files_only=True`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from scoring_services.artifacts import verify
from scoring_services.errors import InvalidRequest, ModelLoadError
from scoring_services.runtimes.base import ModelRuntime, option
from scoring_services.signatures import TRANSFORMERS_TASKS, transformers_task
from scoring_services.types import Array, Batch, TensorSpec

__all__ = ["TransformersRuntime"]

TASKS: Final = TRANSFORMERS_TASKS
DEFAULT_MAX_TOKENS: Final = 256
DEFAULT_NEW_TOKENS: Final = 32
DEFAULT_GENERATION_BATCH: Final = 16


def _texts(array: Array) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel().tolist()]


class TransformersRuntime(ModelRuntime):
    name = "transformers"

    def _load(self) -> None:
        cfg = self.config
        if not self.path.is_dir():
            raise ModelLoadError(f"model '{cfg.name}': {self.path} is not a model folder")
        verify(self.path, cfg.sha256)
        self.max_tokens = option(cfg, "maxTokens", DEFAULT_MAX_TOKENS, int)
        self.new_tokens = option(cfg, "maxNewTokens", DEFAULT_NEW_TOKENS, int)
        self.generation_batch = option(cfg, "generationBatchSize", DEFAULT_GENERATION_BATCH, int)
        if self.generation_batch < 1:
            raise ModelLoadError(
                f"model '{cfg.name}': option 'generationBatchSize' must be at least 1 (got {self.generation_batch})"
            )
        threads = option(cfg, "threads", 0, int)
        if threads:
            torch.set_num_threads(threads)
        try:
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
            task = option(cfg, "task", self._default_task(config), str)
            if task not in TASKS:
                raise ModelLoadError(f"model '{cfg.name}': task must be one of {', '.join(TASKS)} (got {task!r})")
            self.task = task
            self.tokenizer: Any = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            loader: Any = {
                "text-classification": AutoModelForSequenceClassification,
                "text-generation": AutoModelForCausalLM,
                "feature-extraction": AutoModel,
            }[task]
            self.model: Any = loader.from_pretrained(self.path, local_files_only=True)
        except ModelLoadError:
            raise
        except Exception as exc:  # OSError for missing files, ValueError for unknown architectures...
            raise ModelLoadError(f"model '{cfg.name}': transformers cannot load {self.path}: {exc}") from exc
        self.model.eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.inputs = (TensorSpec("text", "BYTES", (-1,)),)
        if task == "text-classification":
            labels = int(self.model.config.num_labels)
            self.outputs = (
                TensorSpec("label", "BYTES", (-1,)),
                TensorSpec("score", "FP32", (-1,)),
                TensorSpec("logits", "FP32", (-1, labels)),
            )
        elif task == "feature-extraction":
            self.outputs = (TensorSpec("embedding", "FP32", (-1, int(self.model.config.hidden_size))),)
        else:
            self.outputs = (TensorSpec("generated_text", "BYTES", (-1,)),)
            self.tokenizer.padding_side = "left"
            self.max_batch_rows = self.generation_batch
            self.isolate_failures = True
        context = getattr(self.model.config, "max_position_embeddings", None)
        self.context: int | None = context if isinstance(context, int) and context > 0 else None

    @staticmethod
    def _default_task(config: Any) -> str:
        return transformers_task([str(a) for a in (getattr(config, "architectures", None) or [])])

    def _new_tokens(self, parameters: Mapping[str, Any]) -> int:
        value = parameters.get("max_new_tokens", self.new_tokens)
        if type(value) is not int or value < 1:
            raise InvalidRequest(f"parameter max_new_tokens must be a positive integer (got {value!r})")
        return value

    def check(self, inputs: Mapping[str, Array], parameters: Mapping[str, Any]) -> None:
        texts = _texts(next(iter(inputs.values())))
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        longest = max(lengths, default=0)
        if self.task == "text-generation":
            if 0 in lengths:
                raise InvalidRequest(f"prompt {lengths.index(0)} of the request has no tokens to continue")
            new = self._new_tokens(parameters)
            if longest + new > self.max_tokens:
                raise InvalidRequest(
                    f"the prompt has {longest} tokens and max_new_tokens is {new}: {longest} + {new} = "
                    f"{longest + new} exceeds the token budget of {self.max_tokens}"
                )
            if self.context is not None and longest + new > self.context:
                raise InvalidRequest(
                    f"the prompt has {longest} tokens and max_new_tokens is {new}: {longest} + {new} = "
                    f"{longest + new} exceeds the model's context of {self.context} positions"
                )
        elif longest > self.max_tokens:
            raise InvalidRequest(f"the text has {longest} tokens; the token budget is {self.max_tokens}")

    def _generate(self, texts: list[str], new_tokens: int) -> list[str]:
        """Greedy continuations of `texts`, generated together (left-padded), split back per prompt."""
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            generated = self.model.generate(
                **encoded,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        continuation = generated[:, encoded["input_ids"].shape[1] :]
        decoded: list[str] = self.tokenizer.batch_decode(continuation, skip_special_tokens=True)
        return decoded

    def _predict(self, batch: Batch) -> Mapping[str, Any]:
        texts = _texts(next(iter(batch.inputs.values())))
        if self.task == "text-generation":
            new_tokens = self._new_tokens(batch.parameters)
            step = self.generation_batch
            decoded = [t for i in range(0, len(texts), step) for t in self._generate(texts[i : i + step], new_tokens)]
            return {"generated_text": np.array([t.encode() for t in decoded], dtype=np.object_)}
        encoded = self.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            output = self.model(**encoded)
        if self.task == "text-classification":
            logits = output.logits.float()
            probabilities = torch.softmax(logits, dim=-1)
            score, index = probabilities.max(dim=-1)
            id2label = self.model.config.id2label
            labels = [str(id2label.get(i, i)).encode() for i in index.tolist()]
            return {
                "label": np.array(labels, dtype=np.object_),
                "score": score.numpy(),
                "logits": logits.numpy(),
            }
        hidden = output.last_hidden_state.float()
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        embedding = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return {"embedding": embedding.numpy()}

    def _unload(self) -> None:
        self.model = None
        self.tokenizer = None
