"""PrefPPO on the device: ``pbrl-train env=gpu_<task> agent=gpu_ppo``.

The schedule is :class:`pbrl.loops.online.PreferenceLoop`'s PrefPPO one, with the SB3 agent
and the CPU vector env replaced by :class:`~pbrl.gpu.ppo.TorchPPO` on a
:class:`~pbrl.gpu.sim.BatchedMujocoEnv`:

1. PPO on the k-NN state-entropy reward for ``agent.num_unsup_steps`` steps (computed on the
   device against states of the segment pool);
2. a first, uniform round of ``reward_batch`` queries cut from the device segment pool, labelled
   by the teacher, stored in the feedback store, and the reward ensemble trained on them;
3. every ``agent.num_interact`` steps while ``max_feedback`` lasts: a round with the configured
   query rule;
4. between rounds PPO learns on the learned reward, evaluated on the device for the whole
   rollout (one batched ensemble forward, no host round-trip).

Evaluation runs the deterministic policy in the CPU twin of the task (the gymnasium env of the
pbrl registry, ``eval.episodes`` episodes), so returns are comparable with the CPU path; query
segments carry the sim state of each step, so the human teacher's clips and the videos are
rendered by the CPU renderer. Checkpoints keep the agent, the reward learner, the teacher, the
schedule and the worlds' sim states; a resume restarts each world's current episode from that
state (the device RNG and the segment pool are not restored).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from pbrl.data import SegmentBatch
from pbrl.gpu.ppo import PPOConfig, RunningNorm, SegmentPool, TorchPPO, knn_intrinsic_reward
from pbrl.gpu.sim import TASKS, BatchedMujocoEnv
from pbrl.loops.base import OnlineLoop
from pbrl.loops.feedback import FEEDBACK_STATE_KEYS, RunError
from pbrl.loops.online import resolve_device


def gpu_task(env_cfg: DictConfig) -> str:
    """The batched task of an env config: ``gpu_task`` if set, else the name minus ``gpu_``."""
    task = str(env_cfg.get("gpu_task") or env_cfg.name).removeprefix("gpu_")
    if task not in TASKS:
        raise RunError(
            f"agent=gpu_ppo needs a task of the batched backend, got env {env_cfg.name!r}; "
            f"valid: {', '.join('gpu_' + t for t in sorted(TASKS))}"
        )
    return task


def ppo_config(a: DictConfig) -> PPOConfig:
    """:class:`PPOConfig` from the ``agent`` group."""
    return PPOConfig(
        n_steps=int(a.n_steps),
        n_epochs=int(a.n_epochs),
        batch_size=int(a.batch_size),
        learning_rate=float(a.learning_rate),
        gamma=float(a.gamma),
        gae_lambda=float(a.gae_lambda),
        clip_range=float(a.clip_range),
        ent_coef=float(a.ent_coef),
        vf_coef=float(a.vf_coef),
        max_grad_norm=float(a.max_grad_norm),
        net_arch=tuple(int(h) for h in a.net_arch),
        log_std_init=float(a.log_std_init),
        normalize_obs=bool(a.normalize_obs),
        fused_adam=bool(a.get("fused_adam", True)),
    )


def check_first_round(cfg: DictConfig) -> None:
    """Fail before any simulation when the first feedback round could not cut a segment.

    The round comes after the rollout that passes ``num_seed_steps + num_unsup_steps``; by
    then each world has stepped a whole number of rollouts of ``n_steps``, and the segment
    pool needs ``segment_size`` of them.
    """
    a = cfg.agent
    if cfg.reward.name == "true_reward":
        return
    n_steps, n_envs, seg = int(a.n_steps), int(a.num_envs), int(cfg.segment_size)
    first = int(a.num_seed_steps) + int(a.num_unsup_steps)
    rollouts = max(1, -(-first // (n_envs * n_steps)))
    if rollouts * n_steps < seg:
        need = -(-seg // n_steps) * n_envs * n_steps - int(a.num_seed_steps)
        raise RunError(
            f"the first feedback round would come after {rollouts * n_steps} steps per world "
            f"(num_seed_steps + num_unsup_steps = {first} over {n_envs} worlds, rollouts of "
            f"agent.n_steps={n_steps}), fewer than segment_size={seg}: set "
            f"agent.num_unsup_steps>={need}, or a larger agent.n_steps, or a smaller "
            "segment_size"
        )


class GpuPreferenceLoop(OnlineLoop):
    """One PrefPPO run with simulator, policy and reward ensemble on ``cfg.device``.

    Args:
        cfg: the composed Hydra config (``pbrl/configs/train.yaml`` with ``agent=gpu_ppo``).
        run_dir: where TensorBoard events, checkpoints, the feedback store and the config go.
    """

    checkpoint_map_location = "cpu"  # device tensors load onto the CPU, then move

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(resolve_device(cfg.device))
        seed = int(cfg.seed)
        self._seed_all(seed)  # self.rng: query selection; self.eval_rng: metrics
        self.gen = torch.Generator(device=self.device).manual_seed(seed + 2)  # segment sampling
        self.eval_gen = torch.Generator(device=self.device).manual_seed(seed + 3)

        a = cfg.agent
        env_kwargs = dict(cfg.env.get("kwargs") or {})
        if env_kwargs.get("reward_weights") is not None:
            raise RunError(
                "env.kwargs.reward_weights (reward engineering) is applied by the CPU envs' "
                "PbrlEnv, not by the batched GPU backend; use agent=pebble or agent=prefppo "
                "with the CPU env, or drop reward_weights"
            )
        check_first_round(cfg)
        task = gpu_task(cfg.env)
        self.env = BatchedMujocoEnv(
            task,
            int(a.num_envs),
            seed=seed,
            device=self.device,
            max_episode_steps=env_kwargs.get("max_episode_steps"),
            render_quality=env_kwargs.get("render_quality", "fast"),
            cuda_graph=bool(a.get("cuda_graph", True)),
            # the Franka twins' options (the CPU suite's names); locomotion has none
            **{k: env_kwargs[k] for k in ("control", "camera") if k in env_kwargs},
        )
        self.env_name = self.env.env_name  # the CPU twin: rendering, evaluation, labelling
        self.max_episode_steps = self.env.max_episode_steps
        self.obs_dim, self.act_dim = self.env.obs_dim, self.env.act_dim
        self.eval_envs = [
            self.env.make_cpu_env(seed=seed + 10_000 + i) for i in range(int(cfg.eval.episodes))
        ]

        # reward learner, teacher, queries, store: pbrl.loops.feedback, as the CPU loop. Only
        # the plain Bradley-Terry ensemble: the device reward is its member mean (HERON's
        # normalisation and the regret model's advantage are not applied on the device).
        self._init_feedback(
            self.obs_dim,
            self.act_dim,
            self.env_name,
            {},
            device=self.device,
            seed=seed,
            rewards=("bradley_terry",),
        )

        # running std of the k-NN distances (the exploration reward's scale; checkpointed)
        self.ent_stats = RunningNorm(1).to(self.device)
        self.ppo = TorchPPO(
            self.obs_dim,
            self.act_dim,
            self.env.act_low,
            self.env.act_high,
            self.env.num_envs,
            ppo_config(a),
            self.device,
            seed=seed,
        )
        pool_steps = max(int(a.pool_steps), 2 * int(cfg.segment_size), int(a.n_steps))
        self.pool = SegmentPool(
            pool_steps,
            self.env.num_envs,
            self.obs_dim,
            self.act_dim,
            self.env.state_dim,
            self.env.factor_names,
            self.device,
            env_name=self.env_name,
        )
        n = self.env.num_envs
        self.episode = torch.arange(n, device=self.device)  # unique id of each world's episode
        self.ep_step = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.obs, _ = self.env.reset(seed=seed)
        self.writer = SummaryWriter(str(self.run_dir))

        self._init_schedule()
        self.recent_returns: list[float] = []

    # ------------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Environment steps so far (summed over worlds)."""
        return int(self.ppo.num_timesteps)

    def _record(self, obs: torch.Tensor, env_a: torch.Tensor, info: dict[str, Any]) -> None:
        """Write one step into the segment pool, then advance the episode bookkeeping."""
        self.pool.add(
            obs,
            self.ppo.scale_action(env_a),
            info["true_reward"],
            info["reward_factors"],
            info["sim_state"],
            self.episode,
            self.ep_step,
        )
        finished = self.env.ep_len == 0  # worlds auto-reset in this step start at length 0
        self.ep_step += 1
        self.ep_step[finished] = 0
        self.episode[finished] += self.env.num_envs

    @torch.no_grad()
    def _device_reward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Member-mean learned reward of ``(B, D_o)``, ``(B, D_a)`` rows, on the device."""
        assert self.learner is not None
        x = torch.cat([obs, act], dim=-1)
        out = torch.empty(x.shape[0], device=self.device)
        chunk = 131072 if self.device.type == "cuda" else 8192
        for s in range(0, x.shape[0], chunk):
            out[s : s + chunk] = self.learner.ensemble(x[s : s + chunk], per_member=False).mean(0)
        return out

    def _set_rewards(self, unsup: bool) -> None:
        st = self.ppo.storage
        if self.true_reward:
            st.rewards.copy_(st.true_rewards)
        elif unsup:
            ref_n = min(self.pool.filled * self.pool.n_envs, int(self.cfg.agent.knn_reference))
            ref, _, _ = self.pool.sample_transitions(ref_n, self.gen)
            # raw observations and a running std of every distance so far, as B-Pref and the
            # CPU PrefPPO (pbrl/buffer.py)
            r = knn_intrinsic_reward(
                st.obs.reshape(st.t * st.n, -1), ref, int(self.cfg.agent.knn_k)
            )
            self.ent_stats.update(r[:, None])
            st.rewards.copy_(
                (r / torch.sqrt(self.ent_stats.var[0] + 1e-8).float()).view(st.t, st.n)
            )
        elif self.reward_active:
            flat = self._device_reward(
                st.obs.reshape(st.t * st.n, -1),
                self.ppo.scale_action(st.env_actions).reshape(st.t * st.n, -1),
            )
            st.rewards.copy_(flat.view(st.t, st.n))
        else:
            st.rewards.zero_()

    # ------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Train until ``num_train_steps``; returns the last logged scalars."""
        cfg = self.cfg
        total = int(cfg.num_train_steps)
        self._save_config()
        while self.step < total:
            t0, s0 = time.perf_counter(), self.step
            unsup = (
                not self.true_reward
                and not self.feedback_started
                and self.step >= int(cfg.agent.num_seed_steps)
                and int(cfg.agent.num_unsup_steps) > 0
            )
            self.ppo.cfg.n_epochs = self._ppo_epochs(unsup)
            self.obs, stats = self.ppo.collect(self.env, self.obs, on_step=self._record)
            self.recent_returns = ([*self.recent_returns, *stats["returns"].tolist()])[-100:]
            self._set_rewards(unsup)
            self.ppo.compute_returns(self.obs)
            losses = self.ppo.update()
            for k, v in losses.items():
                self._scalar(k, v, self.step)
            if len(stats["returns"]):
                self._scalar("train/true_return", float(np.mean(stats["returns"])), self.step)
                self._scalar("train/episode_length", float(np.mean(stats["lengths"])), self.step)
            self._steps_chunk += self.step - s0
            self._after_chunk(time.perf_counter() - t0)
        self._evaluate(force=True)
        self._log(force=True)
        self.save_checkpoint()
        self.writer.flush()
        (self.run_dir / "final_metrics.json").write_text(json.dumps(self.last, indent=2))
        return dict(self.last)

    def _first_feedback(self) -> None:
        """The first round; then the value head is re-initialised (B-Pref reset_value)."""
        super()._first_feedback()
        if bool(self.cfg.agent.get("reset_value", False)):
            head = self.ppo.policy.critic[-1]
            with torch.no_grad():
                torch.nn.init.orthogonal_(head.weight, gain=1.0)
                torch.nn.init.zeros_(head.bias)

    # hooks of FeedbackRounds (pbrl/loops/feedback.py): the round itself is shared
    def _candidate_segments(self, n: int) -> SegmentBatch:
        return self.pool.sample(n, int(self.cfg.segment_size), self.gen)

    def _recent_return(self) -> float | None:
        return float(np.mean(self.recent_returns[-10:])) if self.recent_returns else None

    # ------------------------------------------------------------------------------------
    def _policy(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.ppo.act(x, deterministic=True).cpu().numpy().astype(np.float64)

    def _reward_np(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        a = torch.as_tensor(act, dtype=torch.float32, device=self.device)
        return self._device_reward(o, a).cpu().numpy()

    def _eval_reward(self) -> Any:
        return self._reward_np if self.reward_active else None

    def _render_frame(self, state: np.ndarray, size: int) -> np.ndarray:
        return self.env.render_state(state, width=size, height=size)

    def _reward_quality(self, s: int) -> None:
        try:
            segs = self.pool.sample(
                2 * int(self.cfg.heldout_pairs), int(self.cfg.segment_size), self.eval_gen
            )
        except ValueError:
            return
        obs, act, true_r = self.pool.sample_transitions(4096, self.eval_gen)
        pred = self._device_reward(obs, act).cpu().numpy()
        self._reward_quality_from(s, segs, (pred, true_r.cpu().numpy()))

    def _progress_tag(self) -> str:
        return f"{super()._progress_tag()} {self.device}"

    _LOOP_KEYS = (*FEEDBACK_STATE_KEYS, *OnlineLoop.SCHEDULE_KEYS, "recent_returns")

    def state_dict(self) -> dict[str, Any]:
        """Agent, reward learner, teacher, schedule and the worlds' states."""
        return {
            "ppo": self.ppo.state_dict(),
            "ent_stats": self.ent_stats.state_dict(),
            "learner": None if self.learner is None else self.learner.state_dict(),
            "teacher": self.teacher.state_dict(),
            "loop": {k: getattr(self, k) for k in self._LOOP_KEYS},
            "env": {
                "sim_state": self.env.get_sim_state().cpu(),
                "ep_return": self.env.ep_return.cpu(),
                "ep_len": self.env.ep_len.cpu(),
                "episode": self.episode.cpu(),
                "ep_step": self.ep_step.cpu(),
            },
            "rng": self._rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a loop built from the same config."""
        self.ppo.load_state_dict(state["ppo"])
        if "ent_stats" in state:
            self.ent_stats.load_state_dict(state["ent_stats"])
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
        self.teacher.load_state_dict(state["teacher"])
        for k, v in state["loop"].items():
            setattr(self, k, v)
        e = state["env"]
        self.env.set_sim_state(e["sim_state"])
        self.env.ep_return.copy_(e["ep_return"])
        self.env.ep_len.copy_(e["ep_len"])
        self.episode.copy_(e["episode"])
        self.ep_step.copy_(e["ep_step"])
        self.obs = self.env.observe()
        self._load_rng_state(state["rng"])

    def close(self) -> None:
        """Close the writer, the store, the envs (and a human teacher's server)."""
        self._close_feedback()
        self.env.close()
        for env in self.eval_envs:
            env.close()


def is_gpu_agent(cfg: DictConfig) -> bool:
    """Whether ``cfg`` selects this loop (``agent.algo == "gpu_ppo"``)."""
    return str(cfg.agent.get("algo", "")) == "gpu_ppo"


__all__ = ["GpuPreferenceLoop", "gpu_task", "is_gpu_agent", "ppo_config"]
