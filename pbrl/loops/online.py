"""Online preference-based RL: PEBBLE (SAC) and PrefPPO (PPO), one loop.

The loop follows PEBBLE's algorithm box (Lee et al., 2021; BPref ``train_PEBBLE.py``):

1. act randomly for ``num_seed_steps``;
2. pre-train the agent on the particle state-entropy reward for ``num_unsup_steps``;
3. gather preferences (first round uniform), train the reward ensemble, relabel the replay
   buffer, reset the critic;
4. every ``num_interact`` steps while the budget lasts: gather preferences with the configured
   query rule, train the reward, relabel;
5. the agent learns on the learned reward between rounds.

PrefPPO runs the same schedule with PPO; it keeps no replay buffer, so recent episodes are
recorded for queries and the reward is applied at collection time (no relabelling).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pbrl import envs as pbrl_envs
from pbrl.agents.sb3 import (
    LearnedRewardVecEnv,
    PbrlPPO,
    PbrlSAC,
    linear_schedule,
    load_sb3_state,
    make_logger,
    make_vec_env,
    reset_critic,
    reset_value_head,
    sb3_state,
)
from pbrl.buffer import PbrlReplayBuffer
from pbrl.checkpoint import (  # noqa: F401 (CHECKPOINT and the functions: re-exported)
    CHECKPOINT,
    Checkpointed,
    read_checkpoint,
    write_checkpoint,
)
from pbrl.data import SegmentBatch
from pbrl.loops.base import OnlineLoop
from pbrl.loops.feedback import (  # noqa: F401 (RunError, feedback_batch_size: re-exported)
    FEEDBACK_STATE_KEYS,
    RunError,
    feedback_batch_size,
)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device={device!r} but CUDA is not available here; use device=auto or cpu")
    return device


def _optimizer_kwargs(agent_cfg: DictConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` entries for the actor/critic Adam.

    ``agent.fused_adam`` (default true) selects torch's fused Adam kernel: the same update
    rule, one kernel for all parameters instead of a Python loop over them — the optimiser
    step is about 5x faster on the CPU (see benchmarks/RESULTS.md, overhead section).
    """
    if bool(agent_cfg.get("fused_adam", True)):
        return {"optimizer_kwargs": {"fused": True}}
    return {}


def _log_std_bounds(agent_cfg: DictConfig) -> tuple[float, float] | None:
    """``agent.log_std_bounds``: B-Pref's SAC actor log-std range, or null for SB3's clamp."""
    bounds = agent_cfg.get("log_std_bounds")
    if bounds is None:
        return None
    bounds = list(bounds)
    if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
        raise RunError(
            f"agent.log_std_bounds={bounds} must be [low, high] with low < high "
            "(B-Pref: [-5, 2]), or null for SB3's clamp to [-20, 2]"
        )
    return float(bounds[0]), float(bounds[1])


