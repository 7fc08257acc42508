"""``align.teacher=human``: people rank RAPL's alignment videos on the labelling page."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

pytest.importorskip("pymunk")

from support import fetch_clip, free_port, labeller_client, served_queries

from pbrl import envs as pbrl_envs  # noqa: E402
from pbrl.store import FeedbackStore  # noqa: E402
from pbrl.visual.human import check_align_teacher  # noqa: E402
from pbrl.visual.rl import RaplRunError, train_on_rapl_reward  # noqa: E402

RAPL_CONFIGS = Path(pbrl_envs.__file__).parents[1] / "configs" / "rapl"


def rapl_cfg(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(RAPL_CONFIGS), version_base="1.3"):
        cfg = compose(config_name="rl", overrides=overrides)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return plain


def test_human_teacher_is_refused_where_no_query_is_asked() -> None:
    assert check_align_teacher(rapl_cfg([])) == "simulated"
    human = ["align.teacher=human"]
    with pytest.raises(RaplRunError, match="asks no alignment queries.*encoder.path=enc"):
        check_align_teacher(rapl_cfg([*human, "encoder.path=enc"]))
    with pytest.raises(RaplRunError, match="encoder.aligned=false rewards with the pretrained"):
        check_align_teacher(rapl_cfg([*human, "encoder.aligned=false"]))
    with pytest.raises(RaplRunError, match="reward=true_reward trains on the env's own reward"):
        check_align_teacher(rapl_cfg([*human, "reward=true_reward"]))
    with pytest.raises(RaplRunError, match="rlhf.path=m"):
        check_align_teacher(rapl_cfg([*human, "reward=rlhf", "rlhf.path=m"]))
    with pytest.raises(RaplRunError, match="align.teacher='person'; valid: simulated, human"):
        check_align_teacher(rapl_cfg(["align.teacher=person"]))
    # these ask: RAPL's alignment, the RLHF reward, the RAPL return logged beside the true one
    for extra in ([], ["reward=rlhf"], ["reward=true_reward", "eval.rapl_return=true"]):
        assert check_align_teacher(rapl_cfg([*human, *extra])) == "human"


def test_missing_web_extra_is_named(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"av missing.*pip install 'pbrl\[human\]'"):
        check_align_teacher(rapl_cfg(["align.teacher=human"]))


def labeller(run_dir: Path, url: str, stop: threading.Event, seen: dict) -> None:
    """A person at the page: watches the three clips of each query and ranks them by how
    much of the task each video got done (its env return, read from the stored segments)."""
    import av

    try:
        with (
            labeller_client(run_dir, url, stop) as c,
            FeedbackStore(run_dir / "feedback.sqlite") as store,
        ):
            for q in served_queries(c, stop):
                assert q["kind"] == "ranking" and q["k"] == 3 and q["renderable"], q["reason"]
                seg = store.get_query(q["id"]).segments  # (3 members, T steps)
                assert seg.env_name == "xmagical_sweep_longstick" and seg.sim_state is not None
                for cl in q["clips"]:
                    r = fetch_clip(c, cl["url"], tries=400)
                    assert r.status_code == 200 and r.content[4:8] == b"ftyp", r.text[:200]
                    with av.open(io.BytesIO(r.content)) as f:
                        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
                    assert len(frames) > 1 and frames[0].shape == (64, 64, 3)
                    assert np.ptp(np.stack(frames)) > 0  # a picture, not a blank clip
                    seen["clips"] = seen.get("clips", 0) + 1
                ret = seg.true_reward.sum(axis=1)
                best_first = sorted(q["clips"], key=lambda cl: -ret[cl["member"]])
                ok = c.post(
                    "/api/label",
                    json={
                        "query_id": q["id"],
                        "choice": "rank",
                        "ranking": [cl["position"] for cl in best_first],
                    },
                )
                assert ok.is_success, ok.text
                seen.setdefault("ranking", {})[q["id"]] = tuple(cl["member"] for cl in best_first)
    except Exception as err:  # noqa: BLE001 - reported by the test
        seen["error"] = repr(err)


@pytest.mark.parametrize("reward", ["rapl", "rlhf"])
def test_a_person_ranks_the_alignment_videos_on_the_labelling_page(
    tmp_path: Path, reward: str
) -> None:
    for mod in ("fastapi", "uvicorn", "av"):
        pytest.importorskip(mod, reason=f"{mod} is missing: pip install 'pbrl[human]'")
    pytest.importorskip("httpx", reason="httpx is missing: pip install 'pbrl[test]'")
    port, run_dir = free_port(), tmp_path / "run"
    stop, seen = threading.Event(), {}
    bot = threading.Thread(
        target=labeller, args=(run_dir, f"http://127.0.0.1:{port}", stop, seen), daemon=True
    )
    bot.start()
    cfg = rapl_cfg(
        [
            "experiment=fast", f"reward={reward}", "align.teacher=human", "align.videos=4",
            "align.triplets=3", "num_train_steps=100", "eval.every=100", "human.labellers=[alice]",
            "human.clip_size=64", "human.max_frames=8", "human.timeout=60", f"human.port={port}",
        ]
    )  # fmt: skip
    try:
        final = train_on_rapl_reward(cfg, run_dir)
    except RuntimeError:
        stop.set()
        bot.join(30)
        assert "error" not in seen, seen["error"]  # the labeller's failure says more
        raise
    finally:
        stop.set()
        bot.join(30)
    assert "error" not in seen, seen["error"]
    assert len(seen["ranking"]) == 3 and seen["clips"] == 9
    assert final["align/triplets"] == 3 and final["align/triplets_asked"] == 3
    assert np.isfinite(final["eval/true_return"])
    stats = json.loads((run_dir / "align.json").read_text())
    assert stats["triplets"] == 3 and stats["teachers"] == ["human:alice"]
    assert stats["human/labels"] == 3
    with FeedbackStore(run_dir / "feedback.sqlite") as st:
        labels = st.feedback()
        assert len(labels) == 3 and {f.teacher_id for f in labels} == {"human:alice"}
        assert {f.query_id: f.ranking for f in labels} == seen["ranking"]
    saved = run_dir / ("reward_model/rlhf.pt" if reward == "rlhf" else "encoder/rapl.pt")
    assert saved.is_file()
