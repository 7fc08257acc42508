"""Network pieces shared by the offline learners.

:class:`FastDropout` is inverted dropout whose mask is cheap on a CPU. torch's CPU dropout
draws one Bernoulli variable per element from its Mersenne Twister (~20 ns an element here),
which made dropout a quarter of a CPL step at the paper's batch (12,288 rows through two
512-wide layers with dropout 0.25) and a third of an OPPO step. Here one 64-bit draw of the
same generator gives the masks of four elements (its four 16-bit lanes, each uniform on
``[-2^15, 2^15)``): an element is kept when its lane is at or above a threshold, so the keep
probability is ``1 - p`` rounded to a multiple of ``2^-16`` and kept elements are scaled by the
inverse of that probability, making the layer's expectation the identity as in
``nn.Dropout``. The draws come from torch's default generator, so ``torch.manual_seed`` and
the RNG state a checkpoint saves reproduce them. Off the CPU (CUDA's dropout is fast) and for
other dtypes it is ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LANES = 4  # 16-bit lanes per 64-bit draw
_LEVELS = 1 << 16


class FastDropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (not in place); see the module docstring.

    Args:
        p: probability of zeroing an element, in [0, 1).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        drop = round(self.p * _LEVELS)  # lanes below -2^15 + drop are dropped
        self._threshold = -(_LEVELS // 2) + drop
        self._scale = _LEVELS / (_LEVELS - drop) if drop < _LEVELS else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with each element zeroed with probability ~``p``, the rest scaled up."""
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        draws = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64)
        draws.random_(-(1 << 63), None)  # all 64 bits (the default range leaves the top one 0)
        lanes = draws.view(torch.int16)[:n].view(x.shape)
        # a float mask holding 0 or the scale: one multiply forward and one backward (faster
        # here than torch.where or masked_fill, whose backward passes add a pass each)
        mask = (lanes >= self._threshold).to(x.dtype).mul_(self._scale)
        return x * mask

    def extra_repr(self) -> str:
        """``p=...`` in the module's repr."""
        return f"p={self.p}"


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Replace every ``nn.Dropout`` inside ``module`` by a :class:`FastDropout` of the same ``p``.

    This covers the dropout layers of ``nn.TransformerEncoderLayer`` (``dropout``,
    ``dropout1``, ``dropout2``); the attention weights' dropout inside
    ``nn.MultiheadAttention`` is a functional call and stays torch's. Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if type(child) is nn.Dropout:
            setattr(module, name, FastDropout(child.p))
        else:
            use_fast_dropout(child)
    return module
