"""The ICPL loop end to end with a scripted chat server on loopback (fixed answers).

The CLI runs in a subprocess (``experiment=fast``) against the server; the test then checks
that the ranked best and worst programs, with their component traces and the history
summary, reach the next round's prompt, that a broken program was rejected and replaced, and
that rerunning the same directory pays for no LLM call and retrains nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from pbrl.icpl.loop import run

from .chat_server import ChatServer, completion

REPO = Path(__file__).resolve().parents[2]

FORWARD = """Here is my reward.
```python
import torch

def compute_reward(obs, action, next_obs):
    speed_temperature = 1.0
    forward = next_obs[:, 8] * speed_temperature
    ctrl = -0.1 * torch.sum(action ** 2, dim=-1)
    return forward + ctrl, {"forward": forward, "ctrl": ctrl}
```"""
BACKWARD = """```python
import numpy as np

def compute_reward(obs, action, next_obs):
    backward = -next_obs[:, 8]
    upright = np.cos(next_obs[:, 1])
    return backward + 0.1 * upright, {"backward": backward, "upright": upright}
```"""
FORBIDDEN = """```python
import os
def compute_reward(obs, action, next_obs):
    os.system("curl example.com")
    return obs[:, 0], {}
```"""
NAN = """```python
def compute_reward(obs, action, next_obs):
    return obs[:, 0] / 0.0 * 0.0, {"bad": obs[:, 0]}
```"""
SUMMARY = "The new best rewards forward velocity instead of penalising it."


def script(body: dict, index: int):  # noqa: ANN201
    system = body["messages"][0]["content"]
    if "You compare two reward functions" in system:
        return completion(SUMMARY)
    user = body["messages"][-1]["content"]
    first_round = "judged BEST" not in user
    # round 0: a forbidden program, then two runnable ones; later rounds: NaN first
    answers = [FORBIDDEN, FORWARD, BACKWARD] if first_round else [NAN, BACKWARD, FORWARD]
    n_prev = sum(
        1
        for r in script.requests[:index]  # type: ignore[attr-defined]
        if r["messages"][-1]["content"] == user
    )
    return completion(answers[min(n_prev, len(answers) - 1)])


@pytest.fixture
def server():  # noqa: ANN201
    with ChatServer(script) as srv:
        script.requests = srv.requests  # type: ignore[attr-defined]
        yield srv


def _cli(srv: ChatServer, run_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pbrl.icpl.cli",
            "experiment=fast",
            f"llm.base_url={srv.base_url}",
            "llm.model=scripted",
            "llm.api_key_env=null",
            "llm.backoff=0.01",
            "llm.concurrency=1",
            f"hydra.run.dir={run_dir}",
            *extra,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_loop_feeds_best_and_worst_back_and_resumes(server: ChatServer, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _cli(server, run_dir, "final_eval_seeds=2")
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0 = json.loads((run_dir / "rounds/r0/round.json").read_text())
    statuses = [c["status"] for c in r0["candidates"]]
    assert statuses == ["rejected", "trained", "trained"]
    assert r0["candidates"][0]["reason"] == "forbidden"
    best, worst = r0["candidates"][r0["best"]], r0["candidates"][r0["worst"]]
    assert r0["best"] != r0["worst"]
    assert best["task_score_final"] >= worst["task_score_final"]  # the proxy's order
    assert set(best["trace"]) >= {"total", "episode_length"}
    assert len(best["trace"]["total"]) == 2  # 256 steps / (2 envs x 64) rollouts

    # The second round's prompt: [system, first user, feedback user] with both programs,
    # their traces, the failure reason and the tips.
    msgs = json.loads((run_dir / "rounds/r1/messages.json").read_text())
    assert [m["role"] for m in msgs] == ["system", "user", "user"]
    fb = msgs[2]["content"]
    best_pos, worst_pos = fb.index("judged BEST"), fb.index("judged WORST")
    assert best["source"].strip() in fb[best_pos:worst_pos]
    assert worst["source"].strip() in fb[worst_pos:]
    for name in best["components"]:
        assert f"\n{name}: [" in fb[best_pos:worst_pos]
    assert "episode_length: [" in fb
    assert "program 0: forbidden" in fb and "Analyse the components" in fb
    assert "obs[:, 8]: qvel[rootx]" in msgs[1]["content"]  # the generated env context
    # round 1: the NaN program is rejected on the probe batch; as the last round it asks for
    # no history summary (only a next round's prompt would read it)
    r1 = json.loads((run_dir / "rounds/r1/round.json").read_text())
    assert r1["candidates"][0]["reason"] == "nonfinite"
    assert "summary" not in r1
    assert (run_dir / "rounds/r1/c0.npz").exists()
    clip = np.load(run_dir / "rounds/r0/c0.npz")
    assert clip["sim_state"].shape[0] == 20 and clip["obs"].shape == (20, 17)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["trained"] for r in summary["rounds"]] == [2, 2]
    assert summary["best_program"] in (
        FORWARD.split("```python\n")[1].split("```")[0],
        BACKWARD.split("```python\n")[1].split("```")[0],
    )
    # the best program retrained with seeds 0 and 1 (ICPL's final evaluation)
    final = summary["final_eval"]
    assert final["seeds"] == [0, 1] and final["trained"] == 2 and len(final["task_scores"]) == 2
    assert final["task_score_mean"] == pytest.approx(np.mean(final["task_scores"]))
    assert sorted(p.name for p in (run_dir / "final").glob("c*.json")) == ["c0.json", "c1.json"]
    events = list(run_dir.glob("events.out.tfevents.*"))
    assert events, "no TensorBoard file"
    n_requests = len(server.requests)
    assert n_requests == 3 + 3  # 3 samples per round, no summary call
    assert summary["llm"]["requests"] == 6 and summary["llm_scope"] == "run"

    # Resume: an interrupted last round (its record and one training removed) replays from
    # the answer cache and retrains only the missing candidate.
    (run_dir / "rounds/r1/round.json").unlink()
    (run_dir / "rounds/r1/c1.json").unlink()
    kept = (run_dir / "rounds/r1/c0.json").read_text()
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.llm.base_url = server.base_url
    again = run(cfg, run_dir)
    assert len(server.requests) == n_requests  # every answer came from the cache
    assert (run_dir / "rounds/r1/c0.json").read_text() == kept
    assert (run_dir / "rounds/r1/c1.json").exists()
    assert [r["trained"] for r in again["rounds"]] == [2, 2]
    assert again["final_eval"]["task_scores"] == final["task_scores"]  # read back, not retrained
    # the run's LLM count spans both processes: round 0's 3 requests from the first, round 1's
    # 3 cache hits from this one (the interrupted round's own requests went with its record)
    assert (again["llm"]["requests"], again["llm"]["cache_hits"]) == (3, 3)

    # Resumed with a third round: round 1's history summary is asked for now, carries no
    # verdict, and reaches round 2's prompt.
    cfg.rounds, cfg.final_eval_seeds = 3, 0
    longer = run(cfg, run_dir)
    assert len(server.requests) == n_requests + 1 + 3
    asked = [r for r in server.requests if "You compare two" in r["messages"][0]["content"]]
    assert len(asked) == 1
    text = " ".join(m["content"] for m in asked[0]["messages"])
    assert not any(w in text for w in ("judged", "better", "worse"))
    assert json.loads((run_dir / "rounds/r1/round.json").read_text())["summary"] == SUMMARY
    assert SUMMARY in json.loads((run_dir / "rounds/r2/messages.json").read_text())[2]["content"]
    assert [r["trained"] for r in longer["rounds"]] == [2, 2, 2]
    assert (longer["llm"]["requests"], longer["llm"]["cache_hits"]) == (3 + 1 + 3, 3)


def test_cli_reports_a_missing_model(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pbrl.icpl.cli", "experiment=fast", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "llm.model" in proc.stderr


@pytest.mark.llm
@pytest.mark.timeout(1800)
def test_loop_with_the_bundled_local_model(tmp_path: Path) -> None:
    """The whole loop on SmolLM2-135M: whatever it writes is checked, contained, reported."""
    pytest.importorskip("llama_cpp", reason="llm=local needs llama-cpp-python (pbrl[icpl])")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pbrl.icpl.cli",
            "experiment=fast",
            "llm=local",
            "llm.max_tokens=256",
            "llm.n_ctx=4096",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1700,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        rnd = json.loads((tmp_path / f"rounds/r{r}/round.json").read_text())
        assert 2 <= len(rnd["candidates"]) <= 4
        for c in rnd["candidates"]:
            assert c["status"] in ("rejected", "trained", "failed")
            if c["status"] != "trained":
                assert c["reason"] and c["error"]  # every failure names its reason
    assert len(list((tmp_path / "llm_cache").glob("*/*.json"))) >= 4


def _compose(server: ChatServer, *extra: str):  # noqa: ANN202
    from hydra import compose, initialize_config_dir

    conf = REPO / "pbrl" / "configs" / "icpl"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(
            config_name="icpl",
            overrides=[
                "experiment=fast",
                f"llm.base_url={server.base_url}",
                "llm.model=scripted",
                "llm.api_key_env=null",
                "llm.backoff=0.01",
                "llm.concurrency=1",
                *extra,
            ],
        )


def test_parallel_setting_is_checked_before_any_llm_call(
    server: ChatServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pbrl.icpl.loop import ICPLError, ray_map

    with pytest.raises(ICPLError, match="train.parallel must be a number of processes >= 1 or"):
        run(_compose(server, "train.parallel=dask"), tmp_path / "bad")
    assert not server.requests
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees without the extra
    with pytest.raises(ImportError, match=r"pip install 'pbrl\[ray\]'"):
        ray_map(abs, [1, -2])


def test_a_person_ranks_the_clips(server: ChatServer, tmp_path: Path) -> None:
    # teacher=human: each round's trained candidates go to the labelling page as one ranking
    # query; a labeller (HTTP client) ranks them, and the round's best/worst follow that
    # ranking — here the reverse of the proxy's task-score order.
    pytest.importorskip("fastapi", reason="needs the human extra: pip install 'pbrl[human]'")
    httpx = pytest.importorskip("httpx")
    import threading
    import time

    from pbrl.icpl.loop import ICPLLoop
    from pbrl.store import FeedbackStore

    cfg = _compose(
        server,
        "teacher=human",
        "teacher.port=0",
        "teacher.clip_size=32",
        "teacher.max_frames=10",
        "teacher.render_workers=1",
        "rounds=1",
    )
    loop = ICPLLoop(cfg, tmp_path / "run")
    answered: list[dict] = []

    def labeller() -> None:
        deadline = time.monotonic() + 240
        while loop.teacher is None and time.monotonic() < deadline:
            time.sleep(0.05)
        srv = loop.teacher.server  # type: ignore[union-attr]
        token = srv.tokens.labellers()[0].token
        with httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as c:
            while time.monotonic() < deadline:
                q = c.get("/api/next").json()["query"]
                if q is None:
                    time.sleep(0.05)
                    continue
                assert q["kind"] == "ranking"
                # positions as shown, best first: the last shown clip is the best
                order = list(range(len(q["clips"])))[::-1]
                r = c.post(
                    "/api/label", json={"query_id": q["id"], "choice": "rank", "ranking": order}
                )
                assert r.is_success, r.text
                answered.append(q)
                return

    th = threading.Thread(target=labeller, daemon=True)
    th.start()
    try:
        summary = loop.run()
    finally:
        loop.close()
    th.join(timeout=5)
    assert len(answered) == 1
    r0 = json.loads((tmp_path / "run/rounds/r0/round.json").read_text())
    trained = [j for j, c in enumerate(r0["candidates"]) if c["status"] == "trained"]
    assert len(trained) == 2 and summary["rounds"][0]["trained"] == 2
    with FeedbackStore(tmp_path / "run/feedback.sqlite") as store:
        fbs = store.feedback()
    assert len(fbs) == 1 and fbs[0].ranking is not None
    ranked = [trained[i] for i in fbs[0].ranking]  # member indices, best first
    assert (r0["best"], r0["worst"]) == (ranked[0], ranked[-1])


@pytest.mark.slow  # starts Ray (~10 s on 2 cores)
def test_ray_candidates_equal_the_serial_ones(server: ChatServer, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="needs ray: pip install 'pbrl[ray]'")
    serial = run(_compose(server, "rounds=1"), tmp_path / "serial")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # a fresh scripted server: its answers depend on the requests it has seen
        with ChatServer(script) as fresh:
            script.requests = fresh.requests  # type: ignore[attr-defined]
            par = run(_compose(fresh, "rounds=1", "train.parallel=ray"), tmp_path / "ray")
    finally:
        ray.shutdown()
    a = json.loads((tmp_path / "serial/rounds/r0/round.json").read_text())
    b = json.loads((tmp_path / "ray/rounds/r0/round.json").read_text())
    # each candidate's training is a pure function of its spec (program, seed, budgets)
    for x, y in zip(a["candidates"], b["candidates"], strict=True):
        assert x["status"] == y["status"]
        if x["status"] == "trained":
            assert x["task_score_final"] == y["task_score_final"]
            assert x["trace"] == y["trace"]
    assert serial["best_task_score"] == par["best_task_score"]


def test_score_seeds_ranks_programs_by_their_mean_over_trainings(
    server: ChatServer, tmp_path: Path
) -> None:
    one = run(_compose(server, "rounds=1"), tmp_path / "one")
    with ChatServer(script) as fresh:  # the same answers again (they depend on what it saw)
        script.requests = fresh.requests  # type: ignore[attr-defined]
        three = run(_compose(fresh, "rounds=1", "score_seeds=3"), tmp_path / "three")
    a = json.loads((tmp_path / "one/rounds/r0/round.json").read_text())
    b = json.loads((tmp_path / "three/rounds/r0/round.json").read_text())
    assert b["trained"] == a["trained"] and len(b["trained"]) == 2
    means = {}
    for p, j in enumerate(b["trained"]):
        x, y = a["candidates"][j], b["candidates"][j]
        runs = y["run_scores"]["task_score_final"]
        assert len(runs) == 3 and len(set(runs)) == 3  # three trainings, three seeds
        assert runs[0] == x["task_score_final"]  # the first is the paper's single training
        assert y["trace"] == x["trace"]  # ... and its trace is the one the LLM reads
        assert y["task_score_final"] == pytest.approx(np.mean(runs))
        assert y["task_score_max"] == pytest.approx(np.mean(y["run_scores"]["task_score_max"]))
        for i in (1, 2):
            kept = json.loads((tmp_path / f"three/rounds/r0/c{p}.s{i}.json").read_text())
            assert kept["task_score_final"] == runs[i]
        means[j] = y["task_score_final"]
    assert b["ranking"] == sorted(means, key=lambda j: -means[j])  # the proxy ranks by the mean
    assert three["best_task_score"] == pytest.approx(max(means.values()))
    assert one["best_task_score"] == max(
        a["candidates"][j]["task_score_final"] for j in a["trained"]
    )


@pytest.mark.parametrize("bad", ["0", "1.5", "true"])
def test_score_seeds_must_be_a_count(server: ChatServer, tmp_path: Path, bad: str) -> None:
    from pbrl.icpl.loop import ICPLError

    with pytest.raises(ICPLError, match="score_seeds must be a whole number >= 1"):
        run(_compose(server, f"score_seeds={bad}"), tmp_path / "run")
    assert server.requests == []  # refused before any LLM call


def retry_script(body: dict, index: int):  # noqa: ANN201
    """Round 0 trains two programs, round 1 only NaN programs, round 2 (the retry) two again."""
    if "You compare two reward functions" in body["messages"][0]["content"]:
        return completion(SUMMARY)
    user = body["messages"][-1]["content"]
    if "judged BEST" in user and "could not be used" not in user:
        return completion(NAN)
    n_prev = sum(1 for r in retry_script.requests[:index] if r["messages"][-1]["content"] == user)  # type: ignore[attr-defined]
    return completion([FORWARD, BACKWARD][n_prev % 2])


def test_a_round_with_nothing_trained_repeats_the_current_prompt(tmp_path: Path) -> None:
    """ICPL repeats a round whose programs all failed from the current messages (history, best
    and worst kept), adding why they failed."""
    run_dir = tmp_path / "run"
    with ChatServer(retry_script) as srv:
        retry_script.requests = srv.requests  # type: ignore[attr-defined]
        proc = _cli(srv, run_dir, "rounds=3")
        requests = list(srv.requests)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1 = json.loads((run_dir / "rounds/r1/round.json").read_text())
    assert r1["best"] is None and {c["reason"] for c in r1["candidates"]} == {"nonfinite"}
    m1 = json.loads((run_dir / "rounds/r1/messages.json").read_text())
    m2 = json.loads((run_dir / "rounds/r2/messages.json").read_text())
    assert m2[:2] == m1[:2] and m2[2]["content"].startswith(m1[2]["content"])
    assert "judged BEST" in m2[2]["content"]  # round 0's feedback is still there
    retry = m2[2]["content"][len(m1[2]["content"]) :]
    assert "could not be used" in retry and "nonfinite" in retry
    r2 = json.loads((run_dir / "rounds/r2/round.json").read_text())
    assert r2["best"] is not None and "summary" not in r2  # the last round: none asked
    assert not [r for r in requests if "You compare two" in r["messages"][0]["content"]]
