"""Bradley-Terry reward ensemble (PEBBLE / B-Pref ``reward_model.py``).

Each member ``e`` is ``r_e(s, a) = tanh(MLP_e([s, a]))`` with ``n_layers`` hidden LeakyReLU
layers of width ``hidden``. A pair of segments is scored with the Bradley-Terry model

    P_e[sigma1 > sigma0] = exp(R_e(sigma1)) / (exp(R_e(sigma0)) + exp(R_e(sigma1))),

``R_e`` the segment sum of ``r_e``. The loss is the cross-entropy against the target
``y = P(second preferred)``, summed over members, with one Adam over all parameters. The agent's
reward is the member mean ``r_hat = mean_e r_e``.

All members are evaluated in one batched matmul chain: the weights of layer ``l`` are stored
stacked as ``(E, in, out)`` and applied with :func:`torch.baddbmm`.

Differences from B-Pref, on purpose:

- The per-member networks are one stacked module (same initial distribution as B-Pref's
  ``nn.Linear`` layers, same maths, faster).
- Randomness comes from an explicit seed (a :class:`torch.Generator` for initialisation and
  minibatch order), not from the global numpy/torch state.
"""

from __future__ import annotations

import copy
import importlib.metadata
import io
import json
import math
import os
import platform
import zipfile
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pbrl.data import SegmentBatch

__all__ = [
    "OUTPUT_ACTIVATIONS",
    "BTRewardLearner",
    "NonFiniteLossError",
    "RewardEnsemble",
    "bt_loss",
    "resolve_device",
]

# B-Pref gen_net: 'tanh', 'sig', anything else -> ReLU. We name all of them and add identity.
OUTPUT_ACTIVATIONS = ("tanh", "sigmoid", "relu", "identity")

# Rows per forward chunk in inference. On CPU a few thousand rows keep the (E, rows, hidden)
# activations cache-sized; on a GPU larger chunks amortise kernel launches.
_CHUNK_ROWS = {"cpu": 8192, "cuda": 131072}


