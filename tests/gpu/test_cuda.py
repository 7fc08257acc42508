"""The batched backend and the on-device loop on CUDA (``pytest -m gpu tests/gpu``)."""

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
pytest.importorskip("mujoco_warp", reason="needs the gpu extra: pip install 'pbrl[gpu]'")

from pbrl.gpu.sim import TASKS, BatchedMujocoEnv  # noqa: E402


@pytest.mark.parametrize("task", sorted(TASKS))
def test_cuda_matches_cpu_backend(task: str) -> None:
    """Same state, same actions: the CUDA and CPU backends agree step by step (graph replay).

    The CPU worlds start from the CUDA worlds' reset states (torch's CUDA and CPU generators
    draw different reset noise from the same seed).
    """
    n = 16
    envs = [BatchedMujocoEnv(task, n, seed=3, device=d) for d in ("cuda", "cpu")]
    obs0, info = envs[0].reset()
    envs[1].reset()
    envs[1].set_sim_state(info["sim_state"].cpu())
    torch.testing.assert_close(obs0.cpu(), envs[1].observe(), rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        a = torch.rand(n, envs[0].act_dim, generator=g) * 2 - 1
        out = [e.step(a.to(e.device)) for e in envs]
        atol = 5e-2 if task == "ant" else 1e-3
        torch.testing.assert_close(out[0][0].cpu(), out[1][0], rtol=1e-3, atol=atol)
        for k in envs[0].factor_names:
            f = [o[4]["reward_factors"][k] for o in out]
            torch.testing.assert_close(f[0].cpu(), f[1], rtol=1e-3, atol=atol)
    assert envs[0]._graph is not None  # the step was captured and replayed


def test_franka_on_cuda() -> None:
    """The Franka twin on CUDA: device IK, success flag and mocap sim state, CPU re-render."""
    from pbrl import envs as pbrl_envs

    env = BatchedMujocoEnv("franka_push", 256, seed=0, device="cuda")
    obs, info = env.reset()
    assert obs.is_cuda and obs.shape == (256, 44) and info["sim_state"].shape == (256, 39)
    for _ in range(3):
        obs, r, term, trunc, info = env.step(torch.rand(256, 4, device="cuda") * 2 - 1)
    assert r.is_cuda and info["success"].is_cuda and info["success"].dtype == torch.bool
    assert torch.isfinite(obs).all() and not term.any() and not env.contact_overflow()
    torch.testing.assert_close(env.reward_from_factors(info["reward_factors"]), r)
    s = info["sim_state"][0].double().cpu().numpy()
    cpu = pbrl_envs.make_env("franka_push", seed=0)
    np.testing.assert_array_equal(env.render_state(s, 32, 32), cpu.render_state(s, 32, 32))
    cpu.close()
    env.close()


def test_tensors_stay_on_device_and_render() -> None:
    env = BatchedMujocoEnv("hopper", 64, seed=0, device="cuda")
    obs, info = env.reset()
    assert obs.is_cuda and info["sim_state"].is_cuda
    _, r, term, trunc, info = env.step(torch.zeros(64, env.act_dim, device="cuda"))
    assert r.is_cuda and info["reward_factors"]["reward_forward"].is_cuda
    frame = env.render_state(info["sim_state"][0].double().cpu().numpy(), 32, 32)
    assert frame.shape == (32, 32, 3) and frame.std() > 0


def test_gpu_ppo_loop_on_cuda(tmp_path) -> None:
    from hydra import compose, initialize_config_module

    from pbrl.cli import run

    overrides = [
        "env=gpu_hopper",
        "agent=gpu_ppo",
        "device=cuda",
        "experiment=fast",
        "agent.num_envs=1024",
        "agent.n_steps=16",
        "agent.batch_size=4096",
        "agent.num_seed_steps=0",
        "agent.num_unsup_steps=32768",  # 2 rollouts: 32 steps per world >= segment_size 25
        "agent.num_interact=16384",
        "num_train_steps=65536",
        "eval.every=65536",
    ]
    with initialize_config_module(config_module="pbrl.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    final = run(cfg, tmp_path)
    assert final["pref/queries"] > 0 and np.isfinite(final["eval/true_return"])
