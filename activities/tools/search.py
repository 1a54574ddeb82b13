"""`search_docs`: keyword search over the task's private copy of the documents.

Free and fast, but it only finds passages that share words with the query: the cheap
alternative a planner on a tight budget picks instead of asking the large model. Documents are
cut into paragraphs and list items, and markdown tables into one chunk per row that carries the
column names, so a row holding the answer outranks the header that only names the columns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from pydantic import BaseModel, Field

from activities.tools.registry import ToolContext
from keel.errors import ToolRefusal

_WORD = re.compile(r"[a-z0-9]+")
_LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d+[.)])\s")
_TABLE_RULE = re.compile(r"\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?")
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


def _stem(word: str) -> str:
    # Plural and singular must meet: "rollbacks" finds "rollback", "customer" "customers".
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def words(text: str) -> set[str]:
    """The words that say what a text is about: lowercased, stemmed, common ones dropped."""
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def chunks(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each searchable chunk: a paragraph, a list item, or a
    table row written as "column: value; ..." (a table's header alone only if it has no rows).
    Headings and blank lines end chunks; headings and table rules are never chunks."""
    out: list[tuple[int, str]] = []
    para: list[str] = []
    para_start = 0
    header: list[str] | None = None  # the current table's column names
    bare_header: tuple[int, str] | None = None  # the header's own chunk, until a row comes

    def end_table() -> None:
        nonlocal header, bare_header
        if bare_header:
            out.append(bare_header)
        header = bare_header = None

    def end_para() -> None:
        if para:
            out.append((para_start, " ".join(para)))
            para.clear()

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("|"):
            end_para()
            if _TABLE_RULE.fullmatch(line):
                continue
            if header is None:
                header = _cells(line)
                bare_header = (number, " | ".join(header))
            else:
                pairs = zip(header, _cells(line), strict=False)
                out.append((number, "; ".join(f"{col}: {val}" for col, val in pairs if val)))
                bare_header = None
            continue
        end_table()
        if not line or line.startswith("#") or _LIST_ITEM.match(raw):
            end_para()
        if line and not line.startswith("#"):
            if not para:
                para_start = number
            para.append(line)
    end_table()
    end_para()
    return out


def rank(query: str, docs: Iterable[tuple[str, str]]) -> list[DocMatch]:
    """The chunks of (path, text) documents that share words with the query, best first:
    most shared words, then by path and line, so equal scores always come out the same.
    A document's name counts as words of each of its chunks: "handbook.md deployments"
    prefers the handbook's passages, and "handbook.md" alone finds its first one."""
    wanted = words(query)
    found = []
    for path, text in docs:
        named = words(PurePosixPath(path).stem)
        for line, chunk in chunks(text):
            if score := len(wanted & (words(chunk) | named)):
                found.append(DocMatch(path=path, line=line, text=chunk, score=score))
    found.sort(key=lambda m: (-m.score, m.path, m.line))
    return found


async def search_docs(args: SearchDocsInput, ctx: ToolContext) -> SearchDocsOutput:
    if not words(args.query):
        raise ToolRefusal(f"the query {args.query!r} has no words to search for")
    workspace = ctx.workspace()
    docs = ((path, workspace.read_text(path)) for path in workspace.list_files())
    top = rank(args.query, docs)[: args.limit]
    return SearchDocsOutput(
        matches=top, text="\n".join(f"{m.path}:{m.line}: {m.text}" for m in top)
    )
