"""What every run measures: true return, preference accuracy, reward correlation, videos.

The evaluator is one of the two places (with synthetic teachers) allowed to read the true
reward; everything here reports to TensorBoard and never feeds back into learning.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from pbrl.agents.sb3 import RewardFn, scale_action

PolicyFn = Callable[[np.ndarray], np.ndarray]
"""(obs (B, D_o)) -> env actions (B, D_a), deterministic."""


@dataclass
class EvalResult:
    """Per-episode outcomes of :func:`evaluate` and the sim states of its first episode."""

    true_return: np.ndarray
    learned_return: np.ndarray | None
    length: np.ndarray
    success: np.ndarray | None
    first_states: list[np.ndarray] = field(default_factory=list)

    def scalars(self) -> dict[str, float]:
        """Means over episodes, keyed by TensorBoard tag."""
        out = {
            "eval/true_return": float(self.true_return.mean()),
            "eval/true_return_std": float(self.true_return.std()),
            "eval/episode_length": float(self.length.mean()),
        }
        if self.learned_return is not None:
            out["eval/learned_return"] = float(self.learned_return.mean())
        if self.success is not None:
            out["eval/success_rate"] = float(self.success.mean())
        return out


def evaluate(
    envs: Sequence[gym.Env],
    policy: PolicyFn,
    reward_fn: RewardFn | None,
    seed: int,
    record_states: bool = False,
) -> EvalResult:
    """Run one episode in each of ``envs`` in lock-step, batching the policy over live envs.

    Args:
        envs: PbrlEnv instances (one episode each; ``len(envs)`` episodes in total). The
            true return sums ``info["true_reward"]`` (the env's returned reward where an info
            lacks it), so an env with reward weights is still scored on the task's reward.
        policy: batched deterministic policy on raw observations.
        reward_fn: the learned reward (for the learned-return metric), or None.
        seed: episode ``i`` is reset with ``seed + i`` so evaluations are comparable.
        record_states: keep the sim states of the first episode (for the rollout video).
    """
    n = len(envs)
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    alive = np.ones(n, bool)
    true_ret = np.zeros(n)
    learned_ret = np.zeros(n)
    length = np.zeros(n, np.int64)
    success = np.zeros(n, bool)
    has_success = False
    states: list[np.ndarray] = []
    while alive.any():
        idx = np.flatnonzero(alive)
        act = policy(obs[idx])
        if reward_fn is not None:
            space = envs[0].action_space
            learned_ret[idx] += reward_fn(obs[idx].astype(np.float32), scale_action(act, space))
        for j, i in enumerate(idx):
            o, r, term, trunc, info = envs[i].step(act[j])
            if record_states and i == 0:
                states.append(info["sim_state"])
            # The task's reward, also when the env returns an engineered one (reward_weights).
            true_ret[i] += info["true_reward"] if "true_reward" in info else r
            length[i] += 1
            if "success" in info:
                has_success = True
                success[i] |= bool(info["success"])
            obs[i] = o
            if term or trunc:
                alive[i] = False
    return EvalResult(
        true_ret,
        learned_ret if reward_fn is not None else None,
        length,
        success if has_success else None,
        states,
    )


def preference_accuracy(probs: np.ndarray, target: np.ndarray) -> float:
    """Fraction of strict labels that the ensemble-mean prediction gets right.

    Args:
        probs: ``(E, M)`` P_e[second preferred] per member, or ``(M,)``.
        target: ``(M,)`` P[second preferred] labels; 0.5 (equal) and NaN are ignored.
    """
    p = probs.mean(axis=0) if probs.ndim == 2 else probs
    strict = np.isfinite(target) & (target != 0.5)
    if not strict.any():
        return float("nan")
    return float(((p[strict] > 0.5) == (target[strict] > 0.5)).mean())


def reward_correlation(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Pearson and Spearman correlation of learned vs. true reward (NaN if constant)."""
    if pred.std() == 0 or true.std() == 0:
        return float("nan"), float("nan")
    from scipy import stats  # imported here: ~0.5 s that start-up and most callers never need

    return float(stats.pearsonr(pred, true)[0]), float(stats.spearmanr(pred, true)[0])


def encode_gif(frames: Sequence[np.ndarray], fps: int = 30) -> bytes:
    """Animated GIF bytes of ``frames`` (each ``(H, W, 3)`` uint8)."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, int(1000 / fps)),
        loop=0,
    )
    return buf.getvalue()


def add_gif(
    writer: SummaryWriter, tag: str, frames: Sequence[np.ndarray], step: int, fps: int = 30
) -> None:
    """Write an animated GIF as a TensorBoard image (shown playing in the Images tab).

    This is what ``SummaryWriter.add_video`` does, without its moviepy dependency.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    h, w = frames[0].shape[:2]
    image = Summary.Image(
        height=h, width=w, colorspace=3, encoded_image_string=encode_gif(frames, fps)
    )
    summary = Summary(value=[Summary.Value(tag=tag, image=image)])
    writer._get_file_writer().add_summary(summary, step)
