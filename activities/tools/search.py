"""`search_docs`: keyword search over the task's private copy of the documents.

Free and fast, but it only finds lines that share words with the query: the cheap
alternative a planner on a tight budget picks instead of asking the large model.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from activities.tools.registry import ToolContext
from keel.errors import ToolRefusal

_WORD = re.compile(r"[a-z0-9]+")
# Words too common to say anything about relevance.
_STOP = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "do",
        "does",
        "for",
        "from",
        "how",
        "in",
        "is",
        "it",
        "of",
        "on",
        "or",
        "say",
        "says",
        "the",
        "to",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
    }
)


class SearchDocsInput(BaseModel):
    query: str = Field(min_length=1, max_length=500, description="words to look for")
    limit: int = Field(default=3, ge=1, le=20, description="how many lines to return")


class DocMatch(BaseModel):
    path: str
    line: int
    text: str
    score: int


class SearchDocsOutput(BaseModel):
    matches: list[DocMatch]
    text: str


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP}


async def search_docs(args: SearchDocsInput, ctx: ToolContext) -> SearchDocsOutput:
    wanted = _words(args.query)
    if not wanted:
        raise ToolRefusal(f"the query {args.query!r} has no words to search for")
    workspace = ctx.workspace()
    found: list[DocMatch] = []
    for path in workspace.list_files():
        for number, line in enumerate(workspace.read_text(path).splitlines(), start=1):
            score = len(wanted & _words(line))
            if score and line.strip() and not line.lstrip().startswith("#"):
                found.append(DocMatch(path=path, line=number, text=line.strip(), score=score))
    found.sort(key=lambda m: (-m.score, m.path, m.line))
    top = found[: args.limit]
    return SearchDocsOutput(
        matches=top, text="\n".join(f"{m.path}:{m.line}: {m.text}" for m in top)
    )
