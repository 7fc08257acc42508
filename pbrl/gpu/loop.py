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
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pbrl.checkpoint import Checkpointed
from pbrl.data import QueryBatch, SegmentBatch
from pbrl.gpu.ppo import PPOConfig, SegmentPool, TorchPPO, knn_intrinsic_reward
from pbrl.gpu.sim import TASKS, BatchedMujocoEnv
from pbrl.loops.online import RunError, feedback_batch_size, resolve_device
from pbrl.metrics import add_gif, evaluate, preference_accuracy, reward_correlation
from pbrl.queries import make_selector
from pbrl.rewards.bradley_terry import BTRewardLearner, NonFiniteLossError
from pbrl.store import FeedbackStore
from pbrl.teachers import make_teacher


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


class GpuPreferenceLoop(Checkpointed):
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
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)  # query selection
        self.eval_rng = np.random.default_rng(seed + 1)
        self.gen = torch.Generator(device=self.device).manual_seed(seed + 2)  # segment sampling
        self.eval_gen = torch.Generator(device=self.device).manual_seed(seed + 3)

        a = cfg.agent
        env_kwargs = dict(cfg.env.get("kwargs") or {})
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

        r = cfg.reward
        self.true_reward = r.name == "true_reward"
        if not self.true_reward and r.name != "bradley_terry":
            raise RunError(
                f"agent=gpu_ppo supports reward=bradley_terry or true_reward, got {r.name!r}"
            )
        self.learner = (
            None
            if self.true_reward
            else BTRewardLearner(
                self.obs_dim,
                self.act_dim,
                ensemble_size=r.ensemble_size,
                hidden=r.hidden,
                n_layers=r.n_layers,
                lr=r.lr,
                batch_size=r.batch_size,
                max_epochs=r.max_epochs,
                acc_target=r.acc_target,
                label_margin=r.label_margin,
                device=self.device,
                seed=seed,
            )
        )
        t = OmegaConf.to_container(cfg.teacher, resolve=True)
        assert isinstance(t, dict)
        if t.get("name") == "human":
            t.update(
                store=self.run_dir / "feedback.sqlite",
                state_dir=self.run_dir / "human",
                env_name=self.env_name,
                env_kwargs={},
            )
        self.teacher = make_teacher(t.pop("name"), seed=seed, **t)
        if hasattr(self.teacher, "banner"):
            print(self.teacher.banner(), flush=True)
        self.selector = make_selector(cfg.query.name)
        self.uniform = make_selector("uniform")
        self.store = FeedbackStore(self.run_dir / "feedback.sqlite")

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

        self.round = 0
        self.queries_used = 0
        self.feedback_started = False
        self.reward_active = False
        self.last_feedback_step = 0
        self.next_eval = int(cfg.eval.every)
        self.next_log = int(cfg.log.every)
        self.next_video = int(cfg.log.video_every) if cfg.log.video_every else math.inf
        self.next_ckpt = int(cfg.checkpoint.every) if cfg.checkpoint.every else math.inf
        h = int(cfg.segment_size)
        self.labelled_obs = np.zeros((0, 2, h, self.obs_dim), np.float32)
        self.labelled_act = np.zeros((0, 2, h, self.act_dim), np.float32)
        self.labelled_target = np.zeros(0, np.float32)
        self.recent_returns: list[float] = []
        self.last: dict[str, float] = {}
        self._last_logged = -1
        self._t_chunk, self._steps_chunk = time.perf_counter(), 0

    # ------------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Environment steps so far (summed over worlds)."""
        return int(self.ppo.num_timesteps)

    @property
    def unsup_end(self) -> int:
        """Step at which state-entropy pre-training ends and the first round happens."""
        return int(self.cfg.agent.num_seed_steps) + int(self.cfg.agent.num_unsup_steps)

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
            norm = self.ppo._norm
            r = knn_intrinsic_reward(
                norm(st.obs.reshape(st.t * st.n, -1)), norm(ref), int(self.cfg.agent.knn_k)
            )
            st.rewards.copy_((r / (r.std() + 1e-8)).view(st.t, st.n))
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
            self._after_iteration(time.perf_counter() - t0)
        self._evaluate(force=True)
        self._log(force=True)
        self.save_checkpoint()
        self.writer.flush()
        (self.run_dir / "final_metrics.json").write_text(json.dumps(self.last, indent=2))
        return dict(self.last)

    def _after_iteration(self, dt: float) -> None:
        cfg = self.cfg
        if self.true_reward:
            pass
        elif not self.feedback_started and self.step >= self.unsup_end:
            self.feedback_started = True
            self._feedback_round(first=True)
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

    def _feedback_round(self, first: bool = False) -> None:
        cfg = self.cfg
        assert self.learner is not None
        self.last_feedback_step = self.step
        m = feedback_batch_size(cfg, self.step, self.queries_used)
        if m == 0:
            return
        selector = self.uniform if first or not self.reward_active else self.selector
        pool = m if selector is self.uniform else m * int(cfg.large_batch)
        segs = self.pool.sample(2 * pool, int(cfg.segment_size), self.gen)
        ids = [f"r{self.round:05d}-c{i:05d}" for i in range(pool)]
        candidates = QueryBatch.from_members([segs[:pool], segs[pool:]], ids=ids)
        labelled = None
        if len(self.labelled_target):
            labelled = QueryBatch.from_members(
                [
                    SegmentBatch(self.labelled_obs[:, j], self.labelled_act[:, j], None)
                    for j in (0, 1)
                ]
            )
        queries = selector.select(
            candidates,
            m,
            model=self.learner if self.reward_active else None,
            labelled=labelled,
            rng=self.rng,
        )
        self.store.add_queries(queries, step=self.step)
        if hasattr(self.teacher, "set_episode_return") and self.recent_returns:
            self.teacher.set_episode_return(
                float(np.mean(self.recent_returns[-10:])), self.max_episode_steps
            )
        if hasattr(self.teacher, "set_progress"):
            self.teacher.set_progress(
                step=self.step,
                total_steps=int(cfg.num_train_steps),
                queries_used=self.queries_used,
                max_feedback=int(cfg.max_feedback),
                accuracy=self.last.get("pref/accuracy_heldout"),
            )
        feedback = self.teacher.label(queries)
        self.store.add(feedback)
        self.queries_used += len(queries)
        self.round += 1
        obs, act, target = self.store.training_arrays(since=len(self.labelled_target))
        self.labelled_obs = np.concatenate([self.labelled_obs, obs])
        self.labelled_act = np.concatenate([self.labelled_act, act])
        self.labelled_target = np.concatenate([self.labelled_target, target])
        if len(self.labelled_target) == 0:
            return
        try:
            stats = self.learner.train(self.labelled_obs, self.labelled_act, self.labelled_target)
        except NonFiniteLossError as err:
            path = self.run_dir / f"nonfinite_batch_step{self.step}.npz"
            np.savez(path, **err.batch)
            raise RunError(
                f"reward-model loss became non-finite at env step {self.step} ({err}); the "
                f"offending batch is saved in {path}"
            ) from err
        self.reward_active = True
        counts = self.store.counts()
        s = self.step
        self._scalar("losses/reward", stats["loss"], s)
        self._scalar("pref/accuracy_labelled", stats["accuracy"], s)
        self._scalar("reward/train_epochs", stats["epochs"], s)
        self._scalar("pref/queries", self.queries_used, s)
        self._scalar("pref/skips", counts["skip"], s)
        self._scalar("pref/equals", counts["equal"], s)

    # ------------------------------------------------------------------------------------
    def _policy(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return self.ppo.act(x, deterministic=True).cpu().numpy().astype(np.float64)

    def _reward_np(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        o = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        a = torch.as_tensor(act, dtype=torch.float32, device=self.device)
        return self._device_reward(o, a).cpu().numpy()

    def _evaluate(self, force: bool = False) -> None:
        cfg, s = self.cfg, self.step
        if not force and s < self.next_eval:
            return
        want_video = s >= self.next_video or force and bool(cfg.log.video_every)
        res = evaluate(
            self.eval_envs,
            self._policy,
            self._reward_np if self.reward_active else None,
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
            frames = [
                self.env.render_state(st, width=size, height=size)
                for st in res.first_states[::stride]
            ]
            add_gif(self.writer, "videos/eval_rollout", frames, s, fps=max(1, 30 // stride))
            while self.next_video <= s:
                self.next_video += int(cfg.log.video_every)
        while self.next_eval <= s:
            self.next_eval += int(cfg.eval.every)

    def _reward_quality(self, s: int) -> None:
        n = int(self.cfg.heldout_pairs)
        try:
            segs = self.pool.sample(2 * n, int(self.cfg.segment_size), self.eval_gen)
        except ValueError:
            return
        first, second = segs[:n], segs[n:]
        ret0, ret1 = first.returns, second.returns
        target = np.where(ret1 > ret0, 1.0, np.where(ret1 < ret0, 0.0, 0.5))
        assert self.learner is not None
        probs = self.learner.member_probs(first.without_reward(), second.without_reward())
        self._scalar("pref/accuracy_heldout", preference_accuracy(probs, target), s)
        obs, act, true_r = self.pool.sample_transitions(4096, self.eval_gen)
        pred = self._device_reward(obs, act).cpu().numpy()
        pearson, spearman = reward_correlation(pred, true_r.cpu().numpy())
        self._scalar("reward/pearson", pearson, s)
        self._scalar("reward/spearman", spearman, s)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self.last[tag] = float(value)

    def _log(self, force: bool = False) -> None:
        cfg, s = self.cfg, self.step
        if (not force and s < self.next_log) or s == self._last_logged:
            return
        self._last_logged = s
        dt = time.perf_counter() - self._t_chunk
        sps = self._steps_chunk / dt if dt > 0 else float("nan")
        self._t_chunk, self._steps_chunk = time.perf_counter(), 0
        self._scalar("charts/sps", sps, s)
        counts = self.store.counts()
        labels = counts["first"] + counts["second"] + counts["equal"]
        self._scalar("pref/labels", labels, s)
        if cfg.log.progress != "none":
            ret = self.last.get("eval/true_return", float("nan"))
            acc = self.last.get("pref/accuracy_heldout", float("nan"))
            print(
                f"[{cfg.agent.name} {cfg.env.name} s{cfg.seed} {self.device}] step {s:,}/"
                f"{int(cfg.num_train_steps):,} | labels {labels} ({self.queries_used}/"
                f"{cfg.max_feedback} asked) | eval return {ret:.1f} | pref acc {acc:.3f} | "
                f"{sps:.0f} steps/s",
                flush=True,
            )
        while self.next_log <= s:
            self.next_log += int(cfg.log.every)
        self.writer.flush()

    # ------------------------------------------------------------------------------------
    def _save_config(self) -> None:
        path = self.run_dir / "config.yaml"
        if not path.exists():
            OmegaConf.save(self.cfg, path, resolve=True)

    _LOOP_KEYS = (
        "round",
        "queries_used",
        "feedback_started",
        "reward_active",
        "last_feedback_step",
        "next_eval",
        "next_log",
        "next_video",
        "next_ckpt",
        "labelled_obs",
        "labelled_act",
        "labelled_target",
        "recent_returns",
        "last",
    )

    def state_dict(self) -> dict[str, Any]:
        """Agent, reward learner, teacher, schedule and the worlds' states."""
        return {
            "ppo": self.ppo.state_dict(),
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
            "rng": {
                "loop": self.rng.bit_generator.state,
                "eval": self.eval_rng.bit_generator.state,
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` on a loop built from the same config."""
        self.ppo.load_state_dict(state["ppo"])
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
        rng = state["rng"]
        self.rng.bit_generator.state = rng["loop"]
        self.eval_rng.bit_generator.state = rng["eval"]
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])

    def close(self) -> None:
        """Close the writer, the store, the envs (and a human teacher's server)."""
        teacher_close = getattr(self.teacher, "close", None)
        if callable(teacher_close):
            teacher_close()
        self.writer.close()
        self.store.close()
        self.env.close()
        for env in self.eval_envs:
            env.close()


def is_gpu_agent(cfg: DictConfig) -> bool:
    """Whether ``cfg`` selects this loop (``agent.algo == "gpu_ppo"``)."""
    return str(cfg.agent.get("algo", "")) == "gpu_ppo"


__all__ = ["GpuPreferenceLoop", "gpu_task", "is_gpu_agent", "ppo_config"]
