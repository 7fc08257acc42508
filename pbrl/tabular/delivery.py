"""The delivery gridworld of Knox et al. and exact dynamic programming on tabular MDPs.

Knox, Hatgis-Kessell, Booth, Niekum, Stone, Allievi, "Models of human preference for learning
reward functions" (TMLR 2024) study a delivery domain: a car drives on a grid to a destination.
Every cell holds one of the objects below; the reward of a move depends on the cell the car
enters (the state is the car's cell only: coins are never used up):

=============  =================================  ===========================================
cell           entering it gives the features     notes
=============  =================================  ===========================================
blank          ``step``                           gas: -1 by default
destination    ``destination``                    +50, episode ends
house          (cannot be entered)                the car stays put (features as below)
sheep          ``sheep``                          -50, episode ends
coin           ``step + coin``                    -1 + 1
roadblock      ``step + roadblock``               -1 - 1
mud            ``mud`` (replaces ``step``)        -2
mud + object   the object's features, with ``mud`` in place of ``step``
=============  =================================  ===========================================

A move off the board or into a house leaves the car where it is and costs ``step`` (``mud`` if
the car stands in mud). Destination and sheep cells are absorbing: every action there stays put
with no features (reward 0). The true weights over
:data:`FEATURES` = (step, destination, sheep, coin, roadblock, mud) are
:data:`TRUE_WEIGHTS` = (-1, 50, -50, 1, -1, -2); the reward of ``(s, a)`` is ``w . phi(s, a)``.

:data:`DELIVERY_BOARD` is the layout used in the official code (Stephanehk/Learning-OA-From-Prefs,
``data/input/*/2021-07-29_sparseboard2-notrap_board.json``, reference commit 2de458b); the cell
codes are those of :class:`Cell`. One deliberate difference from that code: its feature function
tests ``MUD_COIN`` twice (the first branch was meant for the mud house), so entering the mud-coin
cell there yields no features while its reward is ``coin + mud``; here features and reward agree.

Dynamic programming is exact: :func:`value_iteration` iterates the Bellman optimality operator
to a tolerance, :func:`policy_iteration` finishes in a handful of exact linear solves, and
:func:`policy_evaluation` solves ``(I - gamma P_pi) V = r_pi`` directly.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pbrl.data import SegmentBatch

__all__ = [
    "ACTIONS",
    "DELIVERY_BOARD",
    "FEATURES",
    "TRUE_WEIGHTS",
    "Cell",
    "TabularMDP",
    "delivery_mdp",
    "greedy_policy",
    "policy_evaluation",
    "policy_iteration",
    "random_delivery_board",
    "sample_segment_pairs",
    "scaled_return",
    "segment_batch",
    "value_iteration",
]


class Cell(enum.IntEnum):
    """Cell codes of a delivery board (the official code's ``Entity``)."""

    BLANK = 0
    GOAL = 1
    HOUSE = 2
    SHEEP = 3
    COIN = 4
    ROADBLOCK = 5
    MUD = 6
    MUD_GOAL = 7
    MUD_HOUSE = 8
    MUD_SHEEP = 9
    MUD_COIN = 10
    MUD_ROADBLOCK = 11


FEATURES: tuple[str, ...] = ("step", "destination", "sheep", "coin", "roadblock", "mud")
TRUE_WEIGHTS: tuple[float, ...] = (-1.0, 50.0, -50.0, 1.0, -1.0, -2.0)
# (row, column) displacement of up, down, left, right
ACTIONS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))

_STEP, _DEST, _SHEEP, _COIN, _BLOCK, _MUD = range(6)
_BLOCKED = {Cell.HOUSE, Cell.MUD_HOUSE}
_TERMINAL = {Cell.GOAL, Cell.MUD_GOAL, Cell.SHEEP, Cell.MUD_SHEEP}

