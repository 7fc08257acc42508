"""FastDropout: nn.Dropout's distribution from a cheaper mask, on torch's generator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pbrl.offline.nn import FastDropout, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keeps_each_element_with_one_minus_p_and_preserves_the_mean(p: float) -> None:
    torch.manual_seed(0)
    n = 1 << 20
    y = FastDropout(p).train()(torch.ones(n))
    kept = y != 0
    # 4 sigma of a Binomial(n, 1 - p) fraction is < 0.002 here
    assert abs(kept.float().mean().item() - (1 - p)) < 0.002
    # every one of the four 16-bit lanes of a draw is used alike (a lane stuck at one sign,
    # as the top bit of torch's default int64 range is, would keep 100 % or ~2(1-p) - 1 of it)
    for lane in range(4):
        assert abs(kept[lane::4].float().mean().item() - (1 - p)) < 0.004
    scale = y[kept].unique()
    assert len(scale) == 1 and abs(scale.item() - 1 / (1 - p)) < 1e-4
    assert abs(y.mean().item() - 1.0) < 0.004  # inverted dropout: E[y] = x


def test_gradient_is_the_mask_eval_is_the_identity_and_seeds_reproduce() -> None:
    x = torch.randn(3, 7, 5, requires_grad=True)
    d = FastDropout(0.3).train()
    torch.manual_seed(3)
    y = d(x)
    y.sum().backward()
    assert x.grad is not None
    mask = y.detach() / x.detach()
    torch.testing.assert_close(x.grad, mask)
    torch.manual_seed(3)
    torch.testing.assert_close(d(x), y)  # the same torch seed, the same mask
    assert not torch.equal(d(x), y)  # the generator moved on
    d.eval()
    assert d(x) is x
    assert FastDropout(0.0).train()(x) is x
    half = x.detach().to(torch.bfloat16)
    assert FastDropout(0.5).train()(half).dtype == torch.bfloat16  # other dtypes: F.dropout
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        FastDropout(1.0)


def test_use_fast_dropout_swaps_every_dropout_layer_of_a_transformer() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 32, 0.2, batch_first=True)
    body = use_fast_dropout(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
    kinds = [type(m) for m in body.modules() if isinstance(m, nn.Dropout | FastDropout)]
    assert kinds and all(k is FastDropout for k in kinds)
    assert all(m.p == 0.2 for m in body.modules() if isinstance(m, FastDropout))
    out = body(torch.randn(2, 5, 16))
    out.sum().backward()
    assert out.shape == (2, 5, 16)
