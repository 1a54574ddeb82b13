"""The GPU planner path on a real Triton Inference Server (the `tritonserver` binary from the
nvidia-pytriton wheel, on the CPU here): the model repository, the launcher, `TritonModel`,
and a whole AgentTask planned through a Triton server that the planner worker starts itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import tritonclient.http as triton_http
from temporalio.exceptions import ApplicationError

from activities.models.base import Message, ModelRequest
from activities.models.llamacpp import SMOLLM2_NAME, LlamaCppModel
from activities.models.triton import TritonModel
from keel._ports import free_port
from keel._queues import Queues
from keel.client import start_task
from keel.contracts import Budget, TaskRequest, TaskStatus
from keel.durable import MODEL_UNAVAILABLE
from keel.testing import Stack
from tests.conftest import unique
from workers import planner
from workers.components import Components
from workers.process import build_all, workers_running
from workers.triton.server import MODEL_REPOSITORY, TritonError, TritonServer

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
ASK = [
    Message("system", "You reply with JSON only."),
    Message("user", "Invent a person: give a name and an age."),
]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    with TritonServer(tmp_path_factory.mktemp("triton-home"), quiet=True) as server:
        yield server


@pytest.fixture(scope="module")
def triton_model(triton: TritonServer) -> TritonModel:
    return TritonModel(triton.url)


async def test_schema_constrained_completion_with_honest_token_counts(
    triton_model: TritonModel,
) -> None:
    request = ModelRequest(ASK, max_tokens=64, json_schema=PERSON)
    completion = await triton_model.complete(request)

    jsonschema.validate(json.loads(completion.text), PERSON)
    assert triton_model.name == SMOLLM2_NAME  # priced like the in-process model
    # What the router caps spend with before the call is what the server then counts.
    assert triton_model.count_tokens(ASK) == completion.input_tokens
    assert 0 < completion.output_tokens <= 64
    assert completion.latency_ms > 0
    # The same GGUF decoded greedily in-process gives the same answer and the same usage.
    local = await LlamaCppModel().complete(request)
    assert (local.text, local.input_tokens, local.output_tokens) == (
        completion.text,
        completion.input_tokens,
        completion.output_tokens,
    )


async def test_errors_say_whether_a_retry_can_help(
    triton: TritonServer, triton_model: TritonModel
) -> None:
    with pytest.raises(ApplicationError, match="KEEL_TRITON_MODEL") as unknown:
        await TritonModel(triton.url, model="no-such-model").complete(ModelRequest(ASK))
    assert unknown.value.non_retryable

    bad_schema = ModelRequest(ASK, json_schema={"type": "no-such-type"})
    with pytest.raises(ApplicationError, match="json_schema") as refused:
        await triton_model.complete(bad_schema)
    assert refused.value.non_retryable

    unattached = TritonModel(None)  # KEEL_TRITON_URL unset in a process that does not plan
    with pytest.raises(ApplicationError, match="KEEL_TRITON_URL") as nowhere:
        await unattached.complete(ModelRequest(ASK))
    assert nowhere.value.non_retryable

    nobody = TritonModel(f"127.0.0.1:{free_port()}")
    with pytest.raises(ApplicationError, match="unreachable") as down:
        await nobody.complete(ModelRequest(ASK))
    assert down.value.type == MODEL_UNAVAILABLE and not down.value.non_retryable


def test_a_model_that_does_not_load_is_one_clear_line(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    (repository / "broken" / "1").mkdir(parents=True)
    config = (MODEL_REPOSITORY / "planner" / "config.pbtxt").read_text()
    (repository / "broken" / "config.pbtxt").write_text(
        config.replace('name: "planner"', 'name: "broken"')
    )
    (repository / "broken" / "1" / "model.py").write_text("import no_such_module\n")

    server = TritonServer(tmp_path, model_repository=repository, quiet=True)
    with pytest.raises(TritonError) as failed:
        server.start()
    message = str(failed.value)
    assert "model 'broken' did not load" in message and "no_such_module" in message
    assert "\n" not in message and str(server.log_file) in message


async def test_whole_task_planned_by_a_triton_server_the_worker_starts(stack: Stack) -> None:
    # As `keel dev` or `keel worker planner` with KEEL_PLANNER_MODEL=triton and no
    # KEEL_TRITON_URL: the planner worker starts Triton, and stops it when it stops.
    queues = Queues("triton-")  # the session's scripted workers must not take these tasks
    settings = stack.settings.model_copy(
        update={"planner_model": "triton", "reasoner_model": "llamacpp", "triton_url": None}
    )
    components = Components(settings=settings, queues=queues, _vectors=stack.components.vectors)
    workers = build_all(stack.client, components, ["agent", "llm", "tools", "memory"])
    assert components.triton is None  # workers that do not plan need no Triton server
    # Built last on purpose: the router exists already, and its planner model is attached to
    # the server the planner worker starts.
    workers.append(planner.build(stack.client, components))
    triton = components.triton
    assert triton is not None and components.settings.triton_url == triton.url
    async with workers_running(workers):
        # a user of its own: other real-model tests ask the same task, whose cached answer
        # would stand in for this one. A local model is priced by its CPU time, which a busy
        # machine (the whole suite on 2 cores) multiplies: a budget that load cannot spend.
        request = TaskRequest(
            task="Compute 6*7 and read handbook.md", user_id=unique("user"), budget=Budget(usd=1)
        )
        handle = await start_task(stack.client, request, queues=queues)
        result = await asyncio.wait_for(handle.result(), timeout=240)
        stats = triton_http.InferenceServerClient(triton.url.removeprefix("http://"))
        planned = stats.get_inference_statistics("planner")["model_stats"][0]["inference_count"]
        stats.close()

    assert result.status == TaskStatus.COMPLETED, result.error
    assert result.answer.strip()
    plans = [e for e in result.ledger.entries if e.kind == "model" and e.role == "planner"]
    assert plans and all(e.name == SMOLLM2_NAME for e in plans)
    assert planned >= len(plans)  # every plan was decoded by Triton
    assert components.triton is None and not triton.is_ready()  # stopped with the worker
