"""The online loop in-process: layer rules (no true-reward leaks) and failure handling."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from pbrl.data import SegmentBatch
from pbrl.loops.online import PreferenceLoop, RunError, feedback_batch_size


def fast_cfg(*overrides: str):
    with initialize_config_module("pbrl.configs", version_base="1.3"):
        return compose("train", overrides=["experiment=fast", "log.progress=none", *overrides])


def test_reward_learner_never_sees_the_true_reward(tmp_path: Path) -> None:
    """A spy on the learner: every segment it is shown has its reward withheld."""
    cfg = fast_cfg("num_train_steps=1300", "query=disagreement", "eval.every=1300")
    loop = PreferenceLoop(cfg, tmp_path)
    seen: list[SegmentBatch] = []
    member_probs = loop.learner.member_probs

    def spy(first: SegmentBatch, second: SegmentBatch) -> np.ndarray:
        seen.extend([first, second])
        return member_probs(first, second)

    loop.learner.member_probs = spy  # type: ignore[method-assign]
    try:
        loop.run()
    finally:
        loop.close()
    assert seen, "the disagreement rule and the held-out metric must call the model"
    for seg in seen:
        assert seg.true_reward is None and len(seg.reward_factors) == 0
        with pytest.raises(PermissionError):
            _ = seg.returns


def test_nonfinite_reward_loss_stops_with_the_batch_saved(tmp_path: Path) -> None:
    cfg = fast_cfg("num_train_steps=1000")
    loop = PreferenceLoop(cfg, tmp_path)
    first_feedback = loop._first_feedback

    def poisoned() -> None:
        loop.buffer.observations[:] = np.nan  # e.g. a simulator that blew up
        first_feedback()

    loop._first_feedback = poisoned  # type: ignore[method-assign]
    try:
        with pytest.raises(RunError) as err:
            loop.run()
    finally:
        loop.close()
    msg = str(err.value)
    assert "non-finite" in msg and "env step 750" in msg
    saved = list(tmp_path.glob("nonfinite_batch_step*.npz"))
    assert len(saved) == 1 and saved[0].name in msg
    batch = np.load(saved[0])
    assert np.isnan(batch["obs"]).any()


def test_feedback_schedule_matches_bpref(tmp_path: Path) -> None:
    cfg = fast_cfg("num_train_steps=1000", "reward_batch=10", "max_feedback=25")
    assert feedback_batch_size(cfg, step=0, used=0) == 10
    assert feedback_batch_size(cfg, step=0, used=20) == 5  # capped by the budget
    assert feedback_batch_size(cfg, step=0, used=25) == 0
    decay = fast_cfg("num_train_steps=1000", "reward_batch=10", "reward_schedule=decay")
    assert feedback_batch_size(decay, step=500, used=0) == 5  # M (T - t) / T
    inc = fast_cfg("num_train_steps=1000", "reward_batch=10", "reward_schedule=increase")
    assert feedback_batch_size(inc, step=500, used=0) == 19  # M T / (T - t + 1)
    bad = fast_cfg("reward_schedule=sometimes")
    with pytest.raises(RunError, match="constant, decay, increase"):
        feedback_batch_size(bad, step=0, used=0)


def test_run_in_pieces_equals_run_at_once(tmp_path: Path) -> None:
    """``run(until=...)`` stops mid-run and a later ``run()`` goes on as if never stopped."""
    import torch

    cfg = fast_cfg("num_train_steps=1400", "eval.every=1400")

    def final(run_dir: Path, pieces: tuple[int, ...]) -> tuple[dict, list, int]:
        loop = PreferenceLoop(cfg, run_dir)
        try:
            for until in pieces:
                out = loop.run(until=until)
                assert loop.step >= until and "eval/true_return" not in out
                assert not (run_dir / "final_metrics.json").exists()
            with pytest.raises(ValueError, match="after the current step"):
                loop.run(until=loop.step)
            metrics = loop.run()
            # the last chunk's SB3 scalars are logged too (SB3 alone holds them back)
            assert metrics["losses/n_updates"] == loop.model._n_updates
            params = [p.detach().clone() for p in loop.model.policy.parameters()]
            return metrics, params, loop.queries_used
        finally:
            loop.close()

    whole = final(tmp_path / "whole", ())
    pieces = final(tmp_path / "pieces", (300, 777, 1001))
    assert pieces[2] == whole[2] > 0
    for key in ("eval/true_return", "pref/accuracy_labelled", "pref/accuracy_heldout"):
        assert pieces[0][key] == whole[0][key], key
    for a, b in zip(pieces[1], whole[1], strict=True):
        assert torch.equal(a, b)


def test_resume_after_rounds_past_the_checkpoint_asks_them_again(tmp_path: Path) -> None:
    """A run killed after feedback rounds that its last checkpoint does not hold: the store
    is rewound to the checkpoint, the rounds are asked again, and the run ends as an
    uninterrupted one (the store kept the later rounds, which used to reach the reward model
    early under reused query ids)."""
    cfg = fast_cfg("num_train_steps=2000", "eval.every=2000")

    def finish(loop: PreferenceLoop) -> tuple[dict, np.ndarray, dict, list[str]]:
        try:
            metrics = loop.run()
            arrays = loop.store.training_arrays()[2]
            return metrics, arrays, loop.store.counts(), loop.store.query_ids()
        finally:
            loop.close()

    whole = finish(PreferenceLoop(cfg, tmp_path / "whole"))
    run_dir = tmp_path / "killed"
    loop = PreferenceLoop(cfg, run_dir)
    loop.run(until=1000)  # rounds at 750 (and the first training) ...
    loop.save_checkpoint()
    loop.run(until=1800)  # ... 1250 and 1750, stored past the checkpoint: then "killed"
    past = loop.store.counts()
    loop.close()
    resumed = PreferenceLoop(cfg, run_dir)
    assert resumed.try_resume()
    assert sum(resumed.store.counts().values()) < sum(past.values())  # rewound
    metrics, arrays, counts, ids = finish(resumed)
    assert counts == whole[2] and ids == whole[3]
    np.testing.assert_array_equal(arrays, whole[1])
    for key in ("eval/true_return", "pref/accuracy_labelled", "pref/labels"):
        assert metrics[key] == whole[0][key], key


def test_a_persons_labels_are_never_rewound(tmp_path: Path) -> None:
    loop = PreferenceLoop(fast_cfg("num_train_steps=1000", "eval.every=1000"), tmp_path)
    try:
        loop.run(until=800)  # the first round (10 labels) at 750
        labelled = loop.store.num_labels()
        assert labelled == 10
        loop.teacher.labels_irreplaceable = True  # as HumanTeacher declares
        loop.store_mark = {"queries": 0, "feedback": 0}  # a checkpoint from before the round
        assert loop.store.num_labels() == labelled
        del loop.teacher.labels_irreplaceable
        loop.store_mark = {"queries": 0, "feedback": 0}
        assert loop.store.num_labels() == 0 and loop.store.num_queries() == 0
    finally:
        loop.close()


def test_sac_rewards_deferred_to_the_buffer_equal_the_learned_reward(tmp_path: Path) -> None:
    """PEBBLE's agent.defer_rewards: no step's reward is lost or left as its placeholder."""
    cfg = fast_cfg("num_train_steps=1300", "eval.every=1300")
    loop = PreferenceLoop(cfg, tmp_path)
    try:
        loop.run()
        buf = loop.buffer
        assert loop.defer_rewards and buf._defer_fn is not None
        # a placeholder that reached SAC would have turned its weights into NaN
        assert all(bool(p.isfinite().all()) for p in loop.model.policy.parameters())
        # SAC never saw a placeholder: every sampled batch had its pending rows filled
        for _ in range(20):
            assert np.isfinite(buf.sample(256).rewards.numpy()).all()
        buf.flush_rewards()
        n = buf.size()
        obs = buf.observations[:n].reshape(-1, loop.obs_dim).astype(np.float32)
        act = buf.actions[:n].reshape(-1, loop.act_dim).astype(np.float32)
        want = loop.learner.reward_fn(obs, act).reshape(n, buf.n_envs)
        np.testing.assert_allclose(buf.rewards[:n], want, rtol=1e-5, atol=1e-6)
    finally:
        loop.close()


def test_without_relabelling_a_row_keeps_the_reward_it_was_stored_with(tmp_path: Path) -> None:
    """agent.relabel=false (the PEBBLE paper's ablation): rows are not rewritten by updates.

    Rows stored before the first reward training get the first model's reward once; every
    later row keeps the reward of the model current when it was stored.
    """
    cfg = fast_cfg("num_train_steps=1800", "eval.every=1800", "agent.relabel=false")
    loop = PreferenceLoop(cfg, tmp_path)
    models: list[tuple[int, object]] = []  # (rows stored at the update, the model after it)
    after = loop._after_reward_update

    def spy() -> None:
        after()
        models.append((loop.buffer.size(), copy.deepcopy(loop.learner)))

    loop._after_reward_update = spy  # type: ignore[method-assign]
    try:
        loop.run()
        assert not loop.defer_rewards and loop.reward_updates == len(models) >= 3
        buf, n = loop.buffer, loop.buffer.size()
        obs = buf.observations[:n].reshape(-1, loop.obs_dim).astype(np.float32)
        act = buf.actions[:n].reshape(-1, loop.act_dim).astype(np.float32)

        def reward_of(model: object) -> np.ndarray:
            return model.reward_fn(obs, act).reshape(n, buf.n_envs)  # type: ignore[attr-defined]

        ends = [m[0] for m in models[1:]] + [n]
        start = 0
        for (_, model), end in zip(models, ends, strict=True):
            np.testing.assert_allclose(
                buf.rewards[start:end], reward_of(model)[start:end], rtol=1e-5, atol=1e-6
            )
            start = end
        # the rows before the last update were not rewritten with the last model's reward
        last_start = models[-1][0]
        assert not np.allclose(buf.rewards[:last_start], reward_of(models[-1][1])[:last_start])
    finally:
        loop.close()


def test_pebble_actor_gets_b_prefs_log_std_bounds(tmp_path: Path) -> None:
    from pbrl.agents.sb3 import BoundedLogStdActor

    loop = PreferenceLoop(fast_cfg(), tmp_path / "a")
    try:
        assert isinstance(loop.model.actor, BoundedLogStdActor)
        assert loop.model.actor.log_std_bounds == (-5.0, 2.0)
    finally:
        loop.close()
    with pytest.raises(RunError, match=r"log_std_bounds=\[2, -5\] must be \[low, high\]"):
        PreferenceLoop(fast_cfg("agent.log_std_bounds=[2,-5]"), tmp_path / "b")


def test_prefppo_pretrains_with_unsup_epochs_and_resets_its_value_head(tmp_path: Path) -> None:
    """B-Pref's learn_unsuper: unsuper_n_epochs PPO epochs per pre-training rollout, and
    policy.reset_value() after the first reward training."""
    cfg = fast_cfg(
        "agent=prefppo", "agent.num_seed_steps=0", "agent.unsup_n_epochs=3", "agent.n_epochs=2",
        "agent.num_unsup_steps=512", "agent.num_interact=512", "num_train_steps=1536",
        "eval.every=1536",
    )  # fmt: skip
    loop = PreferenceLoop(cfg, tmp_path)
    epochs: list[tuple[bool, int]] = []
    train = loop.model.train

    def spy() -> None:
        epochs.append((loop.feedback_started, loop.model.n_epochs))
        train()

    loop.model.train = spy  # type: ignore[method-assign]
    heads: list[torch.Tensor] = []
    first = loop._first_feedback

    def first_spy() -> None:
        heads.append(loop.model.policy.value_net.weight.detach().clone())
        first()
        heads.append(loop.model.policy.value_net.weight.detach().clone())

    loop._first_feedback = first_spy  # type: ignore[method-assign]
    try:
        loop.run()
    finally:
        loop.close()
    assert {e for started, e in epochs if not started} == {3}
    assert {e for started, e in epochs if started} == {2}
    assert len(heads) == 2 and not torch.equal(heads[0], heads[1])
    # orthogonal rows of gain 1: a (1, n) head has unit norm
    assert float(heads[1].norm()) == pytest.approx(1.0, rel=1e-5)
