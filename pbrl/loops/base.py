"""What the two online loops share beyond the feedback round.

:class:`OnlineLoop` is the base of :class:`pbrl.loops.online.PreferenceLoop` (SB3 SAC/PPO on
CPU vector envs) and :class:`pbrl.gpu.loop.GpuPreferenceLoop` (batched simulation, PPO on the
device): seeding, the event schedule that follows each chunk of training (first feedback
round at the end of pre-training, later rounds every ``num_interact`` steps, evaluation,
progress line, periodic checkpoint), the evaluation with its videos and reward-quality
metrics, the RNG part of a checkpoint and closing. The preference side itself (teacher,
queries, store, reward learner, the round) is :class:`pbrl.loops.feedback.FeedbackRounds`;
checkpoint files are :class:`pbrl.checkpoint.Checkpointed`.

A loop supplies the evaluation hooks :meth:`OnlineLoop._policy`,
:meth:`OnlineLoop._eval_reward` and :meth:`OnlineLoop._reward_quality`, optionally
:meth:`OnlineLoop._render_frame` and :meth:`OnlineLoop._first_feedback`, and has
``eval_envs`` (CPU :class:`~pbrl.envs.base.PbrlEnv` instances).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pbrl.checkpoint import Checkpointed
from pbrl.loops.feedback import FeedbackRounds
from pbrl.metrics import add_gif, evaluate
from pbrl.threads import set_torch_threads


class OnlineLoop(FeedbackRounds, Checkpointed):
    """Seeding, schedule, evaluation and RNG state common to the online loops."""

    eval_envs: list[Any]

    # ------------------------------------------------------------------------------------
    # construction
    def _seed_all(self, seed: int) -> None:
        """Seed Python, NumPy and torch, and make the loop's two generators.

        Also applies the config's ``torch_threads`` (:func:`pbrl.threads.set_torch_threads`).
        ``rng`` selects queries; ``eval_rng`` is for metrics only and never steers learning.
        """
        set_torch_threads(self.cfg.get("torch_threads", 1))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.eval_rng = np.random.default_rng(seed + 1)

    def _init_schedule(self) -> None:
        """The next evaluation, progress line, video and checkpoint steps (checkpointed)."""
        cfg = self.cfg
        self.next_eval = int(cfg.eval.every)
        self.next_log = int(cfg.log.every)
        self.next_video = int(cfg.log.video_every) if cfg.log.video_every else math.inf
        self.next_ckpt = int(cfg.checkpoint.every) if cfg.checkpoint.every else math.inf
        self._last_logged = -1
        self._t_chunk, self._steps_chunk = time.perf_counter(), 0

    SCHEDULE_KEYS = ("next_eval", "next_log", "next_video", "next_ckpt")

    def _ppo_epochs(self, pretraining: bool) -> int:
        """PPO epochs per rollout, in pre-training or after it.

        ``agent.unsup_n_epochs`` in pre-training (B-Pref's ``unsuper_n_epochs``; null or
        absent: ``agent.n_epochs`` there too), else ``agent.n_epochs``.
        """
        a = self.cfg.agent
        unsup = a.get("unsup_n_epochs")
        return int(unsup if pretraining and unsup is not None else a.n_epochs)

    # ------------------------------------------------------------------------------------
    # the schedule
    @property
    def unsup_end(self) -> int:
        """Step at which pre-training ends and the first feedback round happens."""
        return int(self.cfg.agent.num_seed_steps) + int(self.cfg.agent.num_unsup_steps)

    def _first_feedback(self) -> None:
        """End of pre-training: the first (uniform) round."""
        self.feedback_started = True
        self._feedback_round(first=True)

    def _after_chunk(self, dt: float) -> None:
        """Do what is due after a chunk of training.

        That is a feedback round, an evaluation, the progress line and a checkpoint.
        """
        cfg = self.cfg
        if self.true_reward:
            pass
        elif not self.feedback_started and self.step >= self.unsup_end:
            self._first_feedback()
        elif (
            self.feedback_started
            and self.queries_used < cfg.max_feedback
            and self.step >= self.last_feedback_step + int(cfg.agent.num_interact)
        ):
            self._feedback_round()
        self._evaluate()
        self._log()
        if self.step >= self.next_ckpt:
            self.save_checkpoint()
            while self.next_ckpt <= self.step:
                self.next_ckpt += int(cfg.checkpoint.every)

    # ------------------------------------------------------------------------------------
    # evaluation
    def _policy(self, obs: np.ndarray) -> np.ndarray:  # pragma: no cover - loops override
        """Deterministic actions for a batch of observations."""
        raise NotImplementedError

    def _eval_reward(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """The learned reward as ``(obs, act) -> rewards`` for evaluation.

        None while no reward is trained, or on the true reward.
        """
        return self.learner.reward_fn if self.reward_active and self.learner else None

    def _reward_quality(self, s: int) -> None:  # pragma: no cover - loops override
        """Held-out preference accuracy and learned-vs-true reward correlation at step ``s``."""
        raise NotImplementedError

    def _render_frame(self, state: np.ndarray, size: int) -> np.ndarray:
        """One video frame of a stored sim state."""
        return self.eval_envs[0].render_state(state, width=size, height=size)

    def _evaluate(self, force: bool = False) -> None:
        """Evaluate every ``eval.every`` steps (``force``: now).

        Logs the returns, the learned reward's quality, and a video of the first episode
        every ``log.video_every`` steps.
        """
        cfg, s = self.cfg, self.step
        if not force and s < self.next_eval:
            return
        want_video = s >= self.next_video or force and bool(cfg.log.video_every)
        res = evaluate(
            self.eval_envs,
            self._policy,
            self._eval_reward(),
            seed=int(cfg.seed) + 10_000,
            record_states=want_video,
        )
        for k, v in res.scalars().items():
            self._scalar(k, v, s)
        if self.reward_active:
            self._reward_quality(s)
        if want_video and res.first_states:
            size = int(cfg.log.video_size)
            stride = max(1, math.ceil(len(res.first_states) / int(cfg.log.video_max_frames)))
            frames = [self._render_frame(st, size) for st in res.first_states[::stride]]
            add_gif(self.writer, "videos/eval_rollout", frames, s, fps=max(1, 30 // stride))
            while self.next_video <= s:
                self.next_video += int(cfg.log.video_every)
        while self.next_eval <= s:
            self.next_eval += int(cfg.eval.every)

    # ------------------------------------------------------------------------------------
    # checkpoint parts and closing
    def _rng_state(self) -> dict[str, Any]:
        """Every random stream's state (the loop's, evaluation's, NumPy's, torch's, Python's)."""
        return {
            "loop": self.rng.bit_generator.state,
            "eval": self.eval_rng.bit_generator.state,
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
        }

    def _load_rng_state(self, rng: dict[str, Any]) -> None:
        """Inverse of :meth:`_rng_state`."""
        self.rng.bit_generator.state = rng["loop"]
        self.eval_rng.bit_generator.state = rng["eval"]
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])

    def _close_feedback(self) -> None:
        """Stop a human teacher's server, close the writer and the store."""
        teacher_close = getattr(self.teacher, "close", None)
        if callable(teacher_close):
            teacher_close()
        self.writer.close()
        self.store.close()


__all__ = ["OnlineLoop"]
