"""The `extract_facts` activity: the small model turns a finished task into triples.

It runs on the planner queue under the router's `memory` role (the planner's small model)
and writes JSON constrained by a schema; `remember` then stores the triples in the graph.
Facts about the person asking use the subject "user", so recall finds them for later tasks.
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from temporalio import activity

from activities.models.base import Message, ModelRequest
from activities.models.router import ModelRouter
from keel import durable
from keel._converter import describe_validation_error
from keel._core.untrusted import DATA_RULE, quoted
from keel._logging import activity_logger
from keel.contracts import Extraction, ExtractionRequest, Triple

MAX_FACTS = 8
EXTRACT_MAX_TOKENS = 256
TEXT_CHARS = 2000

SYSTEM = (
    "You extract durable facts from a conversation as JSON: "
    '{"facts": [{"subject": ..., "relation": ..., "object": ...}]}. '
    'Use the subject "user" for the person asking. Relations are snake_case, e.g. '
    "preferred_language, lives_in, works_at. Only facts worth remembering for later tasks; "
    "an empty list when there are none. " + DATA_RULE
)
# The prompt's labels (the scripted model reads the prompt back by them).
TASK = "Task: "
ANSWER = "Answer: "
EXAMPLE_USER = f'{TASK}I live in Porto. What is 2+2?\n{ANSWER}"4"'
EXAMPLE_FACTS = '{"facts": [{"subject": "user", "relation": "lives_in", "object": "Porto"}]}'


def extraction_schema() -> dict[str, object]:
    return {
        "type": "object",
        "properties": {
            "facts": {
                "type": "array",
                "maxItems": MAX_FACTS,
                "items": {
                    "type": "object",
                    "properties": {
                        "subject": {"type": "string", "minLength": 1, "maxLength": 80},
                        "relation": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,40}$"},
                        "object": {"type": "string", "minLength": 1, "maxLength": 120},
                    },
                    "required": ["subject", "relation", "object"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["facts"],
        "additionalProperties": False,
    }


def extraction_prompt(request: ExtractionRequest) -> list[Message]:
    user = f"{TASK}{request.task[:TEXT_CHARS]}\n{ANSWER}{quoted(request.answer[:TEXT_CHARS])}"
    return [
        Message("system", SYSTEM),
        Message("user", EXAMPLE_USER),
        Message("assistant", EXAMPLE_FACTS),
        Message("user", user),
    ]


def parse_triples(text: str) -> list[Triple]:
    data = json.loads(text)
    facts = data.get("facts", []) if isinstance(data, dict) else []
    return [Triple.model_validate(f) for f in facts[:MAX_FACTS]]


class ExtractionActivities:
    def __init__(self, router: ModelRouter) -> None:
        self.router = router

    @activity.defn(name=durable.EXTRACT_FACTS)
    async def extract_facts(self, request: ExtractionRequest) -> Extraction:
        routed = await self.router.complete(
            "memory",
            ModelRequest(
                messages=extraction_prompt(request),
                max_tokens=EXTRACT_MAX_TOKENS,
                json_schema=extraction_schema(),
            ),
            max_usd=request.max_usd,
            max_tokens=request.max_tokens,
        )
        try:
            triples = parse_triples(routed.text)
        except json.JSONDecodeError as err:
            return Extraction(usage=routed.usage, error=f"facts are not JSON: {err}")
        except ValidationError as err:
            return Extraction(usage=routed.usage, error=describe_validation_error(err, "fact"))
        activity_logger().info("facts extracted", facts=len(triples))
        return Extraction(triples=triples, usage=routed.usage)
