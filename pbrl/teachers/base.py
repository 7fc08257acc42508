"""The teacher protocol: anything that answers queries with :class:`~pbrl.data.Feedback`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pbrl.data import Feedback, QueryBatch


@runtime_checkable
class Teacher(Protocol):
    """Answers a batch of queries, one :class:`~pbrl.data.Feedback` per query.

    Attributes:
        teacher_id: who answers (``"oracle"``, ``"noisy"``, ``"human:alice"``, ...); stored
            with every feedback so datasets from different teachers can be told apart.
    """

    teacher_id: str

    def label(self, queries: QueryBatch) -> list[Feedback]:
        """Answer ``M`` queries; returns ``M`` feedbacks in query order.

        A query the teacher declines to answer gets ``Label.SKIP`` (it still counts as asked).
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes while labelling (RNG state, running statistics)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a teacher built with the same arguments."""
        ...
