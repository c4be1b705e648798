"""Tasks: what a model is for. `task.py` holds the spec and the registry; each other module is one task."""

from .task import Task, default, export_heads, get, task_for_head, task_of, tasks, trainable

__all__ = ["Task", "default", "export_heads", "get", "task_for_head", "task_of", "tasks", "trainable"]
