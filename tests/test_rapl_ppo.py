"""PPO on RAPL's reward: the rollout's rewards rewritten per episode before GAE, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pymunk")

from stable_baselines3.common.callbacks import BaseCallback, CallbackList  # noqa: E402
from support import tb_scalars

from pbrl import envs  # noqa: E402
from pbrl.agents.sb3 import PbrlPPO, make_vec_env  # noqa: E402
from pbrl.envs.base import PbrlEnv, find_wrapper  # noqa: E402
from pbrl.visual.rl import (  # noqa: E402
    FINAL_STATE,
    EpisodeOTReward,
    EpisodicRolloutRelabel,
    FinalSimState,
    collect_rollouts,
    render_states,
    train_on_rapl_reward,
)

ENV = "xmagical_sweep_longstick"
SIZE = 32
CONFIGS = Path(__file__).resolve().parents[1] / "pbrl" / "configs" / "rapl"


@pytest.fixture(scope="module")
def scorer() -> EpisodeOTReward:
    """The OT reward on rendered X-Magical frames against one 12-step random demo.

    The "embedding" is the frame's pixels minus the demo's mean frame: cheap, and unlike an
    untrained CNN's features (nearly parallel, costs near 0) it gives rewards of order 1 that
    differ from step to step and between a whole and a partial episode.
    """
    render_env = envs.make_env(ENV, seed=0)
    demo = collect_rollouts(ENV, 1, seed=3, env_kwargs={"max_episode_steps": 12})
    frames = render_states(render_env, demo.post_states, SIZE)
    mean = torch.as_tensor(frames.reshape(-1, SIZE * SIZE * 3).mean(0), dtype=torch.float32)

    def embed(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x.reshape(len(x), -1), dtype=torch.float32) - mean

    return EpisodeOTReward(render_env, embed, frames, image_size=SIZE, eps=0.05)


class _Recorder(BaseCallback):
    """Records what each rollout saw (independently of the relabeller) and the stored result."""

    def __init__(self) -> None:
        super().__init__()
        self.rollouts: list[dict] = []
        self._steps: list[dict] = []

    def _on_rollout_start(self) -> None:
        self._steps = []

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        self._steps.append(
            {
                "pre": np.stack([i["sim_state"] for i in infos]).astype(np.float64),
                "done": np.array(self.locals["dones"], bool),
                "final": [i.get(FINAL_STATE) for i in infos],
                "cut": [
                    i["terminal_observation"] if i.get("TimeLimit.truncated") else None
                    for i in infos
                ],
            }
        )
        return True

    def _on_rollout_end(self) -> None:
        buf = self.model.rollout_buffer
        policy = self.model.policy
        boot = np.zeros(buf.rewards.shape)
        for t, s in enumerate(self._steps):
            for e, obs in enumerate(s["cut"]):
                if obs is not None:  # SB3's bootstrap, with the policy of this rollout
                    with torch.no_grad():
                        v = policy.predict_values(policy.obs_to_tensor(obs)[0])
                    boot[t, e] = self.model.gamma * float(v.item())
        self.rollouts.append(
            {
                "steps": self._steps,
                "boot": boot,
                "now": [
                    np.asarray(find_wrapper(env, PbrlEnv).get_env_state()["state"], np.float64)
                    for env in self.training_env.envs
                ],
                "rewards": buf.rewards.copy(),
                "values": buf.values.copy(),
                "starts": buf.episode_starts.copy(),
                "returns": buf.returns.copy(),
                "advantages": buf.advantages.copy(),
                "last_values": self.locals["values"].detach().cpu().numpy().ravel().copy(),
                "last_dones": np.array(self.locals["dones"], np.float64),
            }
        )


def _gae(rewards, values, starts, last_values, last_dones, gamma, lam):  # type: ignore[no-untyped-def]
    adv = np.zeros_like(rewards)
    run = np.zeros(rewards.shape[1])
    for t in reversed(range(len(rewards))):
        if t == len(rewards) - 1:
            live, nxt = 1.0 - last_dones, last_values
        else:
            live, nxt = 1.0 - starts[t + 1], values[t + 1]
        delta = rewards[t] + gamma * nxt * live - values[t]
        run = delta + gamma * lam * live * run
        adv[t] = run
    return adv, adv + values


@pytest.mark.parametrize("fast_rollout", [True, False], ids=["pbrl_loop", "sb3_loop"])
def test_rollout_rewards_are_the_episode_reward_with_bootstrap_and_gae(scorer, fast_rollout):
    # Two env columns with 7- and 4-step episodes (X-Magical only truncates, so SB3 adds
    # gamma V(s_T) at every episode end) and 10-step rollouts: episodes cross rollouts.
    # Both rollout loops: PbrlPPO's and SB3's own collect_rollouts.
    lengths, n_steps, gamma, lam = (7, 4), 10, 0.9, 0.8
    venv = make_vec_env(
        [
            lambda n=n, e=e: FinalSimState(envs.make_env(ENV, seed=e, max_episode_steps=n))
            for e, n in enumerate(lengths)
        ]
    )
    model = PbrlPPO(
        "MlpPolicy",
        venv,
        n_steps=n_steps,
        batch_size=10,
        n_epochs=1,
        gamma=gamma,
        gae_lambda=lam,
        policy_kwargs={"net_arch": [16]},
        seed=0,
        fast_rollout=fast_rollout,
    )
    relabel = EpisodicRolloutRelabel(scorer, venv.envs)
    rec = _Recorder()
    model.learn(3 * n_steps * 2, callback=CallbackList([relabel, rec]))
    assert len(rec.rollouts) == 3

    expected = [np.full((n_steps, 2), np.nan) for _ in rec.rollouts]
    checked_full = checked_partial = 0
    for e in range(2):
        ep: list[tuple[int, int]] = []  # (rollout, row) of the running episode's steps
        pre: list[np.ndarray] = []
        for k, ro in enumerate(rec.rollouts):
            for t, s in enumerate(ro["steps"]):
                ep.append((k, t))
                pre.append(s["pre"][e])
                if s["done"][e]:  # a finished episode: scored whole, directly
                    post = np.stack([*pre[1:], s["final"][e]])
                    r = scorer([post])[0]
                    assert len(r) == lengths[e]
                    for i, (kk, tt) in enumerate(ep):
                        if kk == k:
                            expected[kk][tt, e] = r[i]
                            checked_full += 1
                    ep, pre = [], []
            if ep:  # cut by the rollout's end: the part so far, up to the env's state now
                if k + 1 < len(rec.rollouts):  # that state is the next step's pre-step state
                    nxt = rec.rollouts[k + 1]["steps"][0]["pre"][e]
                    np.testing.assert_array_equal(ro["now"][e], nxt)
                r = scorer([np.stack([*pre[1:], ro["now"][e]])])[0]
                for i, (kk, tt) in enumerate(ep):
                    if kk == k:
                        expected[kk][tt, e] = r[i]
                        checked_partial += 1
    # env 0: 7 + 3 cut | 4 finishing, 6 cut | 1 finishing, 7, 2 cut; env 1: 4, 4, 2 cut | ...
    assert checked_full == 2 * 30 - checked_partial and checked_partial == 3 + 6 + 2 + 2 + 2
    for k, ro in enumerate(rec.rollouts):
        assert not np.isnan(expected[k]).any()
        want = expected[k] + ro["boot"]
        assert (ro["boot"] != 0).sum() >= 3  # truncation bootstraps kept
        assert np.abs(expected[k]).min() > 0.1  # OT rewards of order 1, not ~0
        np.testing.assert_allclose(ro["rewards"], want, rtol=1e-5, atol=1e-5)
        adv, ret = _gae(
            want, ro["values"], ro["starts"], ro["last_values"], ro["last_dones"], gamma, lam
        )
        np.testing.assert_allclose(ro["advantages"], adv, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ro["returns"], ret, rtol=1e-4, atol=1e-4)
    assert relabel.partial_steps == checked_partial
    # The summaries are of whole episodes: env 0 finished 4, env 1 finished 7 in 30 steps.
    assert sorted(f["length"] for f in relabel.finished) == [4.0] * 7 + [7.0] * 4


def test_fast_run_trains_ppo_on_rapl_reward_and_resumes(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pbrl.visual.train",
        "experiment=fast",
        "agent.algo=ppo",
        f"hydra.run.dir={run}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=180)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["charts/time_total_timesteps"] == 300  # 3 rollouts of 100 steps
    assert final["rapl/episodes_scored"] == 6  # 300 steps of 50-step episodes
    assert final["rapl/partial_episode_steps"] == 0  # 100 steps: whole episodes only
    assert final["losses/n_updates"] == 30  # 10 epochs per rollout
    tags = tb_scalars(run)
    for tag in ("eval/true_return", "eval/rapl_return", "train/rapl_return", "losses/clip_range"):
        assert tag in tags, tag
    assert "losses/ent_coef" not in tags  # not SAC
    assert len(tags["train/rapl_return"]) >= 2
    assert all(-2.0 * 50 <= v < 0.0 for v in tags["train/rapl_return"])
    assert (run / "checkpoint" / "state.pt").is_file()
    cfg = json.loads((run / "config.json").read_text())
    cfg["num_train_steps"] = 400
    train_on_rapl_reward(cfg, run, resume=True)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["charts/time_total_timesteps"] == 400
    assert final["losses/n_updates"] == 40
    assert final["rapl/episodes_scored"] == 2  # only the new episodes


@pytest.mark.parametrize(
    "overrides, tag",
    [
        (["reward=rlhf", "rlhf.epochs=2"], "rlhf"),
        (["encoder.aligned=false"], "rapl"),
        (["reward=true_reward"], None),
    ],
    ids=["rlhf", "imnet_ot", "true_reward"],
)
def test_ppo_runs_on_every_reward_kind(tmp_path, overrides, tag):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "rl",
            overrides=[
                "experiment=fast",
                "agent.algo=ppo",
                "agent.ppo.n_epochs=2",
                "num_train_steps=100",
                "eval.every=100",
                "checkpoint.final=false",
                *overrides,
            ],
        )
    plain = OmegaConf.to_container(cfg, resolve=True)
    final = train_on_rapl_reward(plain, tmp_path)
    assert final["charts/time_total_timesteps"] == 100
    assert final["losses/n_updates"] == 2
    if tag is None:
        assert not any(k.startswith(("rapl/", "rlhf/", "train/")) for k in final)
    else:
        assert final[f"{tag}/episodes_scored"] == 2
        assert final[f"{tag}/partial_episode_steps"] == 0
        assert np.isfinite(final[f"train/{tag}_return"]) and final[f"train/{tag}_return"] != 0
