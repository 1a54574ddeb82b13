"""Every name Temporal stores, in one place: workflow, query, update, activity, task queue,
search attribute and failure type names.

They are durable: a running task's history refers to them, so renaming one strands every
task started before the rename. The registering side (`@activity.defn(name=...)`,
`@workflow.defn(name=...)`) and the calling side (`execute_activity`, `query`,
`execute_update`) both take the name from here, so the two cannot drift apart.
"""

from __future__ import annotations

# --- workflows -----------------------------------------------------------------------------
AGENT_TASK = "AgentTask"
MEMORIZE_DOCUMENTS = "MemorizeDocuments"

# --- the AgentTask's queries and updates -----------------------------------------------------
QUERY_STATUS = "status"
QUERY_PLAN = "plan"
QUERY_LEDGER = "ledger"
QUERY_PENDING = "pending"
UPDATE_APPROVE = "approve"
UPDATE_REJECT = "reject"
UPDATE_ANSWER = "answer"
UPDATE_WATCH = "watch"  # long-polls the task's progress: returns when it has new events
# why the `watch` Update's validator refused a watcher (ApplicationError.type)
WATCH_BEHIND = "WatchBehind"  # events came since: catch up with the `status` query first
WATCH_FULL = "WatchFull"  # the run takes no more watchers: read the `status` query instead

# --- ids Temporal keeps (replay checks a child's id) ---------------------------------------
TASK_ID_PREFIX = "keel-"  # + 12 hex digits, when the caller gives no workflow id
MEMORIZE_ID_PREFIX = "keel-memorize-"
PLAN_APPROVAL_ID = "plan"  # what `keel approve TASK plan` approves: a whole plan over budget


def child_task_id(parent_id: str, agent: str, plan_version: int, step_id: str) -> str:
    """A sub-agent's workflow id: its parent's, the agent and the step that delegated."""
    return f"{parent_id}.{agent}.v{plan_version}.{step_id}"


def step_call_id(plan_version: int, step_id: str) -> str:
    """A step's id as tools see it (and idempotency keys are built from)."""
    return f"v{plan_version}.{step_id}"


# --- activities ------------------------------------------------------------------------------
PLAN = "plan"
REACT_STEP = "react_step"
SYNTHESIZE = "synthesize"
EXTRACT_FACTS = "extract_facts"
RECALL = "recall"
REMEMBER = "remember"
REMEMBER_DOCUMENT = "remember_document"
CACHE_LOOKUP = "cache_lookup"
CACHE_STORE = "cache_store"
LIST_TOOLS = "list_tools"
NOTIFY_HUMAN = "notify_human"
RELEASE_WORKSPACE = "release_workspace"
# The tools that read the task's copy of KEEL_DOCS_DIR: a task that called one has its copy
# deleted when it ends (release_workspace, on the tools queue).
FILE_TOOLS = ("read_file", "list_files", "search_docs")
_TOOL_PREFIX = "tool."


def tool_activity(tool_name: str) -> str:
    """The activity type of one tool: each tool is its own activity, named after it."""
    return _TOOL_PREFIX + tool_name


# A cached result's kind is the name of the activity that produced it: `tool.<name>` for a
# tool's output, SYNTHESIZE for a task's answer.

# --- task queues (DESIGN.md §2; a deployment may prefix them all, keel/_queues.py) -----------
AGENT_QUEUE = "keel-agent"
PLANNER_QUEUE = "keel-planner"
LLM_QUEUE = "keel-llm"
TOOLS_QUEUE = "keel-tools"
SANDBOX_QUEUE = "keel-sandbox"  # sandboxed runs: as many slots as sandbox threads
MEMORY_QUEUE = "keel-memory"
HTTP_QUEUE = "keel-http"  # the base of the per-API queues `keel-http-<api>`

# --- search attributes (registered on the server by temporal/search_attributes.py) ----------
SA_STATUS = "KeelStatus"
SA_COST_USD = "KeelCostUsd"
SA_USER = "KeelUser"
SA_WITHOUT_HUMAN = "KeelWithoutHuman"

# --- metrics whose buckets keel/_metrics.py sets (workflows/metrics.py records them) -------
TASK_COST_METRIC = "keel_task_cost_usd"
MODEL_COST_METRIC = "keel_model_cost_usd"
TOOL_LATENCY_METRIC = "keel_tool_latency_seconds"
HUMAN_WAIT_METRIC = "keel_human_wait_seconds"

# --- failure types (ApplicationError.type; keel/errors.py attaches each to its class) -------
BUDGET_EXCEEDED = "BudgetExceeded"  # a call could not fit in what it was allowed to spend
TOOL_ERROR = "ToolError"  # the tool refused its input; retrying will not help
TOOL_FAILED = "ToolFailed"  # the tool crashed (a bug or an outage); retried when idempotent
INVALID_OUTPUT = "InvalidToolOutput"  # the tool returned data that breaks its output schema
INVALID_INPUT = "InvalidInput"  # a payload did not match its contract
IDENTITY_REFUSED = "IdentityRefused"  # the caller's signed identity is missing, bad or not allowed
HTTP_UNAVAILABLE = "HttpUnavailable"  # an API call failed in a way a retry may fix
MODEL_AUTH_ERROR = "ModelAuthError"  # bad, missing or unauthorised key; no credit
MODEL_QUOTA_EXCEEDED = "ModelQuotaExceeded"  # the account's quota is used up (not a rate limit)
MODEL_RATE_LIMITED = "ModelRateLimited"  # 429: retry after the provider's delay
MODEL_UNAVAILABLE = "ModelUnavailable"  # 5xx, overloaded, connection failure, timeout
MODEL_BAD_REQUEST = "ModelBadRequest"  # the provider refused this request as it is
MODEL_REFUSED = "ModelRefused"  # the model declined to answer
