"""models/convert.py and the shared pieces it folds and unrolls with (qsnn_kernels.batch_norm,
qsnn_kernels.conv_geometry): batch norm as an affine map, conv geometry against torch, the
converted layers' packed weight built once (no per-forward rebuild or weight host sync), the
fold guard for a module called twice, and the deprecated ``in_bits`` keyword."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qsnn_kernels.batch_norm import batch_norm_affine
from qsnn_kernels.conv_geometry import conv_output_size, im2col_hwc


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_affine_is_eval_batch_norm(affine):
    g = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(5, affine=affine, eps=1e-3).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(5, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(5, generator=g, dtype=torch.float64) + 0.1)
        if affine:
            bn.weight.copy_(torch.randn(5, generator=g, dtype=torch.float64))  # negative factors too
            bn.bias.copy_(torch.randn(5, generator=g, dtype=torch.float64))
    factor, shift = batch_norm_affine(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    assert factor.dtype == shift.dtype == torch.float64 and not factor.requires_grad
    y = torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(factor[:, None, None] * y + shift[:, None, None], bn(y), rtol=1e-12, atol=1e-12)


def test_batch_norm_affine_bad_input():
    with pytest.raises(ValueError, match="running_var"):
        batch_norm_affine(torch.zeros(3), torch.ones(4), 1e-5)
    with pytest.raises(ValueError, match="eps"):
        batch_norm_affine(torch.zeros(3), torch.ones(3), -1.0)


@pytest.mark.parametrize("kernel, stride, padding, dilation", [
    ((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 1), (0, 1), (1, 1)), ((1, 1), (2, 2), (0, 0), (1, 1)),
    ((1, 1), (1, 1), (1, 0), (1, 1)), ((3, 3), (1, 2), (2, 2), (2, 1)), ((2, 3), (3, 1), (1, 0), (1, 2))])
def test_im2col_hwc_is_the_convolution(kernel, stride, padding, dilation):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, *kernel, generator=g, dtype=torch.float64)
    expected = F.conv2d(x, w, None, stride, padding, dilation)
    assert conv_output_size(x.shape[2:], kernel, stride, padding, dilation) == tuple(expected.shape[2:])
    cols, oh, ow = im2col_hwc(x, kernel, stride, padding, dilation)
    assert (oh, ow) == tuple(expected.shape[2:]) and cols.shape == (2 * oh * ow, kernel[0] * kernel[1] * 3)
    y = (cols @ w.permute(0, 2, 3, 1).reshape(4, -1).T).reshape(2, oh, ow, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
