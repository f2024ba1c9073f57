"""One instruction example, and how a generated answer to it is scored."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    instruction: str
    output: str
    input: str = ""
    domain: str = "default"
    # How a generated answer is checked: "exact" (first line equals output, case-insensitive),
    # "number" (first line is the same number), "python_expr" (an expression in x that agrees
    # with output on test values), or "none" (free text: no accuracy, loss only).
    check: str = "none"
    # A multi-turn conversation, (role, text) turns ending with the assistant's: every assistant
    # turn carries loss. Empty for single-turn examples (instruction / input / output).
    turns: tuple[tuple[str, str], ...] = ()


def first_line(response: str) -> str:
    line = response.strip().split("\n", 1)[0].strip()
    return line.rstrip(".").strip("`").strip().rstrip(".").strip()


_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def is_correct(example: Example, response: str) -> bool | None:
    """Whether `response` answers `example` (None when the example has no checkable answer)."""
    answer = first_line(response)
    if example.check == "exact":
        return answer.lower() == example.output.strip().lower()
    if example.check == "number":
        return bool(_NUMBER.match(answer)) and float(answer) == float(example.output)
    if example.check == "python_expr":
        return _same_function_of_x(answer, example.output)
    return None


_TEST_XS = (-7, -2, 0, 1, 3, 10, 25)
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Constant, ast.operator, ast.unaryop)


def _eval_expr(source: str, x: int):
    """Evaluate an arithmetic expression in x; anything but arithmetic on x and numbers is refused."""
    tree = ast.parse(source, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ValueError(f"not allowed: {type(node).__name__}")
        if isinstance(node, ast.Name) and node.id != "x":
            raise ValueError(f"unknown name {node.id}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise ValueError("non-numeric constant")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            if not (
                isinstance(exponent, ast.Constant)
                and isinstance(exponent.value, (int, float))
                and abs(exponent.value) <= 8
            ):
                raise ValueError("exponent too large")
    return eval(compile(tree, "<answer>", "eval"), {"__builtins__": {}}, {"x": x})  # noqa: S307


def _same_function_of_x(candidate: str, reference: str) -> bool:
    """The test: the candidate expression gives the reference's value on every test input."""
    try:
        return all(_eval_expr(candidate, x) == _eval_expr(reference, x) for x in _TEST_XS)
    except (SyntaxError, ValueError, ZeroDivisionError, TypeError, OverflowError, RecursionError):
        return False
