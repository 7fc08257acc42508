"""Teachers answer queries: scripted B-Pref teachers now, humans and models later.

``make_teacher("noisy", seed=3)`` builds one of B-Pref's six named teachers (:data:`PRESETS`),
``make_teacher(cfg)`` builds one from a config mapping holding ``name`` plus overrides.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from pbrl.teachers.base import Teacher
from pbrl.teachers.scripted import ScriptedTeacher, discount_weights

__all__ = [
    "PRESETS",
    "ScriptedTeacher",
    "Teacher",
    "UnknownTeacherError",
    "discount_weights",
    "make_teacher",
]

# B-Pref's named teachers (scripts/*/run_PEBBLE.sh); each changes one knob from the oracle.
# Treat as read-only: make_teacher copies from it.
PRESETS: dict[str, dict[str, Any]] = {
    "oracle": {"beta": math.inf},
    "noisy": {"beta": 1.0},
    "mistake": {"eps_mistake": 0.1},
    "skip": {"eps_skip": 0.1},
    "myopic": {"gamma": 0.9},
    "equal": {"eps_equal": 0.1},
}


class UnknownTeacherError(KeyError):
    """A teacher name that is not in :data:`PRESETS`."""

    def __str__(self) -> str:
        return str(self.args[0])


OTHER_TEACHERS: tuple[str, ...] = ("human", "regret", "heron", "visual", "similarity")
"""Teachers beyond the B-Pref presets (built by their own modules)."""


def make_teacher(name: str | Mapping[str, Any], **overrides: Any) -> Teacher:
    """Build a named teacher: a B-Pref preset, or one of :data:`OTHER_TEACHERS`.

    ``"human"`` is people on the labelling page, ``"regret"`` the regret preference model,
    ``"heron"`` hierarchical comparisons of reward factors, ``"visual"`` RAPL's simulated
    end-user (a hidden visual criterion), ``"similarity"`` QDHF's triplet judge.

    Args:
        name: a key of :data:`PRESETS`, one of :data:`OTHER_TEACHERS`, or a mapping with key
            ``"name"`` and optional teacher arguments (e.g. a ``teacher/`` config group).
        **overrides: :class:`ScriptedTeacher` arguments that replace the preset's values
            (``seed``, ``soft``, ``threshold``, ...), or :class:`~pbrl.teachers.human.
            HumanTeacher` arguments for ``"human"`` (``store`` is required there).
            ``teacher_id`` defaults to the name.
    """
    if isinstance(name, Mapping):
        cfg = dict(name)
        if "name" not in cfg:
            names = sorted([*PRESETS, *OTHER_TEACHERS])
            raise ValueError(f"a teacher config needs a 'name' key (one of {names})")
        name = str(cfg.pop("name"))
        overrides = {**cfg, **overrides}
    if name == "human":
        from pbrl.teachers.human import HumanTeacher  # lazy: the web stack is an extra

        if "store" not in overrides:
            raise ValueError(
                "teacher 'human' needs store=<path of the run's feedback store> (the training "
                "loop passes it; elsewhere call make_teacher('human', store=...))"
            )
        return HumanTeacher(**{"teacher_id": name, **overrides})
    if name == "regret":  # regret preference model over an oracle critic (teachers/regret.py)
        from pbrl.teachers.regret import make_regret_teacher

        return make_regret_teacher(**{"teacher_id": name, **overrides})
    if name == "heron":  # hierarchical factor comparisons (teachers/heron.py)
        from pbrl.teachers.heron import HeronTeacher

        return HeronTeacher(**{"teacher_id": name, **overrides})
    if name == "visual":  # RAPL's simulated end-user: a hidden visual criterion
        from pbrl.teachers.visual import VisualCriterionTeacher

        return VisualCriterionTeacher(**{"teacher_id": name, **overrides})
    if name == "similarity":  # QDHF's triplet judge over a hidden descriptor
        from pbrl.teachers.similarity import SimilarityTeacher

        return SimilarityTeacher(**{"teacher_id": name, **overrides})
    if name not in PRESETS:
        valid_names = sorted([*PRESETS, *OTHER_TEACHERS])
        raise UnknownTeacherError(f"unknown teacher {name!r}; valid: {valid_names}")
    valid = set(inspect.signature(ScriptedTeacher).parameters)
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(f"unknown ScriptedTeacher argument(s) {bad}; valid: {sorted(valid)}")
    kwargs: dict[str, Any] = {"teacher_id": name, **PRESETS[name], **overrides}
    return ScriptedTeacher(**kwargs)
