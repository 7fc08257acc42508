"""Vectorised PPO in pure torch, on the simulator's device, with a segment pool for queries.

Everything a rollout touches lives on one device: the policy, the observation normaliser, the
rollout storage, the learned reward (called on the device tensors of the whole rollout in one
batched forward), GAE, the minibatch updates, and the :class:`SegmentPool` from which
preference queries are cut (with the simulator state of every step, so the CPU renderer can
make clips of them). The host only sees scalars for logging and the few segments of a query
round.

The update is the clipped-surrogate PPO of Schulman et al. (2017) with the defaults of
massively parallel locomotion training (Rudin et al., 2021): short rollouts of many envs,
GAE(lambda), advantage normalisation per minibatch, value loss ``0.5 (V - R)^2``, global
gradient-norm clipping, a diagonal Gaussian policy with a state-independent log-std, and
time-limit truncations bootstrapped with ``gamma V(s_final)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pbrl.data import SegmentBatch

__all__ = [
    "ActorCritic",
    "PPOConfig",
    "RolloutStorage",
    "RunningNorm",
    "SegmentPool",
    "TorchPPO",
    "knn_intrinsic_reward",
]

DeviceRewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(obs (B, D_o), act (B, D_a) in [-1, 1]) -> (B,)`` reward, on the device."""


class RunningNorm(nn.Module):
    """Running mean/variance of observations (Chan's parallel update), clipped normalisation."""

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip, self.eps = float(clip), float(eps)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the rows of ``x`` ``(B, D)`` into the statistics."""
        x = x.reshape(-1, x.shape[-1]).double()
        n = x.shape[0]
        if n == 0:
            return
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        delta = b_mean - self.mean
        tot = self.count + n
        m2 = self.var * self.count + b_var * n + delta.square() * self.count * n / tot
        self.mean += delta * n / tot
        self.var.copy_(m2 / tot)
        self.count.fill_(float(tot))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``clip((x - mean) / sqrt(var + eps))`` in ``x``'s dtype."""
        y = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + self.eps)
        return y.clamp(-self.clip, self.clip)


