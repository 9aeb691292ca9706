"""Text specs: ``parse("warmup(500) >> cosine(3e-4, 10000, final=3e-5)")``; ``str(schedule)`` writes one back.

The grammar is a Python expression restricted to calls of schedule factories with number, string, bool, None and
list arguments, ``a >> b`` (sequence: b starts when a ends) and ``*`` (scale by a number, or multiply schedules).
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

from lrkit.errors import LrkitError
from lrkit.schedules._base import _FACTORIES, Schedule


class SpecError(LrkitError):
    """A spec that does not parse: ``position`` is the 0-based column of the mistake in ``spec``."""

    def __init__(self, reason: str, spec: str, position: int) -> None:
        self.reason, self.spec, self.position = reason, spec, position
        super().__init__(f"{reason} (column {position + 1})\n  {spec}\n  {' ' * position}^")

    def one_line(self) -> str:
        """The error on one line, the position marked with ``<here>``."""
        s, p = self.spec, self.position
        return f"{self.reason} at column {p + 1}: {s[:p]}<here>{s[p:]}"


def parse(spec: str) -> Schedule:
    """The schedule a text spec describes; :class:`SpecError` (a LrkitError) points at the mistake."""
    if not isinstance(spec, str) or not spec.strip():
        raise LrkitError(f"a schedule spec must be a non-empty string such as 'cosine(3e-4, 10000)', got {spec!r}")
    text = " ".join(spec.split("\n"))
    offset = len(text) - len(text.lstrip())
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        col = len(text.rstrip()) if not e.offset else e.offset - 1 + offset  # offset 0: at the end
        reason = "incomplete spec" if not e.offset else e.msg
        raise SpecError(reason, text, min(col, len(text))) from None
    value = _Eval(text, offset).visit(tree.body)
    if not isinstance(value, Schedule):
        raise SpecError(f"the spec describes {value!r}, not a schedule", text, offset)
    return value


_ARG = re.compile(r"^[\w>]+: (\w+)")


def as_schedule(value: Schedule | str, what: str = "schedule") -> Schedule:
    """``value`` as a Schedule: a spec string is parsed, a Schedule passes; anything else is an
    :class:`LrkitError` that names ``what`` (the argument). Every framework adapter takes its schedule this way."""
    if isinstance(value, str):
        return parse(value)
    if not isinstance(value, Schedule):
        raise LrkitError(f"{what} must be an lrkit schedule or a spec string such as 'cosine(3e-4, 10000)', "
                         f"got {type(value).__name__}")
    return value


class _Eval(ast.NodeVisitor):
    def _argument_node(self, node: ast.Call, name: str, message: str) -> ast.AST:
        """The argument an error message names ("kind: arg must ..."), else the call."""
        m = _ARG.match(message)
        if not m:
            return node
        for kw in node.keywords:
            if kw.arg == m.group(1):
                return kw.value
        params = list(inspect.signature(_FACTORIES[name]).parameters)
        if m.group(1) in params and params.index(m.group(1)) < len(node.args):
            return node.args[params.index(m.group(1))]
        return node

    def __init__(self, text: str, offset: int) -> None:
        self.text, self.offset = text, offset

    def fail(self, node: ast.AST, reason: str) -> SpecError:
        return SpecError(reason, self.text, self.offset + getattr(node, "col_offset", 0))

    def generic_visit(self, node: ast.AST) -> Any:
        raise self.fail(node, f"'{ast.unparse(node)}' is not allowed in a schedule spec")

    def visit_Constant(self, node: ast.Constant) -> Any:
        if node.value is None or isinstance(node.value, (int, float, str, bool)):
            return node.value
        return self.generic_visit(node)

    def visit_List(self, node: ast.List | ast.Tuple) -> Any:
        return [self.visit(e) for e in node.elts]

    visit_Tuple = visit_List

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        v = self.visit(node.operand)
        if isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
        return self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        a, b = self.visit(node.left), self.visit(node.right)
        if not isinstance(node.op, (ast.RShift, ast.Mult)):
            raise self.fail(node, "only '>>' (sequence) and '*' (scale) combine schedules")
        try:
            if isinstance(node.op, ast.RShift):
                if isinstance(a, (int, float)) or not hasattr(a, "__rshift__"):
                    raise LrkitError(f"the left side of '>>' must be a schedule or warmup(N), got {a!r}")
                return a >> b
            if not isinstance(a, Schedule) and not isinstance(b, Schedule):
                raise LrkitError("'*' needs a schedule on at least one side")
            return a * b if isinstance(a, Schedule) else b * a
        except SpecError:
            raise
        except LrkitError as e:
            raise self.fail(node.right if isinstance(node.op, ast.RShift) else node, str(e)) from None

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "a schedule spec calls schedule names only, such as cosine(...)")
        name = node.func.id
        if name not in _FACTORIES:
            known = ", ".join(sorted(_FACTORIES))
            raise self.fail(node, f"unknown schedule {name!r}; known: {known}")
        args = [self.visit(a) for a in node.args]
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise self.fail(kw.value, "'**' is not allowed in a schedule spec")
            kwargs[kw.arg] = self.visit(kw.value)
        try:
            return _FACTORIES[name](*args, **kwargs)
        except SpecError:
            raise
        except LrkitError as e:
            raise self.fail(self._argument_node(node, name, str(e)), str(e)) from None
        except TypeError as e:
            msg = str(e).replace(f"{_FACTORIES[name].__name__}()", f"{name}()")
            raise self.fail(node, f"{msg}; see help(lrkit.schedules.{_FACTORIES[name].__name__})") from None
