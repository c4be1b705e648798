"""A dataclass's fields read from its module's source, without running the module (which may import torch).

`pvtkit train --help` is built from `training.TrainingArguments`' fields, but importing `pvtkit.training` loads
torch (a second or more). The field declarations (name, annotation, default, metadata) are plain expressions of
literals and the module's own literal constants (`RUN_DEFAULTS`, `TASKS`, ...), so they are evaluated here from the
source; tests check that the result equals `dataclasses.fields` of the imported class.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import MISSING
from typing import Any, NamedTuple


class FieldSpec(NamedTuple):
    name: str
    annotation: str
    default: Any  # MISSING when there is none (or it comes from a default_factory)
    default_factory: str | None  # the factory's name
    metadata: dict[str, Any]


def _constants(tree: ast.Module) -> dict[str, Any]:
    """The module-level `NAME = <expression of literals and earlier constants>` assignments, evaluated."""
    found: dict[str, Any] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            and node.value is not None else []  # fmt: skip
        for target in targets:
            names = [target] if isinstance(target, ast.Name) else target.elts if isinstance(target, ast.Tuple) else []
            if not names or not all(isinstance(n, ast.Name) and n.id.isupper() for n in names):
                continue
            try:
                value = _evaluate(node.value, found)  # type: ignore[arg-type]
            except (ValueError, TypeError, KeyError, IndexError):  # not a literal expression: no constant
                continue
            values = [value] if len(names) == 1 and isinstance(target, ast.Name) else list(value)
            found.update({n.id: v for n, v in zip(names, values)})
    return found


def _evaluate(node: ast.expr, names: dict[str, Any]) -> Any:
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Call, ast.Lambda, ast.Attribute, ast.NamedExpr)) or (
            isinstance(sub, ast.Name) and sub.id not in names
        ):
            raise ValueError(f"not a constant expression: {ast.unparse(sub)}")
    return eval(compile(ast.Expression(node), "<field>", "eval"), {"__builtins__": {}}, dict(names))


def module_constants(module: str) -> dict[str, Any]:
    """The literal constants of `module`, from its source; nothing is imported."""
    return _constants(_parse(module))


def _parse(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ImportError(f"no module {module}")
    with open(spec.origin, encoding="utf-8") as f:
        return ast.parse(f.read(), spec.origin)


def read_fields(module: str, class_name: str) -> tuple[list[FieldSpec], dict[str, Any]]:
    """(`class_name`'s fields in order, the module's constants) from `module`'s source; nothing is imported."""
    tree = _parse(module)
    constants = _constants(tree)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fields = []
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        default, factory, metadata = MISSING, None, {}
        value = node.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
            for kw in value.keywords:
                if kw.arg == "default":
                    default = _evaluate(kw.value, constants)
                elif kw.arg == "default_factory":
                    factory = ast.unparse(kw.value)
                elif kw.arg == "metadata":
                    metadata = _evaluate(kw.value, constants)
        elif value is not None:
            default = _evaluate(value, constants)
        fields.append(FieldSpec(node.target.id, ast.unparse(node.annotation), default, factory, metadata))
    return fields, constants
