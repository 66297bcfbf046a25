"""BatchNorm folding: same outputs, fewer layers, and a refusal when registration order lies."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from zsclust.embed._optimize import fold_batchnorm


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "resnet18"])
def test_folding_keeps_outputs_and_removes_norms(arch):
    torch.manual_seed(0)
    model = _randomise_bn(timm.create_model(arch, num_classes=0))
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        folded, n = fold_batchnorm(model, check_input=x[:1])
        ref, out = model(x), folded(x)
    bns = lambda m: sum(isinstance(k, nn.BatchNorm2d) for k in m.modules())  # noqa: E731
    assert n > 0 and bns(folded) == bns(model) - n
    assert folded is not model and bns(model) > 0  # the original is untouched
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


class _Misordered(nn.Module):
    """Registers a conv and a BN next to each other, but runs the BN first: folding would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_folding_is_refused_when_it_would_change_outputs():
    model = _randomise_bn(_Misordered())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        out, n = fold_batchnorm(model, check_input=x)
    assert out is model and n == 0
