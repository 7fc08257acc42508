"""A teacher wrapper that puts each batch of queries into a feedback store before asking.

The human teacher's labelling page serves queries from the run's feedback store, so a CLI that
asks a person outside the online loop (``pbrl-front select=teacher``, ``pbrl-qd``, RAPL's
alignment) must store every batch first; the answers are stored too (a no-op for the human
teacher's, which its server has already committed). A query id already stored is kept, so a
rerun that asks the same queries reuses the answers given before.
"""

from __future__ import annotations

from typing import Any

from pbrl.data import Feedback, QueryBatch
from pbrl.teachers.base import Teacher


class StoringTeacher:
    """Store ``queries``, then ask ``teacher``, then store its answers.

    Args:
        teacher: the teacher to ask (its ``set_progress``, when it has one, is told how many
            queries were asked of ``total``: the labelling page shows it).
        store: a :class:`~pbrl.store.FeedbackStore` (or anything with ``add_queries`` and
            ``add``).
        step: recorded with the queries (e.g. the training steps a front cost).
        total: the number of queries the run will ask, for the page's progress (default: the
            number asked so far).
    """

    def __init__(self, teacher: Teacher, store: Any, step: int = 0, total: int | None = None):
        self.teacher = teacher
        self.store = store
        self.step = int(step)
        self.total = None if total is None else int(total)
        self.teacher_id = getattr(teacher, "teacher_id", "teacher")
        self.asked = 0

    def label(self, queries: QueryBatch) -> list[Feedback]:
        """Store ``queries``, ask the teacher, store and return its answers."""
        self.store.add_queries(queries, step=self.step)
        self.asked += len(queries)
        progress = getattr(self.teacher, "set_progress", None)
        if callable(progress):
            total = self.asked if self.total is None else max(self.total, self.asked)
            progress(queries_used=self.asked, max_feedback=total)
        feedback = self.teacher.label(queries)
        self.store.add(feedback)
        return feedback

    def state_dict(self) -> dict[str, Any]:
        """The wrapped teacher's state (the answers themselves are in the store)."""
        return self.teacher.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the wrapped teacher's state."""
        self.teacher.load_state_dict(state)


__all__ = ["StoringTeacher"]
