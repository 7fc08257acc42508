"""Scripted (synthetic) teachers of the B-Pref family, answering from the true reward.

B-Pref (Lee, Smith, Dragan, Abbeel, NeurIPS 2021 D&B; ``reward_model.py: get_label``) models
an irrational human by six knobs applied in a fixed order. For a pair (sigma_0, sigma_1) with
per-step true rewards r_t and undiscounted returns R_i = sum_t r_t:

1. **Skip**: if ``max(R_0, R_1) <= d_skip`` the pair gets no label (``Label.SKIP``); B-Pref
   keeps a pair only when ``max(R_0, R_1) > d_skip``, and only applies the rule when
   ``d_skip > 0``.
2. **Equal mask**: ``|R_0 - R_1| < d_equal``, computed on *undiscounted* returns.
3. **Myopia**: ``R_i^g = sum_{t=1..H} gamma^(H-t) r_t`` (late steps weigh more).
4. **Preference**: rational (``beta = inf``) ``y = 1[R_0^g < R_1^g]``, or stochastic
   (finite ``beta > 0``) ``y ~ Bernoulli(sigmoid(beta (R_1^g - R_0^g)))``.
5. **Mistake**: flip ``y`` with probability ``eps_mistake``.
6. **Equal mask applied last**: masked pairs are answered ``Label.EQUAL`` whatever 4-5 said.

Thresholds are ``d = eps * scale``. ``threshold="max_seen"``: for the skip rule ``scale`` is
the largest return ``R`` of any segment this teacher has been shown, for the equal rule the
largest ``|R|`` (both updated from each batch before it is labelled). The skip scale is signed
as B-Pref's ``m_bar`` is: while no segment shown has a positive return (Pendulum, a
HalfCheetah that still goes backwards) the skip rule is off instead of skipping every pair.
``threshold="episode"``: ``scale`` is B-Pref's ``m_bar = mean episode return * H /
episode_length``, set with :meth:`ScriptedTeacher.set_episode_return`. We use ``eps * m_bar``;
B-Pref's ``train_PEBBLE.py`` multiplies by ``eps`` twice after the first round
(``d = eps**2 * m_bar``), a bug we do not reproduce.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from scipy.special import expit

from pbrl.data import Feedback, Label, QueryBatch

ThresholdMode = Literal["max_seen", "episode"]
THRESHOLD_MODES: tuple[str, ...] = ("max_seen", "episode")


def discount_weights(horizon: int, gamma: float) -> np.ndarray:
    """``(H,)`` myopic weights ``gamma^(H-t)`` for t = 1..H: the last step has weight 1."""
    return gamma ** np.arange(horizon - 1, -1, -1, dtype=np.float64)


class ScriptedTeacher:
    """A B-Pref simulated teacher answering pair queries from ``segments.true_reward``.

    Vectorised over the batch: one call labels all ``M`` queries with a handful of array ops.
    Randomness comes from a private ``np.random.Generator(seed)``; the draws per call depend
    only on ``M`` and the settings, not on the rewards, so a resumed teacher repeats itself.

    Args:
        beta: rationality. ``math.inf`` is the perfectly rational teacher (B-Pref's
            ``teacher_beta=-1``); a finite ``beta > 0`` samples Bradley-Terry labels.
        gamma: myopic discount in (0, 1]; 1 means the plain sum.
        eps_mistake: probability of flipping a label.
        eps_skip: skip threshold as a fraction of the threshold scale (0 disables).
        eps_equal: "equally preferable" threshold as a fraction of the scale (0 disables).
        soft: also return soft labels ``Feedback.soft`` = probability that this teacher answers
            "second": ``p + eps_mistake (1 - 2 p)`` with ``p = sigmoid(beta (R_1^g - R_0^g))``
            (``p`` is 0/1 for ``beta=inf``, 0.5 for exact ties). With ``eps_mistake=0`` this is
            ``sigmoid(beta (R_1^g - R_0^g))``; the mistake term keeps soft labels honest for
            the mistaken teacher, whose flips would otherwise vanish under soft targets.
            Equal-masked pairs get 0.5, skipped ones ``None``.
        seed: seed of the teacher's own generator.
        teacher_id: recorded in every :class:`~pbrl.data.Feedback`.
        threshold: ``"max_seen"`` or ``"episode"`` (see the module docstring).

    Exact ties of a rational teacher (``R_0^g == R_1^g``) are answered ``Label.EQUAL``;
    B-Pref's ``1[R_0 < R_1]`` sends them to the first segment, which biases the reward model
    towards whatever happens to be shown first (e.g. all-zero sparse-reward pairs).
    """

    def __init__(
        self,
        beta: float = math.inf,
        gamma: float = 1.0,
        eps_mistake: float = 0.0,
        eps_skip: float = 0.0,
        eps_equal: float = 0.0,
        soft: bool = False,
        seed: int = 0,
        teacher_id: str = "oracle",
        threshold: ThresholdMode = "max_seen",
    ) -> None:
        beta = float(beta)
        if not beta > 0:  # also rejects NaN
            raise ValueError(
                f"beta must be > 0 (use beta=inf for the perfectly rational teacher; B-Pref's "
                f"beta=-1 convention is not accepted), got {beta}"
            )
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
        for name, eps in (
            ("eps_mistake", eps_mistake),
            ("eps_skip", eps_skip),
            ("eps_equal", eps_equal),
        ):
            if not 0.0 <= eps <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {eps}")
        if threshold not in THRESHOLD_MODES:
            raise ValueError(f"unknown threshold {threshold!r}; valid: {list(THRESHOLD_MODES)}")
        self.beta = beta
        self.gamma = float(gamma)
        self.eps_mistake = float(eps_mistake)
        self.eps_skip = float(eps_skip)
        self.eps_equal = float(eps_equal)
        self.soft = bool(soft)
        self.seed = int(seed)
        self.teacher_id = str(teacher_id)
        self.threshold: ThresholdMode = threshold
        self.rng = np.random.default_rng(seed)
        self.max_seen = 0.0  # largest |segment return| shown so far (equal-rule scale)
        self.best_seen = -math.inf  # largest segment return shown so far (skip-rule scale)
        self.episode_return: float | None = None
        self.episode_length: int | None = None

    def __repr__(self) -> str:
        return (
            f"ScriptedTeacher(teacher_id={self.teacher_id!r}, beta={self.beta}, "
            f"gamma={self.gamma}, eps_mistake={self.eps_mistake}, eps_skip={self.eps_skip}, "
            f"eps_equal={self.eps_equal}, soft={self.soft}, threshold={self.threshold!r})"
        )

    # --- thresholds ------------------------------------------------------------------------
    def set_episode_return(self, mean_return: float, episode_length: int) -> None:
        """Set B-Pref's threshold scale from recent training episodes.

        Args:
            mean_return: mean true return of recent training episodes (B-Pref: last 10).
            episode_length: episode length used to scale it down to one segment.

        Only used with ``threshold="episode"``; harmless otherwise (the loop may always call it).
        """
        if not math.isfinite(mean_return):
            raise ValueError(f"mean_return must be finite, got {mean_return}")
        if episode_length <= 0:
            raise ValueError(f"episode_length must be > 0, got {episode_length}")
        self.episode_return = float(mean_return)
        self.episode_length = int(episode_length)

    def scale(self, horizon: int, rule: Literal["skip", "equal"] = "equal") -> float:
        """The threshold scale of ``rule`` for ``horizon``-step segments (``d = eps * scale``)."""
        if self.threshold == "max_seen":
            return self.best_seen if rule == "skip" else self.max_seen
        if self.episode_return is None or self.episode_length is None:
            if self.eps_skip > 0 or self.eps_equal > 0:
                raise RuntimeError(
                    "threshold='episode' needs set_episode_return(mean_return, episode_length) "
                    "before the first label() call, or use threshold='max_seen'"
                )
            return 0.0
        return self.episode_return * horizon / self.episode_length

    # --- labelling -------------------------------------------------------------------------
    def label(self, queries: QueryBatch) -> list[Feedback]:
        """Answer ``M`` pair queries (see the class docstring for the rule order)."""
        if queries.kind != "pair" or queries.k != 2:
            raise ValueError(
                f"ScriptedTeacher answers pair queries only, got kind={queries.kind!r} with "
                f"k={queries.k}; build the batch with QueryBatch.from_members([first, second])"
            )
        first, second = queries.member(0), queries.member(1)
        if first.true_reward is None or second.true_reward is None:
            raise ValueError(
                "ScriptedTeacher needs the true reward of the queried segments, but this batch "
                "was built with without_reward(); pass the segments as sampled from the buffer"
            )
        r0 = np.asarray(first.true_reward, dtype=np.float64)  # (M, H)
        r1 = np.asarray(second.true_reward, dtype=np.float64)
        if not (np.isfinite(r0).all() and np.isfinite(r1).all()):
            raise ValueError("true_reward of the queried segments contains NaN or inf")
        m, horizon = r0.shape
        ret0, ret1 = r0.sum(axis=1), r1.sum(axis=1)  # undiscounted returns R_i
        if m:
            both = np.concatenate([ret0, ret1])
            self.max_seen = max(self.max_seen, float(np.abs(both).max()))
            self.best_seen = max(self.best_seen, float(both.max()))

        # 1. skip; B-Pref applies the rule only for a positive threshold.
        d_skip = self.eps_skip * self.scale(horizon, "skip") if self.eps_skip > 0 else 0.0
        skip = np.maximum(ret0, ret1) <= d_skip if d_skip > 0 else np.zeros(m, bool)
        # 2. equal mask on undiscounted returns (strict <, so d = 0 never masks).
        equal = np.abs(ret0 - ret1) < self.eps_equal * self.scale(horizon, "equal")
        # 3. myopic returns.
        w = discount_weights(horizon, self.gamma)
        diff = r1 @ w - r0 @ w  # R_1^g - R_0^g
        # 4. preference: p = P(second); draws are made for every query so RNG use depends on M.
        if math.isinf(self.beta):
            p = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
            second_pref = diff > 0
            tie = diff == 0
        else:
            p = expit(self.beta * diff)
            second_pref = self.rng.random(m) < p
            tie = np.zeros(m, bool)
        # 5. mistakes flip the label (a tie stays EQUAL: there is nothing to flip).
        if self.eps_mistake > 0:
            second_pref ^= self.rng.random(m) < self.eps_mistake
        # 6. equal mask last, overriding flips; skip wins over everything (no answer at all).
        labels = np.where(second_pref, int(Label.SECOND), int(Label.FIRST))
        labels[tie | equal] = int(Label.EQUAL)
        labels[skip] = int(Label.SKIP)
        soft = np.where(equal, 0.5, p + self.eps_mistake * (1.0 - 2.0 * p))

        now = time.time()
        return [
            Feedback(
                query_id=qid,
                label=Label(int(labels[i])),
                teacher_id=self.teacher_id,
                soft=float(soft[i]) if self.soft and not skip[i] else None,
                timestamp=now,
                response_time=0.0,
            )
            for i, qid in enumerate(queries.ids)
        ]

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """RNG state and running threshold statistics (plain Python types)."""
        return {
            "rng": self.rng.bit_generator.state,
            "max_seen": self.max_seen,
            "best_seen": self.best_seen,
            "episode_return": self.episode_return,
            "episode_length": self.episode_length,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        missing = {"rng", "max_seen", "episode_return", "episode_length"} - set(state)
        if missing:
            raise KeyError(f"teacher state is missing {sorted(missing)}")
        self.rng.bit_generator.state = state["rng"]
        self.max_seen = float(state["max_seen"])
        # Checkpoints from before the signed skip scale: it rebuilds from the next batch.
        self.best_seen = float(state.get("best_seen", -math.inf))
        self.episode_return = state["episode_return"]
        self.episode_length = state["episode_length"]
