"""Human-in-the-loop labelling: a local web page where people compare clips of the agent.

Pieces, each usable on its own:

- :mod:`pbrl.human.tokens` — per-labeller access tokens (:class:`TokenRegistry`);
- :mod:`pbrl.human.session` — who labels what, answers into the store (:class:`LabelSession`);
- :mod:`pbrl.human.clips` — clips re-rendered from stored sim state, H.264 MP4, cached
  (:class:`ClipRenderer`);
- :mod:`pbrl.human.app` — the FastAPI app (JSON API + the static page);
- :mod:`pbrl.human.server` — all of it on uvicorn (:class:`LabelServer`);
- :mod:`pbrl.human.cli` — ``pbrl-label`` / ``python -m pbrl.human``.

:class:`pbrl.teachers.human.HumanTeacher` puts a :class:`LabelServer` behind the Teacher
protocol for training runs (``teacher=human``). See ``docs/human.md``.
"""

from pbrl.human.clips import ClipPlan, ClipRenderer, ClipSpec, plan_clip
from pbrl.human.session import HUMAN_PREFIX, LabelSession
from pbrl.human.summary import summarize
from pbrl.human.tokens import TokenError, TokenRegistry

__all__ = [
    "HUMAN_PREFIX",
    "ClipPlan",
    "ClipRenderer",
    "ClipSpec",
    "LabelServer",
    "LabelSession",
    "TokenError",
    "TokenRegistry",
    "plan_clip",
    "summarize",
]


def __getattr__(name: str):  # noqa: ANN202 - lazy: the web stack loads only when serving
    if name == "LabelServer":
        from pbrl.human.server import LabelServer

        return LabelServer
    raise AttributeError(f"module 'pbrl.human' has no attribute {name!r}")
