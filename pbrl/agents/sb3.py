"""Stable-Baselines3 policy optimisers driven by a learned reward.

The preference loop calls :meth:`SB3Agent.learn` in chunks between feedback rounds; the
environment's reward is replaced by the learned reward in :class:`LearnedRewardVecEnv`, so
SB3 never sees the true reward (it travels in ``info`` for the buffer and the evaluator only).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import pickle
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import (
    DiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.sac.policies import Actor, SACPolicy
from torch.optim.adam import adam as adam_functional

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(obs (B, D_o), action (B, D_a) scaled to [-1, 1]) -> (B,) reward."""

MaybeRewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray | None]
"""A reward function that may return None: then the env's own reward is used."""


def scale_action(action: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """Map an env action to [-1, 1] (the convention of SB3's replay buffer and our reward)."""
    low, high = space.low, space.high
    return (2.0 * (action - low) / (high - low) - 1.0).astype(np.float32)


class LearnedRewardVecEnv(VecEnvWrapper):
    """Replaces the env reward by ``reward_fn(s_t, a_t)`` for a whole vector of envs at once.

    The true reward stays in ``info["true_reward"]``. When ``recorder`` is given (on-policy
    agents, which keep no replay buffer), every transition is also added to it so queries can
    be cut from recent episodes.
    """

    def __init__(self, venv: VecEnv, reward_fn: MaybeRewardFn, recorder: Any | None = None):
        super().__init__(venv)
        self.reward_fn = reward_fn
        self.recorder = recorder
        self._obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None

    def reset(self) -> np.ndarray:
        """Reset every env; remember s_0 for the first reward."""
        self._obs = self.venv.reset()
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        """Remember a_t, then step."""
        self._actions = actions
        self.venv.step_async(actions)

    def step_wait(self):  # type: ignore[no-untyped-def]
        """Step and replace the reward by ``reward_fn(s_t, a_t)`` (true reward stays in info)."""
        next_obs, _true_rew, dones, infos = self.venv.step_wait()
        assert self._obs is not None and self._actions is not None
        act = scale_action(np.asarray(self._actions, np.float32), self.action_space)
        learned = self.reward_fn(self._obs.astype(np.float32), act)
        reward = np.asarray(_true_rew if learned is None else learned, np.float32)
        if self.recorder is not None:
            real_next = next_obs.copy()
            for i, done in enumerate(dones):
                if done and "terminal_observation" in infos[i]:
                    real_next[i] = infos[i]["terminal_observation"]
            self.recorder.add(self._obs, real_next, act, reward, dones, infos)
        self._obs = next_obs
        return next_obs, reward, dones, infos

    # SB3 pickles nothing of this wrapper; checkpoint the last obs explicitly.
    def get_state(self) -> dict[str, Any]:
        """The last observation (for checkpoints)."""
        return {"obs": None if self._obs is None else self._obs.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`get_state`."""
        self._obs = state["obs"]


class _ScalarWriter(KVWriter):
    """Forwards SB3's logged scalars to our TensorBoard writer under STYLE.md namespaces."""

    RENAME = {"train/": "losses/", "rollout/": "charts/rollout_", "time/": "charts/time_"}

    def __init__(self, sink: Callable[[str, float, int], None]):
        self.sink = sink

    def write(self, key_values: dict[str, Any], key_excluded: dict, step: int = 0) -> None:
        for key, value in key_values.items():
            if not isinstance(value, (int, float, np.floating, np.integer)):
                continue
            for old, new in self.RENAME.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            self.sink(key, float(value), step)

    def close(self) -> None:
        pass


class _FixedHorizonMixin:
    """Keeps SB3's progress (lr / clip schedules) relative to the whole run.

    We call ``learn()`` in chunks; SB3 would otherwise restart its schedules every chunk.
    """

    pbrl_total_timesteps: int = 1

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        total = max(self.pbrl_total_timesteps, 1)
        self._current_progress_remaining = 1.0 - float(num_timesteps) / float(total)


class BoundedLogStdActor(Actor):
    """SB3's SAC actor with B-Pref's squashed log-std instead of SB3's clamp.

    B-Pref's ``DiagGaussianActor`` maps the network's raw log-std through ``tanh`` into
    ``log_std_bounds`` (``[-5, 2]`` in its ``config/agent/sac.yaml``):
    ``lo + (hi - lo) * (tanh(x) + 1) / 2``, smooth and never below ``e^-5``. SB3 clamps to
    ``[-20, 2]``, which lets a collapsing policy reach ``sigma = 2e-9`` with zero gradient
    at the bound.
    """

    def __init__(self, *args: Any, log_std_bounds: Sequence[float] = (-5.0, 2.0), **kwargs: Any):
        super().__init__(*args, **kwargs)
        lo, hi = (float(b) for b in log_std_bounds)
        if not lo < hi:
            raise ValueError(f"log_std_bounds={list(log_std_bounds)} needs low < high")
        self.log_std_bounds = (lo, hi)

    def get_action_dist_params(self, obs: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Mean and B-Pref's tanh-bounded log-std (gSDE: SB3's own parameters)."""
        if self.use_sde:
            return super().get_action_dist_params(obs)
        features = self.extract_features(obs, self.features_extractor)
        latent_pi = self.latent_pi(features)
        lo, hi = self.log_std_bounds
        log_std = torch.tanh(self.log_std(latent_pi))  # type: ignore[operator]
        return self.mu(latent_pi), lo + 0.5 * (hi - lo) * (log_std + 1.0), {}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "log_std_bounds": self.log_std_bounds}


class PbrlSACPolicy(SACPolicy):
    """SB3's ``MlpPolicy`` for SAC, with an optional B-Pref log-std range for the actor.

    ``log_std_bounds=None`` is SB3's actor exactly (clamp to ``[-20, 2]``); a pair
    ``(lo, hi)`` selects :class:`BoundedLogStdActor`.
    """

    def __init__(self, *args: Any, log_std_bounds: Sequence[float] | None = None, **kwargs: Any):
        self.log_std_bounds = None if log_std_bounds is None else tuple(log_std_bounds)
        super().__init__(*args, **kwargs)  # builds the actor (make_actor) in here

    def make_actor(self, features_extractor: Any = None) -> Actor:
        """SB3's actor, or the bounded one when ``log_std_bounds`` is set."""
        if self.log_std_bounds is None:
            return super().make_actor(features_extractor)
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return BoundedLogStdActor(**kwargs, log_std_bounds=self.log_std_bounds).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "log_std_bounds": self.log_std_bounds}


class PbrlSAC(_FixedHorizonMixin, SAC):
    """SB3 SAC with whole-run schedules and a whole-run target-update interval.

    SB3 updates the target critic when ``gradient_step % target_update_interval == 0``, with
    ``gradient_step`` counted inside one ``train()`` call; PEBBLE trains one step per call
    (``gradient_steps=1``), so the target would move every step whatever the interval.
    B-Pref's ``critic_target_update_frequency: 2`` counts the run's steps: here the target
    moves on the gradient steps ``n`` of the whole run (``_n_updates``) with ``n % interval
    == 0``.

    ``"MlpPolicy"`` is :class:`PbrlSACPolicy` (SB3's, plus ``policy_kwargs["log_std_bounds"]``).
    """

    policy_aliases: ClassVar[dict[str, type]] = {**SAC.policy_aliases, "MlpPolicy": PbrlSACPolicy}

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """SB3's update, one gradient step at a time when the interval is above 1."""
        interval = int(self.target_update_interval)
        if interval <= 1:
            super().train(gradient_steps, batch_size)
            return
        tau = self.tau
        self.target_update_interval = 1  # SB3 then applies polyak_update(tau) on every step:
        try:  # tau = 0 makes it leave the target as it is (exactly: t * 1 + p * 0)
            for _ in range(gradient_steps):
                self.tau = tau if self._n_updates % interval == 0 else 0.0
                super().train(1, batch_size)
        finally:
            self.tau, self.target_update_interval = tau, interval


class PbrlPPO(_FixedHorizonMixin, PPO):
    """SB3 PPO with whole-run schedules and a faster update and rollout of the same maths.

    Args:
        *args: as for :class:`stable_baselines3.PPO`.
        fast_update: use :meth:`_fast_train` (default) instead of SB3's ``train()``. It computes
            the same losses, gradients and Adam steps from the same minibatches, with less
            per-step overhead; it falls back to SB3's ``train()`` for set-ups it does not cover
            (:func:`fast_update_unsupported` names why).
        fast_rollout: run the policy of :meth:`collect_rollouts` through :class:`_ManualMlp`
            (same draws and buffer contents as SB3's loop up to float rounding); ``None``
            (default) follows ``fast_update``. Falls back to SB3's loop where
            :func:`fast_rollout_unsupported` says why.
        **kwargs: as for :class:`stable_baselines3.PPO`.
    """

    def __init__(
        self,
        *args: Any,
        fast_update: bool = True,
        fast_rollout: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.fast_update = bool(fast_update)
        self.fast_rollout = self.fast_update if fast_rollout is None else bool(fast_rollout)
        super().__init__(*args, **kwargs)

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """SB3's ``collect_rollouts``, with the policy run by :class:`_ManualMlp` where it can.

        Same steps, same random draws (gSDE noise resets; Gaussian samples), same buffer
        contents up to float rounding (:func:`tanh_`); the differences are the policy call
        (tensor ops instead of SB3's distribution objects) and the bootstrap values of
        time-limit truncations, computed in one batch per step instead of one call per env.
        Other set-ups (:func:`fast_rollout_unsupported`) run SB3's own loop.
        """
        if not self.fast_rollout or fast_rollout_unsupported(self) is not None:
            return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        assert self._last_obs is not None, "No previous observation was provided"
        policy = self.policy
        policy.set_training_mode(False)
        manual = _ManualMlp(policy, with_grads=False)
        dist = policy.action_dist
        low, high = self.action_space.low, self.action_space.high  # type: ignore[union-attr]
        n_steps = 0
        rollout_buffer.reset()
        if self.use_sde:
            policy.reset_noise(env.num_envs)
        callback.on_rollout_start()
        new_obs = dones = None
        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                policy.reset_noise(env.num_envs)
            obs_tensor = torch.as_tensor(self._last_obs, device=self.device)
            actions_t, values, log_probs = manual.act(obs_tensor, dist)  # type: ignore[arg-type]
            actions = actions_t.cpu().numpy()
            clipped_actions = np.clip(actions, low, high)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            # Bootstrap time-limit truncations with the value of the terminal observation.
            cut = [
                i
                for i, done in enumerate(dones)
                if done
                and infos[i].get("terminal_observation") is not None
                and infos[i].get("TimeLimit.truncated", False)
            ]
            if cut:
                terminal = np.stack([infos[i]["terminal_observation"] for i in cut])
                terminal_values = manual.values(torch.as_tensor(terminal, device=self.device))
                rewards[cut] += (self.gamma * terminal_values[:, 0]).cpu().numpy()
            rollout_buffer.add(
                self._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                self._last_episode_starts,  # type: ignore[arg-type]
                values,
                log_probs,
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
        values = manual.values(torch.as_tensor(new_obs, device=self.device))
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def train(self) -> None:
        """One PPO update on the rollout buffer: the fast path when enabled and supported."""
        if self.fast_update and fast_update_unsupported(self) is None:
            self._fast_train()
        else:
            super().train()

    def _fast_train(self) -> None:
        """SB3's ``PPO.train()`` without its per-minibatch overheads (same maths, same RNG use).

        Differences from SB3's loop; none changes the update beyond float rounding:

        - the rollout is converted to tensors once, and each epoch's minibatches are slices of
          one gather by the epoch's permutation (drawn from ``np.random`` as SB3 does);
        - the Gaussian (or gSDE) log-probability and entropy are computed with tensor ops
          instead of SB3's distribution objects (no ``torch.distributions`` validation);
        - for SB3's MLP actor-critic (Tanh or ReLU layers) the gradient is written out by hand
          (:class:`_ManualMlp`) instead of running autograd; otherwise autograd runs, with the
          entropy kept out of the graph when ``ent_coef == 0`` (its gradient is zero then);
          the hand-written path's tanh is numpy's (:func:`tanh_`, within 1 ulp of torch's);
        - gradients are clipped to the global norm (one norm over the flat gradient buffer of
          the hand-written path, else a foreach norm) and stepped (Adam's functional kernel on
          the optimiser's own state) without the optimiser's Python bookkeeping; on the
          hand-written path parameters and Adam state live in flat buffers
          (:class:`_FlatAdamState`), so a step is one kernel call on three tensors;
        - losses for logging stay on the device until the end of the call (one sync), unless
          ``target_kl`` is set: then the KL is read every minibatch, as SB3 must; the total
          loss, which SB3 logs for the last minibatch only, is formed for that one only.
        """
        policy = self.policy
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        clip_range = float(self.clip_range(self._current_progress_remaining))  # type: ignore[operator]
        clip_range_vf = (
            None
            if self.clip_range_vf is None
            else float(self.clip_range_vf(self._current_progress_remaining))  # type: ignore[operator]
        )
        data = _RolloutTensors(self.rollout_buffer, self.device)
        manual = _ManualMlp(policy) if _ManualMlp.unsupported(policy) is None else None
        head = _GaussianHead(policy)
        step = _OptimiserStep(policy, self.max_grad_norm)
        ent_coef, vf_coef = float(self.ent_coef), float(self.vf_coef)
        n, batch_size = data.size, int(self.batch_size)
        kl_limit = None if self.target_kl is None else np.float32(1.5 * self.target_kl)

        grad_views = [] if manual is None else [manual.grad_views[p] for p in step.params]
        stats: list[torch.Tensor] = []  # per minibatch: pg, clip frac, vf, entropy losses, KL
        first_of_last_epoch = 0
        loss = torch.zeros(())
        continue_training = True
        for epoch in range(self.n_epochs):
            first_of_last_epoch = len(stats)
            columns = data.shuffled(np.random.permutation(n))
            for start in range(0, n, batch_size):
                obs, actions, old_values, old_log_prob, advantages, returns = (
                    c[start : start + batch_size] for c in columns
                )
                with torch.set_grad_enabled(manual is None):
                    if manual is not None:
                        values, log_prob, entropy = manual.forward(obs, actions)
                    else:
                        values, log_prob, entropy = head.evaluate(
                            obs, actions, need_entropy_grad=ent_coef != 0.0
                        )
                    if self.normalize_advantage and len(advantages) > 1:
                        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                    log_ratio = log_prob - old_log_prob
                    ratio = torch.exp(log_ratio)
                    policy_loss_1 = advantages * ratio
                    policy_loss_2 = advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
                    policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()
                    if clip_range_vf is None:
                        values_pred = values
                    else:
                        values_pred = old_values + torch.clamp(
                            values - old_values, -clip_range_vf, clip_range_vf
                        )
                    value_loss = F.mse_loss(returns, values_pred)
                    entropy_loss = -torch.mean(entropy)
                    if manual is None:  # else only the last minibatch's, for the log (below)
                        loss = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss
                with torch.no_grad():
                    clip_fraction = torch.mean((torch.abs(ratio - 1) > clip_range).float())
                    approx_kl = torch.mean((ratio - 1) - log_ratio)  # ratio = exp(log_ratio)
                    stats.append(
                        torch.stack(
                            [policy_loss, clip_fraction, value_loss, entropy_loss, approx_kl]
                        ).detach()
                    )
                if kl_limit is not None and approx_kl.cpu().numpy() > kl_limit:
                    continue_training = False
                    if self.verbose >= 1:
                        print(
                            f"Early stopping at step {epoch} due to reaching max kl: "
                            f"{float(approx_kl):.2f}"
                        )
                    break
                if manual is not None:
                    grads = manual.gradients(
                        _LossTerms(
                            advantages=advantages,
                            ratio=ratio,
                            policy_loss_1=policy_loss_1,
                            policy_loss_2=policy_loss_2,
                            clip_range=clip_range,
                            values=values,
                            values_pred=values_pred,
                            old_values=old_values,
                            returns=returns,
                            clip_range_vf=clip_range_vf,
                            ent_coef=ent_coef,
                            vf_coef=vf_coef,
                        )
                    )
                    step.apply_flat(grads, grad_views)
                else:
                    step.apply(step.backward(loss))
            self._n_updates += 1
            if not continue_training:
                break
        step.finish()
        if manual is not None and stats:  # SB3 logs the loss of the last minibatch it computed
            loss = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss

        # One device sync for all the logged values. SB3 averages Python floats (float64).
        table = torch.stack(stats).cpu().numpy().astype(np.float64)
        explained_var = explained_variance(
            self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten()
        )
        self.logger.record("train/entropy_loss", float(np.mean(table[:, 3])))
        self.logger.record("train/policy_gradient_loss", float(np.mean(table[:, 0])))
        self.logger.record("train/value_loss", float(np.mean(table[:, 2])))
        self.logger.record("train/approx_kl", float(np.mean(table[first_of_last_epoch:, 4])))
        self.logger.record("train/clip_fraction", float(np.mean(table[:, 1])))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(policy, "log_std"):
            self.logger.record("train/std", torch.exp(policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)


def fast_update_unsupported(model: PPO) -> str | None:
    """Why :meth:`PbrlPPO._fast_train` cannot run for ``model`` (``None``: it can).

    Covered: a plain :class:`RolloutBuffer` (vector observations), a continuous action space
    with a diagonal Gaussian or gSDE head without tanh squashing, and torch's ``Adam`` with one
    parameter group and no step hooks. Anything else runs SB3's own ``train()``.
    """
    if type(model.rollout_buffer) is not RolloutBuffer:
        return f"rollout buffer {type(model.rollout_buffer).__name__} (needs RolloutBuffer)"
    if not isinstance(model.action_space, spaces.Box):
        return f"action space {type(model.action_space).__name__} (needs Box)"
    dist = model.policy.action_dist
    if type(dist) not in (DiagGaussianDistribution, StateDependentNoiseDistribution):
        return f"action distribution {type(dist).__name__} (needs a Gaussian or gSDE)"
    if getattr(dist, "bijector", None) is not None:
        return "squashed gSDE (squash_output=True)"
    opt = model.policy.optimizer
    if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
        return f"optimiser {type(opt).__name__} with {len(opt.param_groups)} group(s)"
    if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
        return "optimiser step hooks"
    group = opt.param_groups[0]
    if group["differentiable"] or group["capturable"]:
        return "differentiable or capturable Adam"
    return None


def fast_rollout_unsupported(model: PPO) -> str | None:
    """Why :meth:`PbrlPPO.collect_rollouts` runs SB3's own loop for ``model`` (``None``: it won't).

    Covered: a Box action space without squashing, a plain :class:`RolloutBuffer`, and SB3's
    ``ActorCriticPolicy`` of the MLP shape :class:`_ManualMlp` covers.
    """
    if not isinstance(model.action_space, spaces.Box):
        return f"action space {type(model.action_space).__name__} (needs Box)"
    if type(model.rollout_buffer) is not RolloutBuffer:
        return f"rollout buffer {type(model.rollout_buffer).__name__} (needs RolloutBuffer)"
    policy = model.policy
    if type(policy) is not ActorCriticPolicy:
        return f"policy {type(policy).__name__} (needs SB3's ActorCriticPolicy)"
    if policy.squash_output:
        return "squashed actions (squash_output=True)"
    return _ManualMlp.unsupported(policy)


class _RolloutTensors:
    """The rollout buffer as flat tensors, built once per update.

    The buffer's arrays are swapped and flattened in place exactly as
    ``RolloutBuffer.get`` does on its first call, so SB3's view of the buffer is unchanged.
    """

    _NAMES = ("observations", "actions", "values", "log_probs", "advantages", "returns")

    def __init__(self, buffer: RolloutBuffer, device: torch.device):
        if not buffer.full:
            raise RuntimeError("PPO update on a rollout buffer that is not full; collect first")
        if not buffer.generator_ready:
            for name in self._NAMES:
                buffer.__dict__[name] = buffer.swap_and_flatten(buffer.__dict__[name])
            buffer.generator_ready = True
        self.size = buffer.buffer_size * buffer.n_envs
        obs = torch.tensor(buffer.observations, device=device)
        actions = torch.tensor(buffer.actions.astype(np.float32, copy=False), device=device)
        self.columns = (
            obs,
            actions,
            *(
                torch.tensor(buffer.__dict__[name].reshape(self.size), device=device)
                for name in self._NAMES[2:]
            ),
        )

    def shuffled(self, permutation: np.ndarray) -> tuple[torch.Tensor, ...]:
        """All columns gathered in ``permutation`` order (minibatches are then slices)."""
        index = torch.as_tensor(permutation, device=self.columns[0].device)
        return tuple(column.index_select(0, index) for column in self.columns)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def tanh_(z: torch.Tensor) -> torch.Tensor:
    """``z.tanh_()`` through numpy's vectorised float32 kernel where it applies (else torch's).

    For a contiguous float32 CPU tensor outside autograd, numpy's ``tanh`` is ~10x faster than
    ``torch.tanh`` on this project's CPU builds (3 us against 35 us for a 64 x 256 block). Both
    are within 1 ulp of the correctly rounded tanh, so they differ by at most 1 ulp
    (tests/test_fast_ppo.py checks this). :class:`_ManualMlp` uses it in both the rollout and
    the update, so the policy that acts and the policy that is updated are the same function.
    """
    if z.device.type == "cpu" and z.dtype == torch.float32 and z.is_contiguous():
        if not (z.requires_grad and torch.is_grad_enabled()):
            array = z.detach().numpy()
            np.tanh(array, out=array)
            return z
    return z.tanh_()


def _normal_log_prob(actions: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor):  # type: ignore[no-untyped-def]
    """``Normal(mean, scale).log_prob(actions).sum(1)`` and ``log(scale)``, in torch's op order."""
    log_scale = scale.log()
    log_prob = -((actions - mean) ** 2) / (2 * scale**2) - log_scale - _HALF_LOG_2PI
    return log_prob.sum(1), log_scale


class _GaussianHead:
    """Values, log-probabilities and entropies of an SB3 actor-critic, with tensor ops.

    Computes what ``ActorCriticPolicy.evaluate_actions`` computes for a diagonal Gaussian or a
    gSDE head (``torch.distributions.Normal``'s formulas, in its order of operations), through
    the policy's own modules (any feature extractor and MLP), for autograd.
    """

    def __init__(self, policy: Any):
        self.policy = policy
        self.dist = policy.action_dist
        self.sde = isinstance(self.dist, StateDependentNoiseDistribution)

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor, need_entropy_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(values (B,), log_prob (B,), entropy (B,))`` of ``actions`` (B, A) at ``obs``."""
        policy = self.policy
        features = policy.extract_features(obs)
        if policy.share_features_extractor:
            latent_pi, latent_vf = policy.mlp_extractor(features)
        else:
            pi_features, vf_features = features
            latent_pi = policy.mlp_extractor.forward_actor(pi_features)
            latent_vf = policy.mlp_extractor.forward_critic(vf_features)
        mean = policy.action_net(latent_pi)
        values = policy.value_net(latent_vf).flatten()
        if self.sde:
            latent_sde = latent_pi if self.dist.learn_features else latent_pi.detach()
            std = self.dist.get_std(policy.log_std)
            scale = torch.sqrt(torch.mm(latent_sde**2, std**2) + self.dist.epsilon)
        else:
            scale = torch.ones_like(mean) * policy.log_std.exp()
        log_prob, log_scale = _normal_log_prob(actions, mean, scale)
        with torch.set_grad_enabled(need_entropy_grad and torch.is_grad_enabled()):
            entropy = (0.5 + _HALF_LOG_2PI + log_scale).sum(1)
        return values, log_prob, entropy


@dataclasses.dataclass(frozen=True)
class _LossTerms:
    """What the PPO loss' gradient needs from one minibatch (all (B,) tensors but the floats)."""

    advantages: torch.Tensor  # normalised if SB3 normalises
    ratio: torch.Tensor
    policy_loss_1: torch.Tensor
    policy_loss_2: torch.Tensor
    clip_range: float
    values: torch.Tensor
    values_pred: torch.Tensor
    old_values: torch.Tensor
    returns: torch.Tensor
    clip_range_vf: float | None
    ent_coef: float
    vf_coef: float


class _ManualMlp:
    """SB3's MLP actor-critic forward and the PPO loss' gradient written out (no autograd).

    Covers ``MlpPolicy`` as SB3 builds it: a flatten feature extractor, separate actor and
    critic MLPs of ``Linear`` + ``Tanh``/``ReLU`` layers, linear action and value heads, and a
    diagonal Gaussian or gSDE head (``full_std``, ``exp`` std, features not learned, no
    squashing). The forward is op for op SB3's; the gradient is the PPO loss' exact gradient
    (clipped surrogate, value loss with optional clipping, entropy), so the update equals
    autograd's up to float rounding. Autograd itself is the slow part of a 64-sample step on a
    CPU: its graph bookkeeping costs more than the small matrix products.
    """

    _ACTIVATIONS: ClassVar[dict[type, str]] = {torch.nn.Tanh: "tanh", torch.nn.ReLU: "relu"}

    @classmethod
    def unsupported(cls, policy: Any) -> str | None:
        """Why this policy needs autograd (``None``: :class:`_ManualMlp` covers it)."""
        if not isinstance(policy.observation_space, spaces.Box):
            return "non-Box observations"
        extractors = [policy.features_extractor]
        if not policy.share_features_extractor:
            extractors = [policy.pi_features_extractor, policy.vf_features_extractor]
        if any(type(e) is not FlattenExtractor for e in extractors):
            return "a feature extractor other than FlattenExtractor"
        if type(policy.mlp_extractor) is not MlpExtractor:
            return "an mlp_extractor other than SB3's MlpExtractor"
        for net in (policy.mlp_extractor.policy_net, policy.mlp_extractor.value_net):
            mods = list(net)
            if len(mods) % 2 or not all(
                type(lin) is torch.nn.Linear and type(act) in cls._ACTIVATIONS
                for lin, act in zip(mods[::2], mods[1::2], strict=True)
            ):
                return "MLP layers other than Linear + Tanh/ReLU"
        if type(policy.action_net) is not torch.nn.Linear:
            return "a non-linear action head"
        if type(policy.value_net) is not torch.nn.Linear:
            return "a non-linear value head"
        dist = policy.action_dist
        if isinstance(dist, StateDependentNoiseDistribution):
            if not dist.full_std or dist.use_expln or dist.learn_features:
                return "gSDE with full_std=False, use_expln or learn_features"
        elif type(dist) is not DiagGaussianDistribution:
            return "a non-Gaussian action distribution"
        trained = {p for p in policy.optimizer.param_groups[0]["params"] if p.requires_grad}
        if trained != set(policy.parameters()):
            return "optimised parameters other than the MLPs, heads and log_std"
        return None

    def __init__(self, policy: Any, with_grads: bool = True):
        """Views of ``policy``'s layers; ``with_grads=False``: no gradient buffer (acting only)."""

        def layers(net: torch.nn.Sequential) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
            mods = list(net)
            return [
                (lin.weight, lin.bias, self._ACTIVATIONS[type(act)])
                for lin, act in zip(mods[::2], mods[1::2], strict=True)
            ]

        self.pi = layers(policy.mlp_extractor.policy_net)
        self.vf = layers(policy.mlp_extractor.value_net)
        self.action_net = policy.action_net
        self.value_net = policy.value_net
        self.log_std = policy.log_std
        self.sde = isinstance(policy.action_dist, StateDependentNoiseDistribution)
        self.epsilon = float(getattr(policy.action_dist, "epsilon", 0.0))
        self._cache: dict[str, Any] = {}
        if not with_grads:
            return
        # Every gradient is written into a view of one flat buffer (in the optimiser's order),
        # so the global norm and the clipping are one op each instead of one per parameter.
        params = [p for p in policy.optimizer.param_groups[0]["params"] if p.requires_grad]
        self.flat_grad = torch.empty(sum(p.numel() for p in params), device=params[0].device)
        self.grad_views: dict[torch.Tensor, torch.Tensor] = {}
        offset = 0
        for p in params:
            self.grad_views[p] = self.flat_grad[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    @staticmethod
    def _mlp(x: torch.Tensor, layers: list) -> list[torch.Tensor]:
        """Every layer's output, input first (what the backward pass needs)."""
        outs = [x]
        for weight, bias, act in layers:
            z = torch.addmm(bias, x, weight.t())  # = F.linear for 2-D input
            x = tanh_(z) if act == "tanh" else z.relu_()
            outs.append(x)
        return outs

    @torch.no_grad()
    def values(self, obs: torch.Tensor) -> torch.Tensor:
        """``policy.predict_values(obs)``: (B, 1)."""
        latent_vf = self._mlp(obs.float().flatten(1), self.vf)[-1]
        return torch.addmm(self.value_net.bias, latent_vf, self.value_net.weight.t())

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, dist: DiagGaussianDistribution | StateDependentNoiseDistribution
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``policy(obs)``: sampled ``(actions (B, A), values (B, 1), log_prob (B,))``.

        As SB3's ``ActorCriticPolicy.forward`` with ``deterministic=False``: gSDE adds
        ``latent_pi`` times the exploration matrices last drawn by ``policy.reset_noise`` (one per
        env, or the single matrix when the batch size differs, as ``get_noise`` does) and draws
        nothing; the plain Gaussian draws ``mean + N(0, 1) * std`` from torch's generator in
        ``Normal.rsample``'s order.
        """
        obs = obs.float().flatten(1)
        latent_pi = self._mlp(obs, self.pi)[-1]
        latent_vf = self._mlp(obs, self.vf)[-1]
        values = torch.addmm(self.value_net.bias, latent_vf, self.value_net.weight.t())
        mean = torch.addmm(self.action_net.bias, latent_pi, self.action_net.weight.t())
        if self.sde:
            std = torch.exp(self.log_std)
            scale = torch.sqrt(torch.mm(latent_pi * latent_pi, std * std) + self.epsilon)
            mats = dist.exploration_matrices  # type: ignore[union-attr]
            if len(latent_pi) == 1 or len(latent_pi) != len(mats):
                noise = torch.mm(latent_pi, dist.exploration_mat)  # type: ignore[union-attr]
            else:
                noise = torch.bmm(latent_pi.unsqueeze(1), mats).squeeze(1)
            actions = mean + noise
        else:
            scale = torch.ones_like(mean) * self.log_std.exp()
            eps = torch.empty(mean.shape, dtype=mean.dtype, device=mean.device).normal_()
            actions = mean + eps * scale
        log_prob, _ = _normal_log_prob(actions, mean, scale)
        return actions, values, log_prob

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(values (B,), log_prob (B,), entropy (B,))``; keeps what :meth:`gradients` needs."""
        obs = obs.float().flatten(1)
        pi_outs, vf_outs = self._mlp(obs, self.pi), self._mlp(obs, self.vf)
        latent_pi, latent_vf = pi_outs[-1], vf_outs[-1]
        mean = torch.addmm(self.action_net.bias, latent_pi, self.action_net.weight.t())
        values = torch.addmm(self.value_net.bias, latent_vf, self.value_net.weight.t()).flatten()
        if self.sde:
            std = torch.exp(self.log_std)
            # x * x is what torch's pow(x, 2) computes (bit for bit), without its dispatch
            latent_sq, std_sq = latent_pi * latent_pi, std * std
            scale = torch.sqrt(torch.mm(latent_sq, std_sq) + self.epsilon)
        else:
            latent_sq = std_sq = None
            scale = torch.ones_like(mean) * self.log_std.exp()
        log_prob, log_scale = _normal_log_prob(actions, mean, scale)
        entropy = (0.5 + _HALF_LOG_2PI + log_scale).sum(1)
        self._cache = dict(
            pi_outs=pi_outs,
            vf_outs=vf_outs,
            diff=actions - mean,
            var=scale * scale,
            latent_sq=latent_sq,
            std_sq=std_sq,
        )
        return values, log_prob, entropy

    def _linear_grads(
        self, layer: torch.nn.Linear | torch.Tensor, grad_z: torch.Tensor, x: torch.Tensor
    ) -> None:
        """``weight`` and ``bias`` gradients of ``z = x @ weight.T + bias`` (into the buffer)."""
        weight, bias = (layer.weight, layer.bias) if isinstance(layer, torch.nn.Linear) else layer
        torch.mm(grad_z.t(), x, out=self.grad_views[weight])
        torch.sum(grad_z, 0, out=self.grad_views[bias])

    def _backward(self, outs: list[torch.Tensor], layers: list, grad_out: torch.Tensor) -> None:
        """Back-propagate ``grad_out`` (B, H) through an MLP whose layer outputs are ``outs``."""
        for k in range(len(layers) - 1, -1, -1):
            weight, bias, act = layers[k]
            h = outs[k + 1]
            if act == "tanh":  # autograd's own kernel for grad * (1 - h^2)
                grad_z = torch.ops.aten.tanh_backward(grad_out, h)
            else:
                grad_z = grad_out * (h > 0)
            self._linear_grads((weight, bias), grad_z, outs[k])  # type: ignore[arg-type]
            if k > 0:  # the observations need no gradient
                grad_out = grad_z.mm(weight)

    @torch.no_grad()
    def gradients(self, t: _LossTerms) -> torch.Tensor:
        """Gradient of ``policy_loss + ent_coef * entropy_loss + vf_coef * value_loss``.

        For the minibatch of the last :meth:`forward`. Returns :attr:`flat_grad`, all
        parameters' gradients in the optimiser's order (:attr:`grad_views` are its pieces);
        the next call overwrites it.
        """
        c = self._cache
        batch = t.ratio.shape[0]
        # Clipped surrogate: where the ratio is inside [1 - eps, 1 + eps] both terms are equal
        # and the gradient is the unclipped one; outside, the min takes the unclipped term if
        # it is the smaller, else the clipped (constant) one, whose gradient is zero.
        live = t.policy_loss_1 <= t.policy_loss_2
        grad_log_prob = (-1.0 / batch) * t.advantages * live * t.ratio  # d ratio/d log_prob
        diff, var = c["diff"], c["var"]
        scaled = diff / var
        grad_mean = grad_log_prob[:, None] * scaled
        # d log N / d var = ((a - mu)^2 / var - 1) / (2 var); d entropy / d var = 1 / (2 var)
        grad_var = grad_log_prob[:, None] * (diff * scaled - 1)
        if t.ent_coef != 0.0:
            grad_var = grad_var - t.ent_coef / batch
        grad_log_std = self.grad_views[self.log_std]
        if self.sde:
            # var = latent^2 @ std^2 + eps, std = exp(log_std): d/d log_std = 2 std^2 d/d std^2
            dvar = c["latent_sq"].t().mm(grad_var / (2 * var))
            torch.mul(dvar, 2 * c["std_sq"], out=grad_log_std)
        else:
            # var = exp(log_std)^2 per sample: d/d log_std = 2 var d/d var, summed over samples
            torch.sum(grad_var, 0, out=grad_log_std)
        self._linear_grads(self.action_net, grad_mean, c["pi_outs"][-1])
        self._backward(c["pi_outs"], self.pi, grad_mean.mm(self.action_net.weight))

        grad_values = (2.0 * t.vf_coef / batch) * (t.values_pred - t.returns)
        if t.clip_range_vf is not None:
            delta = t.values - t.old_values
            grad_values = grad_values * ((delta >= -t.clip_range_vf) & (delta <= t.clip_range_vf))
        grad_values = grad_values[:, None]
        self._linear_grads(self.value_net, grad_values, c["vf_outs"][-1])
        self._backward(c["vf_outs"], self.vf, grad_values.mm(self.value_net.weight))
        return self.flat_grad


@dataclasses.dataclass
class _FlatAdamState:
    """Adam's parameters and state as single flat tensors, for one kernel call per step.

    :meth:`build` copies every parameter and its ``exp_avg`` / ``exp_avg_sq`` (and
    ``max_exp_avg_sq``) into one buffer each, in the optimiser's order (the order of the flat
    gradient), and rebinds ``param.data`` and the optimiser's state entries to views of those
    buffers, so the module, the optimiser and its ``state_dict`` see the same numbers as
    before. Adam is elementwise with one step count per parameter, and every parameter of
    the group has taken the same number of steps, so one call on the flat tensors is the same
    update as one call per parameter; the per-parameter ``step`` tensors are brought up to
    date by :meth:`sync_steps` at the end of the update.
    """

    params: list[torch.Tensor]
    state: dict[Any, dict[str, Any]]
    param: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    max_sqs: list[torch.Tensor]
    step: torch.Tensor

    @classmethod
    def build(
        cls, optimizer: torch.optim.Adam, params: list[torch.Tensor], flat_grad: torch.Tensor
    ) -> _FlatAdamState | None:
        """The flat state, or ``None`` when it does not apply (then Adam runs per parameter)."""
        state = optimizer.state
        amsgrad = bool(optimizer.param_groups[0]["amsgrad"])
        steps = [state[p]["step"] for p in params]
        first = params[0]
        if (
            any(not torch.is_tensor(s) or s.numel() != 1 for s in steps)
            or len({float(s) for s in steps}) != 1
            or any(p.device != first.device or p.dtype != first.dtype for p in params)
            or flat_grad.numel() != sum(p.numel() for p in params)
        ):
            return None
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
        buffers = {k: flat_grad.new_empty(flat_grad.numel()) for k in ["param", *names]}
        offset = 0
        for p in params:
            end = offset + p.numel()
            view = buffers["param"][offset:end].view_as(p)
            view.copy_(p.detach())
            p.data = view
            for k in names:
                view = buffers[k][offset:end].view_as(p)
                view.copy_(state[p][k])
                state[p][k] = view
            offset = end
        return cls(
            params=params,
            state=state,
            param=buffers["param"],
            exp_avg=buffers["exp_avg"],
            exp_avg_sq=buffers["exp_avg_sq"],
            max_sqs=[buffers["max_exp_avg_sq"]] if amsgrad else [],
            step=steps[0].detach().clone(),
        )

    def sync_steps(self) -> None:
        """Copy the flat step count into every parameter's ``step``."""
        for p in self.params:
            self.state[p]["step"].copy_(self.step)


class _OptimiserStep:
    """``clip_grad_norm_`` and ``Adam.step`` with less Python overhead, same numbers.

    Uses the optimiser's own state tensors and hyperparameters (read at construction, i.e.
    once per update, after SB3 set the learning rate), so the optimiser's ``state_dict`` is
    what ``optimizer.step()`` would leave. The first step of a fresh optimiser (no state yet)
    goes through ``optimizer.step()`` to create that state.
    """

    def __init__(self, policy: Any, max_grad_norm: float):
        self.optimizer: torch.optim.Adam = policy.optimizer
        self.group = self.optimizer.param_groups[0]
        self.params: list[torch.Tensor] = [p for p in self.group["params"] if p.requires_grad]
        self.max_grad_norm = float(max_grad_norm)
        self.state_lists: tuple[list[torch.Tensor], ...] | None = None
        self.flat: _FlatAdamState | None = None

    def _lists(self) -> tuple[list[torch.Tensor], ...] | None:
        state = self.optimizer.state
        if not all(p in state and "step" in state[p] for p in self.params):
            return None
        exp_avgs = [state[p]["exp_avg"] for p in self.params]
        exp_avg_sqs = [state[p]["exp_avg_sq"] for p in self.params]
        max_sqs = [state[p]["max_exp_avg_sq"] for p in self.params] if self.group["amsgrad"] else []
        steps = [state[p]["step"] for p in self.params]
        return exp_avgs, exp_avg_sqs, max_sqs, steps

    def backward(self, loss: torch.Tensor) -> list[torch.Tensor | None]:
        """Autograd's gradients of ``loss`` (``zero_grad`` + ``backward``), in ``params`` order."""
        for p in self.params:
            p.grad = None
        loss.backward()
        return [p.grad for p in self.params]

    @torch.no_grad()
    def apply_flat(self, flat: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """As :meth:`apply` for ``grads`` that are views covering the one tensor ``flat``.

        The global norm is then one ``vector_norm`` and the clipping one ``mul_`` (the norm's
        float rounding differs from the per-parameter norms of ``clip_grad_norm_``).
        """
        total = torch.linalg.vector_norm(flat, 2.0)
        flat.mul_(torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0))
        if self.flat is None and self.state_lists is None and self._lists() is not None:
            self.flat = _FlatAdamState.build(self.optimizer, self.params, flat)
        if self.flat is None:
            self._adam(grads)
        else:
            f = self.flat
            self._adam_call([f.param], [flat], [f.exp_avg], [f.exp_avg_sq], f.max_sqs, [f.step])

    def finish(self) -> None:
        """End of an update: write the flat step count back into every parameter's state."""
        if self.flat is not None:
            self.flat.sync_steps()

    @torch.no_grad()
    def apply(self, grads: list[torch.Tensor | None]) -> None:
        """Clip ``grads`` (one per ``params``) to the global norm, then take an Adam step."""
        if any(g is None for g in grads):
            # A parameter outside this loss' graph: let the optimiser skip it as SB3's would.
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.optimizer.step()
            return
        dense: list[torch.Tensor] = grads  # type: ignore[assignment]
        # torch.nn.utils.clip_grad_norm_'s foreach path, without its per-call grouping.
        norms = torch._foreach_norm(dense, 2.0)
        total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
        coef = torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0)
        torch._foreach_mul_(dense, coef)
        self._adam(dense)

    def _adam(self, dense: list[torch.Tensor]) -> None:
        """One Adam step with the (clipped) ``dense`` gradients, one per ``params``."""
        if self.state_lists is None:
            self.state_lists = self._lists()
            if self.state_lists is None:
                for p, g in zip(self.params, dense, strict=True):
                    p.grad = g
                self.optimizer.step()
                return
        exp_avgs, exp_avg_sqs, max_sqs, steps = self.state_lists
        self._adam_call(self.params, dense, exp_avgs, exp_avg_sqs, max_sqs, steps)

    def _adam_call(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        exp_avgs: list[torch.Tensor],
        exp_avg_sqs: list[torch.Tensor],
        max_sqs: list[torch.Tensor],
        steps: list[torch.Tensor],
    ) -> None:
        """One call of torch's functional Adam with this optimiser group's hyperparameters."""
        g = self.group
        beta1, beta2 = g["betas"]
        adam_functional(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            max_sqs,
            steps,
            amsgrad=g["amsgrad"],
            has_complex=False,
            beta1=beta1,
            beta2=beta2,
            lr=g["lr"],
            weight_decay=g["weight_decay"],
            eps=g["eps"],
            maximize=g["maximize"],
            foreach=g["foreach"],
            capturable=False,
            differentiable=False,
            fused=g["fused"],
            grad_scale=None,
            found_inf=None,
            decoupled_weight_decay=g["decoupled_weight_decay"],
        )


def linear_schedule(start: float) -> Callable[[float], float]:
    """``progress_remaining -> start * progress_remaining`` (BPref's decayed PPO clip), >= 0.

    SB3 collects whole rollouts, so when the run's steps are not a multiple of one rollout the
    last update sees a slightly negative ``progress_remaining`` (1,000,000 steps of 8 x 256:
    1,001,472 collected), and a negative clip range would clip every ratio.
    """

    def f(progress_remaining: float) -> float:
        return start * max(0.0, progress_remaining)

    return f


def reset_critic(model: SAC) -> None:
    """Re-initialise SAC's critic, its target and the critic optimiser (PEBBLE step 3).

    The actor and the temperature are kept, as in BPref's ``reset_critic``.
    """
    for module in model.critic.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    model.critic_target.load_state_dict(model.critic.state_dict())
    model.critic.optimizer = model.critic.optimizer.__class__(
        model.critic.parameters(), **model.critic.optimizer.defaults
    )


def reset_value_head(model: PPO) -> None:
    """Re-initialise PPO's value head (PrefPPO after the first reward training).

    B-Pref's ``policy.reset_value()``: the last linear layer of the value branch gets SB3's
    initialisation again (orthogonal, gain 1, zero bias); the value trunk (``mlp_extractor``)
    and the optimiser state are kept. The head had fitted returns of the state-entropy reward.
    """
    head = model.policy.value_net
    torch.nn.init.orthogonal_(head.weight, gain=1.0)
    torch.nn.init.zeros_(head.bias)


# Attributes of an SB3 algorithm that change while it learns and are not model weights.
_SB3_STATE = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "_current_progress_remaining",
    "ep_info_buffer",
    "ep_success_buffer",
    "_num_timesteps_at_start",
)


def sb3_state(model: SAC | PPO) -> dict[str, Any]:
    """Everything needed to continue ``model`` exactly: weights, optimisers, counters."""
    buf = io.BytesIO()
    params = model.get_parameters()
    torch.save(params, buf)
    attrs = {k: getattr(model, k, None) for k in _SB3_STATE}
    space_rng = model.action_space.np_random.bit_generator.state
    extra: dict[str, Any] = {}
    if isinstance(model, SAC) and getattr(model, "log_ent_coef", None) is not None:
        extra["log_ent_coef"] = model.log_ent_coef.detach().clone()
    return {
        "params": buf.getvalue(),
        "attrs": pickle.dumps(attrs),
        "space_rng": space_rng,
        "extra": extra,
    }


def load_sb3_state(model: SAC | PPO, state: dict[str, Any]) -> None:
    """Inverse of :func:`sb3_state` on a freshly built model of the same configuration."""
    params = torch.load(io.BytesIO(state["params"]), weights_only=False)
    model.set_parameters(params, exact_match=True, device=model.device)
    for k, v in pickle.loads(state["attrs"]).items():
        setattr(model, k, v)
    model.action_space.np_random.bit_generator.state = state["space_rng"]
    if "log_ent_coef" in state["extra"]:
        with torch.no_grad():
            model.log_ent_coef.copy_(state["extra"]["log_ent_coef"])


def copy_info(value: Any) -> Any:
    """``copy.deepcopy`` of a step info, with fast paths for what infos hold.

    Dicts, lists and tuples are rebuilt, arrays copied and immutable scalars shared, as
    ``deepcopy`` does for them; anything else goes through ``deepcopy``. Unlike ``deepcopy`` it
    keeps no memo, so an object that appears twice in one info is copied twice (the copies are
    equal; infos are read, not mutated, downstream).
    """
    kind = type(value)
    if kind is dict:
        return {k: copy_info(v) for k, v in value.items()}
    if kind in _IMMUTABLE_SCALARS:
        return value
    if kind is np.ndarray:
        return value.copy() if value.dtype != object else copy.deepcopy(value)
    if kind is list:
        return [copy_info(v) for v in value]
    if kind is tuple:
        return tuple(copy_info(v) for v in value)
    return copy.deepcopy(value)


_IMMUTABLE_SCALARS = frozenset(
    (bool, int, float, str, type(None), np.float64, np.float32, np.int64, np.int32, np.bool_)
)


class PbrlDummyVecEnv(DummyVecEnv):
    """SB3's ``DummyVecEnv`` whose ``step_wait`` copies the infos with :func:`copy_info`.

    SB3 returns ``copy.deepcopy`` of every env's info each vector step; for pbrl's infos (true
    reward, a factors dict, the simulator state) the generic deepcopy costs about as much as a
    MuJoCo step. The returned infos are equal; everything else is SB3's step.
    """

    def step_wait(self):  # type: ignore[no-untyped-def]
        """Step every env (resetting finished ones) as SB3 does; infos via :func:`copy_info`."""
        for i, env in enumerate(self.envs):
            obs, self.buf_rews[i], terminated, truncated, info = env.step(self.actions[i])
            self.buf_infos[i] = info
            self.buf_dones[i] = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                info["terminal_observation"] = obs
                obs, self.reset_infos[i] = env.reset()
            self._save_obs(i, obs)
        infos = [copy_info(info) for info in self.buf_infos]
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), infos


def make_vec_env(env_fns: Sequence[Callable[[], gym.Env]]) -> DummyVecEnv:
    """A DummyVecEnv (in-process): MuJoCo steps are microseconds, pipes would dominate."""
    return PbrlDummyVecEnv(list(env_fns))


def unwrap_normalize(env: VecEnv) -> VecNormalize | None:
    """The VecNormalize layer of ``env``, if any."""
    while isinstance(env, VecEnvWrapper):
        if isinstance(env, VecNormalize):
            return env
        env = env.venv
    return None


def make_logger(sink: Callable[[str, float, int], None]) -> Logger:
    """An SB3 logger whose only output is our namespaced TensorBoard sink."""
    return Logger(folder=None, output_formats=[_ScalarWriter(sink)])
