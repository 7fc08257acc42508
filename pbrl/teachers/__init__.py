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


def make_teacher(name: str | Mapping[str, Any], **overrides: Any) -> ScriptedTeacher:
    """Build a named B-Pref teacher.

    Args:
        name: a key of :data:`PRESETS`, or a mapping with key ``"name"`` and optional
            :class:`ScriptedTeacher` arguments (e.g. a ``teacher/`` config group).
        **overrides: :class:`ScriptedTeacher` arguments that replace the preset's values
            (``seed``, ``soft``, ``threshold``, ...). ``teacher_id`` defaults to the name.
    """
    if isinstance(name, Mapping):
        cfg = dict(name)
        if "name" not in cfg:
            raise ValueError(f"a teacher config needs a 'name' key (one of {sorted(PRESETS)})")
        name = str(cfg.pop("name"))
        overrides = {**cfg, **overrides}
    if name not in PRESETS:
        raise UnknownTeacherError(f"unknown teacher {name!r}; valid: {sorted(PRESETS)}")
    valid = set(inspect.signature(ScriptedTeacher).parameters)
    bad = sorted(set(overrides) - valid)
    if bad:
        raise TypeError(f"unknown ScriptedTeacher argument(s) {bad}; valid: {sorted(valid)}")
    kwargs: dict[str, Any] = {"teacher_id": name, **PRESETS[name], **overrides}
    return ScriptedTeacher(**kwargs)
