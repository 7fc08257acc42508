"""The preference side of an online run, shared by the CPU loop and the GPU loop.

:class:`FeedbackRounds` holds what turns an agent's experience into a learned reward —
the teacher, the query rules, the feedback store, the reward learner and the labelled set —
and the feedback round of PEBBLE's algorithm box that ties them together: sample candidate
pairs, select queries, store them, ask the teacher, store the labels, train the reward
model on every label so far. :class:`pbrl.loops.online.PreferenceLoop` (SB3 SAC/PPO on
CPU vector envs) and :class:`pbrl.gpu.loop.GpuPreferenceLoop` (batched simulation, PPO on
the device) differ only in where segments come from and what follows a reward update; they
supply those through three small hooks, so a change to the round (a new teacher signal, a
new scalar, HERON's levels) reaches both loops at once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pbrl.data import Label, QueryBatch, SegmentBatch
from pbrl.errors import RunError
from pbrl.metrics import preference_accuracy, reward_correlation
from pbrl.queries import make_selector
from pbrl.rewards import make_reward_learner
from pbrl.rewards.bradley_terry import BTRewardLearner, NonFiniteLossError
from pbrl.store import FeedbackStore
from pbrl.teachers import make_teacher


def feedback_batch_size(cfg: DictConfig, step: int, used: int) -> int:
    """Queries in the next round (BPref ``reward_schedule``), capped by the remaining budget."""
    m = cfg.reward_batch
    total = cfg.num_train_steps
    if cfg.reward_schedule == "decay":
        frac = (total - step) / total
        m = int(m * (frac if frac > 0 else 0.01))
    elif cfg.reward_schedule == "increase":
        m = int(m * total / (total - step + 1))
    elif cfg.reward_schedule != "constant":
        raise RunError(
            f"unknown reward_schedule {cfg.reward_schedule!r}; valid: constant, decay, increase"
        )
    return max(0, min(m, cfg.max_feedback - used))


# Loop attributes of the preference side that a checkpoint must carry.
FEEDBACK_STATE_KEYS = (
    "round",
    "queries_used",
    "feedback_started",
    "last_feedback_step",
    "reward_active",
    "labelled_obs",
    "labelled_act",
    "labelled_target",
    "labelled_levels",
    "last",
    "store_mark",
)


class FeedbackRounds:
    """Teacher, queries, store and reward learner of an online run, and its feedback round.

    A loop calls :meth:`_init_feedback` in its constructor and provides three hooks:
    :meth:`_candidate_segments` (segments to cut query pairs from), :meth:`_recent_return`
    (the agent's recent episode return, for teachers that scale by it) and
    :meth:`_after_reward_update` (relabel a replay buffer, ...). It must also have ``cfg``,
    ``run_dir``, ``rng`` (query selection), ``writer``, ``max_episode_steps``, a ``step``
    property, and for :meth:`_log` ``next_log``, ``_last_logged``, ``_t_chunk`` and
    ``_steps_chunk``.
    """

    cfg: DictConfig
    run_dir: Path
    rng: np.random.Generator
    writer: Any
    learner: BTRewardLearner | None

    @property
    def step(self) -> int:  # pragma: no cover - every loop overrides it
        """Environment steps so far (summed over envs)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------
    # construction
    def _init_feedback(
        self,
        obs_dim: int,
        act_dim: int,
        env_name: str,
        env_kwargs: dict[str, Any],
        device: str | torch.device,
        seed: int,
        rewards: tuple[str, ...] | None = None,
    ) -> None:
        """Build the learner, teacher, query rules and store from ``self.cfg``.

        Args:
            obs_dim: observation size (the reward model's input is ``(s, a)``).
            act_dim: action size.
            env_name: the env a human teacher's clips are rendered with.
            env_kwargs: its keyword arguments.
            device: where the reward ensemble lives.
            seed: the run's seed (learner initialisation, teacher noise).
            rewards: the ``reward=`` choices this loop supports besides ``true_reward``
                (``None``: every reward learner).
        """
        cfg = self.cfg
        r = cfg.reward
        # reward=true_reward: the agent sees the env's reward (the normaliser of B-Pref's
        # protocol); no teacher is asked and no reward is learned.
        self.true_reward = r.name == "true_reward"
        if rewards is not None and not self.true_reward and r.name not in rewards:
            raise RunError(
                f"agent={cfg.agent.name} supports reward={' or '.join(rewards)} or true_reward, "
                f"got {r.name!r}"
            )
        self.learner = (
            None
            if self.true_reward
            else make_reward_learner(  # regret / heron: BTRewardLearner subclasses
                OmegaConf.to_container(r, resolve=True), obs_dim, act_dim, device=device, seed=seed
            )
            if r.name in ("regret", "heron")
            else BTRewardLearner(
                obs_dim,
                act_dim,
                ensemble_size=r.ensemble_size,
                hidden=r.hidden,
                n_layers=r.n_layers,
                lr=r.lr,
                batch_size=r.batch_size,
                max_epochs=r.max_epochs,
                acc_target=r.acc_target,
                label_margin=r.label_margin,
                device=device,
                seed=seed,
            )
        )
        t = OmegaConf.to_container(cfg.teacher, resolve=True)
        assert isinstance(t, dict)
        if t.get("name") == "human":
            # The labelling server reads the run's queries from the store file, renders clips
            # with this env, and keeps its tokens and clip cache in the run directory.
            t.update(
                store=self.run_dir / "feedback.sqlite",
                state_dir=self.run_dir / "human",
                env_name=env_name,
                env_kwargs=env_kwargs,
            )
        self.teacher = make_teacher(t.pop("name"), seed=seed, **t)
        # HERON's level scale (reward.level_scale != 1) weighs each pair by the ranking level
        # that decided it; only a hierarchical teacher reports that level.
        self.uses_levels = bool(getattr(self.learner, "uses_levels", False))
        if self.uses_levels and not callable(getattr(self.teacher, "levels_of", None)):
            raise RunError(
                f"reward.level_scale={r.get('level_scale')} needs the factor level that decided "
                f"each pair, which only teacher=heron reports (got teacher={cfg.teacher.name}); "
                "use teacher=heron or reward.level_scale=1"
            )
        if hasattr(self.teacher, "banner"):
            print(self.teacher.banner(), flush=True)
        self.selector = make_selector(cfg.query.name)
        self.uniform = make_selector("uniform")
        self.store = FeedbackStore(self.run_dir / "feedback.sqlite")

        # schedule and labelled set (checkpointed: FEEDBACK_STATE_KEYS)
        self.round = 0
        self.queries_used = 0  # requested pairs, skipped ones included (BPref's budget)
        self.feedback_started = False
        self.last_feedback_step = 0
        self.reward_active = False  # False until the first reward training
        h = int(cfg.segment_size)
        self.labelled_obs = np.zeros((0, 2, h, obs_dim), np.float32)
        self.labelled_act = np.zeros((0, 2, h, act_dim), np.float32)
        self.labelled_target = np.zeros(0, np.float32)
        self.labelled_levels = np.zeros(0, np.int64)  # deciding level per pair (HERON)
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------------------------
    # the store across a resume
    @property
    def store_mark(self) -> dict[str, int]:
        """The feedback store's :meth:`~pbrl.store.FeedbackStore.high_water` (checkpointed)."""
        return self.store.high_water()

    @store_mark.setter
    def store_mark(self, mark: dict[str, int]) -> None:
        """Restoring a checkpoint: bring the store back to the checkpoint's ``mark``.

        The store outlives the checkpoint: rounds run after it (until the run was killed)
        are in the store but not in the restored state, and the resumed run asks them again
        under the same query ids. A synthetic teacher's labels are deleted from ``mark`` on
        (:meth:`~pbrl.store.FeedbackStore.rewind`) and regenerated, so the run goes on as if
        never stopped. A person's labels (``labels_irreplaceable``) are kept: the replayed
        rounds find them answered, and every one of them trains the reward model.
        """
        if getattr(self.teacher, "labels_irreplaceable", False):
            return
        queries, labels = self.store.rewind(mark)
        if queries or labels:
            print(
                f"feedback store rewound to the checkpoint: {queries} queries and {labels} "
                f"labels stored after it removed; the {self.teacher.teacher_id} teacher answers "
                "them again",
                file=sys.stderr,
            )

    # ------------------------------------------------------------------------------------
    # hooks
    def _candidate_segments(self, n: int) -> SegmentBatch:
        """``n`` segments of ``segment_size`` steps to cut candidate pairs from."""
        raise NotImplementedError

    def _recent_return(self) -> float | None:
        """Mean true return of the agent's recent episodes (``None``: none finished yet)."""
        return None

    def _after_reward_update(self) -> None:
        """Called after every reward-model training (e.g. relabel the replay buffer)."""

    # ------------------------------------------------------------------------------------
    # the round
    def _feedback_round(self, first: bool = False) -> None:
        """One round: select queries, ask the teacher, store, train the reward model."""
        cfg = self.cfg
        assert self.learner is not None
        self.last_feedback_step = self.step
        m = feedback_batch_size(cfg, self.step, self.queries_used)
        if m == 0:
            return
        # --- Gather new preferences ---
        # Score-based rules need a trained model; until one exists (e.g. every pair of the
        # first round was skipped) fall back to uniform, as the first round does.
        selector = self.uniform if first or not self.reward_active else self.selector
        pool = m if selector is self.uniform else m * int(cfg.large_batch)
        segs = self._candidate_segments(2 * pool)
        ids = [f"r{self.round:05d}-c{i:05d}" for i in range(pool)]
        candidates = QueryBatch.from_members([segs[:pool], segs[pool:]], ids=ids)
        queries = selector.select(
            candidates,
            m,
            model=self.learner if self.reward_active else None,
            labelled=self._labelled_queries(),
            rng=self.rng,
        )
        self.store.add_queries(queries, step=self.step)
        recent = self._recent_return() if hasattr(self.teacher, "set_episode_return") else None
        if recent is not None:
            self.teacher.set_episode_return(recent, self.max_episode_steps)
        if hasattr(self.teacher, "set_progress"):  # shown on the labelling page
            self.teacher.set_progress(
                step=self.step,
                total_steps=int(cfg.num_train_steps),
                queries_used=self.queries_used,
                max_feedback=int(cfg.max_feedback),
                accuracy=self.last.get("pref/accuracy_heldout"),
            )
        feedback = self.teacher.label(queries)
        if hasattr(self.teacher, "level_fractions"):  # HERON: decided fraction per level
            for tag, value in self.teacher.level_fractions().items():
                self._scalar(f"heron/{tag}", value, self.step)
        if hasattr(self.teacher, "summary"):
            for tag, value in self.teacher.summary().items():
                self._scalar(f"human/{tag}", value, self.step)
        # A human teacher's server has already committed these (adding them again is a no-op);
        # labels that arrive after label() returns (mode=continue) reach training through
        # store.training_arrays(since=...) below, in this or a later round.
        self.store.add(feedback)
        self.queries_used += len(queries)
        self.round += 1

        # --- Train reward model ---
        obs, act, target = self.store.training_arrays(since=len(self.labelled_target))
        self.labelled_obs = np.concatenate([self.labelled_obs, obs])
        self.labelled_act = np.concatenate([self.labelled_act, act])
        self.labelled_target = np.concatenate([self.labelled_target, target])
        levels: dict[str, np.ndarray] = {}
        if self.uses_levels:
            # the new rows are this round's non-skip labels, in the order they were stored
            kept = [f.query_id for f in feedback if f.label != Label.SKIP]
            if len(kept) != len(target):
                raise RunError(
                    f"{len(target)} new labelled pairs but {len(kept)} non-skip labels this "
                    "round: the deciding levels cannot be matched to the pairs"
                )
            new_levels = self.teacher.levels_of(kept)
            self.labelled_levels = np.concatenate([self.labelled_levels, new_levels])
            levels = {"levels": self.labelled_levels}
        if len(self.labelled_target) == 0:
            return  # every query so far was skipped: nothing to learn from yet
        try:
            stats = self.learner.train(
                self.labelled_obs, self.labelled_act, self.labelled_target, **levels
            )
        except NonFiniteLossError as err:
            path = self.run_dir / f"nonfinite_batch_step{self.step}.npz"
            np.savez(path, **err.batch)
            raise RunError(
                f"reward-model loss became non-finite at env step {self.step} ({err}); the "
                f"offending batch is saved in {path}"
            ) from err
        self.reward_active = True
        self._after_reward_update()

        counts = self.store.counts()
        s = self.step
        self._scalar("losses/reward", stats["loss"], s)
        self._scalar("pref/accuracy_labelled", stats["accuracy"], s)
        self._scalar("reward/train_epochs", stats["epochs"], s)
        self._scalar("pref/queries", self.queries_used, s)
        self._scalar("pref/labels", counts["first"] + counts["second"] + counts["equal"], s)
        self._scalar("pref/skips", counts["skip"], s)
        self._scalar("pref/equals", counts["equal"], s)

    def _labelled_queries(self) -> QueryBatch | None:
        """Every labelled pair so far, without rewards (k-center's distance reference)."""
        if len(self.labelled_target) == 0:
            return None
        return QueryBatch.from_members(
            [SegmentBatch(self.labelled_obs[:, j], self.labelled_act[:, j], None) for j in (0, 1)]
        )

    # ------------------------------------------------------------------------------------
    # metrics
    def _reward_quality_from(
        self,
        s: int,
        heldout: SegmentBatch | None,
        transitions: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        """Log held-out preference accuracy and learned-vs-true reward correlation.

        ``heldout``: ``2n`` segments (first half vs second half, scored against the true
        partial-return preference); ``transitions``: ``(learned, true)`` rewards of a sample.
        """
        assert self.learner is not None
        if heldout is not None:
            n = len(heldout) // 2
            first, second = heldout[:n], heldout[n:]
            ret0, ret1 = first.returns, second.returns
            target = np.where(ret1 > ret0, 1.0, np.where(ret1 < ret0, 0.0, 0.5))
            probs = self.learner.member_probs(first.without_reward(), second.without_reward())
            self._scalar("pref/accuracy_heldout", preference_accuracy(probs, target), s)
        if transitions is not None:
            pearson, spearman = reward_correlation(*transitions)
            self._scalar("reward/pearson", pearson, s)
            self._scalar("reward/spearman", spearman, s)

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)
        self.last[tag] = float(value)

    def _progress_line(self, s: int, labels: int, counts: dict[str, int], sps: float) -> str:
        cfg = self.cfg
        ret = self.last.get("eval/true_return", float("nan"))
        acc = self.last.get("pref/accuracy_heldout", float("nan"))
        return (
            f"[{self._progress_tag()}] step {s:,}/{int(cfg.num_train_steps):,} | labels "
            f"{labels} ({self.queries_used}/{cfg.max_feedback} asked, {counts['skip']} skip, "
            f"{counts['equal']} equal) | eval return {ret:.1f} | pref acc {acc:.3f} | "
            f"{sps:.0f} steps/s"
        )

    def _progress_tag(self) -> str:
        cfg = self.cfg
        return f"{cfg.agent.name} {cfg.env.name} s{cfg.seed}"

    def _log(self, force: bool = False) -> None:
        """Steps per second and labels (every ``log.every`` steps), and the progress line."""
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
            print(self._progress_line(s, labels, counts, sps), flush=True)
        while self.next_log <= s:
            self.next_log += int(cfg.log.every)
        self.writer.flush()

    def _save_config(self) -> None:
        path = self.run_dir / "config.yaml"
        if not path.exists():
            OmegaConf.save(self.cfg, path, resolve=True)


__all__ = ["FEEDBACK_STATE_KEYS", "FeedbackRounds", "RunError", "feedback_batch_size"]
