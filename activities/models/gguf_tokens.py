"""Exact prompt-token counts for a GGUF chat model, without loading its weights.

The router caps every call to its budget from the prompt's token count, so the count must be
what llama.cpp will really see: the GGUF's own chat template (which may add a default system
prompt) rendered and tokenized with the GGUF's vocabulary.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from activities.models.base import Message


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C libraries write there directly, bypassing sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class GgufTokenizer:
    """Counts a chat's prompt tokens exactly as llama.cpp will: the GGUF's chat template,
    rendered and tokenized with the GGUF's vocabulary."""

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        with _quiet_stderr():  # llama.cpp warns about the unused context of a vocab-only load
            self._vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        # Freed before interpreter teardown: later, llama_cpp's module globals are gone and
        # its finalizer fails with a traceback on the way out.
        atexit.register(self._vocab.close)
        template = self._vocab.metadata.get("tokenizer.chat_template")

        def text(token: int) -> str:
            return self._vocab.detokenize([token], special=True).decode(errors="replace")

        self._format = (
            Jinja2ChatFormatter(
                template, text(self._vocab.token_eos()), text(self._vocab.token_bos())
            )
            if template
            else None
        )

    def count(self, messages: list[Message]) -> int:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        if self._format is not None:
            prompt = self._format(messages=chat).prompt  # type: ignore[arg-type]
        else:  # no template in the file: llama.cpp falls back to ChatML-like turns
            prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in chat)
            prompt += "<|im_start|>assistant\n"
        return len(self._vocab.tokenize(prompt.encode(), add_bos=False, special=True))


@lru_cache(maxsize=4)
def gguf_tokenizer(path: str) -> GgufTokenizer:
    return GgufTokenizer(Path(path))