class PreferenceLoop(OnlineLoop):
    """One online PbRL run (PEBBLE or PrefPPO) writing into ``run_dir``.

    Args:
        cfg: the composed Hydra config (see ``pbrl/configs/train.yaml``).
        run_dir: where TensorBoard events, checkpoints, the feedback store and the resolved
            config go.
    """

    SCHEDULE_KEYS = (*OnlineLoop.SCHEDULE_KEYS, "reward_updates")

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.device)
        self.algo = cfg.agent.algo
        if self.algo not in ("sac", "ppo"):
            raise RunError(f"agent.algo={self.algo!r} is not an online agent; valid: sac, ppo")
        seed = int(cfg.seed)
        self._seed_all(seed)  # self.rng: queries and segment sampling; self.eval_rng: metrics

        # --- environments ---------------------------------------------------------------
        env_name, env_kwargs = cfg.env.name, dict(cfg.env.get("kwargs") or {})
        n_envs = int(cfg.agent.num_envs)
        probe = pbrl_envs.make_env(env_name, seed=seed, **env_kwargs)
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.act_dim = int(np.prod(probe.action_space.shape))
        self.max_episode_steps = int(probe.max_episode_steps)
        state_dim, factor_names = int(probe.state_dim), tuple(probe.factor_names)
        probe.close()
        self.env_name = env_name
        venv = make_vec_env(
            [
                lambda i=i: pbrl_envs.make_env(env_name, seed=seed + i, **env_kwargs)
                for i in range(n_envs)
            ]
        )
        self.train_envs = venv.envs
        self.eval_envs = [
            pbrl_envs.make_env(env_name, seed=seed + 10_000 + i, **env_kwargs)
            for i in range(int(cfg.eval.episodes))
        ]

        # --- reward learner, teacher, queries, store (pbrl.loops.feedback) ----------------
        self._init_feedback(
            self.obs_dim, self.act_dim, env_name, env_kwargs, device=self.device, seed=seed
        )

        # --- agent ------------------------------------------------------------------------
        a = cfg.agent
        sb3_kwargs = dict(OmegaConf.to_container(a.sb3, resolve=True) or {})
        self.phase_unsup = False
        buffer_kwargs = dict(
            state_dim=state_dim, factor_names=factor_names, env_name=env_name, knn_k=int(a.knn_k)
        )
        if self.algo == "sac":
            self.venv = LearnedRewardVecEnv(venv, self._reward)
            self.model = PbrlSAC(
                "MlpPolicy",
                self.venv,
                learning_rate=a.learning_rate,
                buffer_size=int(cfg.num_train_steps),
                learning_starts=int(a.num_seed_steps),
                batch_size=int(a.batch_size),
                replay_buffer_class=PbrlReplayBuffer,
                replay_buffer_kwargs=buffer_kwargs,
                policy_kwargs={
                    "net_arch": list(a.net_arch),
                    "log_std_bounds": _log_std_bounds(a),
                    **_optimizer_kwargs(a),
                },
                seed=seed,
                device=self.device,
                **sb3_kwargs,
            )
            self.buffer: PbrlReplayBuffer = self.model.replay_buffer  # type: ignore[assignment]
        else:
            from stable_baselines3.common.vec_env import VecNormalize

            capacity = int(cfg.recent_episodes) * self.max_episode_steps
            self.buffer = PbrlReplayBuffer(
                max(capacity, n_envs * 2 * int(cfg.segment_size)),
                venv.observation_space,
                venv.action_space,
                n_envs=n_envs,
                handle_timeout_termination=False,
                **buffer_kwargs,
            )
            wrapped = LearnedRewardVecEnv(venv, self._reward, recorder=self.buffer)
            self.venv = wrapped
            self.vecnorm = (
                VecNormalize(wrapped, norm_obs=True, norm_reward=False) if a.normalize_obs else None
            )
            clip = sb3_kwargs.pop("clip_range", 0.2)
            self.model = PbrlPPO(
                "MlpPolicy",
                self.vecnorm if self.vecnorm is not None else wrapped,
                learning_rate=a.learning_rate,
                n_steps=int(a.n_steps),
                batch_size=int(a.batch_size),
                n_epochs=int(a.n_epochs),
                fast_update=bool(a.get("fast_update", True)),
                clip_range=linear_schedule(float(clip)),
                policy_kwargs={
                    "net_arch": {"pi": list(a.net_arch), "vf": list(a.net_arch)},
                    **_optimizer_kwargs(a),
                },
                seed=seed,
                device=self.device,
                **sb3_kwargs,
            )
        self.model.pbrl_total_timesteps = int(cfg.num_train_steps)
        self.writer = SummaryWriter(str(self.run_dir))
        self.model.set_logger(make_logger(self._sb3_scalar))

        self._init_schedule()  # (checkpointed)
        self.reward_updates = 0  # reward-model trainings so far (checkpointed)

    # ------------------------------------------------------------------------------------
    # rewards seen by the agent
    def _reward(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray | None:
        if self.true_reward:
            return None  # the wrapper passes the env's own reward through
        if self.phase_unsup and self.algo == "ppo":
            if self.buffer.size() * self.buffer.n_envs <= int(self.cfg.agent.knn_k):
                # Too few stored states for a k-th neighbour yet (first steps of the run).
                return np.zeros(len(obs), np.float32)
            return self.buffer.intrinsic_reward(obs)
        if not self.reward_active:
            # Rewards stored before the first reward training are relabelled (SAC) or unused.
            return np.zeros(len(obs), np.float32)
        if self.defer_rewards:
            # Placeholders: the replay buffer fills them in batches (see _defer_rewards).
            return np.full(len(obs), np.nan, np.float32)
        return self.learner.reward_fn(obs, act)

    @property
    def defer_rewards(self) -> bool:
        """Whether the replay buffer fills new transitions' learned rewards (SAC only).

        With ``agent.defer_rewards`` they are computed in one batch when SAC first samples
        them (same values, ~10x fewer passes over the reward ensemble's weights; see
        :meth:`pbrl.buffer.PbrlReplayBuffer.defer_rewards`).
        """
        # Without relabelling a row's reward is the model's at insertion: deferring would
        # compute it with a later model.
        return (
            self.algo == "sac" and bool(self.cfg.agent.get("defer_rewards", True)) and self.relabel
        )

    def _defer_rewards(self) -> None:
        if self.defer_rewards and self.reward_active:
            self.buffer.defer_rewards(self.learner.reward_fn)

    @property
    def step(self) -> int:
        """Environment steps taken so far (summed over envs)."""
        return int(self.model.num_timesteps)

    # ------------------------------------------------------------------------------------
    def run(self, until: int | None = None) -> dict[str, float]:
        """Train until ``num_train_steps``; returns the last logged scalars.

        Args:
            until: stop once this many env steps are done (at most ``num_train_steps``) and
                return without the end-of-run evaluation and checkpoint; a later ``run()``
                continues from there on the same schedule, RNG streams and counters, so a run
                made in pieces takes the same steps as one made at once (the benchmarks use
                this to interleave two runs in one process). ``None``: to the end.
        """
        cfg = self.cfg
        total = int(cfg.num_train_steps)
        if until is not None and until <= self.step:
            raise ValueError(
                f"run(until={until}) must be after the current step {self.step}; pass a later "
                "step or None (to the end of the run)"
            )
        end = total if until is None else min(int(until), total)
        self._save_config()
        while self.step < end:
            self._set_phase()
            stop = min(self._next_event(), end)
            t0, s0 = time.perf_counter(), self.step
            self.model.learn(
                total_timesteps=max(1, stop - self.step),
                reset_num_timesteps=False,
                log_interval=1,
                progress_bar=False,
            )
            # SB3 writes what it recorded at its next dump (SAC: the next episode end; PPO:
            # the next rollout), so a chunk's last losses would wait or, at the end, be lost.
            self.model.logger.dump(self.step)
            self._steps_chunk += self.step - s0
            self._after_chunk(time.perf_counter() - t0)
        if self.step < total:
            return dict(self.last)
        self._set_phase()
        self._evaluate(force=True)
        self._log(force=True)
        self.save_checkpoint()
        self.writer.flush()
        (self.run_dir / "final_metrics.json").write_text(json.dumps(self.last, indent=2))
        return dict(self.last)

    def _set_phase(self) -> None:
        """Unsupervised pre-training between the seed steps and the first feedback round."""
        unsup = (
            not self.true_reward
            and not self.feedback_started
            and self.step >= int(self.cfg.agent.num_seed_steps)
        )
        self.phase_unsup = unsup and int(self.cfg.agent.num_unsup_steps) > 0
        if self.algo == "sac":
            self.buffer.set_reward_mode("intrinsic" if self.phase_unsup else "stored")
        else:  # B-Pref's train_unsuper runs unsuper_n_epochs PPO epochs per rollout
            self.model.n_epochs = self._ppo_epochs(self.phase_unsup)

    def _next_event(self) -> int:
        cands = [self.next_eval, self.next_log, self.next_ckpt, self.next_video]
        seed_steps = int(self.cfg.agent.num_seed_steps)
        if self.step < seed_steps:
            cands.append(seed_steps)
        if self.true_reward:
            pass
        elif not self.feedback_started:
            cands.append(self.unsup_end)
        elif self.queries_used < self.cfg.max_feedback:
            cands.append(self.last_feedback_step + int(self.cfg.agent.num_interact))
        return int(min(c for c in cands if c > self.step))

    # ------------------------------------------------------------------------------------
    # the paper's steps
    def _first_feedback(self) -> None:
        """End of pre-training: first (uniform) round, then reset the critic (PEBBLE)."""
        self.feedback_started = True
        self._set_phase()
        self._feedback_round(first=True)
        if self.algo == "sac":
            reset_critic(self.model)
            if int(self.cfg.agent.reset_update) > 0:
                self.model.train(
                    gradient_steps=int(self.cfg.agent.reset_update),
                    batch_size=self.model.batch_size,
                )
        elif bool(self.cfg.agent.get("reset_value", False)):
            reset_value_head(self.model)

    # hooks of FeedbackRounds (pbrl/loops/feedback.py) and OnlineLoop (pbrl/loops/base.py)
    def _candidate_segments(self, n: int) -> SegmentBatch:
        return self.buffer.sample_segments(
            n, int(self.cfg.segment_size), self.rng, recent_episodes=int(self.cfg.recent_episodes)
        )

    def _recent_return(self) -> float | None:
        if not self.model.ep_info_buffer:
            return None
        return float(np.mean([ep["r"] for ep in list(self.model.ep_info_buffer)[-10:]]))

    @property
    def relabel(self) -> bool:
        """``agent.relabel`` (default true): rewrite the whole replay buffer after each update.

        False is the PEBBLE paper's "without relabelling" ablation: a transition keeps the
        learned reward of the model current when it was stored; those stored before the first
        reward training get the first model's reward, once.
        """
        return bool(self.cfg.agent.get("relabel", True))

    def _after_reward_update(self) -> None:
        if self.algo == "sac":
            if self.relabel or self.reward_updates == 0:
                self.buffer.relabel(self.learner.reward_fn)
            self._defer_rewards()
        self.reward_updates += 1

    def _policy(self, obs: np.ndarray) -> np.ndarray:
        if self.algo == "ppo" and self.vecnorm is not None:
            obs = self.vecnorm.normalize_obs(obs)
        return self.model.predict(obs, deterministic=True)[0]

    def _reward_quality(self, s: int) -> None:
        """Held-out preference accuracy and learned-vs-true reward correlation."""
        try:
            segs = self.buffer.sample_segments(
                2 * int(self.cfg.heldout_pairs),
                int(self.cfg.segment_size),
                self.eval_rng,
                recent_episodes=int(self.cfg.recent_episodes),
            )
        except ValueError:
            return
        obs, act, true_r = self.buffer.sample_transitions(4096, self.eval_rng)
        self._reward_quality_from(s, segs, (self.learner.reward_fn(obs, act), true_r))

    def _sb3_scalar(self, tag: str, value: float, step: int) -> None:
        self._scalar(tag, value, self.step)

    # ------------------------------------------------------------------------------------
    # checkpoint / resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit-for-bit."""
        state: dict[str, Any] = {
            "sb3": sb3_state(self.model),
            "wrapper": self.venv.get_state(),
            "envs": [env.get_env_state() for env in self.train_envs],
            "buffer": self.buffer.state_dict(),
            "learner": None if self.learner is None else self.learner.state_dict(),
            "teacher": self.teacher.state_dict(),
            "loop": {k: getattr(self, k) for k in (*FEEDBACK_STATE_KEYS, *self.SCHEDULE_KEYS)},
            "rng": self._rng_state(),
        }
        if self.algo == "ppo" and self.vecnorm is not None:
            v = self.vecnorm
            state["vecnorm"] = {
                "obs_rms": v.obs_rms,
                "ret_rms": v.ret_rms,
                "returns": v.returns,
                "old_obs": v.old_obs,
                "old_reward": v.old_reward,
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a loop built from the same config."""
        load_sb3_state(self.model, state["sb3"])
        self.venv.set_state(state["wrapper"])
        for env, s in zip(self.train_envs, state["envs"], strict=True):
            env.set_env_state(s)
        self.buffer.load_state_dict(state["buffer"])
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
        self.teacher.load_state_dict(state["teacher"])
        for k, v in state["loop"].items():
            setattr(self, k, v)
        self._defer_rewards()
        self._load_rng_state(state["rng"])
        if "vecnorm" in state:
            for k, v in state["vecnorm"].items():
                setattr(self.vecnorm, k, v)

    def close(self) -> None:
        """Close the writer, the store and the envs (and stop a human teacher's server)."""
        self._close_feedback()
        for env in [*self.train_envs, *self.eval_envs]:
            env.close()
