"""Reward learning under the regret preference model (Knox et al.), tabular and continuous.

**Tabular** (:class:`TabularPreferenceLearner`). The reward is linear in known features,
``r_w(s, a) = w . phi(s, a)``. A pair's logit is ``Delta_w(sigma_1) - Delta_w(sigma_0)`` with

- ``model="partial_return"``: ``Delta_w(sigma) = sum_t r_w(s_t, a_t)``;
- ``model="regret"``: ``Delta_w(sigma) = sum_t A*_w(s_t, a_t)
  = sum_t r_w + gamma sum_{t>=1} V*_w(s_t) - sum_{t<H} V*_w(s_t)`` (``= sum r + V(s_H) - V(s_0)``
  for ``gamma = 1``), the regret model with the learner's own reward.

``V*_w`` is made differentiable through its successor features. For a fixed policy ``pi``,
``V^pi_w = Psi^pi w`` with ``Psi^pi = (I - gamma P_pi)^-1 Phi_pi``. With ``temperature = 0`` we
solve for the exact optimal policy of the current ``w`` (policy iteration, warm-started) and use
``V*_w = Psi^{pi*_w} w``: exact values, gradient ``Psi^{pi*_w}`` (``V*`` is piecewise linear in
``w``). The paper instead takes a soft maximum (temperature 0.001) over a fixed library of
policies optimal for random rewards; ours is that construction with the library replaced by
the exact optimum. ``temperature > 0`` uses soft (entropy-regularised) policy iteration,
``V(s) = T log sum_a exp(Q(s, a) / T)``, whose gradient is likewise ``Psi^{pi_T}`` with
``pi_T = softmax(Q / T)`` (envelope argument); it tends to the hard maximum as ``T -> 0``.

Loss: binary cross-entropy of the logit against ``y = P(second preferred)`` (ties 1/2), mean
over pairs, full-batch Adam in float64. The official code doubles the data set by swapping each
pair; for this antisymmetric logit that leaves the loss unchanged, so we do not. The regret
model returns the weights with the lowest training loss seen (the official early stopping: the
loss is recorded with the weights *before* the step that follows it).

**Continuous** (:class:`AdvantageRewardLearner`). The follow-up paper ("Learning optimal
advantage from preferences and mistaking it for reward", AAAI 2024) shows that fitting the usual
partial-return Bradley-Terry model to regret-generated labels learns ``A*``, not ``r``. This
learner fits ``g(s, a) = f(s, a) - max_{a' in {a} u B} f(s, a')`` with ``B`` a fixed probe set
of ``K`` actions drawn uniformly in the action box: ``g <= 0`` and ``g = 0`` for the best probed
action, an approximation of the identification constraint ``max_a A*(s, a) = 0``. The agent
uses ``g`` as its reward. Caveats (see ``docs/regret.md``): ``A*`` as a reward is potential
shaping with ``Phi = V*`` — the optimal policy is kept but the signal is heavily shaped;
without the max constraint ``A*`` is known only up to a per-state shift (a positive shift makes
agents avoid termination, a negative one makes them end episodes early); and the probe-set max
is only a lower bound of the true max over actions.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from pbrl.rewards.bradley_terry import BTRewardLearner, RewardEnsemble
from pbrl.tabular.delivery import TabularMDP, _transition_matrix, q_from_v

__all__ = [
    "AdvantageEnsemble",
    "AdvantageRewardLearner",
    "TabularPreferenceLearner",
    "optimal_successor_features",
]

PreferenceModelName = Literal["regret", "partial_return"]


def optimal_successor_features(
    mdp: TabularMDP,
    weights: np.ndarray,
    temperature: float = 0.0,
    policy: np.ndarray | None = None,
    max_iters: int = 1000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal (or soft-optimal) values of ``r = phi . w`` and the successor features behind them.

    Args:
        mdp: the MDP (features, transitions, ``gamma``).
        weights: ``(d,)`` reward weights.
        temperature: 0 for the hard optimum (policy iteration); ``T > 0`` for soft policy
            iteration (``pi = softmax(Q / T)``, values include the entropy bonus).
        policy: ``(S,)`` warm start for the hard case.
        max_iters: safety cap on improvement steps.

    Returns:
        ``V (S,)``, ``Psi (S, d)`` successor features of the (soft-)optimal policy (zero at
        absorbing states; ``V = Psi w`` when ``T = 0``), and the policy: ``(S,)`` actions for
        ``T = 0``, ``(S, A)`` probabilities for ``T > 0``.
    """
    w = np.asarray(weights, np.float64)
    phi = mdp.features
    r = np.where(mdp.terminal[:, None], 0.0, phi @ w)
    n_s, n_a = mdp.next_state.shape
    eye = np.eye(n_s)
    idx = np.arange(n_s)

    def solve(pi_prob: np.ndarray, rhs: np.ndarray) -> np.ndarray:
        return np.linalg.solve(eye - mdp.gamma * _transition_matrix(mdp, pi_prob), rhs)

    if temperature <= 0.0:
        pi = np.zeros(n_s, np.int64) if policy is None else np.asarray(policy, np.int64).copy()
        for _ in range(max_iters):
            probs = np.zeros((n_s, n_a))
            probs[idx, pi] = 1.0
            phi_pi = phi[idx, pi]  # (S, d)
            psi = solve(probs, np.concatenate([phi_pi, r[idx, pi][:, None]], axis=1))
            v = psi[:, -1]
            q = q_from_v(mdp, r, v)
            best = q.argmax(axis=1)
            better = q[idx, best] > q[idx, pi] + 1e-12 * (1.0 + np.abs(v))
            if not better.any():
                psi = np.where(mdp.terminal[:, None], 0.0, psi[:, :-1])
                return v, psi, pi
            pi = np.where(better, best, pi)
        raise RuntimeError(f"policy iteration did not converge in {max_iters} iterations")

    t = float(temperature)
    v = np.zeros(n_s)
    for _ in range(max_iters):
        q = q_from_v(mdp, r, v)
        logits = q / t
        log_pi = logits - torch.logsumexp(torch.as_tensor(logits), dim=1, keepdim=True).numpy()
        probs = np.exp(log_pi)
        # soft policy evaluation: reward plus entropy bonus -T log pi
        r_soft = (probs * (r - t * log_pi)).sum(axis=1)
        r_soft[mdp.terminal] = 0.0
        v_new = solve(probs, r_soft)
        if np.max(np.abs(v_new - v)) < 1e-10 * (1.0 + np.abs(v_new).max()):
            v = v_new
            break
        v = v_new
    else:
        raise RuntimeError(f"soft policy iteration did not converge in {max_iters} iterations")
    q = q_from_v(mdp, r, v)
    log_pi = q / t - torch.logsumexp(torch.as_tensor(q / t), dim=1, keepdim=True).numpy()
    probs = np.exp(log_pi)
    psi = solve(probs, (probs[..., None] * phi).sum(axis=1))
    psi[mdp.terminal] = 0.0
    return v, psi, probs


