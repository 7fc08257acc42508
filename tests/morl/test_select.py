import numpy as np
import pytest

from pbrl.data import SegmentBatch
from pbrl.morl.envs import MOVectorEnv, make_mo_env
from pbrl.morl.plot import front_image
from pbrl.morl.select import tournament
from pbrl.teachers import make_teacher


def test_oracle_tournament_finds_the_best_clip(rng: np.random.Generator) -> None:
    n, h = 7, 5
    rew = rng.normal(size=(n, h, 2))
    u = np.array([0.3, 0.7])
    factors = {"a": rew[..., 0], "b": rew[..., 1]}
    segs = SegmentBatch(obs=np.zeros((n, h, 1)), actions=np.zeros((n, h, 1)),
                        true_reward=rew @ u, reward_factors=factors)  # fmt: skip
    res = tournament(segs, make_teacher("oracle"), rng)
    assert res.winner == int(np.argmax((rew @ u).sum(1))) and res.queries == n - 1


@pytest.mark.parametrize("m", [2, 3, 4])
def test_front_image_shapes(m: int, rng: np.random.Generator) -> None:
    pts = rng.normal(size=(12, m))
    img = front_image(pts, pts[:4], [f"o{j}" for j in range(m)], chosen=pts[0])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert (img != 255).any()  # something was drawn


def test_vector_env_keeps_vector_rewards_and_final_obs() -> None:
    venv = MOVectorEnv([lambda: make_mo_env("mo-point-3d", max_episode_steps=2)] * 2)
    venv.reset(0)
    _, r, term, trunc, final = venv.step(np.array([[2.0, 0, 0], [0, 0.6, 0.8]]))
    assert r.shape == (2, 3) and np.allclose(r, [[1, 0, 0], [0, 0.6, 0.8]], atol=1e-6)
    obs, _, _, trunc, final = venv.step(np.zeros((2, 3)))
    assert trunc.all() and set(final) == {0, 1} and np.allclose(obs[:, :3], 0)


def test_pbrl_reward_factors_become_objectives() -> None:
    env = make_mo_env("pbrl:hopper", objectives=["reward_forward", "reward_ctrl"])
    env.reset(seed=0)
    _, r, *_, info = env.step(env.action_space.sample())
    f = info["reward_factors"]
    assert r.shape == (2,) and np.allclose(r, [f["reward_forward"], f["reward_ctrl"]])
    with pytest.raises(ValueError, match="reward factors"):
        make_mo_env("pbrl:hopper", objectives=["nope"])


def test_mo_gymnasium_hopper_2d() -> None:
    pytest.importorskip("mo_gymnasium")
    venv = MOVectorEnv([lambda: make_mo_env("mo-hopper-2d", max_episode_steps=5)])
    assert venv.num_objectives == 2 and venv.reset(0).shape == (1, 11)
    _, r, *_ = venv.step(np.zeros((1, 3)))
    assert r.shape == (1, 2)
