"""The MemorizeDocuments workflow: put documents into a user's long-term memory.

One `remember_document` activity per document on `keel-memory`; started by
`keel memorize FILE... --user U` or any Temporal client. Recall then offers the passages
most relevant to each later task of that user.
"""

from __future__ import annotations

from temporalio import workflow

from keel import durable
from keel._queues import Queues
from keel.contracts import Memorized, MemorizeRequest, RememberDocument
from workflows import activity_options as options


@workflow.defn(name=durable.MEMORIZE_DOCUMENTS)
class MemorizeDocuments:
    @workflow.run
    async def run(self, request: MemorizeRequest) -> Memorized:
        queues = Queues.for_agent_queue(workflow.info().task_queue)
        done = Memorized()
        for document in request.documents:
            stored = await workflow.execute_activity(
                durable.REMEMBER_DOCUMENT,
                RememberDocument(user_id=request.user_id, document=document),
                result_type=Memorized,
                task_queue=queues.memory,
                **options.DOCUMENT,
                summary=f"remember document {document.source} for {request.user_id}",
            )
            done.chunks.update(stored.chunks)
        return done
