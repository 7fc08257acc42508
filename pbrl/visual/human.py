"""``align.teacher=human``: people answer RAPL's alignment queries on the labelling page.

The alignment videos (:func:`pbrl.visual.rl.preference_data`) are rollouts of a pbrl env, so
each query's segments carry their post-step simulator states; the page (:mod:`pbrl.human`)
renders the clips from them with the env's ``render_state``. The queries (3-clip rankings)
go into ``run_dir/feedback.sqlite`` before they are asked, the answers are committed there by
the page's server, tokens and the clip cache go to ``run_dir/human``; settings are under
``human:`` (``pbrl/configs/rapl/rl.yaml``). The page is served while the alignment asks and
closed when it has its answers. The RLHF baseline (``reward=rlhf``) asks the same queries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pbrl.teachers.base import Teacher
from pbrl.teachers.human import require_web_extra
from pbrl.teachers.storing import StoringTeacher

TEACHERS: tuple[str, ...] = ("simulated", "human")
"""``align.teacher=``: the simulated end-user (a hidden visual criterion) or people."""


def cfg_get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``; ``default`` where a key is missing or the value null."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


def asks_preferences(cfg: Mapping[str, Any]) -> bool:
    """Whether the run configured by ``cfg`` learns from alignment queries at all.

    RAPL aligns its encoder unless one is loaded (``encoder.path``) or the pretrained
    features are used (``encoder.aligned=false``); the RLHF baseline learns its reward
    unless one is loaded (``rlhf.path``); ``reward=true_reward`` asks nothing unless
    ``eval.rapl_return`` builds the RAPL reward too.
    """
    reward = str(cfg["reward"])
    if reward == "rlhf":
        return cfg_get(cfg, "rlhf.path") is None
    if reward == "rapl" or bool(cfg_get(cfg, "eval.rapl_return", False)):
        return bool(cfg_get(cfg, "encoder.aligned", True)) and cfg_get(cfg, "encoder.path") is None
    return False


def check_align_teacher(cfg: Mapping[str, Any]) -> str:
    """``align.teacher``'s name, after refusing a person where none could answer.

    Raises:
        RaplRunError: an unknown teacher, or ``human`` for a run that asks no queries.
        ImportError: the labelling page's packages are missing (names the extra).
    """
    from pbrl.visual.rl import RaplRunError

    name = str(cfg_get(cfg, "align.teacher", "simulated"))
    if name not in TEACHERS:
        raise RaplRunError(f"align.teacher={name!r}; valid: {', '.join(TEACHERS)}")
    if name == "human":
        if not asks_preferences(cfg):
            raise RaplRunError(
                "align.teacher=human, but this run asks no alignment queries: "
                + _why_no_queries(cfg)
                + ". Drop align.teacher=human, or learn from people: leave encoder.path and "
                "rlhf.path null with reward=rapl (encoder.aligned=true) or reward=rlhf"
            )
        require_web_extra("align.teacher=human")
    return name


def _why_no_queries(cfg: Mapping[str, Any]) -> str:
    reward = str(cfg["reward"])
    if reward == "rlhf":
        return f"reward=rlhf loads its reward model from rlhf.path={cfg_get(cfg, 'rlhf.path')}"
    if reward == "true_reward" and not bool(cfg_get(cfg, "eval.rapl_return", False)):
        return "reward=true_reward trains on the env's own reward"
    if not bool(cfg_get(cfg, "encoder.aligned", True)):
        return "encoder.aligned=false rewards with the pretrained features (ImNet-OT), no head"
    return f"the aligned encoder is loaded from encoder.path={cfg_get(cfg, 'encoder.path')}"


def make_align_teacher(
    cfg: Mapping[str, Any],
    run_dir: str | Path,
    env_name: str,
    env_kwargs: Mapping[str, Any] | None,
    title: str,
) -> tuple[Teacher | None, Callable[[], dict[str, float]]]:
    """The alignment's teacher and what closes it (returning the page's ``human/*`` scalars).

    ``None`` for ``align.teacher=simulated`` (:func:`~pbrl.visual.rl.preference_data` builds
    the simulated end-user). ``human`` serves the page over ``run_dir/feedback.sqlite``
    (tokens in ``run_dir/human``), rendering ``env_name`` clips, and prints its address and
    links; each ``label`` waits for the answers (``human.timeout`` s at most).
    """
    if check_align_teacher(cfg) == "simulated":
        return None, dict
    from pbrl.store import FeedbackStore
    from pbrl.teachers import make_teacher

    run_dir = Path(run_dir)
    h = {k: v for k, v in dict(cfg_get(cfg, "human", {}) or {}).items() if v is not None}
    h.setdefault("title", title)
    store_path = run_dir / "feedback.sqlite"
    store = FeedbackStore(store_path)
    try:
        human = make_teacher(
            "human", seed=int(cfg["seed"]), store=store_path, state_dir=run_dir / "human",
            env_name=env_name, env_kwargs=dict(env_kwargs or {}), mode="wait", **h,
        )  # fmt: skip
    except BaseException:
        store.close()
        raise
    print(human.banner(), flush=True)  # type: ignore[attr-defined]

    def close() -> dict[str, float]:
        try:
            return {f"human/{k}": v for k, v in human.summary().items()}  # type: ignore[attr-defined]
        finally:
            human.close()  # type: ignore[attr-defined]
            store.close()

    return StoringTeacher(human, store), close
