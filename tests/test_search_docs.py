"""`search_docs` ranking over the sample documents: table rows, not their headers, answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.tools.registry import ToolContext
from activities.tools.search import SearchDocsInput, chunks, rank, search_docs

DOCS_DIR = Path(__file__).resolve().parent.parent / "samples" / "docs"
DOCS = [(p.name, p.read_text(encoding="utf-8")) for p in sorted(DOCS_DIR.glob("*.md"))]
REPORT = (DOCS_DIR / "report.md").read_text(encoding="utf-8")
HEADER_LINE = next(n for n, line in enumerate(REPORT.splitlines(), 1) if "| quarter" in line)


def test_table_rows_carry_the_column_names_and_the_header_is_no_chunk_of_its_own() -> None:
    report = chunks(REPORT)
    assert (HEADER_LINE + 4, "quarter: Q3; revenue (USD): 161000; new customers: 23") in report
    assert all(line != HEADER_LINE and "---" not in text for line, text in report)


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        ("How many new customers in Q3?", "new customers: 23"),
        ("new customers Q2", "new customers: 19"),
        ("What was the revenue in Q2?", "revenue (USD): 145000"),
        ("revenue Q3", "revenue (USD): 161000"),
        ("new customers", "new customers: 14"),  # every row ties: the first one, not the header
        ("How many support tickets in Q3?", "288 in Q3"),
    ],
)
def test_the_row_or_sentence_holding_the_number_ranks_first(query: str, answer: str) -> None:
    top = rank(query, DOCS)
    assert top[0].path == "report.md" and answer in top[0].text, top[:3]
    assert all(m.line != HEADER_LINE for m in top)  # the header-only chunk never competes


@pytest.mark.parametrize(
    ("query", "answer"),
    [
        ("When do we deploy to production?", "Tuesdays and Thursdays between 10:00 and 16:00"),
        ("Which days are deployments allowed?", "Tuesdays and Thursdays"),
        ("How are rollbacks done?", "`deploy rollback`"),
        ("How long is the on-call rotation?", "one week long"),
        ("When does the on-call rotation hand over?", "Mondays at 09:00 UTC"),
    ],
)
def test_handbook_questions_find_their_paragraph(query: str, answer: str) -> None:
    top = rank(query, DOCS)[0]
    assert top.path == "handbook.md" and answer in top.text, top


def test_a_document_name_in_the_query_prefers_that_document() -> None:
    # the name alone: its first passage, where no passage holds the word "handbook"
    top = rank("handbook.md", DOCS)
    assert top and {m.path for m in top} == {"handbook.md"}
    assert "Tuesdays and Thursdays" in top[0].text
    # with other words: the named document's passage first, though report.md has Q1 too
    top = rank("handbook.md on-call Q1", DOCS)
    assert top[0].path == "handbook.md" and "one week long" in top[0].text, top[:2]


def test_paragraphs_list_items_and_a_table_without_rows() -> None:
    text = "# Title\nOne line\nwraps here.\n\n- first item\n- second\n  continued\n"
    text += "| a | b |\n|---|---|\n"
    assert chunks(text) == [
        (2, "One line wraps here."),
        (5, "- first item"),
        (6, "- second continued"),
        (8, "a | b"),  # no rows: the header is all there is to find
    ]


async def test_limit_one_returns_the_answer_row(tmp_path: Path) -> None:
    # The issue: with limit 1 the header came back and the answer read "3 new customers".
    ctx = ToolContext("search-test", "s1", 0.0, None, tmp_path, DOCS_DIR, tool="search_docs")
    out = await search_docs(SearchDocsInput(query="new customers in Q3", limit=1), ctx)
    [match] = out.matches
    assert (match.path, match.line) == ("report.md", HEADER_LINE + 4)
    assert out.text == f"report.md:{HEADER_LINE + 4}: {match.text}"
    assert "new customers: 23" in out.text
