"""`select=teacher teacher=human` on a pbrl env: a real labelling session answers the tournament."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from support import fetch_clip, free_port, labeller_client, served_queries

from pbrl.morl.cli import check_teacher, run
from pbrl.store import FeedbackStore

for _mod, _extra in {"fastapi": "human", "uvicorn": "human", "av": "human"}.items():
    pytest.importorskip(_mod, reason=f"{_mod} is missing: pip install 'pbrl[{_extra}]'")
httpx = pytest.importorskip("httpx", reason="httpx is missing: pip install 'pbrl[test]'")


U = np.array([0.8, 0.2])  # the labeller's hidden trade-off of (reward_forward, reward_ctrl)
# the fast preset on halfcheetah's reward factors: 4800 steps, 10-step clips of 64 px
TINY = [
    "experiment=fast", "env=pbrl:halfcheetah", "env_max_steps=50", "select=teacher",
    "teacher=human", "human.labellers=[alice]", "human.clip_size=64", "human.max_frames=10",
    "clip_length=10", "human.timeout=60", f"teacher_utility=[{U[0]},{U[1]}]",
]  # fmt: skip


def compose_front(overrides: list[str]):
    with initialize_config_module(config_module="pbrl.configs.front", version_base="1.3"):
        return compose(config_name="front", overrides=overrides)


def labeller(run_dir: Path, url: str, stop: threading.Event, seen: dict) -> None:
    """A person at the page: watches both clips of each query and prefers the one whose reward
    factors score higher under ``U`` (read from the store the page serves, as they would see it
    in the videos)."""
    try:
        with (
            labeller_client(run_dir, url, stop) as c,
            FeedbackStore(run_dir / "feedback.sqlite") as store,
        ):
            for q in served_queries(c, stop):
                assert q["renderable"], q["reason"]
                for clip in q["clips"]:  # the videos, rendered from the stored sim state
                    r = fetch_clip(c, clip["url"])
                    assert r.status_code == 200 and r.content[4:8] == b"ftyp", r.text[:200]
                    seen["clips"] = seen.get("clips", 0) + 1
                segs = store.get_query(q["id"]).segments
                score = [
                    float(U @ [segs.reward_factors[f][i].sum() for f in ("reward_forward",
                                                                         "reward_ctrl")])
                    for i in range(2)
                ]  # fmt: skip
                better = int(np.argmax(score))
                role = next(cl["role"] for cl in q["clips"] if cl["member"] == better)
                ok = c.post("/api/label", json={"query_id": q["id"], "choice": role})
                assert ok.is_success, ok.text
                seen["answers"] = seen.get("answers", 0) + 1
    except Exception as err:  # noqa: BLE001 - reported by the test
        seen["error"] = repr(err)


def test_a_person_picks_the_front_policy_on_the_labelling_page(tmp_path: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    stop, seen = threading.Event(), {}
    bot = threading.Thread(
        target=labeller, args=(run_dir, f"http://127.0.0.1:{port}", stop, seen), daemon=True
    )
    bot.start()
    try:
        final = run(compose_front([*TINY, f"human.port={port}"]), run_dir)
    finally:
        stop.set()
        bot.join(30)
    assert "error" not in seen, seen["error"]
    sel = json.loads((run_dir / "selection.json").read_text())
    front = json.loads((run_dir / "front.json").read_text())
    n = len(front["front"])
    assert n >= 2 and sel["queries"] == n - 1 == seen["answers"] and seen["clips"] == 2 * (n - 1)
    assert sel["coin_flips"] == 0 and sel["teacher"] == "human"
    with FeedbackStore(run_dir / "feedback.sqlite") as st:
        labels = st.feedback()
        assert {f.teacher_id for f in labels} == {"human:alice"} and len(labels) == n - 1
        assert sorted(st.query_ids()) == sorted(m["query_id"] for m in sel["matches"])
        stored = st.get_query(sel["matches"][0]["query_id"]).segments
        assert stored.sim_state is not None and stored.env_name == "halfcheetah"
    # each match went to the clip the labeller preferred: the scripted oracle with the same
    # utility, on the same clips, picks the same policy
    oracle = run(compose_front([*TINY, "teacher=oracle"]), tmp_path / "oracle")
    assert final["selection"]["matches"] == oracle["selection"]["matches"]
    assert final["selection"]["policy_id"] == oracle["selection"]["policy_id"]


def test_human_selection_is_refused_for_envs_without_sim_state() -> None:
    cfg = compose_front(["experiment=fast", "select=teacher", "teacher=human"])
    with pytest.raises(ValueError, match=r"mo-point-2d .*reports no sim_state.*env=pbrl:<task>"):
        check_teacher(cfg, ("x", "y"))