class NonFiniteLossError(FloatingPointError):
    """The reward-model loss became NaN or infinite during training.

    Attributes:
        batch: name -> numpy array of the offending minibatch: ``obs (E, b, 2, H, D_o)``,
            ``act (E, b, 2, H, D_a)``, ``target (E, b)`` (after label smoothing), ``index (E, b)``
            (rows of the training arrays each member saw) and ``returns (E, b, 2)``.
        epoch: 1-based epoch of the failure.
        step: 1-based minibatch within that epoch.
    """

    def __init__(
        self, msg: str, batch: dict[str, np.ndarray], epoch: int = 0, step: int = 0
    ) -> None:
        super().__init__(msg)
        self.batch = batch
        self.epoch = epoch
        self.step = step


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` if available else ``cpu``; other names are checked."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'"
            ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(dev)!r} requested but CUDA is not available; use 'auto' or 'cpu'"
        )
    return dev


# Rows up to which CPU inference runs in NumPy (see RewardEnsemble._predict_small).
_SMALL_BATCH = 64
# NumPy's OpenBLAS runs a float32 (M, K) @ (K, N) on one thread up to M*K*N of about 4e5 and
# on its thread pool above; its idle workers then busy-wait for ~0.1 s after every call, so
# matmuls a few steps apart keep a second core spinning (measured here: an 8-row 256x256
# product every 5 ms costs 1 s of CPU per second of wall time, a 6-row one 0.01 s). The NumPy
# path therefore stops where a layer's product would leave the single-thread regime; larger
# batches go through torch, whose threads torch.set_num_threads governs.
_BLAS_SINGLE_THREAD_MKN = 393_216


class RewardEnsemble(nn.Module):
    """``E`` reward MLPs ``r_e([s, a])`` evaluated together.

    Args:
        obs_dim: ``D_o``.
        act_dim: ``D_a``.
        ensemble_size: ``E`` members.
        hidden: width of each hidden layer.
        n_layers: number of hidden layers (B-Pref: 3).
        output_activation: one of :data:`OUTPUT_ACTIVATIONS` (B-Pref: ``"tanh"``).
        generator: source of the initial weights (CPU generator); ``None`` uses torch's
            global generator, which library code should avoid.

    Parameters are ``weights[l]: (E, in_l, out_l)`` and ``biases[l]: (E, 1, out_l)``; member
    ``e``'s layer ``l`` computes ``h @ weights[l][e] + biases[l][e]`` (``nn.Linear`` with its
    weight transposed).
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
    ) -> None:
        super().__init__()
        for name, v, lo in (
            ("obs_dim", obs_dim, 1),
            ("act_dim", act_dim, 0),
            ("ensemble_size", ensemble_size, 1),
            ("hidden", hidden, 1),
            ("n_layers", n_layers, 0),
        ):
            if int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"unknown output_activation {output_activation!r}; valid: {OUTPUT_ACTIVATIONS}"
            )
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.in_dim = self.obs_dim + self.act_dim
        self.ensemble_size = int(ensemble_size)
        self.hidden, self.n_layers = int(hidden), int(n_layers)
        self.output_activation = output_activation
        sizes = [self.in_dim] + [self.hidden] * self.n_layers + [1]
        e = self.ensemble_size
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(e, i, o)) for i, o in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(e, 1, o)) for o in sizes[1:])
        self._param_list = [*self.weights, *self.biases]
        self._np_cache: tuple[tuple[int, ...], list[tuple[np.ndarray, np.ndarray]]] | None = None
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise every member like ``nn.Linear``'s default.

        ``kaiming_uniform_(a=sqrt(5))`` on the weight and ``U(+-1/sqrt(fan_in))`` on the bias
        both reduce to ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; drawn on the CPU so that a seed
        gives the same network on every device.
        """
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            w.copy_(torch.empty(w.shape).uniform_(-bound, bound, generator=generator))
            b.copy_(torch.empty(b.shape).uniform_(-bound, bound, generator=generator))

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        if self.output_activation == "tanh":
            return torch.tanh(h)
        if self.output_activation == "sigmoid":
            return torch.sigmoid(h)
        if self.output_activation == "relu":
            return F.relu(h)
        return h

    def forward(self, x: torch.Tensor, per_member: bool | None = None) -> torch.Tensor:
        """Per-member rewards.

        Args:
            x: ``[s, a]`` features, either shared by all members, shape ``(..., D)``, or one
                input per member, shape ``(E, ..., D)``.
            per_member: whether ``x``'s leading axis is the member axis. ``None`` infers it for
                the two unambiguous cases: ``(B, D)`` is shared, ``(E, B, D)`` is per member;
                higher ranks must say which.

        Returns:
            ``(E, ...)`` rewards ``r_e``.
        """
        e, d = self.ensemble_size, self.in_dim
        if x.shape[-1] != d:
            raise ValueError(f"input must end in D = obs_dim + act_dim = {d}, got {tuple(x.shape)}")
        if per_member is None:
            if x.ndim == 2:
                per_member = False
            elif x.ndim == 3:
                per_member = True
            else:
                raise ValueError(
                    f"cannot tell whether input {tuple(x.shape)} is shared or per member; pass "
                    "per_member=True for (E, ..., D) or per_member=False for (..., D)"
                )
        if per_member:
            if x.ndim < 2 or x.shape[0] != e:
                raise ValueError(f"per-member input must be (E={e}, ..., D), got {tuple(x.shape)}")
            lead = x.shape[1:-1]
            h = x.reshape(e, -1, d)
        else:
            lead = x.shape[:-1]
            # expand is a view: bmm reads the shared rows once per member, no copy
            h = x.reshape(1, -1, d).expand(e, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = F.leaky_relu(h)  # slope 0.01, nn.LeakyReLU's default as in B-Pref
        return self._out(h).reshape(e, *lead)

    @torch.no_grad()
    def predict(self, obs: np.ndarray, act: np.ndarray, chunk: int | None = None) -> np.ndarray:
        """Member-mean reward ``r_hat(s, a)``: ``obs (..., D_o), act (..., D_a) -> (...)`` float32.

        Evaluated without gradients in chunks of ``chunk`` rows (default per device).
        """
        obs, act = np.asarray(obs), np.asarray(act)
        if (
            obs.shape[-1:] != (self.obs_dim,)
            or act.shape[-1:] != (self.act_dim,)
            or (obs.shape[:-1] != act.shape[:-1])
        ):
            raise ValueError(
                f"expected obs (..., {self.obs_dim}) and act (..., {self.act_dim}) with the same "
                f"leading shape, got {obs.shape} and {act.shape}"
            )
        lead = obs.shape[:-1]
        o = obs.reshape(-1, self.obs_dim)
        a = act.reshape(-1, self.act_dim)
        dev = self.weights[0].device
        if dev.type == "cpu" and len(o) <= self._numpy_rows:
            return self._predict_small(o, a).reshape(lead)
        chunk = chunk or _CHUNK_ROWS.get(dev.type, 65536)
        out = np.empty(len(o), np.float32)
        for s in range(0, len(o), chunk):
            x = torch.cat(
                [
                    torch.as_tensor(o[s : s + chunk], dtype=torch.float32),
                    torch.as_tensor(a[s : s + chunk], dtype=torch.float32),
                ],
                dim=-1,
            ).to(dev, non_blocking=True)
            out[s : s + chunk] = self(x, per_member=False).mean(0).cpu().numpy()
        return out.reshape(lead)

    @property
    def _numpy_rows(self) -> int:
        """Most rows :meth:`predict` evaluates in NumPy (see ``_BLAS_SINGLE_THREAD_MKN``)."""
        widest = max(int(w.shape[1]) * int(w.shape[2]) for w in self.weights)
        return max(1, min(_SMALL_BATCH, _BLAS_SINGLE_THREAD_MKN // max(widest, 1)))

    def _predict_small(self, o: np.ndarray, a: np.ndarray) -> np.ndarray:
        """:meth:`predict` for a few rows on the CPU, in NumPy on views of the weights.

        An env step asks for one row per env; torch's per-operator dispatch costs more than
        the arithmetic there (about 3x in ``benchmarks/overhead.py``). Same math, float32.
        Used up to :attr:`_numpy_rows` rows (the single-threaded BLAS regime).
        """
        params = self._param_list
        ptrs = tuple(p.data_ptr() for p in params)
        if self._np_cache is None or self._np_cache[0] != ptrs:
            # views (no copy) of the live weights: in-place updates show through
            n = len(self.weights)
            views = [p.detach().numpy() for p in params]
            self._np_cache = (ptrs, list(zip(views[:n], views[n:], strict=True)))
        layers = self._np_cache[1]
        h = np.concatenate([o, a], axis=-1, dtype=np.float32)[None]  # (1, B, D)
        last = len(layers) - 1
        for i, (w, b) in enumerate(layers):
            h = np.matmul(h, w) + b
            if i < last:
                h = np.maximum(h, 0.01 * h)  # leaky_relu, slope 0.01
        if self.output_activation == "tanh":
            h = np.tanh(h)
        elif self.output_activation == "sigmoid":
            h = 1.0 / (1.0 + np.exp(-h))
        elif self.output_activation == "relu":
            h = np.maximum(h, 0.0)
        return h[..., 0].mean(axis=0, dtype=np.float32).astype(np.float32)


def bt_loss(
    ret_first: torch.Tensor,
    ret_second: torch.Tensor,
    target: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry cross-entropy, summed over members.

    ``L = sum_e mean_b -[(1 - y) log P_e(first) + y log P_e(second)]`` with
    ``P_e = softmax(c R_first, c R_second)`` (``P_e(second) = sigmoid(c (R_second - R_first))``),
    computed with ``log_softmax`` so that large return gaps stay finite.

    Args:
        ret_first: ``(E, B)`` segment returns of the first segments.
        ret_second: ``(E, B)`` segment returns of the second segments.
        target: ``(B,)`` or ``(E, B)`` probability that the second segment is preferred
            (1 second, 0 first, 0.5 equal; soft values allowed).
        scale: ``(B,)`` or ``(E, B)`` positive per-pair multiplier ``c`` of the return gap
            (HERON's level scale, :mod:`pbrl.rewards.heron`); ``None``: ``c = 1``.

    Returns:
        scalar loss.
    """
    if ret_first.shape != ret_second.shape or ret_first.ndim != 2:
        raise ValueError(
            f"returns must both be (E, B), got {tuple(ret_first.shape)} and "
            f"{tuple(ret_second.shape)}"
        )
    if target.shape not in (ret_first.shape, ret_first.shape[1:]):
        raise ValueError(
            f"target must be (B,) or (E, B) for returns {tuple(ret_first.shape)}, "
            f"got {tuple(target.shape)}"
        )
    if scale is not None:
        if scale.shape not in (ret_first.shape, ret_first.shape[1:]):
            raise ValueError(
                f"scale must be (B,) or (E, B) for returns {tuple(ret_first.shape)}, "
                f"got {tuple(scale.shape)}"
            )
        scale = scale.to(ret_first.dtype)
        ret_first, ret_second = ret_first * scale, ret_second * scale
    logp = torch.log_softmax(torch.stack([ret_first, ret_second], dim=-1), dim=-1)
    y = target.to(logp.dtype)
    ce = -((1.0 - y) * logp[..., 0] + y * logp[..., 1])  # (E, B)
    return ce.mean(dim=1).sum()


def _versions() -> dict[str, str]:
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {
        "pbrl": version("pbrl"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


class BTRewardLearner:
    """Bradley-Terry reward ensemble with its training procedure (B-Pref ``train_reward``).

    Training (:meth:`train`): up to ``max_epochs`` passes over all labelled pairs; in each pass
    every member walks its own random permutation of the pairs in minibatches of
    ``batch_size`` (B-Pref: no bootstrap; diversity comes from initialisation and order); one
    Adam step per minibatch on the loss summed over members. Stops early once the mean over
    members of the epoch's train accuracy (hard labels, measured on each minibatch before its
    step, as B-Pref does) exceeds ``acc_target``. Training continues from the current weights.

    Args:
        obs_dim, act_dim: ``D_o``, ``D_a``.
        ensemble_size, hidden, n_layers, output_activation: see :class:`RewardEnsemble`.
        lr: Adam learning rate (B-Pref ``reward_lr``).
        batch_size: pairs per minibatch (B-Pref 128).
        max_epochs: B-Pref ``reward_update``.
        acc_target: early-stopping train accuracy (B-Pref 0.97).
        label_margin: label smoothing ``m``: ``y' = y (1 - 2m) + m``, ``0 <= m < 0.5``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        seed: seeds the initial weights and the minibatch order; ``None`` draws one from the OS
            (recorded in :attr:`hparams`).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        ensemble_size: int = 3,
        hidden: int = 256,
        n_layers: int = 3,
        lr: float = 3e-4,
        batch_size: int = 128,
        max_epochs: int = 200,
        acc_target: float = 0.97,
        label_margin: float = 0.0,
        device: str | torch.device = "cpu",
        seed: int | None = 0,
        output_activation: str = "tanh",
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if int(max_epochs) != max_epochs or max_epochs < 1:
            raise ValueError(f"max_epochs must be an integer >= 1, got {max_epochs!r}")
        if not 0.0 <= label_margin < 0.5:
            raise ValueError(f"label_margin must lie in [0, 0.5), got {label_margin}")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        self.device = resolve_device(device)
        self.hparams: dict[str, Any] = {
            "obs_dim": int(obs_dim),
            "act_dim": int(act_dim),
            "ensemble_size": int(ensemble_size),
            "hidden": int(hidden),
            "n_layers": int(n_layers),
            "output_activation": output_activation,
            "lr": float(lr),
            "batch_size": int(batch_size),
            "max_epochs": int(max_epochs),
            "acc_target": float(acc_target),
            "label_margin": float(label_margin),
            "seed": int(seed),
        }
        # CPU generator: the same seed gives the same weights and minibatch order on any device
        self.generator = torch.Generator().manual_seed(int(seed))
        self.ensemble = RewardEnsemble(
            obs_dim,
            act_dim,
            ensemble_size,
            hidden,
            n_layers,
            output_activation,
            generator=self.generator,
        ).to(self.device)
        # fused: the same Adam update in one kernel (B-Pref's Adam; faster step, esp. on CPU)
        self.optimizer = torch.optim.Adam(self.ensemble.parameters(), lr=lr, fused=True)
        self.total_epochs = 0  # epochs trained over the learner's life (for logs/resume)

    # --- training ---------------------------------------------------------------------
    def train(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        target: np.ndarray,
        scale: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Fit the ensemble to labelled pairs.

        Args:
            obs: ``(Q, 2, H, D_o)`` observations of (first, second) segment of each pair.
            act: ``(Q, 2, H, D_a)`` actions.
            target: ``(Q,)`` probability that the second segment is preferred, in ``[0, 1]``
                (skipped queries must be filtered out beforehand).
            scale: ``(Q,)`` positive multiplier of each pair's return gap in the loss
                (:func:`bt_loss`); ``None``: 1 for every pair (plain Bradley-Terry).

        Returns:
            ``loss`` (mean per-member cross-entropy over the last epoch), ``accuracy`` (mean over
            members of the last epoch's train accuracy), ``accuracy_min`` (worst member),
            ``epochs`` (epochs run) and ``steps`` (Adam steps taken).

        Raises:
            NonFiniteLossError: the loss became NaN/inf; the weights are left as they were
                before the offending step and the error carries the minibatch.
        """
        hp = self.hparams
        e, do, da = hp["ensemble_size"], hp["obs_dim"], hp["act_dim"]
        obs, act, target = np.asarray(obs), np.asarray(act), np.asarray(target)
        if obs.ndim != 4 or obs.shape[1] != 2 or obs.shape[3] != do:
            raise ValueError(f"obs must be (Q, 2, H, {do}), got {obs.shape}")
        q, _, h_len, _ = obs.shape
        if act.shape != (q, 2, h_len, da):
            raise ValueError(f"act must be ({q}, 2, {h_len}, {da}) to match obs, got {act.shape}")
        if target.shape != (q,):
            raise ValueError(f"target must be ({q},), got {target.shape}")
        if q == 0:
            raise ValueError("no labelled pairs to train on (Q = 0)")
        if not np.all((target >= 0) & (target <= 1)):  # also rejects NaN (skip) targets
            bad = target[~((target >= 0) & (target <= 1))][:5]
            raise ValueError(
                f"targets must lie in [0, 1] (P(second preferred)); got e.g. {bad}. Skipped "
                "queries (NaN) must be removed before training"
            )
        if scale is not None:
            scale = np.asarray(scale, np.float64)
            if scale.shape != (q,):
                raise ValueError(f"scale must be ({q},), one per pair, got {scale.shape}")
            if not np.all(np.isfinite(scale) & (scale > 0)):
                raise ValueError(f"scale must be finite and > 0, got e.g. {scale[:5]}")
        dev, bsz, m = self.device, hp["batch_size"], hp["label_margin"]
        sa = torch.cat(
            [torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(act, dtype=torch.float32)],
            dim=-1,
        ).to(dev)  # (Q, 2, H, D)
        y_raw = torch.as_tensor(target, dtype=torch.float32).to(dev)
        y = y_raw * (1.0 - 2.0 * m) + m
        c = None if scale is None else torch.as_tensor(scale, dtype=torch.float32).to(dev)
        # B-Pref scores accuracy on hard labels; its "equal" label counts as "first" (0)
        y_hard = y_raw > 0.5
        n_steps = math.ceil(q / bsz)
        d = sa.shape[-1]

        self.ensemble.train()
        epochs = steps = 0
        correct = torch.zeros(e, device=dev)
        loss_sum = torch.zeros((), device=dev)
        for epoch in range(hp["max_epochs"]):
            # one independent permutation per member, drawn in one call
            perm = torch.argsort(torch.rand(e, q, generator=self.generator), dim=1).to(dev)
            correct.zero_()
            loss_sum.zero_()
            for i in range(n_steps):
                idx = perm[:, i * bsz : (i + 1) * bsz]  # (E, b)
                b = idx.shape[1]
                x = sa[idx]  # (E, b, 2, H, D)
                ret = self.ensemble(x.reshape(e, -1, d), per_member=True).view(e, b, 2, h_len)
                ret = ret.sum(dim=-1)  # (E, b, 2) segment returns
                loss = bt_loss(ret[..., 0], ret[..., 1], y[idx], None if c is None else c[idx])
                if not torch.isfinite(loss):
                    raise self._nonfinite(loss, x, y[idx], idx, ret, epoch, i, n_steps)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                steps += 1
                with torch.no_grad():
                    pred_second = ret[..., 1] > ret[..., 0]  # tie -> first, as torch.max in B-Pref
                    correct += (pred_second == y_hard[idx]).sum(dim=1)
                    loss_sum += loss.detach() * b
            epochs += 1
            acc = correct / q
            if acc.mean().item() > hp["acc_target"]:
                break
        self.total_epochs += epochs
        self.ensemble.eval()
        acc_np = acc.cpu().numpy()
        return {
            "loss": float(loss_sum.item() / (q * e)),
            "accuracy": float(acc_np.mean()),
            "accuracy_min": float(acc_np.min()),
            "epochs": float(epochs),
            "steps": float(steps),
        }

    def _nonfinite(
        self,
        loss: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        idx: torch.Tensor,
        ret: torch.Tensor,
        epoch: int,
        step: int,
        n_steps: int,
    ) -> NonFiniteLossError:
        do = self.hparams["obs_dim"]
        x_np = x.detach().cpu().numpy()
        batch = {
            "obs": x_np[..., :do],
            "act": x_np[..., do:],
            "target": y.detach().cpu().numpy(),
            "index": idx.cpu().numpy(),
            "returns": ret.detach().cpu().numpy(),
        }
        finite_in = bool(np.isfinite(x_np).all())
        params_ok = all(bool(torch.isfinite(p).all()) for p in self.ensemble.parameters())
        if not finite_in:
            why = "the minibatch inputs contain NaN/inf values (check the stored segments)"
        elif not params_ok:
            why = "the reward-model weights are non-finite (diverged: lower lr)"
        else:
            why = "inputs and weights are finite (numerical overflow in the forward pass)"
        msg = (
            f"non-finite reward-model loss {loss.item()} at epoch {epoch + 1}/"
            f"{self.hparams['max_epochs']}, minibatch {step + 1}/{n_steps}: {why}. The weights "
            "are those before this step; the batch is attached as .batch"
        )
        return NonFiniteLossError(msg, batch=batch, epoch=epoch + 1, step=step + 1)

    # --- inference --------------------------------------------------------------------
    @torch.no_grad()
    def segment_returns(
        self, obs: np.ndarray, act: np.ndarray, chunk: int | None = None
    ) -> np.ndarray:
        """Per-member segment returns ``R_e``: ``obs (N, H, D_o), act (N, H, D_a) -> (E, N)``.

        Float32, no gradients, chunked over segments (``chunk`` rows of ``N * H`` at a time).
        """
        hp = self.hparams
        obs, act = np.asarray(obs), np.asarray(act)
        if obs.ndim != 3 or obs.shape[2] != hp["obs_dim"]:
            raise ValueError(f"obs must be (N, H, {hp['obs_dim']}), got {obs.shape}")
        n, h_len = obs.shape[:2]
        if act.shape != (n, h_len, hp["act_dim"]):
            raise ValueError(f"act must be ({n}, {h_len}, {hp['act_dim']}), got {act.shape}")
        chunk = chunk or _CHUNK_ROWS.get(self.device.type, 65536)
        seg_per_chunk = max(1, chunk // max(h_len, 1))
        out = np.empty((hp["ensemble_size"], n), np.float32)
        self.ensemble.eval()
        for s in range(0, n, seg_per_chunk):
            x = torch.cat(
                [
                    torch.as_tensor(obs[s : s + seg_per_chunk], dtype=torch.float32),
                    torch.as_tensor(act[s : s + seg_per_chunk], dtype=torch.float32),
                ],
                dim=-1,
            ).to(self.device)
            out[:, s : s + seg_per_chunk] = (
                self.ensemble(x, per_member=False).sum(dim=-1).cpu().numpy()
            )
        return out

    def member_probs(self, first: SegmentBatch, second: SegmentBatch) -> np.ndarray:
        """``(E, M)`` float64 ``P_e[second > first]`` for ``M`` pairs (PreferenceModel protocol)."""
        if len(first) != len(second):
            raise ValueError(
                f"first and second must hold the same number of segments, got "
                f"{len(first)} and {len(second)}"
            )
        r0 = self.segment_returns(first.obs, first.actions).astype(np.float64)
        r1 = self.segment_returns(second.obs, second.actions).astype(np.float64)
        # softmax over the pair = logistic of the return gap; float64 keeps 1 - p resolvable
        return 1.0 / (1.0 + np.exp(r0 - r1))

    def reward_fn(self, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Member-mean learned reward: ``obs (B, D_o), act (B, D_a) -> (B,)`` float32."""
        return self.ensemble.predict(obs, act)

    # --- persistence ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copied, unaffected by later training): weights, Adam state, RNG."""
        return {
            "hparams": dict(self.hparams),
            "ensemble": {k: v.detach().clone() for k, v in self.ensemble.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "total_epochs": self.total_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a learner of the same architecture."""
        arch = ("obs_dim", "act_dim", "ensemble_size", "hidden", "n_layers", "output_activation")
        theirs = state.get("hparams", {})
        diff = {
            k: (theirs.get(k), self.hparams[k]) for k in arch if theirs.get(k) != self.hparams[k]
        }
        if diff:
            raise ValueError(
                f"state is for a different architecture (saved, this): {diff}; "
                "build the learner with the saved hyperparameters"
            )
        self.ensemble.load_state_dict(state["ensemble"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.generator.set_state(state["generator"].cpu())
        self.total_epochs = int(state.get("total_epochs", 0))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a zip of ``hparams.json``, ``versions.json`` and ``state.pt`` (the state dict)."""
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("hparams.json", json.dumps(self.hparams, indent=2))
            zf.writestr("versions.json", json.dumps(_versions(), indent=2))
            with zf.open("state.pt", "w", force_zip64=True) as f:
                torch.save(self.state_dict(), f)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], device: str | torch.device = "auto"
    ) -> BTRewardLearner:
        """Rebuild a learner written by :meth:`save` (weights, optimiser and RNG restored)."""
        with zipfile.ZipFile(path) as zf:
            hparams = json.loads(zf.read("hparams.json"))
            state = torch.load(
                io.BytesIO(zf.read("state.pt")), map_location="cpu", weights_only=True
            )
        learner = cls(**hparams, device=device)
        learner.load_state_dict(state)
        return learner
