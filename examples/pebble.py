# PEBBLE: feedback-efficient interactive RL via relabelling experience and unsupervised
# pre-training (Lee, Smith, Abbeel, ICML 2021), as one readable file in the CleanRL style.
#
# Defaults follow B-Pref (rll-research/BPref: config/train_PEBBLE.yaml, config/agent/sac.yaml).
# Depends only on gymnasium[mujoco], torch and numpy; the pbrl package is deliberately not used.
#
#   python examples/pebble.py --env-id HalfCheetah-v5 --seed 1   # B-Pref schedule; wants a GPU
#   python examples/pebble.py --fast                              # ~25 s smoke run on a CPU
#
# Decisions where B-Pref's code is ambiguous or would break on gymnasium tasks:
# - the budget caps queried pairs and the last round is clipped, so labels <= max_feedback;
# - the oracle teacher gives exact ties the "equal" label 0.5 instead of preferring sigma0;
# - segments never cross an episode boundary (gymnasium MuJoCo episodes can end early);
# - the buffer never wraps (capacity = total steps), so relabelling every stored row is exact.
import argparse
import copy
import math
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Tiny budgets for `--fast`; flags given explicitly on the command line still win.
# fmt: off
FAST = dict(
    total_steps=2000, max_episode_steps=100, num_seed_steps=200, num_unsup_steps=300,
    num_interact=300, max_feedback=50, reward_batch=20, segment=10, reward_hidden_dim=64,
    reward_update=20, hidden_dim=64, batch_size=128, reset_update=10, eval_every=500,
    eval_episodes=2, heldout_pairs=200, single_thread=True,
)
# fmt: on


def parse_args():
    p = argparse.ArgumentParser(description="PEBBLE (SAC + preference-learned reward)")
    a = p.add_argument
    a("--env-id", default="HalfCheetah-v5")
    a("--seed", type=int, default=1)
    a("--total-steps", type=int, default=1_000_000)
    a("--max-episode-steps", type=int, default=None, help="override the env's time limit")
    # Feedback schedule
    a("--num-seed-steps", type=int, default=1000, help="uniform random actions first")
    a("--num-unsup-steps", type=int, default=5000, help="state-entropy pre-training steps")
    a("--num-interact", type=int, default=5000, help="env steps between feedback rounds")
    a("--max-feedback", type=int, default=1400, help="total budget of queried pairs")
    a("--reward-batch", type=int, default=128, help="queries per feedback round (M)")
    a("--large-batch", type=int, default=10, help="candidate pool = large_batch x M pairs")
    a("--segment", type=int, default=50, help="segment length H")
    # Reward model
    a("--ensemble-size", type=int, default=3)
    a("--reward-hidden-dim", type=int, default=256)
    a("--reward-lr", type=float, default=3e-4)
    a("--reward-train-batch", type=int, default=128, help="pairs per reward minibatch")
    a("--reward-update", type=int, default=200, help="max reward epochs per round")
    # SAC
    a("--gamma", type=float, default=0.99)
    a("--lr", type=float, default=1e-4, help="actor, critic and temperature learning rate")
    a("--batch-size", type=int, default=1024)
    a("--hidden-dim", type=int, default=1024)
    a("--tau", type=float, default=0.005)
    a("--target-update-every", type=int, default=2)
    a("--init-temperature", type=float, default=0.1)
    a("--reset-update", type=int, default=100, help="SAC updates right after the critic reset")
    a("--k", type=int, default=5, help="k of the k-NN state-entropy estimate")
    # Logging
    a("--eval-every", type=int, default=10_000)
    a("--eval-episodes", type=int, default=10)
    a("--heldout-pairs", type=int, default=1000, help="fresh pairs for preference accuracy")
    a("--device", default="auto", help="auto = cuda if available, else cpu")
    a("--single-thread", action="store_true", help="torch.set_num_threads(1)")
    a("--fast", action="store_true", help="tiny budgets for a smoke run")
    args = p.parse_args()
    if args.fast:
        p.set_defaults(**FAST)
        args = p.parse_args()
    return args


