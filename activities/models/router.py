"""Maps roles (planner, reasoner) to models, caps every call to its allowance, prices usage."""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass

import structlog

from activities.heartbeat import heartbeating
from activities.models.base import ModelClient, ModelRequest
from activities.models.prices import Price, local_price, price_of
from keel import _tracing as tracing
from keel.contracts import ModelUsage
from keel.errors import BudgetExceeded
from keel.settings import Settings

log = structlog.get_logger(__name__)

# A plan the small planner got wrong is re-planned by the large model unless configured.
ROLE_FALLBACK = {"escalation": "reasoner", "memory": "planner"}  # memory: fact extraction
MIN_OUTPUT_TOKENS = 16
PROMPT_MARGIN_TOKENS = 8  # chat-template tokens a count can miss


@dataclass(frozen=True)
class RoutedCompletion:
    text: str
    usage: ModelUsage


BACKENDS = ("llamacpp", "scripted", "triton", "openai", "anthropic")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`backend[:model]` -> (backend, model); openai and anthropic need the model name."""
    backend, _, model = spec.partition(":")
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown model backend {backend!r} in {spec!r}: use one of {', '.join(BACKENDS)}"
        )
    if backend in ("openai", "anthropic") and not model:
        raise ValueError(f"model spec {spec!r} names no model: write {backend}:<model name>")
    return backend, model or None


# A local GGUF's price depends on the hardware serving it, which only its backend says:
# build_model records it here; other models are priced by name.
_LOCAL_PRICES: weakref.WeakKeyDictionary[ModelClient, Price] = weakref.WeakKeyDictionary()


def price_for(model: ModelClient) -> Price:
    return _LOCAL_PRICES.get(model) or price_of(model.name)


def build_model(spec: str, settings: Settings) -> ModelClient:
    backend, model = parse_spec(spec)
    if backend == "llamacpp":
        from activities.models.llamacpp import LlamaCppModel, local_model_path

        local = LlamaCppModel(
            local_model_path(settings), settings.llamacpp_threads, home=settings.home
        )
        _LOCAL_PRICES[local] = local_price(local.path, gpu=False, settings=settings)
        return local
    if backend == "scripted":
        from activities.models.scripted import ScriptedModel

        return ScriptedModel()
    if backend == "openai":
        from activities.models.openai_chat import OpenAIModel

        assert model is not None
        return OpenAIModel(
            model, api_key=settings.openai_api_key, base_url=settings.openai_base_url
        )
    if backend == "anthropic":
        from activities.models.anthropic_chat import AnthropicModel

        assert model is not None
        return AnthropicModel(
            model, api_key=settings.anthropic_api_key, base_url=settings.anthropic_base_url
        )
    from activities.models.llamacpp import local_model_path
    from activities.models.triton import TritonModel

    # No KEEL_TRITON_URL: the planner worker starts a Triton server and attaches this model
    # to it (workers/components.py); in a process that never plans it is never called.
    served = TritonModel(settings.triton_url, settings.triton_model, local_model_path(settings))
    _LOCAL_PRICES[served] = local_price(served.path, gpu=True, settings=settings)
    return served


class ModelRouter:
    def __init__(self, models: dict[str, ModelClient]) -> None:
        self._models = models

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRouter:
        specs = {
            "planner": settings.planner_model,
            "reasoner": settings.reasoner_model,
            "escalation": settings.escalation_model or settings.reasoner_model,
            "memory": settings.memory_model or settings.planner_model,
        }
        built: dict[str, ModelClient] = {}  # roles on the same backend share one model
        for spec in dict.fromkeys(specs.values()):
            built[spec] = build_model(spec, settings)
        return cls({role: built[spec] for role, spec in specs.items()})

    def model_for(self, role: str) -> ModelClient:
        model = self._models.get(role) or self._models.get(ROLE_FALLBACK.get(role, ""))
        if model is None:
            raise ValueError(f"no model for role {role!r}")
        return model

    def estimate_usd(self, role: str, input_tokens: int, output_tokens: int) -> float:
        return price_for(self.model_for(role)).estimate(input_tokens, output_tokens)

    async def complete(
        self, role: str, request: ModelRequest, max_usd: float, max_tokens: int | None = None
    ) -> RoutedCompletion:
        """Run the call with its output capped so that it cannot cost more than `max_usd`
        (or use more than `max_tokens`); refuse it when not even a short answer fits."""
        model = self.model_for(role)
        price = price_for(model)
        input_tokens = model.count_tokens(request.messages) + PROMPT_MARGIN_TOKENS
        room_usd = max_usd - price.estimate(input_tokens, 0)
        limit = min(request.max_tokens, int(max(0.0, price.output_tokens_for(room_usd))))
        if max_tokens is not None:
            limit = min(limit, max_tokens - input_tokens)
        if limit < MIN_OUTPUT_TOKENS:
            raise BudgetExceeded(
                f"{role} call on {model.name} needs about {input_tokens} input tokens plus "
                f"{MIN_OUTPUT_TOKENS} output tokens, more than its allowance "
                f"(${max_usd:.6f}, {max_tokens if max_tokens is not None else 'any'} tokens)"
            ).to_application_error()
        # Every model call passes here once: its span (keel/_tracing.py) carries what the
        # ledger books for it, no prompt and no answer.
        with tracing.model_call(role, model.name) as span:
            async with heartbeating():  # a dead worker is noticed in seconds, not at the timeout
                completion = await model.complete(dataclasses.replace(request, max_tokens=limit))
            usd = price.actual(
                completion.input_tokens, completion.output_tokens, completion.latency_ms / 1000
            )
            if usd > max_usd:
                # Only time-billed local calls can run over (a slow or busy worker): the task
                # is charged its allowance, never more than its budget; the overrun is logged.
                log.warning(
                    "model call ran over its allowance", model=model.name, usd=usd, max_usd=max_usd
                )
                usd = max_usd
            usage = ModelUsage(
                role=role,
                model=model.name,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                usd=usd,
                latency_ms=completion.latency_ms,
            )
            tracing.model_usage(span, usage)
        return RoutedCompletion(completion.text, usage)


# A typical reasoner call; the estimate is what the planner and the budget see beforehand.
TYPICAL_REASONER_CALL = (1500, 400)


def backend_model_name(spec: str, settings: Settings) -> str:
    """The priced model name a backend spec resolves to, without loading the model."""
    backend, model = parse_spec(spec)
    if backend in ("llamacpp", "triton"):  # Triton serves the same GGUF as llama.cpp
        from activities.models.llamacpp import local_model_path, model_name

        return model_name(local_model_path(settings))
    if backend == "scripted":
        return "scripted"
    assert model is not None
    return model


def reasoner_price_estimate(settings: Settings) -> float:
    backend, _ = parse_spec(settings.reasoner_model)
    if backend in ("llamacpp", "triton"):
        from activities.models.llamacpp import default_model_path, local_model_path

        path = local_model_path(settings) or default_model_path()
        price = local_price(path, gpu=backend == "triton", settings=settings)
    else:
        price = price_of(backend_model_name(settings.reasoner_model, settings), settings)
    return price.estimate(*TYPICAL_REASONER_CALL)
