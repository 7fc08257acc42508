"""Multi-objective PPO: a multi-head critic, vector returns, a scalarised advantage.

One learner holds a Gaussian policy (2 x 64 tanh) and a critic with ``m`` outputs, one per
objective. Each iteration collects ``num_steps`` steps from ``num_envs`` copies (an
:class:`~pbrl.morl.envs.MOVectorEnv`), computes GAE **per objective** on the normalised vector
reward, and optimises the clipped surrogate of the scalarised advantage

    A_w = sum_j w_j sigma_j A_j       (sigma_j: objective j's return scale)

standardised over the batch, plus ``vf_coef`` x the clipped value loss of every head. Truncated
episodes are bootstrapped with the critic at their final observation. An optional
:class:`Barrier` adds C-MORL's stage-2 constraint term (see :mod:`pbrl.morl.cmorl`).

Defaults are PGMORL's PPO settings (morl-baselines ``pgmorl.py``, C-MORL ``arguments.py``):
lr 3e-4, gamma 0.995, GAE lambda 0.95, 2048 steps x 4 envs, 10 epochs, 32 minibatches, clip
0.2, entropy 0, value coefficient 0.5, grad norm 0.5, Adam eps 1e-5, observation and
per-objective return normalisation. Two knowing departures: float32 instead of the official
float64 (speed), and C-MORL's official runs use ``use_gae=False`` (bootstrapped Monte-Carlo
returns), which is ``gae_lambda=1.0`` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from pbrl.morl.envs import EnvFn, MOVectorEnv
from pbrl.morl.metrics import EvalProtocol


@dataclass
class MOPPOConfig:
    """Hyperparameters of :class:`MOPPO` (PGMORL's PPO defaults)."""

    num_envs: int = 4
    num_steps: int = 2048
    lr: float = 3e-4
    gamma: float = 0.995
    gae_lambda: float = 0.95
    epochs: int = 10
    num_minibatches: int = 32
    clip: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    adam_eps: float = 1e-5
    hidden: tuple[int, ...] = (64, 64)
    norm_obs: bool = True
    norm_reward: bool = True
    clip_obs: float = 10.0
    clip_reward: float = 10.0

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.num_envs < 1 or self.num_steps < 1:
            raise ValueError("MOPPOConfig needs num_envs >= 1 and num_steps >= 1")
        batch = self.num_envs * self.num_steps
        if not 1 <= self.num_minibatches <= batch:
            raise ValueError(
                f"num_minibatches must lie in [1, num_envs x num_steps = {batch}], "
                f"got {self.num_minibatches}"
            )
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("gamma must lie in (0, 1] and gae_lambda in [0, 1]")

    @property
    def batch_size(self) -> int:
        """Transitions per iteration (all envs)."""
        return self.num_envs * self.num_steps


class RunningMeanStd:
    """Running mean and variance of ``shape``-sized samples (parallel Welford update)."""

    def __init__(self, shape: tuple[int, ...]):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        """Fold in a batch ``(B, *shape)``."""
        x = np.asarray(x, np.float64)
        b_mean, b_var, b = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = b_mean - self.mean
        tot = self.count + b
        self.mean = self.mean + delta * b / tot
        m2 = self.var * self.count + b_var * b + delta**2 * self.count * b / tot
        self.var = m2 / tot
        self.count = tot

    def state_dict(self) -> dict[str, Any]:
        """Plain copies of the statistics."""
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": float(self.count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        self.count = float(state["count"])


def _layer(n_in: int, n_out: int, gain: float) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(n_in: int, hidden: tuple[int, ...], n_out: int, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [_layer(n_in, h, math.sqrt(2)), nn.Tanh()]
        n_in = h
    layers.append(_layer(n_in, n_out, out_gain))
    return nn.Sequential(*layers)


class MOActorCritic(nn.Module):
    """Gaussian actor (state-independent log std) and an ``m``-head critic, separate MLPs.

    Orthogonal init: hidden gain sqrt(2), actor output 0.01, critic output 1.
    """

    def __init__(self, obs_dim: int, act_dim: int, num_objectives: int, hidden: tuple[int, ...]):
        super().__init__()
        self.actor = _mlp(obs_dim, hidden, act_dim, 0.01)
        self.critic = _mlp(obs_dim, hidden, num_objectives, 1.0)
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        """The action distribution at ``obs`` ``(B, D_o)``."""
        return torch.distributions.Normal(self.actor(obs), self.log_std.exp())

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``(B, m)`` normalised value per objective."""
        return self.critic(obs)


class Policy(Protocol):
    """Anything the shared evaluator can run: normalised-obs deterministic actions."""

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """``(B, D_a)`` actions for ``(B, D_o)`` raw observations."""
        ...


class MOPolicy:
    """A trained policy: the network and the observation statistics it was trained with."""

    def __init__(self, model: MOActorCritic, obs_rms: RunningMeanStd | None, clip_obs: float):
        self.model = model
        self.obs_rms = obs_rms
        self.clip_obs = clip_obs

    def normalise(self, obs: np.ndarray) -> np.ndarray:
        """Observations scaled by the frozen running statistics."""
        if self.obs_rms is None:
            return np.asarray(obs, np.float32)
        z = (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + 1e-8)
        return np.clip(z, -self.clip_obs, self.clip_obs).astype(np.float32)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """``(B, D_a)`` actions (the mean when ``deterministic``)."""
        d = self.model.dist(torch.as_tensor(self.normalise(obs)))
        return (d.mean if deterministic else d.sample()).numpy()


@dataclass
class Rollout:
    """One iteration's data, ``T = num_steps``, ``N = num_envs``, ``m`` objectives.

    Attributes:
        obs: ``(T, N, D_o)`` normalised observations.
        actions: ``(T, N, D_a)`` sampled (unclipped) actions.
        logp: ``(T, N)`` their log-probabilities under the behaviour policy.
        values: ``(T, N, m)`` critic outputs.
        advantages: ``(T, N, m)`` per-objective GAE (normalised reward units).
        returns: ``(T, N, m)`` value targets ``advantages + values``.
        episode_returns: ``(E, m)`` undiscounted raw vector returns of episodes that ended.
    """

    obs: np.ndarray
    actions: np.ndarray
    logp: np.ndarray
    values: np.ndarray
    advantages: np.ndarray
    returns: np.ndarray
    episode_returns: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


class Barrier(Protocol):
    """An extra loss term on a minibatch (C-MORL's stage-2 constraint)."""

    def loss(
        self, ratio: torch.Tensor, adv_raw: torch.Tensor, returns: torch.Tensor, clip: float
    ) -> torch.Tensor:
        """Scalar loss to add; ``ratio (B,)``, ``adv_raw (B, m)``, ``returns (B, m)``."""
        ...


class MOPPO:
    """A multi-objective PPO learner for one weight ``w`` on the simplex.

    Args:
        env_fn: builds one vector-reward env.
        weight: ``(m,)`` scalarisation weight.
        cfg: hyperparameters.
        seed: seeds the envs (copy ``i`` resets with ``seed + i``) and the torch generator.
        state: a :meth:`state_dict` to start from (network, normalisers); the optimiser
            starts fresh.
    """

    def __init__(
        self,
        env_fn: EnvFn,
        weight: np.ndarray,
        cfg: MOPPOConfig | None = None,
        seed: int = 0,
        state: dict[str, Any] | None = None,
    ):
        self.cfg = cfg or MOPPOConfig()
        self.venv = MOVectorEnv([env_fn] * self.cfg.num_envs, seed=seed)
        self.m = self.venv.num_objectives
        self.weight = np.asarray(weight, np.float64).reshape(-1)
        if self.weight.shape != (self.m,) or (self.weight < 0).any():
            raise ValueError(f"weight must be {self.m} non-negative numbers, got {weight}")
        obs_space, act_space = self.venv.single_observation_space, self.venv.single_action_space
        self.obs_dim = int(np.prod(obs_space.shape))  # type: ignore[arg-type]
        self.act_dim = int(np.prod(act_space.shape))  # type: ignore[arg-type]
        self.gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # network init
        self.model = MOActorCritic(self.obs_dim, self.act_dim, self.m, self.cfg.hidden)
        self.obs_rms = RunningMeanStd((self.obs_dim,))
        self.ret_rms = RunningMeanStd((self.m,))
        if state is not None:
            self.load_state_dict(state)
        self.optim = torch.optim.Adam(
            self.model.parameters(), lr=self.cfg.lr, eps=self.cfg.adam_eps
        )
        self._raw_obs = self.venv.reset(seed).reshape(self.cfg.num_envs, self.obs_dim)
        self._disc_ret = np.zeros((self.cfg.num_envs, self.m))
        self._ep_ret = np.zeros((self.cfg.num_envs, self.m))
        self.env_steps = 0
        self.iterations = 0

    # --- state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Network, normalisers, weight and sizes (what a front policy is saved as)."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "obs_rms": self.obs_rms.state_dict(),
            "ret_rms": self.ret_rms.state_dict(),
            "weight": self.weight.tolist(),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "num_objectives": self.m,
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (sizes must match)."""
        sizes = (state["obs_dim"], state["act_dim"], state["num_objectives"])
        if sizes != (self.obs_dim, self.act_dim, self.m):
            raise ValueError(
                f"checkpoint is for (obs, act, objectives) = {sizes}, this env has "
                f"{(self.obs_dim, self.act_dim, self.m)}"
            )
        self.model.load_state_dict(state["model"])
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])

    def policy(self) -> MOPolicy:
        """The current policy (shares the network; normalisers are copied)."""
        rms = RunningMeanStd((self.obs_dim,))
        rms.load_state_dict(self.obs_rms.state_dict())
        return MOPolicy(self.model, rms if self.cfg.norm_obs else None, self.cfg.clip_obs)

    # --- rollouts ----------------------------------------------------------------------
    def _norm_obs(self, raw: np.ndarray, update: bool) -> np.ndarray:
        if not self.cfg.norm_obs:
            return raw.astype(np.float32)
        if update:
            self.obs_rms.update(raw)
        z = (raw - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + 1e-8)
        return np.clip(z, -self.cfg.clip_obs, self.cfg.clip_obs).astype(np.float32)

    def _norm_reward(self, r: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.cfg.norm_reward:
            return r
        self._disc_ret = self._disc_ret * self.cfg.gamma + r
        self.ret_rms.update(self._disc_ret)
        self._disc_ret[done] = 0.0
        z = r / np.sqrt(self.ret_rms.var + 1e-8)
        return np.clip(z, -self.cfg.clip_reward, self.cfg.clip_reward)

    def reward_scale(self) -> np.ndarray:
        """``(m,)`` factor from normalised to raw reward units (``sigma_j``)."""
        if not self.cfg.norm_reward:
            return np.ones(self.m)
        return np.sqrt(self.ret_rms.var + 1e-8)

    @torch.no_grad()
    def collect(self) -> Rollout:
        """Run ``num_steps`` steps in every env; per-objective GAE on the normalised reward."""
        cfg, n, m = self.cfg, self.cfg.num_envs, self.m
        t_len = cfg.num_steps
        obs = np.zeros((t_len, n, self.obs_dim), np.float32)
        actions = np.zeros((t_len, n, self.act_dim), np.float32)
        logp = np.zeros((t_len, n), np.float32)
        values = np.zeros((t_len, n, m), np.float32)
        rewards = np.zeros((t_len, n, m), np.float64)
        dones = np.zeros((t_len, n), bool)
        finished: list[np.ndarray] = []
        o = self._norm_obs(self._raw_obs, update=True)
        for t in range(t_len):
            ot = torch.as_tensor(o)
            d = self.model.dist(ot)
            a = d.mean + d.stddev * torch.randn(d.mean.shape, generator=self.gen)
            obs[t], actions[t] = o, a.numpy()
            logp[t] = d.log_prob(a).sum(-1).numpy()
            values[t] = self.model.value(ot).numpy()
            raw_next, r, term, trunc, final = self.venv.step(a.numpy())
            done = term | trunc
            self._ep_ret += r
            for i in np.flatnonzero(done):
                finished.append(self._ep_ret[i].copy())
                self._ep_ret[i] = 0.0
            rn = self._norm_reward(r, done)
            o = self._norm_obs(raw_next.reshape(n, self.obs_dim), update=True)
            # Truncation is not failure: bootstrap with the value of the final observation.
            for i in np.flatnonzero(trunc):
                fo = self._norm_obs(final[i].reshape(1, self.obs_dim), update=False)
                rn[i] = rn[i] + cfg.gamma * self.model.value(torch.as_tensor(fo))[0].numpy()
            rewards[t], dones[t] = rn, done
            self._raw_obs = raw_next.reshape(n, self.obs_dim)
        next_value = self.model.value(torch.as_tensor(o)).numpy()
        adv = np.zeros((t_len, n, m), np.float64)
        last = np.zeros((n, m))
        for t in reversed(range(t_len)):
            nonterminal = (~dones[t]).astype(np.float64)[:, None]
            nxt = next_value if t == t_len - 1 else values[t + 1]
            delta = rewards[t] + cfg.gamma * nxt * nonterminal - values[t]
            last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last
            adv[t] = last
        self.env_steps += t_len * n
        ep = np.stack(finished) if finished else np.zeros((0, m))
        return Rollout(obs, actions, logp, values, adv.astype(np.float32),
                       (adv + values).astype(np.float32), ep)  # fmt: skip

    # --- optimisation ------------------------------------------------------------------
    def update(
        self, rollout: Rollout, weight: np.ndarray | None = None, barrier: Barrier | None = None
    ) -> dict[str, float]:
        """PPO epochs on ``rollout`` for the scalarisation ``weight`` (default: the learner's).

        Returns the mean losses (``losses/...``) of the last epoch.
        """
        cfg, m = self.cfg, self.m
        w = self.weight if weight is None else np.asarray(weight, np.float64)
        b = cfg.batch_size
        obs = torch.as_tensor(rollout.obs.reshape(b, self.obs_dim))
        act = torch.as_tensor(rollout.actions.reshape(b, self.act_dim))
        old_logp = torch.as_tensor(rollout.logp.reshape(b))
        old_v = torch.as_tensor(rollout.values.reshape(b, m))
        ret = torch.as_tensor(rollout.returns.reshape(b, m))
        adv_raw_np = rollout.advantages.reshape(b, m) * self.reward_scale()
        adv_w = adv_raw_np @ w
        adv_w = (adv_w - adv_w.mean()) / (adv_w.std() + 1e-8)
        adv_raw = torch.as_tensor(adv_raw_np, dtype=torch.float32)
        adv = torch.as_tensor(adv_w, dtype=torch.float32)
        mb = b // cfg.num_minibatches
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.epochs):
            stats = {}
            perm = torch.randperm(b, generator=self.gen)
            for k in range(cfg.num_minibatches):
                idx = perm[k * mb : (k + 1) * mb]
                d = self.model.dist(obs[idx])
                new_logp = d.log_prob(act[idx]).sum(-1)
                ratio = (new_logp - old_logp[idx]).exp()
                pg = -torch.min(
                    ratio * adv[idx], ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * adv[idx]
                ).mean()
                v = self.model.value(obs[idx])
                v_clip = old_v[idx] + (v - old_v[idx]).clamp(-cfg.clip, cfg.clip)
                v_loss = 0.5 * torch.max((v - ret[idx]) ** 2, (v_clip - ret[idx]) ** 2)
                v_loss = v_loss.mean()  # over batch and objectives (C-MORL, morl-baselines)
                entropy = d.entropy().sum(-1).mean()
                loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
                if barrier is not None:
                    bl = barrier.loss(ratio, adv_raw[idx], ret[idx], cfg.clip)
                    loss = loss + bl
                    stats.setdefault("losses/barrier", []).append(bl.item())
                self.optim.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optim.step()
                with torch.no_grad():
                    kl = ((ratio - 1) - ratio.log()).mean()
                stats.setdefault("losses/policy", []).append(pg.item())
                stats.setdefault("losses/value", []).append(v_loss.item())
                stats.setdefault("losses/approx_kl", []).append(kl.item())
        self.iterations += 1
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def train_iteration(self, barrier: Barrier | None = None) -> dict[str, float]:
        """Collect one rollout and update on it; returns losses and episode statistics."""
        rollout = self.collect()
        out = self.update(rollout, barrier=barrier)
        if rollout.episode_returns.shape[0]:
            mean = rollout.episode_returns.mean(0)
            for j in range(self.m):
                out[f"charts/episode_return_{j}"] = float(mean[j])
        return out

    def close(self) -> None:
        """Close the envs."""
        self.venv.close()


def policy_from_state(state: dict[str, Any]) -> MOPolicy:
    """Rebuild a :class:`MOPolicy` from :meth:`MOPPO.state_dict` (no env needed)."""
    hidden = tuple(state["config"]["hidden"])
    model = MOActorCritic(state["obs_dim"], state["act_dim"], state["num_objectives"], hidden)
    model.load_state_dict(state["model"])
    rms = None
    if state["config"]["norm_obs"]:
        rms = RunningMeanStd((state["obs_dim"],))
        rms.load_state_dict(state["obs_rms"])
    return MOPolicy(model, rms, float(state["config"]["clip_obs"]))


def evaluate_policy(
    policy: Policy, env_fn: Callable[[], Any], protocol: EvalProtocol
) -> tuple[np.ndarray, int]:
    """The shared evaluator: mean discounted vector return of deterministic episodes.

    Runs ``protocol.episodes`` episodes side by side (episode ``i`` reset with
    ``protocol.seed + i``), each for at most ``protocol.max_steps`` steps, and discounts the
    reward of step ``t`` by ``protocol.gamma ** t``.

    Args:
        policy: anything with ``act(obs, deterministic=True)``.
        env_fn: builds one vector-reward env.
        protocol: the evaluation settings every method shares.

    Returns:
        ``(m,)`` mean discounted vector return and the number of env steps used.
    """
    venv = MOVectorEnv([env_fn] * protocol.episodes, seed=protocol.seed)
    try:
        obs = venv.reset(protocol.seed)
        total = np.zeros((protocol.episodes, venv.num_objectives))
        alive = np.ones(protocol.episodes, bool)
        steps = 0
        for t in range(protocol.max_steps):
            act = policy.act(obs, deterministic=True)
            obs, r, term, trunc, _ = venv.step(act)
            steps += int(alive.sum())
            total[alive] += protocol.gamma**t * r[alive]
            alive &= ~(term | trunc)
            if not alive.any():
                break
        return total.mean(axis=0), steps
    finally:
        venv.close()