# ----------------------------------------------------------------------------- networks
def mlp(inp, hidden, out, depth, act=nn.ReLU):
    layers, d = [], inp
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), act()]
        d = hidden
    return nn.Sequential(*layers, nn.Linear(d, out))


class Actor(nn.Module):
    """Tanh-Gaussian policy; actions live in [-1, 1] and are rescaled only at env.step."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * act_dim, 2)

    def forward(self, obs):
        mu, log_std = self.net(obs).chunk(2, -1)
        # Squash log_std into its bounds smoothly (B-Pref) so the gradient never dies at a clip.
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (
            torch.tanh(log_std) + 1
        )
        return mu, log_std

    def sample(self, obs):
        mu, log_std = self(obs)
        u = mu + log_std.exp() * torch.randn_like(mu)
        logp = torch.distributions.Normal(mu, log_std.exp()).log_prob(u)
        # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), stable where 1 - tanh(u)^2 underflows.
        logp = logp - 2 * (math.log(2) - u - F.softplus(-2 * u))
        return torch.tanh(u), logp.sum(-1)


class Critic(nn.Module):
    """Twin Q networks; the target takes their minimum against over-estimation."""

    def __init__(self, obs_dim, act_dim, hidden):
        super().__init__()
        self.qf1 = mlp(obs_dim + act_dim, hidden, 1, 2)
        self.qf2 = mlp(obs_dim + act_dim, hidden, 1, 2)

    def forward(self, obs, act):
        x = torch.cat([obs, act], -1)
        return self.qf1(x).squeeze(-1), self.qf2(x).squeeze(-1)


class SAC:
    def __init__(self, obs_dim, act_dim, args):
        self.args, self.dims = args, (obs_dim, act_dim, args.hidden_dim)
        self.actor = Actor(*self.dims).to(args.device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=args.lr)
        log_alpha = torch.tensor(math.log(args.init_temperature), device=args.device)
        self.log_alpha = log_alpha.requires_grad_()
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=args.lr)
        self.target_entropy = -float(act_dim)
        self.reset_critic()

    def reset_critic(self):
        # After pre-training the critic has fit the intrinsic reward, which is now meaningless;
        # PEBBLE starts it afresh but keeps the exploratory actor and the temperature.
        self.critic = Critic(*self.dims).to(self.args.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.args.lr)

    @torch.no_grad()
    def act(self, obs, deterministic):
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.args.device)[None]
        action = torch.tanh(self.actor(obs)[0]) if deterministic else self.actor.sample(obs)[0]
        return action[0].cpu().numpy()

    def update(self, obs, act, reward, next_obs, not_done, step):
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_logp = self.actor.sample(next_obs)
            q_next = torch.min(*self.critic_target(next_obs, next_act)) - alpha * next_logp
            target = reward + not_done * self.args.gamma * q_next
        q1, q2 = self.critic(obs, act)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        act_pi, logp = self.actor.sample(obs)
        actor_loss = (alpha * logp - torch.min(*self.critic(obs, act_pi))).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        # Temperature tracks the target entropy -|A|.
        alpha_loss = (self.log_alpha.exp() * (-logp - self.target_entropy).detach()).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        if step % self.args.target_update_every == 0:
            with torch.no_grad():
                for p, tp in zip(
                    self.critic.parameters(), self.critic_target.parameters(), strict=True
                ):
                    tp.lerp_(p, self.args.tau)


class RewardEnsemble(nn.Module):
    """E members r_e(s, a) = tanh(MLP_e([s, a])); the agent's reward is their mean."""

    def __init__(self, in_dim, hidden, n):
        super().__init__()
        self.members = nn.ModuleList(
            nn.Sequential(mlp(in_dim, hidden, 1, 3, nn.LeakyReLU), nn.Tanh()) for _ in range(n)
        )

    def forward(self, x):  # (..., in_dim) -> (E, ...)
        return torch.stack([m(x).squeeze(-1) for m in self.members])


