"""``pbrl-qd teacher=human``: a person answers QDHF's triplets on the labelling page.

Also the ``qd_arm`` and ``qd_maze`` pictures the page shows (:mod:`pbrl.envs.qd`).
"""

from __future__ import annotations

import io
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from support import fetch_clip, free_port, labeller_client, served_queries

from pbrl import envs as pbrl_envs
from pbrl.envs.qd import (
    EFFECTOR_COLOUR,
    END_COLOUR,
    START_COLOUR,
    arm_points,
    draw_arm,
    draw_maze,
    maze_to_pixel,
    world_to_pixel,
)
from pbrl.qd.arm import ArmDomain
from pbrl.qd.cli import check_human, run
from pbrl.qd.maze import MazeDomain
from pbrl.qd.qdhf import triplet_query
from pbrl.store import FeedbackStore

QD_CONFIGS = Path(pbrl_envs.__file__).parents[1] / "configs" / "qd"


def red_centroid(img: np.ndarray) -> np.ndarray:
    """``(row, col)`` centroid of the end effector's red pixels."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    rows, cols = np.nonzero((r > 150) & (g < 110) & (b < 110))
    assert len(rows), "no red end effector drawn"
    return np.array([rows.mean(), cols.mean()])


# --- the picture ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (256, 256), (96, 128)])
def test_arm_picture_puts_the_end_effector_where_forward_kinematics_does(size) -> None:
    h, w = size
    rng = np.random.default_rng(0)
    arm = ArmDomain(10)
    for theta in rng.uniform(-np.pi, np.pi, (5, 10)) * 0.4:
        img = draw_arm(theta, w, h)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        ee = arm.measures(theta[None])[0]  # the domain's forward kinematics
        assert np.allclose(arm_points(theta)[-1], ee)
        want = world_to_pixel(ee, 10.0, w, h)
        assert np.abs(red_centroid(img) - want).max() < 1.0
        assert (img[int(round(want[0])), int(round(want[1]))] == EFFECTOR_COLOUR).all()
    # a straight arm along +x reaches the right edge (5 % margin), the base sits at the centre
    img = draw_arm(np.zeros(10), 200, 200)
    assert abs(red_centroid(img)[1] - (199 / 2 + 100 / 1.05)) < 1.0
    assert (img[99:101, 99:101] == 0).all()


@pytest.mark.parametrize("size", [(64, 64), (200, 200), (96, 128)])
def test_maze_picture_draws_the_path_from_start_to_final_position(size) -> None:
    h, w = size
    maze = MazeDomain()
    params = maze.sample(4, np.random.default_rng(2)) * 3.0  # livelier than a fresh policy
    _, final, feats = maze.evaluate(params)
    for traj, end in zip(feats, final, strict=True):
        img = draw_maze(traj, w, h)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        want = maze_to_pixel(end, w, h)
        assert np.abs(red_centroid(img) - want).max() < 1.5
        assert (img[int(round(want[0])), int(round(want[1]))] == END_COLOUR).all()
        start = maze_to_pixel(np.array(maze.start[:2]), w, h)
        assert (img[int(round(start[0])), int(round(start[1]))] == START_COLOUR).all()
    # walls: the middle wall x = 0.25 from y = 0.25 to 0.75 is black at its midpoint, and the
    # unit square's corners map onto the largest centred square of the frame
    img = draw_maze(np.full(4, 0.9), w, h)
    mid = maze_to_pixel(np.array([0.25, 0.5]), w, h).round().astype(int)
    assert (img[mid[0], mid[1]] == 0).all()
    side = min(w, h) - 1
    assert np.allclose(
        maze_to_pixel(np.array([0.0, 1.0]), w, h), [(h - 1 - side) / 2, (w - 1 - side) / 2]
    )
    with pytest.raises(ValueError, match="2 T values"):
        draw_maze(np.ones(5), w, h)


def test_qd_maze_env_drives_a_policy_and_renders_its_trajectory() -> None:
    env = pbrl_envs.make_env("qd_maze", seed=0)
    maze = MazeDomain()
    _, info = env.reset(seed=0)
    start = np.tile(maze.start[:2], maze.episode_length)
    assert np.array_equal(info["sim_state"], start)  # the robot has not moved yet
    params = maze.sample(1, np.random.default_rng(5))[0]
    obs, r, term, _, info = env.step(params.astype(np.float32))
    obj, _, feats = maze.evaluate(params.astype(np.float32)[None].astype(np.float64))
    assert term and math.isclose(r, obj[0]) and info["reward_factors"] == {"objective": r}
    assert np.array_equal(env.get_env_state()["sim"]["trajectory"], feats[0])
    assert np.array_equal(env.render_state(feats[0], 48, 48), draw_maze(feats[0], 48, 48))
    with pytest.raises(ValueError, match="flattened"):
        env.render_state(np.ones((2, 3)))
    # QDHF's maze triplets carry the trajectories (the features) as one-step sim states
    q = triplet_query(maze, maze.sample(6, np.random.default_rng(1)).reshape(2, 3, -1))
    seg = q.member(1)
    assert seg.env_name == "qd_maze" and seg.sim_state.shape == (2, 1, 500)
    assert np.allclose(seg.sim_state[:, 0], seg.obs[:, 0], atol=1e-6)  # the features


def test_qd_arm_env_renders_stored_postures_of_any_length() -> None:
    env = pbrl_envs.make_env("qd_arm", seed=0)
    theta = np.linspace(-0.5, 0.5, 10)
    assert np.array_equal(env.render_state(theta, 32, 32), draw_arm(theta, 32, 32))
    assert env.render_state(np.ones(4), 32, 32).shape == (32, 32, 3)
    _, r, term, _, info = env.step(theta.astype(np.float32))
    assert term and math.isclose(r, (1 - np.var(theta)) * 100, rel_tol=1e-5)
    assert np.array_equal(info["sim_state"], np.zeros(10))  # the state before the step
    with pytest.raises(ValueError, match="1-D"):
        env.render_state(np.ones((2, 3)))
    # QDHF's arm triplets carry the postures as one-step sim states of this env
    q = triplet_query(ArmDomain(10), np.random.default_rng(1).uniform(-1, 1, (2, 3, 10)))
    seg = q.member(2)
    assert seg.env_name == "qd_arm" and seg.sim_state is not None
    assert seg.sim_state.shape == (2, 1, 10) and np.allclose(seg.sim_state[:, 0], seg.actions[:, 0])


# --- the run ----------------------------------------------------------------------------------
def compose_qd(overrides: list[str]):
    with initialize_config_dir(config_dir=str(QD_CONFIGS), version_base="1.3"):
        return compose(config_name="qd", overrides=overrides)


def test_human_teacher_is_refused_where_no_person_can_answer() -> None:
    cfg = compose_qd(["domain=maze", "teacher=human"])
    check_human(cfg)  # the maze draws its paths
    cfg.domain.name = "lsi"  # a domain with nothing to draw
    with pytest.raises(ValueError, match="domain=lsi has no renderer"):
        check_human(cfg)
    with pytest.raises(ValueError, match="method=gt asks no similarity judgements"):
        check_human(compose_qd(["method=gt", "teacher=human"]))
    cfg = compose_qd([])
    assert cfg.teacher.name == "simulated" and cfg.teacher.beta == math.inf


def test_refused_human_run_writes_nothing(tmp_path) -> None:
    with pytest.raises(ValueError, match="method=gt asks no similarity judgements"):
        run(compose_qd(["domain=maze", "method=gt", "teacher=human"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_web_extra_is_named(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"av missing.*pip install 'pbrl\[human\]'"):
        check_human(compose_qd(["teacher=human"]))


def where_drawn(domain: str, state: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The red disc's ``(M, 2)`` world points and pixels for stored ``(M, D)`` states: the arm's
    end effector (forward kinematics of the joint angles), the maze robot's final position
    (the trajectory's last point)."""
    if domain == "arm":
        ee = ArmDomain(state.shape[-1]).measures(state)
        return ee, world_to_pixel(ee, state.shape[-1], size, size)
    ee = state.reshape(len(state), -1, 2)[:, -1]
    return ee, maze_to_pixel(ee, size, size)


