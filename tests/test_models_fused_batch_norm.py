"""The fused batch norm + neuron path of the models (models.layers.batch_norm_spikes) against the
two modules run one after the other: same outputs, gradients and running statistics."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import qsnn_kernels
import qsnn_kernels.models.layers as layers
from qsnn_kernels.models.layers import MultiStepBatchNorm1d, MultiStepBatchNorm2d, fuses_batch_norm
from qsnn_kernels.models.spikformer import Spikformer


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, (MultiStepBatchNorm1d, MultiStepBatchNorm2d))]


def _fused_calls(model, x):
    """How many batch norms ran fused in one training forward of ``model`` on ``x``."""
    calls = []
    real = layers.batch_norm_lif

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    layers.batch_norm_lif = counting
    try:
        model(x)
    finally:
        layers.batch_norm_lif = real
    return len(calls)


def _sew():
    return timm.create_model("qsnn_sew_resnet18_cifar", num_classes=5, w_bits=4, s_bits=2, t_steps=2)


def _spikformer():
    return Spikformer(depth=1, embed_dim=32, num_heads=2, patch_size=4, img_size=16, num_classes=5, w_bits=4,
                      s_bits=1, t_steps=2)


@pytest.mark.parametrize("build", [_sew, _spikformer])
def test_fused_equals_unfused(build):
    torch.manual_seed(0)
    fused = build().double().train()
    unfused = copy.deepcopy(fused)
    for bn in _batch_norms(unfused):
        bn.fuse_neuron = False
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert _fused_calls(copy.deepcopy(fused), x) >= 3
    assert _fused_calls(copy.deepcopy(unfused), x) == 0
    out_f, out_u = fused(x), unfused(x)
    torch.testing.assert_close(out_f, out_u, rtol=1e-9, atol=1e-9)
    out_f.square().sum().backward()
    out_u.square().sum().backward()
    for (n, p), (_, q) in zip(fused.named_parameters(), unfused.named_parameters()):
        if p.grad is None:
            assert q.grad is None, n
            continue
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=n)
    for bf, bu in zip(_batch_norms(fused), _batch_norms(unfused)):
        torch.testing.assert_close(bf.running_mean, bu.running_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(bf.running_var, bu.running_var, rtol=1e-10, atol=1e-12)
        assert bf.num_batches_tracked == bu.num_batches_tracked


def test_fusion_rules():
    bn, neuron = MultiStepBatchNorm2d(4), qsnn_kernels.MultiLevelLIF(s_bits=1)
    x = torch.randn(2, 2, 4, 3, 3)
    assert fuses_batch_norm(bn, neuron, x)
    assert not fuses_batch_norm(bn.eval(), neuron, x)  # eval: the modules, for folding
    bn.train()
    bn.sync_stats = True
    assert not fuses_batch_norm(bn, neuron, x)
    bn.sync_stats = False
    assert not fuses_batch_norm(bn, qsnn_kernels.MultiLevelLIF(s_bits=1, stateful=True), x)
    assert not fuses_batch_norm(bn, qsnn_kernels.MultiLevelLIF(s_bits=1, backend="reference"), x)
    assert not fuses_batch_norm(bn, neuron, x.double())  # parameters are float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast: the modules
        assert not fuses_batch_norm(bn, neuron, x)
    assert not fuses_batch_norm(bn, neuron, x.bfloat16())
    # CUDA under autocast (fake tensors: no GPU needed): half x with the float32 parameters fuses
    with torch._subclasses.fake_tensor.FakeTensorMode():
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            assert fuses_batch_norm(bn, neuron, torch.empty(2, 2, 4, 3, 3, device="cuda", dtype=dtype))
        assert not fuses_batch_norm(bn, neuron, torch.empty(2, 2, 4, 3, 3, device="cuda", dtype=torch.float64))
    bn.fuse_neuron = False
    assert not fuses_batch_norm(bn, neuron, x)