# ----------------------------------------------------------------------------- data
class ReplayBuffer:
    """Transitions plus the hidden true reward (for the scripted teacher only) and episode ids."""

    def __init__(self, capacity, obs_dim, act_dim, device):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)  # learned r_hat; rewritten by relabel()
        self.true_reward = np.zeros(capacity, np.float32)  # never shown to the agent
        self.not_done = np.zeros(capacity, np.float32)  # 0 only on termination, not truncation
        self.episode = np.zeros(capacity, np.int64)
        self.size, self.device = 0, device

    def tensor(self, x):
        return torch.as_tensor(x, device=self.device)

    def add(self, obs, act, next_obs, reward, true_reward, terminated, episode):
        i = self.size
        self.obs[i], self.act[i], self.next_obs[i] = obs, act, next_obs
        self.reward[i], self.true_reward[i] = reward, true_reward
        self.not_done[i], self.episode[i] = 1.0 - float(terminated), episode
        self.size += 1

    def sample(self, rng, n):
        i = rng.integers(0, self.size, n)
        fields = (self.obs, self.act, self.reward, self.next_obs, self.not_done)
        return [self.tensor(x[i]) for x in fields]

    def features(self, idx):  # reward-model input [s, a] at any index array
        return self.tensor(np.concatenate([self.obs[idx], self.act[idx]], -1))


def segment_starts(buf, H, last_episodes=100):
    """Start indices i whose window i..i+H-1 stays inside one of the most recent episodes.

    B-Pref assumes every episode has the first one's length; gymnasium MuJoCo tasks terminate
    early, so we check episode ids instead. Like B-Pref's trajectory store, only the last 100
    episodes are eligible, so queries follow the current policy.
    """
    n = buf.size - H + 1
    ep = buf.episode[: buf.size]
    starts = np.flatnonzero(ep[: max(n, 0)] == ep[H - 1 :])
    starts = starts[ep[starts] > ep[-1] - last_episodes]
    if len(starts) == 0:
        raise RuntimeError(f"no episode of length >= segment {H} in the buffer yet")
    return starts


def sample_pairs(buf, H, n, rng):
    """(n, 2, H) buffer indices of segment pairs. Indices stay valid: the buffer never wraps."""
    return rng.choice(segment_starts(buf, H), size=(n, 2))[..., None] + np.arange(H)


def oracle_teacher(true_returns):
    """Rational scripted teacher on undiscounted segment returns (n, 2) -> y = P[sigma1 > sigma0].

    B-Pref sends exact ties to sigma0; an 'equal' label (0.5) does not bias the reward.
    """
    y = (true_returns[:, 1] > true_returns[:, 0]).astype(np.float32)
    y[true_returns[:, 1] == true_returns[:, 0]] = 0.5
    return y


def segment_sums(model, buf, idx):  # (n, 2, H) -> (E, n, 2) per-member segment returns
    return model(buf.features(idx)).sum(-1)


def train_reward(model, opt, buf, pref_idx, pref_y, args, rng):
    """Bradley-Terry cross-entropy on segment sums, every member on its own minibatch order.

    Different orders and initialisations are the ensemble's only source of diversity (no
    bootstrap, as in B-Pref). Stops early once mean train accuracy exceeds 97%.
    """
    n, E, bs = len(pref_y), args.ensemble_size, args.reward_train_batch
    y_all = buf.tensor(pref_y)
    for epoch in range(args.reward_update):
        perms, correct, total_loss = [rng.permutation(n) for _ in range(E)], 0.0, 0.0
        for b in range(0, n, bs):
            loss = 0.0
            for e, member in enumerate(model.members):
                j = perms[e][b : b + bs]
                logp = F.log_softmax(member(buf.features(pref_idx[j])).squeeze(-1).sum(-1), -1)
                y = y_all[j]  # soft target: 0.5 for 'equal'
                loss = loss - (y * logp[:, 1] + (1 - y) * logp[:, 0]).mean()
                correct += ((logp[:, 1] > logp[:, 0]) == (y > 0.5)).sum().item()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(j)
        train_acc, mean_loss = correct / (n * E), total_loss / (n * E)
        if train_acc > 0.97:
            return train_acc, mean_loss, epoch + 1
    return train_acc, mean_loss, args.reward_update


