"""The online loop in-process: layer rules (no true-reward leaks) and failure handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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
