"""Env context generated from the env, code extraction from answers, prompt assembly, traces."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from pbrl import envs
from pbrl.icpl.context import env_context, layout_sources, mujoco_layout
from pbrl.icpl.prompting import (
    Feedback,
    clip_text,
    extract_code,
    feedback_messages,
    format_trace,
    initial_messages,
)
from pbrl.icpl.sandbox import ProgramError

GOOD = "def compute_reward(obs, action, next_obs):\n    return obs[:, 0], {}\n"


@pytest.mark.parametrize("name", ["halfcheetah", "hopper", "walker2d", "ant", "humanoid"])
def test_generated_layout_rebuilds_the_observation(name: str) -> None:
    env = envs.make_env(name, seed=1)
    layout = mujoco_layout(env)
    assert layout is not None
    assert [e.start for e in layout[1:]] == [e.stop for e in layout[:-1]]  # contiguous
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(env.action_space.low, env.action_space.high))
    u = env.unwrapped
    mujoco.mj_rnePostConstraint(u.model, u.data)  # cfrc_ext as the env computes it
    np.testing.assert_array_equal(layout_sources(env, layout), u._get_obs())
    env.close()


def test_context_text() -> None:
    text = env_context("halfcheetah").render()
    assert "obs[:, 8]: qvel[rootx] - slide joint 'rootx': velocity along x (m/s)" in text
    assert "a float vector of 6 values, each in [-1, 1]" in text
    assert "0.05 s per step" in text and "reward_forward, reward_ctrl" in text
    dmc = env_context("cheetah_run").render()
    assert "obs[:, 0:8]: position" in dmc and "obs[:, 8:17]: velocity" in dmc


@pytest.mark.parametrize(
    "answer",
    [
        f"Sure!\n```python\n{GOOD}```\nThis rewards x.",
        f"```py\nimport math\n```\n```python\n{GOOD}```",
        f"```\n{GOOD}```",
        f"Here it is:\n{GOOD}\nHope this helps.",
        f"```python\n{GOOD}",  # unterminated fence (answer cut by max_tokens)
    ],
)
def test_extract_code(answer: str) -> None:
    assert extract_code(answer).strip() == GOOD.strip()


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("I cannot help with that.", "syntax"),
        ("```python\ndef reward(obs):\n    return obs\n```", "signature"),
        ("```python\nimport os\ndef compute_reward(o, a, n):\n    pass\n```", "forbidden"),
    ],
)
def test_extract_code_failures(answer: str, reason: str) -> None:
    with pytest.raises(ProgramError) as info:
        extract_code(answer)
    assert info.value.reason == reason


def test_feedback_prompt_golden() -> None:
    first = initial_messages("CONTEXT", "run")
    fb = Feedback("BEST_CODE", "best: [1]", "WORST_CODE", "worst: [0]", ["s1"], ["program 2: x"])
    msgs = feedback_messages(first, fb)
    assert msgs[:2] == first and msgs[2]["role"] == "user"
    user = msgs[2]["content"]
    expected_order = [
        "What happened in earlier rounds:\n- Round 1: s1",
        "judged BEST",
        "```python\nBEST_CODE\n```",
        "Training statistics of the best reward function:\nbest: [1]",
        "judged WORST",
        "```python\nWORST_CODE\n```",
        "worst: [0]",
        "Some of your last programs could not be used:\n- program 2: x",
        "builds on what the best one does well",
        "How to read the statistics",
        "Rules:",
    ]
    pos = [user.index(s) for s in expected_order]
    assert pos == sorted(pos)
    assert "$" not in user  # every placeholder filled
    assert "def compute_reward(obs, action, next_obs):" in first[0]["content"]


def test_format_trace() -> None:
    text = format_trace({"fwd": list(range(20)), "len": [5.0, float("nan")], "none": []})
    lines = text.splitlines()
    assert lines[0] == "fwd: [0, 2, 4, 6, 8, 11, 13, 15, 17, 19], max 19, mean 9.5, min 0"
    assert lines[1] == "len: [5], max 5, mean 5, min 5"
    assert lines[2] == "none: no data"


def test_history_summary_is_cut_at_a_sentence_or_word_never_inside_a_word():
    assert clip_text("short   summary\nhere.", 600) == "short summary here."
    sentences = "The forward weight rises to 4.0. " * 30  # 990 characters
    out = clip_text(sentences, 600)
    assert len(out) <= 600 and out.endswith("4.0.") and out == sentences[: len(out)]
    words = "abcdefghij " * 100  # no sentence end: cut at a word, marked
    out = clip_text(words, 600)
    assert len(out) <= 600 and out.endswith("abcdefghij\u2026")
    assert clip_text("x" * 700, 600) == "x" * 599 + "\u2026"