@torch.no_grad()
def relabel(buf, model, chunk=10_000):
    """Rewrite every stored reward with the new r_hat: off-policy data stays consistent."""
    for i in range(0, buf.size, chunk):
        buf.reward[i : i + chunk] = model(buf.features(slice(i, i + chunk))).mean(0).cpu().numpy()


class RunningStd:
    """Running variance (parallel Welford) to scale the intrinsic reward; no mean shift."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, x):
        m, v, n = x.mean().item(), x.var(unbiased=False).item(), x.numel()
        delta, tot = m - self.mean, self.count + n
        self.var = (self.var * self.count + v * n + delta**2 * self.count * n / tot) / tot
        self.mean, self.count = self.mean + delta * n / tot, tot

    @property
    def std(self):
        return math.sqrt(self.var) + 1e-8


def knn_state_entropy(obs, all_obs, k):
    """Particle estimate of state entropy: distance to the k-th nearest stored state.

    Scored on the transition's s, as B-Pref does; the paper's log of the distance is not used.
    k + 1 because each sampled state is itself in the buffer at distance 0. The full (B, N)
    distance matrix is fine here: pre-training only sees num_seed + num_unsup states.
    """
    return torch.cdist(obs, all_obs).kthvalue(k + 1, dim=1).values


@torch.no_grad()
def heldout_accuracy(model, buf, args, rng):
    """Agreement of r_hat with the true reward on fresh (never labelled) pairs, ties dropped."""
    idx = sample_pairs(buf, args.segment, args.heldout_pairs, rng)
    true = buf.true_reward[idx].sum(-1)
    pred = segment_sums(model, buf, idx).mean(0).cpu().numpy()
    keep = true[:, 0] != true[:, 1]
    return float(((pred[:, 1] > pred[:, 0]) == (true[:, 1] > true[:, 0]))[keep].mean())


def evaluate(agent, env, args, scale, bias):
    """Mean true return of the deterministic policy over fixed-seed episodes."""
    returns = []
    for i in range(args.eval_episodes):
        obs, _ = env.reset(seed=args.seed + 10_000 + i)
        done, ret = False, 0.0
        while not done:
            obs, r, terminated, truncated, _ = env.step(bias + scale * agent.act(obs, True))
            ret, done = ret + float(r), terminated or truncated
        returns.append(ret)
    return float(np.mean(returns))


# ----------------------------------------------------------------------------- PEBBLE
def main():
    args = parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.single_thread:
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    heldout_rng = np.random.default_rng(args.seed + 1)  # diagnostics don't shift training draws

    env = gym.make(args.env_id, max_episode_steps=args.max_episode_steps)
    eval_env = gym.make(args.env_id, max_episode_steps=args.max_episode_steps)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    scale, bias = (high - low) / 2, (high + low) / 2  # the actor's [-1, 1] -> env bounds

    agent = SAC(obs_dim, act_dim, args)
    reward_model = RewardEnsemble(obs_dim + act_dim, args.reward_hidden_dim, args.ensemble_size)
    reward_model = reward_model.to(args.device)
    reward_opt = torch.optim.Adam(reward_model.parameters(), lr=args.reward_lr)
    buf = ReplayBuffer(args.total_steps, obs_dim, act_dim, args.device)
    ent_std = RunningStd()
    H, unsup_end = args.segment, args.num_seed_steps + args.num_unsup_steps
    pref_idx, pref_y = np.zeros((0, 2, H), np.int64), np.zeros(0, np.float32)
    labels, next_feedback = 0, unsup_end
    eval_return, pref_acc = float("nan"), float("nan")

    obs, _ = env.reset(seed=args.seed)
    episode, t0 = 0, time.time()
    for step in range(args.total_steps):
        # Collect one transition; the reward stored is r_hat once a reward model exists.
        if step < args.num_seed_steps:
            action = rng.uniform(-1, 1, act_dim).astype(np.float32)
        else:
            action = agent.act(obs, deterministic=False)
        next_obs, true_r, terminated, truncated, _ = env.step(bias + scale * action)
        r_hat = 0.0
        if labels > 0:
            with torch.no_grad():
                x = buf.tensor(np.concatenate([obs, action]).astype(np.float32))
                r_hat = reward_model(x).mean().item()
        buf.add(obs, action, next_obs, r_hat, true_r, terminated, episode)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
            episode += 1

        # ===== Unsupervised pre-training: maximise k-NN state entropy, no labels spent =====
        if args.num_seed_steps <= step < unsup_end:
            b_obs, b_act, _, b_next, b_not_done = buf.sample(rng, args.batch_size)
            r_int = knn_state_entropy(b_obs, buf.tensor(buf.obs[: buf.size]), args.k)
            ent_std.update(r_int)
            agent.update(b_obs, b_act, r_int / ent_std.std, b_next, b_not_done, step)

        if step == next_feedback and labels < args.max_feedback:
            next_feedback += args.num_interact
            # ===== Gather new preferences =====
            M = min(args.reward_batch, args.max_feedback - labels)  # clip the last round
            if labels == 0:  # the first round is uniform: an untrained ensemble's std is noise
                idx = sample_pairs(buf, H, M, rng)
            else:  # disagreement: std over members of P_e[sigma0 > sigma1], top M of a pool
                pool = sample_pairs(buf, H, M * args.large_batch, rng)
                with torch.no_grad():
                    p = torch.softmax(segment_sums(reward_model, buf, pool), -1)[..., 0]
                idx = pool[p.std(0).topk(M).indices.cpu().numpy()]
            y = oracle_teacher(buf.true_reward[idx].sum(-1))
            pref_idx, pref_y = np.concatenate([pref_idx, idx]), np.concatenate([pref_y, y])
            labels += M

            # ===== Train reward model =====
            train_acc, reward_loss, epochs = train_reward(
                reward_model, reward_opt, buf, pref_idx, pref_y, args, rng
            )

            # ===== Relabel the whole replay buffer with the new r_hat =====
            relabel(buf, reward_model)
            if step == unsup_end:  # first round: forget the critic fit to the intrinsic reward
                agent.reset_critic()
                for _ in range(args.reset_update):  # let the new critic catch up with the actor
                    agent.update(*buf.sample(rng, args.batch_size), step)
            pref_acc = heldout_accuracy(reward_model, buf, args, heldout_rng)
            print(
                f"step={step + 1} feedback labels={labels} reward/loss={reward_loss:.4f} "
                f"reward/train_acc={train_acc:.3f} epochs={epochs} pref/acc_heldout={pref_acc:.3f}",
                flush=True,
            )

        # ===== Train agent: one SAC update per env step on the relabelled reward =====
        if step >= unsup_end:
            agent.update(*buf.sample(rng, args.batch_size), step)

        # Evaluate: true return of the mean action, and r_hat's agreement with the true reward.
        if (step + 1) % args.eval_every == 0 or step + 1 == args.total_steps:
            eval_return = evaluate(agent, eval_env, args, scale, bias)
            if labels > 0:
                pref_acc = heldout_accuracy(reward_model, buf, args, heldout_rng)
            sps = (step + 1) / (time.time() - t0)
            print(
                f"step={step + 1} labels={labels} eval/true_return={eval_return:.2f} "
                f"pref/acc_heldout={pref_acc:.3f} charts/sps={sps:.0f}",
                flush=True,
            )

    print(f"FINAL labels={labels} eval_return={eval_return:.4f} pref_acc={pref_acc:.4f}")


if __name__ == "__main__":
    main()
