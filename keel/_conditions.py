"""A small, safe expression language for plan-step `when` conditions.

Conditions are written by a model and evaluated inside the workflow, so they are parsed by
this recursive-descent parser into a tree and interpreted; nothing is ever passed to `eval`.
What a condition can do: read earlier step outputs, compare, combine with and/or/not,
do arithmetic, and call a handful of pure functions. It cannot loop, import, or reach
anything but the outputs it is given.

    s1.year > 2024
    s1.text contains "deploy" and not (s2.value >= 10)
    len(s1.matches) == 0 or lower(s1.best) == "arxiv"

A name (`s1`) is an earlier step's output object; `.field` and `[index]` reach inside it.
A missing field is `null`; comparing `null` with `<`/`>` is false rather than an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from keel.errors import KeelError

MAX_LENGTH = 500
MAX_DEPTH = 32


class ConditionError(KeelError, ValueError):
    """A condition that cannot be parsed or evaluated; the message says where and why."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>\d+(?:\.\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|\.|,|\+|-|\*|/)
      | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "contains", "in", "true", "false", "null"}
_COMPARISONS = {"==", "!=", "<", "<=", ">", ">=", "contains", "in"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # number, string, op, name, keyword, end
    text: str
    pos: int


def _tokenize(source: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        match = _TOKEN.match(source, pos)
        if match is None or match.end() == pos:
            raise ConditionError(f"unexpected character {source[pos:].lstrip()[:1]!r} at {pos}")
        group = match.lastgroup or ""
        text = match.group(group)
        kind = "keyword" if group == "name" and text in _KEYWORDS else group
        tokens.append(_Tok(kind, text, match.start(group)))
        pos = match.end()
    tokens.append(_Tok("end", "", len(source)))
    return tokens


# --- the tree ----------------------------------------------------------------------------

Node = tuple[
    Any, ...
]  # ("lit", v) ("ref", step, path) ("un", op, a) ("bin", op, a, b) ("call", f, args)


def _lower(value: Any) -> str:
    return str(value).lower()


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConditionError(f"number() cannot read {value!r}") from None


def _len(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str | list | dict):
        return len(value)
    raise ConditionError(f"len() of {type(value).__name__}")


FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "len": _len,
    "lower": _lower,
    "number": _number,
    "exists": lambda value: value is not None,
}


class _Parser:
    def __init__(self, source: str) -> None:
        self.tokens = _tokenize(source)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.tokens[self.i]

    def take(self) -> _Tok:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise ConditionError(f"expected {text!r} at {tok.pos}, found {tok.text or 'end'!r}")

    def parse(self) -> Node:
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise ConditionError(f"unexpected {tok.text!r} at {tok.pos}")
        return node

    def _nested(self, parse: Callable[[], Node]) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionError("the condition is nested too deeply")
        try:
            return parse()
        finally:
            self.depth -= 1

    def or_(self) -> Node:
        node = self.and_()
        while self.peek().text == "or":
            self.take()
            node = ("bin", "or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek().text == "and":
            self.take()
            node = ("bin", "and", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.peek().text == "not":
            self.take()
            return ("un", "not", self._nested(self.not_))
        return self.comparison()

    def comparison(self) -> Node:
        node = self.sum_()
        if self.peek().text in _COMPARISONS and self.peek().kind in ("op", "keyword"):
            op = self.take().text
            node = ("bin", op, node, self.sum_())
            if self.peek().text in _COMPARISONS:
                raise ConditionError(f"chained comparison at {self.peek().pos}: use 'and'")
        return node

    def sum_(self) -> Node:
        node = self.term()
        while self.peek().text in ("+", "-"):
            op = self.take().text
            node = ("bin", op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek().text in ("*", "/"):
            op = self.take().text
            node = ("bin", op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek().text == "-":
            self.take()
            return ("un", "-", self._nested(self.unary))
        return self.atom()

    def atom(self) -> Node:
        tok = self.take()
        if tok.kind == "number":
            return ("lit", float(tok.text) if "." in tok.text else int(tok.text))
        if tok.kind == "string":
            body = tok.text[1:-1]
            return ("lit", re.sub(r"\\(.)", r"\1", body))
        if tok.kind == "keyword" and tok.text in ("true", "false", "null"):
            return ("lit", {"true": True, "false": False, "null": None}[tok.text])
        if tok.text == "(":
            node = self._nested(self.or_)
            self.expect(")")
            return node
        if tok.kind == "name":
            if self.peek().text == "(":
                if tok.text not in FUNCTIONS:
                    raise ConditionError(
                        f"unknown function {tok.text!r} (available: {', '.join(FUNCTIONS)})"
                    )
                self.take()
                arg = self._nested(self.or_)
                self.expect(")")
                return ("call", tok.text, arg)
            return self.reference(tok.text)
        raise ConditionError(f"unexpected {tok.text or 'end'!r} at {tok.pos}")

    def reference(self, step: str) -> Node:
        path: list[str | int] = []
        while self.peek().text in (".", "["):
            if self.take().text == ".":
                name = self.take()
                if name.kind not in ("name", "keyword"):
                    raise ConditionError(f"expected a field name after '.' at {name.pos}")
                path.append(name.text)
            else:
                index = self.take()
                if index.kind == "number" and "." not in index.text:
                    path.append(int(index.text))
                elif index.kind == "string":
                    path.append(index.text[1:-1])
                else:
                    raise ConditionError(f"expected an index at {index.pos}")
                self.expect("]")
        return ("ref", step, tuple(path))


@dataclass(frozen=True)
class Condition:
    source: str
    tree: Node

    @property
    def steps(self) -> set[str]:
        """The step ids the condition reads."""
        found: set[str] = set()

        def walk(node: Node) -> None:
            kind = node[0]
            if kind == "ref":
                found.add(node[1])
            elif kind in ("un", "call"):
                walk(node[2])
            elif kind == "bin":
                walk(node[2])
                walk(node[3])

        walk(self.tree)
        return found

    def evaluate(self, outputs: Mapping[str, Any]) -> bool:
        """True or false for these step outputs (step id -> output object)."""
        return _truthy(_eval(self.tree, outputs))


def parse_condition(source: str) -> Condition:
    if len(source) > MAX_LENGTH:
        raise ConditionError(f"the condition is {len(source)} characters; at most {MAX_LENGTH}")
    if not source.strip():
        raise ConditionError("the condition is empty")
    return Condition(source, _Parser(source).parse())


def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, 0.0, "", [], {})


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _eval(node: Node, outputs: Mapping[str, Any]) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "ref":
        _, step, path = node
        if step not in outputs:
            raise ConditionError(f"step {step!r} has no output to read")
        value = outputs[step]
        for part in path:
            if isinstance(value, Mapping):
                value = value.get(part)
            elif isinstance(value, list) and isinstance(part, int):
                value = value[part] if -len(value) <= part < len(value) else None
            else:
                value = None
        return value
    if kind == "call":
        return FUNCTIONS[node[1]](_eval(node[2], outputs))
    if kind == "un":
        value = _eval(node[2], outputs)
        if node[1] == "not":
            return not _truthy(value)
        if not _is_number(value):
            raise ConditionError(f"cannot negate {value!r}")
        return -value
    op, left_node, right_node = node[1], node[2], node[3]
    if op == "and":
        left = _eval(left_node, outputs)
        return _eval(right_node, outputs) if _truthy(left) else left
    if op == "or":
        left = _eval(left_node, outputs)
        return left if _truthy(left) else _eval(right_node, outputs)
    left, right = _eval(left_node, outputs), _eval(right_node, outputs)
    return _binary(op, left, right)


def _binary(op: str, left: Any, right: Any) -> Any:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op in ("contains", "in"):
        haystack, needle = (left, right) if op == "contains" else (right, left)
        if haystack is None:
            return False
        if isinstance(haystack, str):
            return str(needle).lower() in haystack.lower()
        if isinstance(haystack, list | dict):
            return needle in haystack
        raise ConditionError(f"{op!r} needs text or a list, not {type(haystack).__name__}")
    if op in ("<", "<=", ">", ">="):
        if left is None or right is None:
            return False
        if _is_number(left) != _is_number(right) or not (_is_number(left) or isinstance(left, str)):
            raise ConditionError(f"cannot compare {left!r} {op} {right!r}")
        return {
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
        }[op]
    if not (_is_number(left) and _is_number(right)):
        if op == "+" and isinstance(left, str) and isinstance(right, str):
            return left + right
        raise ConditionError(f"cannot compute {left!r} {op} {right!r}")
    if op == "/" and right == 0:
        raise ConditionError("division by zero")
    return {"+": left + right, "-": left - right, "*": left * right, "/": left / right}[op]