# sparseboard2-notrap (see the module docstring): 10 x 10, destination at (8, 9) in mud.
DELIVERY_BOARD: tuple[tuple[int, ...], ...] = (
    (0, 0, 5, 0, 0, 0, 0, 0, 0, 0),
    (0, 0, 0, 0, 4, 0, 0, 0, 0, 6),
    (0, 0, 3, 0, 0, 0, 0, 6, 6, 6),
    (4, 0, 5, 0, 2, 3, 3, 6, 6, 0),
    (6, 6, 0, 0, 0, 0, 0, 0, 0, 0),
    (6, 0, 4, 0, 0, 0, 0, 0, 0, 0),
    (6, 2, 0, 3, 5, 2, 0, 0, 0, 0),
    (0, 4, 0, 0, 0, 0, 0, 10, 6, 6),
    (0, 0, 5, 0, 0, 0, 0, 6, 6, 7),
    (0, 0, 0, 0, 0, 0, 5, 0, 0, 4),
)


def _entry_features(cell: Cell) -> np.ndarray:
    """Features of entering ``cell`` (houses cannot be entered)."""
    phi = np.zeros(len(FEATURES))
    mud = cell >= Cell.MUD
    base = Cell(cell - Cell.MUD) if mud else cell
    if base in (Cell.BLANK, Cell.COIN, Cell.ROADBLOCK):
        phi[_MUD if mud else _STEP] = 1.0
    if base == Cell.GOAL:
        phi[_DEST] = 1.0
    elif base == Cell.SHEEP:
        phi[_SHEEP] = 1.0
    elif base == Cell.COIN:
        phi[_COIN] = 1.0
    elif base == Cell.ROADBLOCK:
        phi[_BLOCK] = 1.0
    return phi


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """A finite MDP with deterministic transitions and linear rewards ``r = phi . w``.

    Shapes: ``S`` states, ``A`` actions, ``d`` features.

    Attributes:
        next_state: ``(S, A)`` int64 successor of each state-action pair.
        features: ``(S, A, d)`` float64 ``phi(s, a)`` (terminal states: all zero).
        terminal: ``(S,)`` bool absorbing states (they loop to themselves with reward 0).
        start: ``(S,)`` bool states an episode may start in (the evaluation distribution).
        weights: ``(d,)`` float64 true reward weights.
        gamma: discount in (0, 1].
        feature_names: ``d`` names.
        shape: ``(height, width)`` of the grid the states index row-major, if any.
        board: the board it was built from, if any.
    """

    next_state: np.ndarray
    features: np.ndarray
    terminal: np.ndarray
    start: np.ndarray
    weights: np.ndarray
    gamma: float = 0.999
    feature_names: tuple[str, ...] = FEATURES
    shape: tuple[int, int] | None = None
    board: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        s, a = self.next_state.shape
        if self.features.ndim != 3 or self.features.shape[:2] != (s, a):
            raise ValueError(f"features must be ({s}, {a}, d), got {self.features.shape}")
        d = self.features.shape[2]
        if self.terminal.shape != (s,) or self.start.shape != (s,):
            raise ValueError(f"terminal and start must be ({s},) bool arrays")
        if self.weights.shape != (d,):
            raise ValueError(f"weights must be ({d},), got {self.weights.shape}")
        if len(self.feature_names) != d:
            raise ValueError(f"need {d} feature names, got {len(self.feature_names)}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma}")
        if self.next_state.min() < 0 or self.next_state.max() >= s:
            raise ValueError("next_state holds indices outside [0, S)")
        if not self.start.any():
            raise ValueError("no start state: every state is terminal or blocked")

    @property
    def n_states(self) -> int:
        """``S``."""
        return self.next_state.shape[0]

    @property
    def n_actions(self) -> int:
        """``A``."""
        return self.next_state.shape[1]

    def reward(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``(S, A)`` rewards ``phi(s, a) . w`` (the true weights by default)."""
        w = self.weights if weights is None else np.asarray(weights, np.float64)
        return self.features @ w

    def rollout(self, start: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Follow ``actions`` from ``start``: states ``(N, H + 1)`` and features ``(N, H, d)``.

        Args:
            start: ``(N,)`` start states.
            actions: ``(N, H)`` action indices. After a terminal state the segment stays in
                it with zero features (padding at the absorbing state).
        """
        start, actions = np.asarray(start, np.int64), np.asarray(actions, np.int64)
        n, h = actions.shape
        states = np.empty((n, h + 1), np.int64)
        states[:, 0] = start
        for t in range(h):
            states[:, t + 1] = self.next_state[states[:, t], actions[:, t]]
        return states, self.features[states[:, :-1], actions]


def delivery_mdp(
    board: Sequence[Sequence[int]] | np.ndarray = DELIVERY_BOARD,
    weights: Sequence[float] = TRUE_WEIGHTS,
    gamma: float = 0.999,
) -> TabularMDP:
    """Build the delivery MDP of a board (default: the paper's board and reward).

    States are cells in row-major order (``s = row * width + col``); houses are states too
    (never reached, never a start). Actions are :data:`ACTIONS`.
    """
    grid = np.asarray(board, np.int64)
    if grid.ndim != 2:
        raise ValueError(f"board must be a 2-D grid of cell codes, got shape {grid.shape}")
    if grid.min() < 0 or grid.max() > max(Cell):
        raise ValueError(f"board cells must be codes 0..{int(max(Cell))} of Cell")
    h, w = grid.shape
    s_count, a_count, d = h * w, len(ACTIONS), len(FEATURES)
    next_state = np.empty((s_count, a_count), np.int64)
    feats = np.zeros((s_count, a_count, d))
    terminal = np.zeros(s_count, bool)
    start = np.zeros(s_count, bool)
    for r in range(h):
        for c in range(w):
            s = r * w + c
            cell = Cell(grid[r, c])
            terminal[s] = cell in _TERMINAL
            start[s] = not terminal[s] and cell not in _BLOCKED
            for a, (dr, dc) in enumerate(ACTIONS):
                if terminal[s]:
                    next_state[s, a] = s
                    continue
                nr, nc = r + dr, c + dc
                if 0 <= nr < h and 0 <= nc < w and Cell(grid[nr, nc]) not in _BLOCKED:
                    next_state[s, a] = nr * w + nc
                    feats[s, a] = _entry_features(Cell(grid[nr, nc]))
                else:  # stays put: gas, or mud when standing in mud
                    next_state[s, a] = s
                    feats[s, a, _MUD if cell >= Cell.MUD else _STEP] = 1.0
    return TabularMDP(
        next_state=next_state,
        features=feats,
        terminal=terminal,
        start=start,
        weights=np.asarray(weights, np.float64),
        gamma=float(gamma),
        shape=(h, w),
        board=grid,
    )


def random_delivery_board(
    rng: np.random.Generator, height: int = 10, width: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """A random delivery board and reward vector, in the spirit of the paper's random MDPs.

    Proportions of the grid (each drawn per board) are sheep {0, 0.1, 0.3}, roadblocks
    {0, 0.1, 0.5, 0.8}, coins {0, 0.1, 0.2} (as ``generate_random_mdp.py`` of the official
    code), plus mud patches {0, 0.1, 0.3} and houses {0, 0.05} so that every cell type of the
    delivery domain occurs; one destination. Weights: step -1, destination {0, 1, 5, 10, 50},
    sheep {-5, -10, -50, -100}, coin 1, roadblock {-2, -5, -10}, mud {-1, -2, -3}.

    Returns:
        ``(board (height, width) int64, weights (6,) float64)``.
    """
    n = height * width
    board = np.zeros((height, width), np.int64)
    props = {
        Cell.SHEEP: rng.choice([0.0, 0.1, 0.3]),
        Cell.ROADBLOCK: rng.choice([0.0, 0.1, 0.5, 0.8]),
        Cell.COIN: rng.choice([0.0, 0.1, 0.2]),
        Cell.HOUSE: rng.choice([0.0, 0.05]),
    }
    while sum(props.values()) >= 0.95:  # leave room for the car and the destination
        props[Cell.ROADBLOCK] = rng.choice([0.0, 0.1, 0.5])
    flat = board.reshape(-1)
    order = rng.permutation(n)
    i = 0
    for cell, p in props.items():
        k = int(p * n)
        flat[order[i : i + k]] = cell
        i += k
    flat[order[i]] = Cell.GOAL
    mud = rng.random(n) < rng.choice([0.0, 0.1, 0.3])
    flat[mud] += Cell.MUD  # every base code + 6 is its mud variant
    weights = np.array(
        [
            -1.0,
            rng.choice([0.0, 1.0, 5.0, 10.0, 50.0]),
            rng.choice([-5.0, -10.0, -50.0, -100.0]),
            1.0,
            rng.choice([-2.0, -5.0, -10.0]),
            rng.choice([-1.0, -2.0, -3.0]),
        ]
    )
    return board, weights


def segment_batch(mdp: TabularMDP, states: np.ndarray, actions: np.ndarray) -> SegmentBatch:
    """Tabular segments as a :class:`~pbrl.data.SegmentBatch` for teachers.

    ``obs[..., 0]`` holds the state index and ``actions[..., 0]`` the action index (float32);
    ``true_reward`` is the true reward of each step and the reward factors are the features.

    Args:
        mdp: the MDP.
        states: ``(N, H + 1)`` visited states (the last one is the end state, not stored).
        actions: ``(N, H)`` action indices.
    """
    s, a = np.asarray(states, np.int64)[:, :-1], np.asarray(actions, np.int64)
    phi = mdp.features[s, a]  # (N, H, d)
    return SegmentBatch(
        obs=s[..., None].astype(np.float32),
        actions=a[..., None].astype(np.float32),
        true_reward=(phi @ mdp.weights).astype(np.float32),
        reward_factors={k: phi[..., i].astype(np.float32) for i, k in enumerate(mdp.feature_names)},
        env_name="tabular",
    )


def sample_segment_pairs(
    mdp: TabularMDP, n: int, horizon: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random segment pairs as in the paper: a uniform start state, then random actions.

    Returns:
        ``states (n, 2, horizon + 1)`` and ``actions (n, 2, horizon)``; a segment that reaches
        an absorbing state stays there (padding with zero features).
    """
    starts = rng.choice(np.flatnonzero(mdp.start), size=2 * n)
    actions = rng.integers(0, mdp.n_actions, size=(2 * n, horizon))
    states, _ = mdp.rollout(starts, actions)
    return states.reshape(n, 2, horizon + 1), actions.reshape(n, 2, horizon)


# --- dynamic programming ---------------------------------------------------------------------
def _check_reward(mdp: TabularMDP, reward: np.ndarray | None) -> np.ndarray:
    r = mdp.reward() if reward is None else np.asarray(reward, np.float64)
    if r.shape != mdp.next_state.shape:
        raise ValueError(f"reward must be (S, A) = {mdp.next_state.shape}, got {r.shape}")
    return np.where(mdp.terminal[:, None], 0.0, r)


def q_from_v(mdp: TabularMDP, reward: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(S, A)`` one-step lookahead ``r(s, a) + gamma V(s')`` (0 in absorbing states)."""
    q = reward + mdp.gamma * v[mdp.next_state]
    return np.where(mdp.terminal[:, None], 0.0, q)


def value_iteration(
    mdp: TabularMDP,
    reward: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iters: int = 1_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Bellman optimality iteration until ``max |V_k+1 - V_k| < tol``.

    Args:
        mdp: the MDP.
        reward: ``(S, A)`` reward; the MDP's true reward by default.
        tol: stopping tolerance (the error to ``V*`` is below ``tol * gamma / (1 - gamma)``).
        max_iters: safety cap; exceeding it raises.

    Returns:
        ``V* (S,)`` and ``Q* (S, A)``.
    """
    r = _check_reward(mdp, reward)
    v = np.zeros(mdp.n_states)
    for _ in range(max_iters):
        q = q_from_v(mdp, r, v)
        v_new = q.max(axis=1)
        if np.max(np.abs(v_new - v)) < tol:
            return v_new, q_from_v(mdp, r, v_new)
        v = v_new
    raise RuntimeError(
        f"value iteration did not reach tol={tol} in {max_iters} iterations; raise max_iters, "
        "loosen tol, or use policy_iteration (exact, a few linear solves)"
    )


def _transition_matrix(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """``(S, S)`` P_pi for a stochastic policy ``(S, A)``; absorbing rows are zero."""
    s_count = mdp.n_states
    p = np.zeros((s_count, s_count))
    rows = np.repeat(np.arange(s_count), mdp.n_actions)
    np.add.at(p, (rows, mdp.next_state.reshape(-1)), policy.reshape(-1))
    p[mdp.terminal] = 0.0
    return p


def _as_stochastic(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    policy = np.asarray(policy)
    if policy.shape == (mdp.n_states,):
        out = np.zeros((mdp.n_states, mdp.n_actions))
        out[np.arange(mdp.n_states), policy.astype(np.int64)] = 1.0
        return out
    if policy.shape == mdp.next_state.shape:
        return policy.astype(np.float64)
    raise ValueError(
        f"policy must be (S,) action indices or (S, A) probabilities, got {policy.shape}"
    )


def policy_evaluation(
    mdp: TabularMDP, policy: np.ndarray, reward: np.ndarray | None = None
) -> np.ndarray:
    """Exact ``V^pi`` by solving ``(I - gamma P_pi) V = r_pi``.

    Args:
        mdp: the MDP.
        policy: ``(S,)`` action per state or ``(S, A)`` action probabilities.
        reward: ``(S, A)`` reward; the MDP's true reward by default.

    Returns:
        ``(S,)`` values (0 at absorbing states). With ``gamma = 1`` every state must reach an
        absorbing state under ``pi``, else the system is singular and this raises.
    """
    r = _check_reward(mdp, reward)
    pi = _as_stochastic(mdp, policy)
    p = _transition_matrix(mdp, pi)
    r_pi = (pi * r).sum(axis=1)
    try:
        return np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * p, r_pi)
    except np.linalg.LinAlgError as err:
        raise np.linalg.LinAlgError(
            "I - gamma P_pi is singular: with gamma = 1 some state never reaches an absorbing "
            "state under this policy; use gamma < 1"
        ) from err


def greedy_policy(q: np.ndarray) -> np.ndarray:
    """``(S,)`` argmax over actions of ``Q (S, A)`` (lowest index on ties)."""
    return np.asarray(q).argmax(axis=1)


def policy_iteration(
    mdp: TabularMDP,
    reward: np.ndarray | None = None,
    policy: np.ndarray | None = None,
    max_iters: int = 1000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Howard's policy iteration: exact ``V*``, ``Q*`` and a greedy optimal policy.

    Args:
        mdp: the MDP.
        reward: ``(S, A)`` reward; the MDP's true reward by default.
        policy: ``(S,)`` initial policy (e.g. the previous solution, for a warm start).
        max_iters: safety cap.

    Returns:
        ``V* (S,)``, ``Q* (S, A)`` and ``pi* (S,)``. The policy only switches an action when
        the improvement exceeds ``1e-12 (1 + |V|)``, so ties cannot make it cycle.
    """
    r = _check_reward(mdp, reward)
    pi = np.zeros(mdp.n_states, np.int64) if policy is None else np.asarray(policy, np.int64)
    idx = np.arange(mdp.n_states)
    for _ in range(max_iters):
        v = policy_evaluation(mdp, pi, r)
        q = q_from_v(mdp, r, v)
        best = q.argmax(axis=1)
        better = q[idx, best] > q[idx, pi] + 1e-12 * (1.0 + np.abs(v))
        if not better.any():
            return v, q, pi
        pi = np.where(better, best, pi)
    raise RuntimeError(f"policy iteration did not converge in {max_iters} iterations")


def scaled_return(mdp: TabularMDP, policy: np.ndarray, reward: np.ndarray | None = None) -> float:
    """The paper's score: ``(V^pi - V^rand) / (V* - V^rand)`` averaged over start states.

    1 is optimal, 0 is the uniformly random policy, below 0 is worse than random; the paper
    calls ``>= 0.9`` near-optimal. Values are under ``reward`` (the true reward by default).
    """
    r = _check_reward(mdp, reward)
    v_star = policy_iteration(mdp, r)[0]
    v_rand = policy_evaluation(mdp, np.full(mdp.next_state.shape, 1.0 / mdp.n_actions), r)
    v_pi = policy_evaluation(mdp, policy, r)
    s = mdp.start
    denom = float(np.mean(v_star[s] - v_rand[s]))
    if denom <= 1e-12:
        return 1.0  # every policy is optimal here
    return float(np.mean(v_pi[s] - v_rand[s]) / denom)