def labeller(run_dir: Path, url: str, stop: threading.Event, seen: dict, domain: str) -> None:
    """A person at the page: looks at the three pictures of each triplet and picks the
    candidate whose red disc (the arm's end effector, the maze robot's final position) is
    nearer the reference's, as drawn from the stored states."""
    import av

    try:
        with (
            labeller_client(run_dir, url, stop) as c,
            FeedbackStore(run_dir / "feedback.sqlite") as store,
        ):
            for q in served_queries(c, stop):
                assert q["kind"] == "triplet" and q["renderable"], q["reason"]
                assert "measure" not in json.dumps(q)  # the hidden answer is never shown
                assert [cl["role"] for cl in q["clips"]] == ["reference", "left", "right"]
                state = store.get_query(q["id"]).segments.sim_state[:, 0]  # (3, D)
                ee, pixels = where_drawn(domain, state, 64)
                for cl in q["clips"]:  # the pictures, drawn from the stored postures
                    r = fetch_clip(c, cl["url"])
                    assert r.status_code == 200 and r.content[4:8] == b"ftyp", r.text[:200]
                    with av.open(io.BytesIO(r.content)) as f:
                        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
                    assert len(frames) == 1 and frames[0].shape == (64, 64, 3)
                    want = pixels[cl["member"]]
                    assert np.abs(red_centroid(frames[0]) - want).max() < 2.0
                    seen["clips"] = seen.get("clips", 0) + 1
                d = ((ee[1:] - ee[0]) ** 2).sum(1)
                closer = 1 + int(np.argmin(d))
                role = next(cl["role"] for cl in q["clips"] if cl["member"] == closer)
                ok = c.post("/api/label", json={"query_id": q["id"], "choice": role})
                assert ok.is_success, ok.text
                seen["answers"] = seen.get("answers", 0) + 1
                seen.setdefault("closer", {})[q["id"]] = closer
    except Exception as err:  # noqa: BLE001 - reported by the test
        seen["error"] = repr(err)