def _mlp(sizes: Sequence[int], out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, gain=out_gain if last else math.sqrt(2))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the Gaussian mean and the value; state-independent log-std.

    Orthogonal initialisation as SB3/OpenAI baselines: hidden gain ``sqrt(2)``, policy output
    0.01, value output 1.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], log_std_init: float):
        super().__init__()
        self.actor = _mlp([obs_dim, *hidden, act_dim], out_gain=0.01)
        self.critic = _mlp([obs_dim, *hidden, 1], out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        """The action distribution at normalised ``obs``."""
        return torch.distributions.Normal(self.actor(obs), self.log_std.exp())

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``(B,)`` state values."""
        return self.critic(obs).squeeze(-1)


@dataclass
class PPOConfig:
    """PPO hyperparameters (``pbrl/configs/agent/gpu_ppo.yaml`` documents each)."""

    n_steps: int = 32
    n_epochs: int = 5
    batch_size: int = 16384
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 1.0
    net_arch: tuple[int, ...] = (256, 256, 256)
    log_std_init: float = 0.0
    normalize_obs: bool = True
    fused_adam: bool = True


class RolloutStorage:
    """``(T, N, ...)`` tensors of one rollout on the device."""

    def __init__(self, t: int, n: int, obs_dim: int, act_dim: int, device: torch.device):
        def z(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.obs = z(t, n, obs_dim)  # raw observations s_t (rewards, the segment pool)
        self.x = z(t, n, obs_dim)  # the policy's input at s_t: normalised as it was then
        self.actions = z(t, n, act_dim)  # sampled (unclipped) actions, for log-probs
        self.env_actions = z(t, n, act_dim)  # clipped actions applied to the env
        self.log_probs = z(t, n)
        self.values = z(t, n)
        self.rewards = z(t, n)  # the reward the agent learns from (learned / intrinsic / true)
        self.true_rewards = z(t, n)
        self.dones = z(t, n)  # episode ended after step t (terminated or truncated)
        self.bootstrap = z(t, n)  # gamma V(s_final) added at truncations
        self.advantages = z(t, n)
        self.returns = z(t, n)
        self.t, self.n = t, n


class SegmentPool:
    """A ring of the last ``capacity`` steps of every env, from which query segments are cut.

    Per step and env it keeps the observation, the env action scaled to ``[-1, 1]`` (what the
    reward model sees), the true reward, the reward factors, the float32 sim state before the
    step and an episode id; segments never cross an episode boundary.
    """

    def __init__(
        self,
        capacity: int,
        n_envs: int,
        obs_dim: int,
        act_dim: int,
        state_dim: int,
        factor_names: Sequence[str],
        device: torch.device,
        env_name: str = "",
    ):
        def z(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.capacity, self.n_envs = int(capacity), int(n_envs)
        self.factor_names = tuple(factor_names)
        self.obs = z(capacity, n_envs, obs_dim)
        self.actions = z(capacity, n_envs, act_dim)
        self.true_reward = z(capacity, n_envs)
        self.factors = z(capacity, n_envs, len(self.factor_names))
        self.sim_state = z(capacity, n_envs, state_dim)
        self.episode = z(capacity, n_envs, dtype=torch.int64)
        self.ep_step = z(capacity, n_envs, dtype=torch.int64)
        self.pos = 0  # next write row
        self.filled = 0
        self.device = device
        self.env_name = env_name

    def add(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        true_reward: torch.Tensor,
        factors: dict[str, torch.Tensor],
        sim_state: torch.Tensor,
        episode: torch.Tensor,
        ep_step: torch.Tensor,
    ) -> None:
        """Write one step of every env."""
        p = self.pos
        self.obs[p] = obs
        self.actions[p] = actions
        self.true_reward[p] = true_reward
        for j, k in enumerate(self.factor_names):
            self.factors[p, :, j] = factors[k]
        self.sim_state[p] = sim_state
        self.episode[p] = episode
        self.ep_step[p] = ep_step
        self.pos = (p + 1) % self.capacity
        self.filled = min(self.filled + 1, self.capacity)

    def _chrono(self) -> torch.Tensor:
        """Ring rows in chronological order (oldest first)."""
        start = (self.pos - self.filled) % self.capacity
        return (torch.arange(self.filled, device=self.device) + start) % self.capacity

    def sample(self, n: int, horizon: int, generator: torch.Generator) -> SegmentBatch:
        """``n`` segments of ``horizon`` steps within one episode, uniformly over valid starts.

        Raises:
            ValueError: no episode in the pool has ``horizon`` consecutive steps yet.
        """
        rows = self._chrono()
        if self.filled < horizon:
            raise ValueError(
                f"the segment pool holds {self.filled} steps per env, fewer than the segment "
                f"length {horizon}; collect more steps first (or lower segment_size)"
            )
        ep = self.episode[rows]  # (F, N)
        valid = ep[: self.filled - horizon + 1] == ep[horizon - 1 :]  # same episode at both ends
        starts = valid.nonzero()  # (V, 2): chronological start, env
        if starts.shape[0] == 0:
            raise ValueError(
                f"no episode in the pool has {horizon} consecutive steps; lower segment_size"
            )
        pick = torch.randint(
            starts.shape[0], (n,), generator=generator, device=generator.device
        ).to(self.device)
        t0, env = starts[pick, 0], starts[pick, 1]
        t = rows[t0[:, None] + torch.arange(horizon, device=self.device)]  # (n, H) ring rows
        e = env[:, None].expand(-1, horizon)

        def take(a: torch.Tensor) -> np.ndarray:
            return a[t, e].cpu().numpy()

        factors = take(self.factors)
        return SegmentBatch(
            obs=take(self.obs),
            actions=take(self.actions),
            true_reward=take(self.true_reward),
            reward_factors={k: factors[..., j] for j, k in enumerate(self.factor_names)},
            sim_state=take(self.sim_state).astype(np.float64),
            env_id=env.cpu().numpy(),
            start=self.ep_step[t[:, 0], env].cpu().numpy(),
            env_name=self.env_name,
        )

    def sample_transitions(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` random stored steps: ``obs, actions, true_reward`` (device tensors)."""
        rows = self._chrono()
        i = torch.randint(self.filled, (n,), generator=generator, device=generator.device)
        j = torch.randint(self.n_envs, (n,), generator=generator, device=generator.device)
        r, j = rows[i.to(self.device)], j.to(self.device)
        return self.obs[r, j], self.actions[r, j], self.true_reward[r, j]


@torch.no_grad()
def knn_intrinsic_reward(
    obs: torch.Tensor, reference: torch.Tensor, k: int, chunk: int = 4096
) -> torch.Tensor:
    """Particle state-entropy reward (PEBBLE's unsupervised pre-training reward) on the device.

    Each row of ``obs`` gets its distance to its ``k``-th nearest row of ``reference``.

    Args:
        obs: ``(B, D)`` states to reward.
        reference: ``(R, D)`` states the neighbours come from (``R > k``): a sample of other
            states, not containing ``obs`` (B-Pref's ``k + 1`` on a buffer that holds the
            state itself is the ``k``-th neighbour other than itself, which is this).
        k: which neighbour.
        chunk: rows of ``obs`` per ``cdist`` call (memory ``chunk * R``).
    """
    if reference.shape[0] <= k:
        return torch.zeros(obs.shape[0], device=obs.device)
    out = torch.empty(obs.shape[0], device=obs.device)
    for s in range(0, obs.shape[0], chunk):
        d = torch.cdist(obs[s : s + chunk], reference)
        out[s : s + chunk] = d.kthvalue(k, dim=1).values
    return out


class TorchPPO:
    """PPO on ``device`` for a :class:`~pbrl.gpu.sim.BatchedMujocoEnv`-like vector env.

    Args:
        obs_dim, act_dim: sizes.
        act_low, act_high: ``(D_a,)`` action bounds (sampled actions are clipped to them).
        n_envs: worlds in the env.
        cfg: hyperparameters.
        device: where everything lives.
        seed: seeds the weights (CPU generator, device independent) and the action noise.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        act_low: torch.Tensor,
        act_high: torch.Tensor,
        n_envs: int,
        cfg: PPOConfig,
        device: torch.device,
        seed: int = 0,
    ):
        self.cfg, self.device, self.n_envs = cfg, device, int(n_envs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = ActorCritic(obs_dim, act_dim, cfg.net_arch, cfg.log_std_init)
        self.policy.to(device)
        self.obs_norm = RunningNorm(obs_dim).to(device)
        fused = bool(cfg.fused_adam) and device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=fused
        )
        self.act_low, self.act_high = act_low.to(device).float(), act_high.to(device).float()
        self.storage = RolloutStorage(cfg.n_steps, n_envs, obs_dim, act_dim, device)
        self.generator = torch.Generator(device=device).manual_seed(int(seed) + 1)
        self.num_timesteps = 0
        self.updates = 0

    def scale_action(self, env_action: torch.Tensor) -> torch.Tensor:
        """Env action -> ``[-1, 1]`` (the reward model's action convention)."""
        return 2.0 * (env_action - self.act_low) / (self.act_high - self.act_low) - 1.0

    def _norm(self, obs: torch.Tensor) -> torch.Tensor:
        return self.obs_norm(obs) if self.cfg.normalize_obs else obs

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Env actions (clipped to the bounds) for raw ``obs`` ``(B, D_o)``."""
        x = self._norm(obs)
        a = self.policy.actor(x) if deterministic else self._sample(x)[0]
        return torch.max(torch.min(a, self.act_high), self.act_low)

    def _sample(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.policy.dist(x)
        noise = torch.randn(dist.loc.shape, generator=self.generator, device=self.device)
        a = dist.loc + dist.scale * noise
        return a, dist.log_prob(a).sum(-1)

    @torch.no_grad()
    def collect(
        self,
        env: Any,
        obs: torch.Tensor,
        on_step: Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], None] | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Run ``n_steps`` steps of every env; fills :attr:`storage` (rewards: the true ones).

        Args:
            env: the batched env.
            obs: ``(N, D_o)`` current observations.
            on_step: called with ``(obs, env_action, info)`` after each step (the pool writer).

        Returns:
            The observations after the rollout and episode statistics
            ``{"returns": [...], "lengths": [...]}`` of the episodes that ended in it.
        """
        st, cfg = self.storage, self.cfg
        ep_returns: list[torch.Tensor] = []
        ep_lengths: list[torch.Tensor] = []
        if cfg.normalize_obs and self.num_timesteps == 0:
            self.obs_norm.update(obs)  # later rollouts start at an observation already counted
        for t in range(cfg.n_steps):
            x = self._norm(obs)
            a, logp = self._sample(x)
            env_a = torch.max(torch.min(a, self.act_high), self.act_low)
            st.obs[t] = obs
            st.x[t] = x  # the ratio's old log-prob was taken at this input, not a re-normalised one
            st.actions[t] = a
            st.env_actions[t] = env_a
            st.log_probs[t] = logp
            st.values[t] = self.policy.value(x)
            next_obs, reward, term, trunc, info = env.step(env_a)
            if on_step is not None:
                on_step(obs, env_a, info)
            st.true_rewards[t] = reward
            done = term | trunc
            st.dones[t] = done.float()
            # time-limit truncation: bootstrap from the last observation of the episode
            st.bootstrap[t] = torch.where(
                trunc,
                cfg.gamma * self.policy.value(self._norm(info["final_obs"])),
                torch.zeros_like(reward),
            )
            ep_returns.append(info["episode_return"][done])
            ep_lengths.append(info["episode_length"][done])
            obs = next_obs
            if cfg.normalize_obs:
                self.obs_norm.update(obs)
        self.num_timesteps += cfg.n_steps * self.n_envs
        self._last_obs = obs
        stats = {
            "returns": torch.cat(ep_returns).cpu().numpy(),
            "lengths": torch.cat(ep_lengths).cpu().numpy(),
        }
        return obs, stats

    @torch.no_grad()
    def compute_returns(self, last_obs: torch.Tensor) -> None:
        """GAE(lambda) advantages and returns from :attr:`storage` ``rewards``."""
        st, g, lam = self.storage, self.cfg.gamma, self.cfg.gae_lambda
        next_value = self.policy.value(self._norm(last_obs))
        gae = torch.zeros_like(next_value)
        for t in reversed(range(st.t)):
            nonterminal = 1.0 - st.dones[t]
            delta = st.rewards[t] + st.bootstrap[t] + g * next_value * nonterminal - st.values[t]
            gae = delta + g * lam * nonterminal * gae
            st.advantages[t] = gae
            next_value = st.values[t]
        st.returns.copy_(st.advantages + st.values)

    def update(self) -> dict[str, float]:
        """``n_epochs`` passes of minibatch PPO updates over the rollout."""
        st, cfg = self.storage, self.cfg
        total = st.t * st.n
        obs = st.x.reshape(total, -1)
        act = st.actions.reshape(total, -1)
        old_logp = st.log_probs.reshape(total)
        adv_all = st.advantages.reshape(total)
        ret = st.returns.reshape(total)
        bsz = min(int(cfg.batch_size), total)
        n_mb = max(1, total // bsz)
        sums = torch.zeros(5, device=self.device)
        for _ in range(cfg.n_epochs):
            perm = torch.randperm(total, generator=self.generator, device=self.device)
            for i in range(n_mb):
                idx = perm[i * bsz : (i + 1) * bsz]
                dist = self.policy.dist(obs[idx])
                logp = dist.log_prob(act[idx]).sum(-1)
                ratio = (logp - old_logp[idx]).exp()
                adv = adv_all[idx]
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg = -torch.min(
                    ratio * adv, ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range) * adv
                ).mean()
                v_loss = 0.5 * (self.policy.value(obs[idx]) - ret[idx]).square().mean()
                entropy = dist.entropy().sum(-1).mean()
                loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * entropy
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    clipped = ((ratio - 1).abs() > cfg.clip_range).float().mean()
                    sums += torch.stack([pg, v_loss, entropy, clipped, loss]).detach()
                self.updates += 1
        sums = (sums / (cfg.n_epochs * n_mb)).cpu().numpy()
        return {
            "train/policy_loss": float(sums[0]),
            "train/value_loss": float(sums[1]),
            "train/entropy": float(sums[2]),
            "train/clip_fraction": float(sums[3]),
            "train/loss": float(sums[4]),
            "train/std": float(self.policy.log_std.exp().mean().item()),
        }

    # --- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Weights, normaliser, optimiser, RNG and counters."""
        return {
            "policy": self.policy.state_dict(),
            "obs_norm": self.obs_norm.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "num_timesteps": self.num_timesteps,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.policy.load_state_dict(state["policy"])
        self.obs_norm.load_state_dict(state["obs_norm"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.num_timesteps = int(state["num_timesteps"])
        self.updates = int(state["updates"])
