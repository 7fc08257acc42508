"""HumanTeacher: the Teacher protocol over the labelling server, and a training run with it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from pbrl.data import Label, SegmentBatch
from pbrl.loops.online import PreferenceLoop
from pbrl.store import FeedbackStore
from pbrl.teachers import Teacher, make_teacher
from pbrl.teachers.human import HumanTeacher

from .helpers import ENV, pair_queries, require_web_stack

require_web_stack()
httpx = pytest.importorskip("httpx")


def compose_cfg(*overrides: str):
    with initialize_config_module("pbrl.configs", version_base="1.3"):
        return compose("train", overrides=["experiment=fast", "log.progress=none", *overrides])


def make(tmp_path: Path, **kw) -> HumanTeacher:
    args = {"port": 0, "labellers": ["alice"], "clip_size": 64, "env_name": None, **kw}
    t = make_teacher("human", store=tmp_path / "feedback.sqlite", **args)
    assert isinstance(t, HumanTeacher) and isinstance(t, Teacher)
    return t


def answer_all(url: str, token: str, ids: list[str], choice: str = "right") -> None:
    """A labeller who answers each of ``ids`` as soon as it is handed out."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as c:
        todo = set(ids)
        deadline = time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            q = c.get("/api/next").json()["query"]
            if q is None or q["id"] not in todo:
                time.sleep(0.05)
                continue
            assert c.post("/api/label", json={"query_id": q["id"], "choice": choice}).is_success
            todo.discard(q["id"])


def test_the_config_group_builds_a_teacher(tmp_path: Path) -> None:
    cfg = compose_cfg("teacher=human", "teacher.port=0")
    t = OmegaConf.to_container(cfg.teacher, resolve=True)
    assert t["mode"] == "wait" and t["host"] == "127.0.0.1" and t["overlap"] == 1
    teacher = make_teacher(
        t.pop("name"),
        seed=0,
        store=tmp_path / "feedback.sqlite",
        state_dir=tmp_path / "human",
        env_name=None,
        env_kwargs={},
        **t,
    )
    try:
        assert teacher.teacher_id == "human" and teacher.state_dict() == {}
        banner = teacher.banner()
        assert teacher.url in banner and "labeller: http://127.0.0.1:" in banner
        assert "?token=" in banner
    finally:
        teacher.close()
    with pytest.raises(ValueError, match="mode"):
        make(tmp_path, mode="sometimes")
    with pytest.raises(ValueError, match="needs store="):
        make_teacher("human", port=0)


def test_wait_mode_blocks_until_people_answer(tmp_path: Path, segments: SegmentBatch) -> None:
    teacher = make(tmp_path, mode="wait", shuffle=False)
    try:
        qb = pair_queries(segments, 3)
        with FeedbackStore(tmp_path / "feedback.sqlite") as loop_store:  # the loop's connection
            loop_store.add_queries(qb)
            token = teacher.server.tokens.labellers()[0].token
            bot = threading.Thread(target=answer_all, args=(teacher.url, token, list(qb.ids)))
            bot.start()
            fbs = teacher.label(qb)
            bot.join()
            assert [f.query_id for f in fbs] == list(qb.ids)  # query order
            assert {f.teacher_id for f in fbs} == {"human:alice"}
            assert all(f.label == Label.SECOND for f in fbs)  # no shuffle: "right" = second
            assert loop_store.add(fbs) == 0  # already committed by the server
        s = teacher.summary()
        assert s["labels"] == 3 and s["labellers"] == 1 and "agreement" not in s  # NaN dropped
    finally:
        teacher.close()


def test_wait_mode_times_out_with_what_it_has(tmp_path: Path, segments: SegmentBatch) -> None:
    teacher = make(tmp_path, mode="wait", timeout=0.3)
    try:
        qb = pair_queries(segments, 2)
        with FeedbackStore(tmp_path / "feedback.sqlite") as st:
            st.add_queries(qb)
        t0 = time.monotonic()
        assert teacher.label(qb) == []
        assert 0.25 < time.monotonic() - t0 < 10
    finally:
        teacher.close()


def test_continue_mode_returns_at_once_and_late_labels_reach_training(
    tmp_path: Path, segments: SegmentBatch
) -> None:
    teacher = make(tmp_path, mode="continue", shuffle=False)
    try:
        qb = pair_queries(segments, 2)
        with FeedbackStore(tmp_path / "feedback.sqlite") as st:
            st.add_queries(qb)
            t0 = time.monotonic()
            assert teacher.label(qb) == []
            assert time.monotonic() - t0 < 2
            token = teacher.server.tokens.labellers()[0].token
            answer_all(teacher.url, token, list(qb.ids), choice="left")  # later, in the page
            obs, act, target = st.training_arrays(since=0)  # what the loop reads next round
            assert obs.shape == (2, 2, 10, 17) and np.all(target == 0.0)
    finally:
        teacher.close()


def test_progress_reaches_the_page(tmp_path: Path) -> None:
    teacher = make(tmp_path)
    try:
        teacher.set_progress(step=500, total_steps=1000, accuracy=float("nan"), max_feedback=40)
        token = teacher.server.tokens.labellers()[0].token
        me = httpx.get(f"{teacher.url}/api/me", params={"token": token}).json()
        assert me["progress"]["run"] == {
            "step": 500, "total_steps": 1000, "accuracy": None, "max_feedback": 40
        }  # fmt: skip
    finally:
        teacher.close()


def test_a_training_run_with_a_person_in_the_loop(tmp_path: Path, capsys) -> None:
    """PEBBLE with teacher=human: the run prints the link, waits, trains on the answers."""
    cfg = compose_cfg(
        "teacher=human",
        "teacher.port=0",
        "teacher.clip_size=64",
        "teacher.labellers=[alice]",
        "num_train_steps=200",
        "agent.num_seed_steps=50",
        "agent.num_unsup_steps=50",
        "agent.reset_update=5",
        "eval.every=200",
        "eval.episodes=1",
        "log.video_every=0",
        "checkpoint.every=0",
        f"env={ENV}",
    )
    loop = PreferenceLoop(cfg, tmp_path)
    try:
        printed = capsys.readouterr().out
        links = loop.teacher.server.links()
        assert links["alice"] in printed  # URL and token printed by the run
        token = links["alice"].split("?token=")[1]
        stop = threading.Event()

        def labeller() -> None:  # answers whatever the run asks, as a person would
            with httpx.Client(base_url=loop.teacher.url, params={"token": token}) as c:
                while not stop.is_set():
                    q = c.get("/api/next").json()["query"]
                    if q is None:
                        time.sleep(0.05)
                        continue
                    c.post("/api/label", json={"query_id": q["id"], "choice": "left"})

        bot = threading.Thread(target=labeller, daemon=True)
        bot.start()
        final = loop.run()
        stop.set()
        bot.join(10)
    finally:
        loop.close()
    with FeedbackStore(tmp_path / "feedback.sqlite") as st:
        labels = st.feedback()
        assert len(labels) == int(cfg.reward_batch) == 10
        assert {f.teacher_id for f in labels} == {"human:alice"}
    assert final["human/labels"] == 10 and final["human/labellers"] == 1
    assert "pref/accuracy_labelled" in final  # the reward model trained on the answers
    assert loop.teacher.server._thread is None  # close() stopped the server