@pytest.mark.parametrize("domain", ["arm", "maze"])
def test_a_person_answers_qdhf_triplets_on_the_labelling_page(tmp_path: Path, domain) -> None:
    for mod, extra in {"fastapi": "human", "uvicorn": "human", "av": "human"}.items():
        pytest.importorskip(mod, reason=f"{mod} is missing: pip install 'pbrl[{extra}]'")
    pytest.importorskip("httpx", reason="httpx is missing: pip install 'pbrl[test]'")
    from pbrl.data import Label

    port = free_port()
    run_dir = tmp_path / "run"
    stop, seen = threading.Event(), {}
    bot = threading.Thread(
        target=labeller,
        args=(run_dir, f"http://127.0.0.1:{port}", stop, seen, domain),
        daemon=True,
    )
    bot.start()
    # updates at iterations 1, 2, 3 (1 + round(f x 4)), 2 triplets each
    cfg = compose_qd(
        [
            f"domain={domain}", "method=qdhf", "teacher=human", "experiment=fast", "iterations=4",
            "n_pref=8", "batch_size=10", "init_pop=20", "human.labellers=[alice]",
            "human.clip_size=64", "human.timeout=60", f"human.port={port}",
        ]
    )  # fmt: skip
    try:
        final = run(cfg, run_dir)
    except RuntimeError:
        stop.set()
        bot.join(30)
        assert "error" not in seen, seen["error"]  # the labeller's failure says more
        raise
    finally:
        stop.set()
        bot.join(30)
    assert "error" not in seen, seen["error"]
    assert seen["answers"] == 6 and seen["clips"] == 18
    # the projection was fitted on the six human judgements
    assert final["judgements"] == 6 and final["judgements_answered"] == 6
    assert math.isfinite(final["projection_val_acc"])
    assert json.loads((run_dir / "final_metrics.json").read_text())["judgements_answered"] == 6
    with FeedbackStore(run_dir / "feedback.sqlite") as st:
        labels = st.feedback()
        assert len(labels) == 6 and {f.teacher_id for f in labels} == {"human:alice"}
        assert sorted(st.query_ids()) == sorted(seen["closer"])
        for f in labels:  # stored as the member the labeller chose
            want = Label.FIRST if seen["closer"][f.query_id] == 1 else Label.SECOND
            assert f.label == want
        assert st.get_query(labels[0].query_id).segments.env_name == f"qd_{domain}"
