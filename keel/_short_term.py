"""Short-term memory: the task's recent conversation and observations, bounded in the
workflow's state, and what older entries leave behind when they fall out of the window.

Pure and deterministic (it runs inside the workflow). The summary is extractive: each entry
that leaves the window adds its first line, clipped, and the summary keeps the most recent
`SUMMARY_CHARS`; no model call, so folding costs nothing and replays identically. When the
workflow continues as new, `carried()` folds the whole window into the summary, so the next
run starts with a compact state instead of the full transcript.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

WINDOW_ENTRIES = 20
WINDOW_CHARS = 4000
ENTRY_CHARS = 500
SUMMARY_CHARS = 1200
SUMMARY_ENTRY_CHARS = 120


def _gist(entry: str) -> str:
    line = entry.strip().splitlines()[0] if entry.strip() else ""
    return line if len(line) <= SUMMARY_ENTRY_CHARS else line[: SUMMARY_ENTRY_CHARS - 1] + "…"


class ShortTermMemory(BaseModel):
    window: list[str] = Field(default_factory=list, description="the latest entries, in order")
    summary: str = Field(default="", description="the gist of entries that left the window")
    folded: int = Field(default=0, description="how many entries the summary covers")

    def add(self, entry: str) -> None:
        self.window.append(entry[:ENTRY_CHARS])
        while len(self.window) > WINDOW_ENTRIES or (
            len(self.window) > 1 and sum(len(e) for e in self.window) > WINDOW_CHARS
        ):
            self._fold(self.window.pop(0))

    def _fold(self, entry: str) -> None:
        gist = _gist(entry)
        if gist:
            merged = f"{self.summary}; {gist}" if self.summary else gist
            self.summary = merged[-SUMMARY_CHARS:]
        self.folded += 1

    def carried(self) -> ShortTermMemory:
        """The compact form to carry across continue-as-new: the window folded in."""
        compact = self.model_copy(deep=True)
        while compact.window:
            compact._fold(compact.window.pop(0))
        return compact

    def recap(self) -> list[str]:
        """For the planner: the gist of what left the window (the window's own entries reach
        it as step results and failures)."""
        if not self.summary:
            return []
        return [f"earlier in this task ({self.folded} events): {self.summary}"]
