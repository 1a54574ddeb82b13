"""Maps roles (planner, reasoner) to models, caps every call to its allowance, prices usage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from temporalio.exceptions import ApplicationError

from activities.models.base import ModelClient, ModelRequest
from activities.models.prices import price_of
from keel.contracts import ModelUsage
from keel.errors import BUDGET_EXCEEDED
from keel.settings import Settings

MIN_OUTPUT_TOKENS = 16
PROMPT_MARGIN_TOKENS = 8  # chat-template tokens a count can miss


@dataclass(frozen=True)
class RoutedCompletion:
    text: str
    usage: ModelUsage


def build_model(spec: str, settings: Settings) -> ModelClient:
    if spec == "llamacpp":
        from activities.models.llamacpp import LlamaCppModel

        return LlamaCppModel(settings.llamacpp_model_path, settings.llamacpp_threads)
    if spec == "scripted":
        from activities.models.scripted import ScriptedModel

        return ScriptedModel()
    raise ValueError(f"unknown model backend {spec!r}: use 'llamacpp' or 'scripted'")


class ModelRouter:
    def __init__(self, models: dict[str, ModelClient]) -> None:
        self._models = models

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRouter:
        built: dict[str, ModelClient] = {}  # roles on the same backend share one model
        for spec in {settings.planner_model, settings.reasoner_model}:
            built[spec] = build_model(spec, settings)
        return cls(
            {
                "planner": built[settings.planner_model],
                "reasoner": built[settings.reasoner_model],
            }
        )

    def model_for(self, role: str) -> ModelClient:
        try:
            return self._models[role]
        except KeyError:
            raise ValueError(f"no model for role {role!r}") from None

    def estimate_usd(self, role: str, input_tokens: int, output_tokens: int) -> float:
        return price_of(self.model_for(role).name).usd(input_tokens, output_tokens)

    async def complete(
        self, role: str, request: ModelRequest, max_usd: float, max_tokens: int | None = None
    ) -> RoutedCompletion:
        """Run the call with its output capped so that it cannot cost more than `max_usd`
        (or use more than `max_tokens`); refuse it when not even a short answer fits."""
        model = self.model_for(role)
        price = price_of(model.name)
        input_tokens = model.count_tokens(request.messages) + PROMPT_MARGIN_TOKENS
        room_usd = max_usd - price.usd(input_tokens, 0)
        limit = request.max_tokens
        if price.output_per_mtok > 0:
            limit = min(limit, int(room_usd * 1e6 / price.output_per_mtok))
        if max_tokens is not None:
            limit = min(limit, max_tokens - input_tokens)
        if limit < MIN_OUTPUT_TOKENS:
            raise ApplicationError(
                f"{role} call on {model.name} needs about {input_tokens} input tokens plus "
                f"{MIN_OUTPUT_TOKENS} output tokens, more than its allowance "
                f"(${max_usd:.6f}, {max_tokens if max_tokens is not None else 'any'} tokens)",
                type=BUDGET_EXCEEDED,
                non_retryable=True,
            )
        meta = {**request.meta, "role": role}
        completion = await model.complete(dataclasses.replace(request, max_tokens=limit, meta=meta))
        usage = ModelUsage(
            role=role,
            model=model.name,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            usd=price.usd(completion.input_tokens, completion.output_tokens),
            latency_ms=completion.latency_ms,
        )
        return RoutedCompletion(completion.text, usage)


# A typical reasoner call; the estimate is what the planner and the budget see beforehand.
TYPICAL_REASONER_CALL = (1500, 400)


def backend_model_name(spec: str, settings: Settings) -> str:
    """The priced model name a backend spec resolves to, without loading the model."""
    if spec == "llamacpp":
        from activities.models.llamacpp import SMOLLM2_NAME

        path = settings.llamacpp_model_path
        return SMOLLM2_NAME if path is None else path.stem.lower()
    if spec == "scripted":
        return "scripted"
    raise ValueError(f"unknown model backend {spec!r}: use 'llamacpp' or 'scripted'")


def reasoner_price_estimate(settings: Settings) -> float:
    name = backend_model_name(settings.reasoner_model, settings)
    return price_of(name).usd(*TYPICAL_REASONER_CALL)
