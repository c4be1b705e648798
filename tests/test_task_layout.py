"""The layout the code promises for tasks (README "Layout"): everything about a task lives in its file under
`tasks/`; the trainer, the evaluator, the pipelines, the commands, the server and export read the spec and branch on
no task. Read from the syntax trees of the package's own files."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import pvtkit
from pvtkit import tasks

SRC = Path(pvtkit.__file__).parent
# `tasks/` is where tasks live; `models/` and `keras/` hold the families, whose specs name the heads they have.
OUTSIDE_TASKS = sorted(p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in ("tasks", "models", "keras"))

# Every name a task answers to, and the family heads they run.
TASK_NAMES = {name for task in tasks.tasks().values() for name in (*task.names, *task.heads)} - {"model"}
# What a task-specific head or output is recognised by.
HEAD_ATTRIBUTES = {"classifier", "decode_head", "decoder", "head", "predicted_depth", "logits"}
OUTPUT_CLASSES = {"ImageClassifierOutput", "SemanticSegmenterOutput", "DepthEstimatorOutput", "BackboneOutput"}
FLAG_NAMES = {"segmentation", "classification", "depth", "detection", "is_segmentation", "is_classification"}


def _is_task_name(node: ast.AST) -> bool:
    """A task's name, or a tuple/list/set holding one."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_task_name(e) for e in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in TASK_NAMES


def task_branches(path: Path, root: Path = SRC) -> list[str]:
    """`file:line what` for every place that decides something by task: a comparison with a task's name, a table
    keyed by task names, `hasattr`/`getattr` of a head's attribute, `isinstance` on a task's output class, or an
    `if` on a flag named after a task."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare) and any(_is_task_name(n) for n in (node.left, *node.comparators)):
            found.append((node.lineno, "compares with a task name"))
        elif isinstance(node, ast.Dict) and sum(_is_task_name(k) for k in node.keys if k is not None) >= 2:
            found.append((node.lineno, "a table keyed by task names"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if (
                node.func.id in ("hasattr", "getattr")
                and len(args) >= 2
                and isinstance(args[1], ast.Constant)
                and (args[1].value in HEAD_ATTRIBUTES)
            ):
                found.append((node.lineno, f"{node.func.id}(..., {args[1].value!r})"))
            elif node.func.id == "isinstance" and len(args) == 2:
                names = {n.id if isinstance(n, ast.Name) else getattr(n, "attr", None) for n in ast.walk(args[1])}
                if names & OUTPUT_CLASSES:
                    found.append((node.lineno, f"isinstance on {sorted(names & OUTPUT_CLASSES)[0]}"))
        elif isinstance(node, (ast.If, ast.IfExp, ast.While)):
            test = node.test.operand if isinstance(node.test, ast.UnaryOp) else node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name in FLAG_NAMES:
                found.append((node.lineno, f"if {name}"))
    return [f"{path.relative_to(root)}:{line} {what}" for line, what in sorted(set(found))]


def test_the_check_finds_task_branches(tmp_path):
    """Not vacuous: it finds the branches part 16 removed (from the trainer, the server, the commands)."""
    (tmp_path / "old.py").write_text(
        "self.segmentation = settings['task'] == 'semantic-segmentation'\n"
        "if self.segmentation:\n    pass\n"
        "SERVED = {'image-classification': 'image-classification', 'semantic-segmentation': 'image-segmentation'}\n"
        "if hasattr(source, 'decode_head'):\n    pass\n"
        "ok = isinstance(out, SemanticSegmenterOutput)\n"
        "x = 1 if task in ('depth', 'image-segmentation') else 2\n"
    )
    hits = [h.split(" ", 1)[1] for h in task_branches(tmp_path / "old.py", root=tmp_path)]
    assert hits == [
        "compares with a task name",
        "if segmentation",
        "a table keyed by task names",
        "hasattr(..., 'decode_head')",
        "isinstance on SemanticSegmenterOutput",
        "compares with a task name",
    ]
    # and it finds the one table of heads that belongs outside `tasks/`: a family spec's classes by head
    family_file = Path(inspect.getsourcefile(pvtkit.PvtV2Model))
    assert any("a table keyed by task names" in hit for hit in task_branches(family_file, root=family_file.parent))


@pytest.mark.parametrize("path", OUTSIDE_TASKS, ids=lambda p: str(p.relative_to(SRC)))
def test_no_task_branch_outside_tasks(path):
    """The trainer, evaluator, pipelines, commands, server, export and analysis read the task specs."""
    assert task_branches(path) == []


def test_every_task_is_complete_and_named_once():
    """Each name (and alias) picks one task; every trainable task has its data, loss, metric, evaluator and
    records; every served one its outputs."""
    seen: dict[str, str] = {}
    for task in tasks.tasks().values():
        for name in task.names:
            assert seen.setdefault(name, task.name) == task.name, f"{name} names {seen[name]} and {task.name}"
        assert tasks.get(task.name) is task and task.heads and task.auto_class() and task.pipeline_class()
        if task.trainable:
            cls = type(task)
            for method in (
                "load_data",
                "samples",
                "train_dataset",
                "train_loss",
                "evaluator",
                "validation_record",
                "evaluate",
                "report_table",
            ):
                assert getattr(cls, method) is not getattr(tasks.Task, method), f"{task.name} lacks {method}"
            assert task.best_metric and task.train_metric and "lr_fine_tune" in task.recipe
    assert tasks.get("segmentation") is tasks.get("image-segmentation") is tasks.get("semantic-segmentation")
    with pytest.raises(ValueError, match="unknown task 'colourise'"):
        tasks.get("colourise")
