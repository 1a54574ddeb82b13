"""Text from tasks (tool outputs, answers, questions, user ids) on a person's terminal.

Any of it may come from a hostile source: an escape sequence in a tool's output could set
the terminal's title, clear the screen or draw a fake "approved by admin" line; a bidi
override could reorder what an approval shows. Every character that is not printable text
is shown as its escape (`\\x1b`, `\\u202e`); line breaks and tabs stay.
"""

from __future__ import annotations

import unicodedata

_KEPT = frozenset("\n\t")


def unprintable(c: str) -> bool:
    """A control, format, surrogate, private or unassigned character, or a line separator
    that is not a line break a terminal honours."""
    return unicodedata.category(c)[0] == "C" or c in "\u2028\u2029"


def _visible(c: str) -> str:
    if c in _KEPT or not unprintable(c):
        return c
    code = ord(c)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def terminal_safe(text: str) -> str:
    """`text` with every control and format character shown as its escape."""
    if text.isprintable():  # the common case, in C
        return text
    return "".join(_visible(c) for c in text)
