"""imitation's preference comparisons on a MuJoCo task: the baseline of bench_vs_imitation.py.

Runs inside benchmarks/.venv-imitation (made by setup_imitation_venv.sh); it imports imitation,
never pbrl. Prints one JSON line last on stdout:
{"wall_s", "train_wall_s", "true_return", "true_return_std", "comparisons", "env_steps", ...}.

Settings are matched to pbrl's PrefPPO (pbrl/configs/agent/prefppo.yaml, reward/bradley_terry,
teacher/oracle) wherever imitation exposes the knob:

- PPO (SB3): n_envs 16, n_steps 500, batch 64, lr 3e-4, n_epochs 20, gamma 0.99,
  gae_lambda 0.92, ent_coef 0, clip 0.4 linearly decayed over the whole run, gSDE (freq 4),
  pi/vf 3 x 256, VecNormalize on observations only (the reward net sees raw observations).
- Reward: BasicRewardNet on (s, a), 3 x 256 hidden; Adam lr 3e-4, batch 128 pairs.
- Teacher: SyntheticGatherer(temperature=0, sample=False, discount 1) = rational oracle.
- Segments: RandomFragmenter, fragment length 50; label budget = --total-comparisons.
- Feedback rounds: ceil(B / M) rounds of up to M pairs (M = PrefPPO's reward_batch, 128), the first
  one before any agent training; at least 2 (imitation cannot do fewer), so B <= M is split
  B/2 + B/2 where PrefPPO asks for all B at once.
- Env steps: --total-timesteps counts agent training steps; imitation trains the agent once per
  round *including* the initial one (K+1 chunks of T/K), so it is given T*K/(K+1) to land on T.

Not matchable (imitation has no knob for it, or it would change the algorithm):
- No unsupervised state-entropy pre-training (PrefPPO spends agent.num_unsup_steps on it).
- One reward net, not an ensemble of 3; linear output, not tanh (favours imitation's speed).
- Reward epochs follow imitation's defaults (1 epoch a round, 200x on the first round) with no
  early stopping; PrefPPO trains up to 200 epochs a round and stops at 97% train accuracy.
- Rounds are spread evenly over the whole run; PrefPPO queries every num_interact steps after
  pre-training and freezes the reward once the budget is spent.
- Queries come from the newest *finished* agent episodes (imitation's buffer); when too few
  exist (first round) imitation rolls out extra steps with the current policy, and since every
  env must finish its 1000-step episode that is num_envs x 1000 steps (16000 at 16 envs).
  env_steps counts them, agent_steps does not; pbrl cuts queries from its own training rollouts.
- PPO stops only at rollout boundaries (num_envs x n_steps); T must be a multiple of that times
  the number of rounds for agent_steps to equal T (bench_vs_imitation.py checks this).
- Segment selection is uniform random (PrefPPO's query=uniform, the bench default).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time

T_START = time.perf_counter()

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from imitation.algorithms import preference_comparisons as pc  # noqa: E402
from imitation.rewards.reward_nets import BasicRewardNet  # noqa: E402
from imitation.util import logger as imit_logger  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402


class StepCounter(gym.Wrapper):
    """Counts every env step taken for training (agent rollouts and imitation's extra ones)."""

    steps = 0

    def step(self, action):  # type: ignore[no-untyped-def]
        StepCounter.steps += 1
        return self.env.step(action)


class WholeRunPPO(PPO):
    """PPO whose lr/clip schedules run over the whole job, not each ``learn()`` chunk."""

    run_total_timesteps = 1

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        done = float(num_timesteps) / float(max(self.run_total_timesteps, 1))
        self._current_progress_remaining = max(0.0, 1.0 - done)


def decayed(start: float):  # type: ignore[no-untyped-def]
    return lambda progress_remaining: start * progress_remaining


def make_env(env_id: str, counted: bool):  # type: ignore[no-untyped-def]
    def thunk() -> gym.Env:
        env = gym.make(env_id)
        return StepCounter(env) if counted else env

    return thunk


def evaluate(model: PPO, vecnorm: VecNormalize, env_id: str, seed: int, episodes: int):
    """Mean-action true return over ``episodes`` episodes (seeds as pbrl's evaluator)."""
    returns = []
    for i in range(episodes):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed + 10_000 + i)
        total, done = 0.0, False
        while not done:
            norm = vecnorm.normalize_obs(obs[None].astype(np.float32))
            action, _ = model.predict(norm, deterministic=True)
            obs, rew, term, trunc, _ = env.step(action[0])
            total += float(rew)
            done = term or trunc
        env.close()
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="HalfCheetah-v4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total-timesteps", type=int, default=100_000)
    p.add_argument("--total-comparisons", type=int, default=1400)
    p.add_argument("--fragment-length", type=int, default=50)
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--n-steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--net-arch", type=int, nargs="+", default=[256, 256, 256])
    p.add_argument("--reward-hidden", type=int, nargs="+", default=[256, 256, 256])
    p.add_argument("--reward-lr", type=float, default=3e-4)
    p.add_argument("--reward-batch-size", type=int, default=128)
    p.add_argument("--reward-epochs", type=int, default=1, help="imitation default: 1")
    p.add_argument("--initial-epoch-multiplier", type=float, default=200.0)
    p.add_argument("--queries-per-round", type=int, default=128, help="PrefPPO reward_batch")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    T, B = args.total_timesteps, args.total_comparisons

    # Feedback rounds as PrefPPO: ceil(B / 128) rounds; the first is imitation's initial one.
    # imitation always runs at least two rounds (its initial one plus >= 1 iteration) and cannot
    # run a round of zero pairs, so a budget PrefPPO spends in one round is split in two halves.
    M = args.queries_per_round
    rounds = max(2, math.ceil(B / M))
    num_iterations = rounds - 1
    initial_frac = min(M, B / 2) / B
    # imitation trains the agent num_iterations + 1 times for T_arg // num_iterations steps each.
    t_arg = T * num_iterations // (num_iterations + 1)

    base = DummyVecEnv([make_env(args.env, counted=True) for _ in range(args.num_envs)])
    base.seed(args.seed)  # env i gets seed + i, as pbrl's vector env
    reward_net = BasicRewardNet(
        base.observation_space,
        base.action_space,
        use_state=True,
        use_action=True,
        use_next_state=False,
        use_done=False,
        hid_sizes=tuple(args.reward_hidden),
    )
    arch = list(args.net_arch)
    agent = WholeRunPPO(
        "MlpPolicy",
        base,
        learning_rate=args.lr,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        gamma=0.99,
        gae_lambda=0.92,
        ent_coef=0.0,
        clip_range=decayed(0.4),
        use_sde=True,
        sde_sample_freq=4,
        policy_kwargs={"net_arch": {"pi": arch, "vf": arch}},
        seed=args.seed,
        device="cpu",
        verbose=0,
    )
    agent.run_total_timesteps = T
    log_dir = tempfile.mkdtemp(prefix="imitation-prefcomp-")
    logger = imit_logger.configure(log_dir, ["log"])
    trainer = pc.AgentTrainer(
        algorithm=agent, reward_fn=reward_net, venv=base, rng=rng, custom_logger=logger
    )
    # Observation normalisation for the policy only, above imitation's reward wrapper, so the
    # buffered trajectories (and hence the reward net) keep raw observations, as in pbrl.
    vecnorm = VecNormalize(trainer.venv, norm_obs=True, norm_reward=False)
    agent.set_env(vecnorm)

    preference_model = pc.PreferenceModel(reward_net)
    reward_trainer = pc.BasicRewardTrainer(
        preference_model=preference_model,
        loss=pc.CrossEntropyRewardLoss(),
        rng=rng,
        batch_size=args.reward_batch_size,
        epochs=args.reward_epochs,
        lr=args.reward_lr,
        custom_logger=logger,
    )
    prefcomp = pc.PreferenceComparisons(
        trainer,
        reward_net,
        num_iterations=num_iterations,
        fragmenter=pc.RandomFragmenter(rng=rng, custom_logger=logger),
        preference_gatherer=pc.SyntheticGatherer(
            temperature=0, discount_factor=1, sample=False, rng=rng, custom_logger=logger
        ),
        reward_trainer=reward_trainer,
        fragment_length=args.fragment_length,
        transition_oversampling=1,
        initial_comparison_frac=initial_frac,
        initial_epoch_multiplier=args.initial_epoch_multiplier,
        query_schedule="constant",
        custom_logger=logger,
    )

    t0 = time.perf_counter()
    stdout = sys.stdout
    sys.stdout = sys.stderr  # imitation prints its query schedule; keep stdout for the JSON
    try:
        stats = prefcomp.train(total_timesteps=t_arg, total_comparisons=B)
    finally:
        sys.stdout = stdout
    train_wall = time.perf_counter() - t0
    ret, ret_std = evaluate(agent, vecnorm, args.env, args.seed, args.eval_episodes)
    out = {
        "wall_s": round(time.perf_counter() - T_START, 3),
        "train_wall_s": round(train_wall, 3),
        "true_return": ret,
        "true_return_std": ret_std,
        "comparisons": len(prefcomp.dataset),
        "env_steps": int(StepCounter.steps),
        "agent_steps": int(agent.num_timesteps),
        "rounds": num_iterations + 1,
        "reward_accuracy": stats.get("reward_accuracy"),
        "env": args.env,
        "seed": args.seed,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
