"""The tools every Keel deployment has, with honest metadata."""

from __future__ import annotations

from activities.models.router import reasoner_price_estimate
from activities.tools import files, search, sql
from activities.tools.calculator import CalculatorInput, CalculatorOutput, calculate
from activities.tools.http import http_tools
from activities.tools.python import RunPython, RunPythonInput, RunPythonOutput
from activities.tools.reasoner import AskReasonerInput, AskReasonerOutput, ask_reasoner
from activities.tools.registry import Tool, ToolContext, ToolRegistry, define_tool
from keel._queues import LLM, SANDBOX
from keel.contracts import CachePolicy, SideEffects
from keel.settings import Settings


async def _calculator(args: CalculatorInput, ctx: ToolContext) -> CalculatorOutput:
    return calculate(args)


def builtin_tools(settings: Settings) -> list[Tool]:
    return [
        define_tool(
            "calculator",
            "Evaluate an arithmetic expression (+ - * / // % ** parentheses, sqrt, abs, "
            "round, min, max).",
            _calculator,
            CalculatorInput,
            CalculatorOutput,
            avg_latency_ms=2,
            timeout_s=5,
        ),
        define_tool(
            "run_python",
            # Kept short and plain: SmolLM2 degenerates on the react prompt when this line
            # lists the sandbox's limits (they are in the spec's metadata and the README).
            "Execute Python code in an isolated sandbox; returns its output.",
            RunPython(settings),
            RunPythonInput,
            RunPythonOutput,
            avg_latency_ms=60,
            timeout_s=settings.sandbox_wall_s + 10,  # the sandbox kills it at its wall limit
            queue=SANDBOX,
        ),
        define_tool(
            "read_file",
            "Read a text document from the task's files.",
            files.read_file,
            files.ReadFileInput,
            files.ReadFileOutput,
            avg_latency_ms=5,
            timeout_s=10,
            side_effects=SideEffects.READ,
        ),
        define_tool(
            "list_files",
            "List the documents available to the task.",
            files.list_files,
            files.ListFilesInput,
            files.ListFilesOutput,
            avg_latency_ms=5,
            timeout_s=10,
            side_effects=SideEffects.READ,
        ),
        define_tool(
            "search_docs",
            "Find the passages (paragraphs, table rows) of the task's documents that mention "
            "the query's words, best first (free; finds facts written in the documents, "
            "cannot reason).",
            search.search_docs,
            search.SearchDocsInput,
            search.SearchDocsOutput,
            avg_latency_ms=10,
            timeout_s=10,
            side_effects=SideEffects.READ,
        ),
        *(
            [
                define_tool(
                    "sql_query",
                    sql.description(settings),
                    sql.sql_query_tool(settings),
                    sql.SqlQueryInput,
                    sql.SqlQueryOutput,
                    avg_latency_ms=50,
                    timeout_s=sql.activity_timeout_s(settings),  # connect + the query's budget
                    side_effects=SideEffects.READ,
                )
            ]
            if settings.sql_url  # no database, no tool: the planner never sees one
            else []
        ),
        *http_tools(settings),  # http_get, when KEEL_HTTP_APIS names the allowlisted APIs
        define_tool(
            "ask_reasoner",
            "Ask the large reasoning model a hard question (costs model tokens).",
            ask_reasoner,
            AskReasonerInput,
            AskReasonerOutput,
            cost_per_call_usd=reasoner_price_estimate(settings),
            avg_latency_ms=2000,
            timeout_s=120,
            side_effects=SideEffects.EXTERNAL,
            # the configured reasoner, which every prompt already goes to: no new party
            requires_approval=False,
            queue=LLM,
            max_attempts=3,
            # the same question is not paid for twice; questions can be personal
            cache=CachePolicy(semantic=True, per_user=True),
        ),
    ]


def default_registry(settings: Settings) -> ToolRegistry:
    return ToolRegistry(builtin_tools(settings))
