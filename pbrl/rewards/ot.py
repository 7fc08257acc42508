"""Optimal-transport rewards between videos in a feature space (RAPL, Tian et al., ICLR 2024).

A video is a point cloud of per-frame embeddings with uniform weights. Between a robot
video ``x`` (``T`` frames) and an expert video ``y`` (``S`` frames) the cost matrix is
``C[t, s] = c(x_t, y_s)`` (RAPL's RL reward uses the cosine distance ``1 - cos``), and the
entropic transport plan is

    M* = argmin_{M 1 = a, M^T 1 = b, M >= 0}  <M, C> - eps H(M),   a = 1/T, b = 1/S,

found here by Sinkhorn's algorithm in the log domain (stable for small ``eps``), batched
over any leading dimensions of ``C`` on torch tensors. RAPL's per-step reward is
``r_t = -sum_s M*[t, s] C[t, s]``, so the video score is ``sum_t r_t = -<M*, C>``.

On ``eps``: the official code's OT layer uses ``P ~ exp(-gamma C)`` with ``gamma = 1``, i.e.
``eps = 1``; with cosine costs in [0, 2] that plan is almost uniform (every robot frame is
matched to every expert frame) and the reward barely depends on temporal alignment. We default
to ``eps = 0.05`` in cost units, which the log-domain iterations handle without underflow.

Gradients: :func:`ot_score` with ``grad="envelope"`` returns ``-<M*, C>`` with ``M*``
detached. By the envelope theorem ``d/dC (<M*, C> - eps H(M*)) = M*``, so this is the exact
gradient of the entropic OT *value* and costs nothing beyond the forward pass;
``grad="unrolled"`` backpropagates through the Sinkhorn iterations instead (the exact gradient
of ``-<M*, C>`` itself, at a memory cost linear in the iteration count).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

CostName = Literal["cosine", "euclidean", "sqeuclidean"]
COSTS: tuple[str, ...] = ("cosine", "euclidean", "sqeuclidean")
Transform = Literal["paper", "frame", "code"]
TRANSFORMS: tuple[str, ...] = ("paper", "frame", "code")


def cost_matrix(x: torch.Tensor, y: torch.Tensor, cost: CostName = "cosine") -> torch.Tensor:
    """Pairwise costs between two batches of point clouds.

    Args:
        x: ``(..., T, D)`` robot-frame embeddings.
        y: ``(..., S, D)`` expert-frame embeddings (leading dims broadcast against ``x``'s).
        cost: ``"cosine"`` (``1 - cos``, in [0, 2]; RAPL's RL reward), ``"euclidean"`` (the
            official alignment script's) or ``"sqeuclidean"``.

    Returns:
        ``(..., T, S)`` cost matrix.
    """
    if cost == "cosine":
        return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(-1, -2)
    if cost in ("euclidean", "sqeuclidean"):
        # |x|^2 + |y|^2 - 2 x.y in one matmul; clamp the tiny negatives of cancellation.
        sq = (
            (x * x).sum(-1, keepdim=True)
            + (y * y).sum(-1).unsqueeze(-2)
            - 2.0 * x @ y.transpose(-1, -2)
        ).clamp_min(0.0)
        return sq if cost == "sqeuclidean" else torch.sqrt(sq + 1e-12)
    raise ValueError(f"unknown cost {cost!r}; valid: {list(COSTS)}")


def sinkhorn_log(
    cost: torch.Tensor,
    eps: float = 0.05,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    n_iters: int = 200,
    tol: float | None = 1e-6,
    check_every: int = 10,
) -> torch.Tensor:
    """Entropic OT plans for a batch of cost matrices, Sinkhorn in the log domain.

    Iterates the dual potentials ``f, g`` (Peyre & Cuturi, *Computational OT*, Sec. 4.4):
    ``f = eps log a - eps LSE_s((g_s - C_ts) / eps)``, then the same for ``g``; the plan is
    ``M_ts = exp((f_t + g_s - C_ts) / eps)``. After each ``g`` update the column marginals are
    exact; convergence is measured on the row marginals.

    Args:
        cost: ``(..., T, S)`` costs.
        eps: entropy weight (> 0), in the units of ``cost``.
        a: ``(..., T)`` source weights (default uniform ``1/T``), each row summing to 1.
        b: ``(..., S)`` target weights (default uniform ``1/S``).
        n_iters: maximum number of (f, g) updates.
        tol: stop when ``max |M 1 - a|`` falls below it (checked every ``check_every``
            iterations: each check syncs a GPU); ``None`` runs all ``n_iters`` (a fixed
            iteration count is also what makes ``grad="unrolled"`` reproducible).
        check_every: iterations between convergence checks.

    Returns:
        ``(..., T, S)`` transport plans (differentiable through the iterations).
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if cost.ndim < 2:
        raise ValueError(f"cost must be (..., T, S), got shape {tuple(cost.shape)}")
    t, s = cost.shape[-2:]
    batch = cost.shape[:-2]
    dtype, device = cost.dtype, cost.device
    log_a = (
        torch.full((*batch, t), -math.log(t), dtype=dtype, device=device)
        if a is None
        else torch.log(a.to(dtype)).expand(*batch, t)
    )
    log_b = (
        torch.full((*batch, s), -math.log(s), dtype=dtype, device=device)
        if b is None
        else torch.log(b.to(dtype)).expand(*batch, s)
    )
    neg = -cost / eps  # log kernel
    # Both half-steps reduce over the last, contiguous dimension: a reduction over dim -2 of
    # a (T, S) matrix is several times slower on the CPU than over dim -1 of its transpose.
    neg_t = neg.transpose(-1, -2).contiguous()
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for it in range(n_iters):
        # potentials in units of eps: f = log a - LSE_s(neg + g), g = log b - LSE_t(neg + f)
        f = log_a - torch.logsumexp(neg + g.unsqueeze(-2), dim=-1)
        g = log_b - torch.logsumexp(neg_t + f.unsqueeze(-2), dim=-1)
        if tol is not None and (it + 1) % check_every == 0:
            row = torch.logsumexp(neg + f.unsqueeze(-1) + g.unsqueeze(-2), dim=-1)
            if float((row.exp() - log_a.exp()).abs().max()) < tol:
                break
    return torch.exp(neg + f.unsqueeze(-1) + g.unsqueeze(-2))


def ot_plan_and_cost(
    x: torch.Tensor,
    y: torch.Tensor,
    cost: CostName = "cosine",
    eps: float = 0.05,
    n_iters: int = 200,
    tol: float | None = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M*, C)`` for robot embeddings ``x (..., T, D)`` against expert ``y (..., S, D)``.

    The plan is computed without gradient (use :func:`ot_score` to differentiate).
    """
    c = cost_matrix(x, y, cost)
    with torch.no_grad():
        plan = sinkhorn_log(c.detach(), eps=eps, n_iters=n_iters, tol=tol)
    return plan, c


def ot_score(
    x: torch.Tensor,
    y: torch.Tensor,
    cost: CostName = "cosine",
    eps: float = 0.05,
    n_iters: int = 200,
    tol: float | None = 1e-6,
    grad: Literal["envelope", "unrolled"] = "envelope",
) -> torch.Tensor:
    """RAPL's video score ``R(x, y) = -<M*, C>``, shape ``(...)``.

    ``grad="envelope"`` detaches ``M*`` (exact gradient of the entropic OT value, see the
    module docstring); ``grad="unrolled"`` differentiates through ``n_iters`` iterations
    (``tol`` is ignored so the graph is the same every call).
    """
    c = cost_matrix(x, y, cost)
    if grad == "envelope":
        with torch.no_grad():
            plan = sinkhorn_log(c.detach(), eps=eps, n_iters=n_iters, tol=tol)
    elif grad == "unrolled":
        plan = sinkhorn_log(c, eps=eps, n_iters=n_iters, tol=None)
    else:
        raise ValueError(f"grad must be 'envelope' or 'unrolled', got {grad!r}")
    return -(plan * c).sum(dim=(-2, -1))


def step_rewards(
    plan: torch.Tensor, cost: torch.Tensor, transform: Transform = "frame", scale: float = 1.0
) -> torch.Tensor:
    """Per-robot-frame rewards ``(..., T)`` from a plan and its costs, both ``(..., T, S)``.

    ``transform``:

    - ``"paper"``: ``r_t = -sum_s M*[t, s] C[t, s]``; ``sum_t r_t = -<M*, C>``.
    - ``"frame"`` (default): ``r_t = -T sum_s M*[t, s] C[t, s]``, the mean cost of the expert
      frames that frame ``t`` is matched to (row ``t`` of ``M*`` holds mass ``1/T``); the same
      ranking as ``"paper"`` with a scale that does not depend on the episode length (in
      [-2, 0] for the cosine cost).
    - ``"code"``: ``r_t = -1e4 (sum_s M*[t, s] C[t, s])^2``, the official PPO reward
      (``mvp/ppo/ppo.py``); task-specific and absent from the paper, kept for comparison.

    Every variant is then multiplied by ``scale``.
    """
    per = (plan * cost).sum(-1)
    if transform == "paper":
        r = -per
    elif transform == "frame":
        r = -per * plan.shape[-2]
    elif transform == "code":
        r = -1e4 * per.square()
    else:
        raise ValueError(f"unknown transform {transform!r}; valid: {list(TRANSFORMS)}")
    return r * scale


def ot_rewards(
    robot: torch.Tensor,
    demos: torch.Tensor,
    cost: CostName = "cosine",
    eps: float = 0.05,
    n_iters: int = 200,
    tol: float | None = 1e-6,
    transform: Transform = "frame",
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step OT rewards of ``B`` robot videos against the best of ``K`` expert demos.

    All ``B x K`` transport problems are solved in one batched Sinkhorn. As in the official
    code, each robot video is scored against every demo and keeps the rewards of the demo
    with the highest total.

    Args:
        robot: ``(B, T, D)`` robot-frame embeddings.
        demos: ``(K, S, D)`` expert-frame embeddings (or ``(S, D)`` for one demo).
        cost: ground cost (:func:`cost_matrix`).
        eps: entropy weight (:func:`sinkhorn_log`).
        n_iters: Sinkhorn iterations at most.
        tol: marginal tolerance (``None``: all ``n_iters``).
        transform: per-step reward shape (:func:`step_rewards`).
        scale: multiplies the rewards.

    Returns:
        ``(B, T)`` rewards and ``(B,)`` index of the demo each video was matched to.
    """
    if demos.ndim == 2:
        demos = demos.unsqueeze(0)
    if robot.ndim != 3 or demos.ndim != 3 or robot.shape[-1] != demos.shape[-1]:
        raise ValueError(
            f"robot must be (B, T, D) and demos (K, S, D) with the same D, got "
            f"{tuple(robot.shape)} and {tuple(demos.shape)}"
        )
    with torch.no_grad():
        c = cost_matrix(robot.unsqueeze(1), demos.unsqueeze(0), cost)  # (B, K, T, S)
        plan = sinkhorn_log(c, eps=eps, n_iters=n_iters, tol=tol)
        r = step_rewards(plan, c, transform, scale)  # (B, K, T)
        # the demo with the lowest raw OT cost <M, C> (the official code's choice), not the
        # highest transformed reward: transform="code" squares the per-step costs and a
        # negative scale would flip the order
        best = (plan * c).sum(dim=(-2, -1)).argmin(dim=1)
        return r[torch.arange(len(r), device=r.device), best], best
