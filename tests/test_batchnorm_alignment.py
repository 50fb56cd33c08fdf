"""BatchNorm statistics alignment (``networks.batchnorm``): exact statistics on hand-made batches, the shift
rule, and the property it exists for: a uniform change of the input is undone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mssn_monai.networks.batchnorm import batch_norm_layers, batch_norm_statistics, shift_batch_norm


def test_statistics_are_the_mean_of_batch_means_and_unbiased_variances():
    net = nn.Sequential(nn.BatchNorm2d(2))
    a = torch.tensor([1.0, 3.0, 5.0, 7.0]).reshape(1, 1, 2, 2).repeat(1, 2, 1, 1)  # mean 4, unbiased var 20/3
    b = torch.full((1, 2, 2, 2), 10.0)  # mean 10, var 0
    b[:, 1] = -2.0
    ((mean, var),) = batch_norm_statistics(net, [a, b])
    torch.testing.assert_close(mean, torch.tensor([7.0, 1.0]))
    torch.testing.assert_close(var, torch.tensor([10.0 / 3.0, 10.0 / 3.0]))
    # the module itself is untouched: fresh statistics, still in eval mode if it was
    assert torch.equal(net[0].running_mean, torch.zeros(2)) and torch.equal(net[0].running_var, torch.ones(2))


def test_statistics_measure_each_layer_normalised_by_its_own_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 5, 5) * 3 + 7
    first, second = batch_norm_statistics(net, [x], forward=lambda m, batch: m(batch))
    torch.testing.assert_close(first[0], x.mean(dim=(0, 2, 3)))
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normed = (x - mean) / torch.sqrt(var + 1e-5)
    y = net[1](normed)
    torch.testing.assert_close(second[0], y.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(second[1], y.var(dim=(0, 2, 3), unbiased=True))
    assert not net.training


def test_shift_rule_on_hand_values():
    bn = nn.BatchNorm2d(1)
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(2.0)
    source = [(torch.tensor([2.0]), torch.tensor([4.0]))]
    target = [(torch.tensor([5.0]), torch.tensor([8.0]))]
    shift_batch_norm(bn, source, target, eps=0.0)
    assert bn.running_mean.item() == 4.0 and bn.running_var.item() == 4.0
    shift_batch_norm(bn, target, target)  # the same look on both sides: nothing moves
    assert bn.running_mean.item() == 4.0 and bn.running_var.item() == pytest.approx(4.0)


def test_a_uniform_input_shift_is_undone_exactly():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU())
    with torch.no_grad():  # trained statistics that are not those of the fields below
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net.eval()
    source = [torch.rand(1, 3, 16, 16) for _ in range(3)]
    offset = torch.tensor([0.2, -0.1, 0.3]).reshape(1, 3, 1, 1)  # a stain shift: every pixel moves the same way
    target = [x + offset for x in source]
    with torch.no_grad():
        before = [net(x) for x in source]
        shift_batch_norm(net, batch_norm_statistics(net, source), batch_norm_statistics(net, target))
        after = [net(x) for x in target]
    for want, got in zip(before, after, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_bad_input_raises():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match="no BatchNorm"):
        batch_norm_statistics(nn.Conv2d(1, 1, 1), [torch.zeros(1, 1, 2, 2)])
    with pytest.raises(ValueError, match="no inputs"):
        batch_norm_statistics(net, [])
    stats = batch_norm_statistics(net, [torch.rand(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="layers"):
        shift_batch_norm(net, stats + stats, stats)
    with pytest.raises(ValueError, match="channels"):
        shift_batch_norm(net, [(torch.zeros(3), torch.ones(3))], stats)
    assert len(batch_norm_layers(net)) == 1


def test_fnr_statistics_cover_every_layer_of_stage1():
    from mssn_monai.networks.fnr import MultiScaleFNR

    fnr = MultiScaleFNR().eval()
    stats = batch_norm_statistics(fnr, [torch.rand(1, 3, 160, 160)])
    layers = batch_norm_layers(fnr)
    assert len(stats) == len(layers) > 4
    assert all(m.shape == layer.running_mean.shape for (m, _), layer in zip(stats, layers, strict=True))
    assert all(not torch.equal(m, torch.zeros_like(m)) for m, _ in stats)  # every layer ran in training mode