class TabularPreferenceLearner:
    """Linear reward weights fitted to pair preferences under one preference model.

    Args:
        mdp: gives the features ``phi (S, A, d)``, transitions and ``gamma`` (its true weights
            are never read).
        model: ``"regret"`` or ``"partial_return"``.
        lr: Adam learning rate (official defaults: 0.5 with 5000 iterations; the paper's
            scripts 2 with 1000).
        n_iters: full-batch Adam steps.
        temperature: 0 for the exact hard ``V*`` (default), ``> 0`` for soft value iteration.
        init_scale: initial weights are ``U(-init_scale, init_scale)`` (``0``: zeros).
        seed: seeds the initial weights.
    """

    def __init__(
        self,
        mdp: TabularMDP,
        model: PreferenceModelName = "regret",
        lr: float = 0.5,
        n_iters: int = 1000,
        temperature: float = 0.0,
        init_scale: float = 0.0,
        seed: int = 0,
    ) -> None:
        if model not in ("regret", "partial_return"):
            raise ValueError(f"unknown preference model {model!r}; valid: regret, partial_return")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if int(n_iters) < 1:
            raise ValueError(f"n_iters must be >= 1, got {n_iters}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        self.mdp = mdp
        self.model = model
        self.lr = float(lr)
        self.n_iters = int(n_iters)
        self.temperature = float(temperature)
        d = mdp.features.shape[2]
        rng = np.random.default_rng(seed)
        self.weights = rng.uniform(-init_scale, init_scale, d) if init_scale > 0 else np.zeros(d)
        self._policy: np.ndarray | None = None

    # --- segment summaries --------------------------------------------------------------
    def _segment_terms(
        self, states: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Summed features ``(Q, 2, d)`` and signed state weights ``(Q, 2, H + 1)``.

        ``Delta = w . Phi + sum_t c_t V(s_t)`` with ``c_0 = -1``, ``c_H = gamma`` and
        ``c_t = gamma - 1`` in between.
        """
        mdp = self.mdp
        phi = mdp.features[states[..., :-1], actions].sum(axis=-2)
        h = actions.shape[-1]
        c = np.full(h + 1, mdp.gamma - 1.0)
        c[0], c[-1] = -1.0, mdp.gamma
        return phi, np.broadcast_to(c, states.shape)

    def logits(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """``(Q,)`` ``Delta(second) - Delta(first)`` under the current weights."""
        states, actions = self._check(states, actions)
        phi, c = self._segment_terms(states, actions)
        delta = phi @ self.weights
        if self.model == "regret":
            v, _, self._policy = optimal_successor_features(
                self.mdp, self.weights, self.temperature, self._warm()
            )
            delta = delta + (c * v[states]).sum(axis=-1)
        return delta[:, 1] - delta[:, 0]

    def _warm(self) -> np.ndarray | None:
        return self._policy if self.temperature == 0.0 else None

    def _check(self, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        states = np.asarray(states, np.int64)
        actions = np.asarray(actions, np.int64)
        if states.ndim != 3 or states.shape[1] != 2:
            raise ValueError(f"states must be (Q, 2, H + 1), got {states.shape}")
        q, _, h1 = states.shape
        if actions.shape != (q, 2, h1 - 1):
            raise ValueError(
                f"actions must be ({q}, 2, {h1 - 1}) to match states, got {actions.shape}"
            )
        if states.min() < 0 or states.max() >= self.mdp.n_states:
            raise ValueError(f"state indices must lie in [0, {self.mdp.n_states})")
        if actions.min() < 0 or actions.max() >= self.mdp.n_actions:
            raise ValueError(f"action indices must lie in [0, {self.mdp.n_actions})")
        return states, actions

    # --- training -----------------------------------------------------------------------
    def fit(self, states: np.ndarray, actions: np.ndarray, target: np.ndarray) -> dict[str, float]:
        """Fit the weights to labelled pairs (continuing from the current weights).

        Args:
            states: ``(Q, 2, H + 1)`` state indices of (first, second) segments, end state
                included (absorbing padding allowed).
            actions: ``(Q, 2, H)`` action indices.
            target: ``(Q,)`` probability that the second segment is preferred.

        Returns:
            ``loss`` (final or best, see the class docstring), ``accuracy`` on hard labels
            (ties excluded) and ``iters``.
        """
        states, actions = self._check(states, actions)
        y_np = np.asarray(target, np.float64)
        if y_np.shape != (len(states),) or not np.all((y_np >= 0) & (y_np <= 1)):
            raise ValueError(
                f"target must be ({len(states)},) probabilities in [0, 1] (skips removed)"
            )
        phi, c = self._segment_terms(states, actions)
        dphi = torch.as_tensor(phi[:, 1] - phi[:, 0])  # (Q, d)
        y = torch.as_tensor(y_np)
        w = torch.tensor(self.weights, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([w], lr=self.lr)
        regret = self.model == "regret"
        if regret:
            st = torch.as_tensor(states)
            ct = torch.as_tensor(np.ascontiguousarray(c))
            sign = torch.tensor([-1.0, 1.0], dtype=torch.float64)[None, :, None]
        best_loss, best_w = math.inf, self.weights.copy()
        loss_val = math.inf
        for _ in range(self.n_iters):
            logit = dphi @ w
            if regret:
                v, psi, self._policy = optimal_successor_features(
                    self.mdp, w.detach().numpy(), self.temperature, self._warm()
                )
                # value exact, gradient through the successor features Psi
                v_t = torch.as_tensor(v) + torch.as_tensor(psi) @ (w - w.detach())
                logit = logit + (sign * ct * v_t[st]).sum(dim=(1, 2))
            loss = F.binary_cross_entropy_with_logits(logit, y)
            loss_val = float(loss.item())
            if regret and loss_val < best_loss:
                best_loss, best_w = loss_val, w.detach().numpy().copy()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.weights = best_w if regret else w.detach().numpy().copy()
        final = best_loss if regret else loss_val
        hard = y_np != 0.5
        pred = self.logits(states, actions) > 0
        acc = float((pred[hard] == (y_np[hard] > 0.5)).mean()) if hard.any() else float("nan")
        return {"loss": final, "accuracy": acc, "iters": float(self.n_iters)}

    # --- outputs ------------------------------------------------------------------------
    def reward(self) -> np.ndarray:
        """``(S, A)`` learned reward ``phi . w``."""
        return self.mdp.features @ self.weights

    def policy(self) -> np.ndarray:
        """``(S,)`` a policy optimal for the learned reward (what the paper evaluates)."""
        return optimal_successor_features(self.mdp, self.weights, 0.0)[2]


# --- continuous control: learn A* and use it as the reward -----------------------------------
class AdvantageEnsemble(RewardEnsemble):
    """``g_e(s, a) = f_e(s, a) - max_{a' in {a} u B} f_e(s, a')``: a max-normalised advantage.

    Args:
        obs_dim, act_dim, ensemble_size, hidden, n_layers, output_activation, generator: as
            :class:`~pbrl.rewards.bradley_terry.RewardEnsemble` (``f_e`` is such a member).
        n_probe_actions: ``K`` probe actions in ``B`` (drawn once, uniformly in the box).
        action_low, action_high: the action box.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        ensemble_size: int = 3,
        hidden: int = 256,
        n_layers: int = 3,
        output_activation: str = "tanh",
        generator: torch.Generator | None = None,
        n_probe_actions: int = 16,
        action_low: float = -1.0,
        action_high: float = 1.0,
    ) -> None:
        super().__init__(
            obs_dim, act_dim, ensemble_size, hidden, n_layers, output_activation, generator
        )
        if int(n_probe_actions) < 1:
            raise ValueError(f"n_probe_actions must be >= 1, got {n_probe_actions}")
        if not action_high > action_low:
            raise ValueError(f"need action_low < action_high, got {action_low}, {action_high}")
        u = torch.rand(int(n_probe_actions), act_dim, generator=generator, dtype=torch.float32)
        self.register_buffer("probe", action_low + (action_high - action_low) * u)

    def forward(self, x: torch.Tensor, per_member: bool | None = None) -> torch.Tensor:
        """Per-member ``g_e``; same input conventions as :meth:`RewardEnsemble.forward`."""
        f_sa = super().forward(x, per_member)  # (E, ...)
        if per_member is None:
            per_member = x.ndim == 3
        obs = x[..., : self.obs_dim]
        k = self.probe.shape[0]
        obs_k = obs.unsqueeze(-2).expand(*obs.shape[:-1], k, self.obs_dim)
        probe = self.probe.expand(*obs.shape[:-1], k, self.act_dim)
        f_probe = super().forward(torch.cat([obs_k, probe], dim=-1), per_member)  # (E, ..., K)
        best = torch.maximum(f_sa, f_probe.max(dim=-1).values)
        return f_sa - best

    def _predict_small(self, o: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Small batches go through :meth:`forward` too (the probe max has no NumPy path)."""
        x = torch.cat(
            [torch.as_tensor(o, dtype=torch.float32), torch.as_tensor(a, dtype=torch.float32)], -1
        )
        with torch.no_grad():
            return self(x, per_member=False).mean(0).numpy().astype(np.float32)


class AdvantageRewardLearner(BTRewardLearner):
    """Partial-return Bradley-Terry fit of a max-normalised advantage (``reward=regret``).

    Identical training to :class:`~pbrl.rewards.bradley_terry.BTRewardLearner` (the
    partial-return loss is the right one: under regret labels its minimiser is ``A*``); only
    the network is an :class:`AdvantageEnsemble`. Extra args: ``n_probe_actions``,
    ``action_low``, ``action_high``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        n_probe_actions: int = 16,
        action_low: float = -1.0,
        action_high: float = 1.0,
        **kwargs: Any,
    ) -> None:
        if int(act_dim) < 1:
            raise ValueError("AdvantageRewardLearner needs actions (act_dim >= 1)")
        super().__init__(obs_dim, act_dim, **kwargs)
        hp = self.hparams
        hp.update(
            n_probe_actions=int(n_probe_actions),
            action_low=float(action_low),
            action_high=float(action_high),
        )
        self.generator = torch.Generator().manual_seed(hp["seed"])
        self.ensemble = AdvantageEnsemble(
            hp["obs_dim"],
            hp["act_dim"],
            hp["ensemble_size"],
            hp["hidden"],
            hp["n_layers"],
            hp["output_activation"],
            generator=self.generator,
            n_probe_actions=n_probe_actions,
            action_low=action_low,
            action_high=action_high,
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.ensemble.parameters(), lr=hp["lr"], fused=True)
