"""`calculator`: arithmetic by a small recursive-descent parser (never `eval`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from pydantic import BaseModel, Field

from keel.errors import ToolRefusal

MAX_EXPONENT = 1000
MAX_LENGTH = 500
MAX_DEPTH = 50  # nested parentheses and calls; deeper would overflow the parser's stack
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|(\*\*|//|[-+*/%(),])|([a-z]+))")
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
}


class CalculatorError(ToolRefusal):
    """An expression the calculator cannot or will not evaluate."""


class CalculatorInput(BaseModel):
    expression: str = Field(
        min_length=1, max_length=MAX_LENGTH, description="arithmetic, e.g. (17 * 23) / 4"
    )


class CalculatorOutput(BaseModel):
    value: float
    text: str


def _tokenize(expression: str) -> list[str]:
    tokens, pos = [], 0
    expression = expression.strip()
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if not match or match.end() == pos:
            raise CalculatorError(f"unexpected character {expression[pos]!r} at position {pos}")
        tokens.append(match.group(0).strip())
        pos = match.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/'|'//'|'%') unary)*;
    unary := ('-'|'+') unary | power; power := atom ('**' unary)?;
    atom := number | name '(' expr (',' expr)* ')' | '(' expr ')'"""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise CalculatorError(
                f"expected {expected or 'more input'} but found {token or 'the end'}"
            )
        self.pos += 1
        return token

    def expr(self) -> float:
        if self.depth > MAX_DEPTH:  # 0 at the top, then one per enclosing ( or call
            raise CalculatorError(f"more than {MAX_DEPTH} nested parentheses or calls")
        self.depth += 1
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        self.depth -= 1
        return value

    def term(self) -> float:
        value = self.unary()
        while self.peek() in ("*", "/", "//", "%"):
            op, right = self.take(), self.unary()
            if op == "*":
                value *= right
            elif right == 0:
                raise CalculatorError("division by zero")
            elif op == "/":
                value /= right
            elif op == "//":
                value //= right
            else:
                value %= right
        return value

    def unary(self) -> float:
        negative = False
        while self.peek() in ("-", "+"):  # a loop: "- - - ... 1" must not nest calls
            negative ^= self.take() == "-"
        value = self.power()
        return -value if negative else value

    def power(self) -> float:
        base = self.atom()
        if self.peek() == "**":
            self.take()
            exponent = self.unary()
            if abs(exponent) > MAX_EXPONENT:
                raise CalculatorError(f"exponent {exponent:g} is larger than {MAX_EXPONENT}")
            try:
                return float(base**exponent)
            except (OverflowError, ZeroDivisionError) as err:
                raise CalculatorError(str(err)) from None
        return base

    def atom(self) -> float:
        token = self.take()
        if token == "(":
            value = self.expr()
            self.take(")")
            return value
        if token in _FUNCTIONS:
            self.take("(")
            args = [self.expr()]
            while self.peek() == ",":
                self.take()
                args.append(self.expr())
            self.take(")")
            try:
                return float(_FUNCTIONS[token](*args))
            except (TypeError, ValueError, OverflowError) as err:
                raise CalculatorError(f"{token}: {err}") from None
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        raise CalculatorError(f"unexpected {token!r}")


def evaluate(expression: str) -> float:
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"expression longer than {MAX_LENGTH} characters")
    parser = _Parser(_tokenize(expression))
    value = parser.expr()
    if parser.peek() is not None:
        raise CalculatorError(f"unexpected {parser.peek()!r} after a complete expression")
    if math.isnan(value) or math.isinf(value):
        raise CalculatorError("the result is not a finite number")
    return value


def format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.10g}"


def calculate(args: CalculatorInput) -> CalculatorOutput:
    value = evaluate(args.expression)
    return CalculatorOutput(value=value, text=format_number(value))
