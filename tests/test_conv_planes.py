"""qsnn::conv_planes and qsnn::spiking_conv_planes against reference.py, bit for bit."""

import pytest
import torch
from torch.library import opcheck

from qsnn_kernels import reference
from qsnn_kernels.conv_planes import conv_planes, pack_conv_weight, pack_feature_levels, spiking_conv_planes
from qsnn_kernels.testing import mismatches

# (T, N, H, W, C, Cout, k, stride, padding, dilation, w_bits, s_bits): odd channel counts (C = 1, 31,
# 33, 70), batch 1, T = 1, Cout not a multiple of 8 or 32, strides, dilation, 1x1 and 3x3
CASES = [
    (1, 1, 5, 5, 33, 9, 3, 1, 1, 1, 1, 1),
    (2, 2, 7, 6, 64, 16, 3, 2, 1, 1, 4, 2),
    (3, 1, 4, 4, 1, 3, 1, 1, 0, 1, 8, 1),
    (1, 2, 8, 8, 70, 13, 3, 1, 1, 1, 2, 4),
    (2, 1, 6, 5, 31, 40, 1, 2, 0, 1, 1, 8),
    (1, 1, 9, 7, 96, 8, 3, 1, 2, 2, 1, 2),
]


def _operands(case, seed=0):
    t, n, h, w, c, cout, k, _, _, _, w_bits, s_bits = case
    gen = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 1 << s_bits, (t, n, h, w, c), generator=gen).to(torch.uint8)
    if w_bits == 1:
        q = torch.randint(0, 2, (cout, k, k, c), generator=gen) * 2 - 1
    else:
        q = torch.randint(-(1 << (w_bits - 1)), 1 << (w_bits - 1), (cout, k, k, c), generator=gen)
    return levels, q.to(torch.int8), gen


@pytest.fixture(params=["auto", "generic"])
def simd(request, monkeypatch):
    monkeypatch.setenv("QSNN_CPU_SIMD", request.param)
    return request.param


@pytest.mark.parametrize("case", CASES)
def test_conv_planes_exact(case, simd):
    levels, q, _ = _operands(case)
    _, _, _, _, c, _, _, stride, padding, dilation, w_bits, s_bits = case
    want = reference.conv2d_levels(levels, q, (stride,) * 2, (padding,) * 2, (dilation,) * 2)
    got = conv_planes(pack_feature_levels(levels, s_bits), pack_conv_weight(q, w_bits), c, s_bits=s_bits,
                      stride=stride, padding=padding, dilation=dilation)
    assert got.dtype == torch.int32 and got.shape == want.shape
    assert mismatches(got, want) == 0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("out_bits,reset,connect,frac_bits,leak_shift",
                         [(1, "hard", "none", 0, 1), (2, "soft", "ADD", 3, 1), (4, "hard", "IAND", 1, 0),
                          (1, "soft", "AND", 2, 2), (8, "hard", "ADD", 0, 1)])
def test_spiking_conv_planes_exact(case, out_bits, reset, connect, frac_bits, leak_shift, simd):
    levels, q, gen = _operands(case)
    _, _, _, _, c, cout, _, stride, padding, dilation, w_bits, s_bits = case
    geometry = dict(stride=stride, padding=padding, dilation=dilation)
    y = reference.conv2d_levels(levels, q, (stride,) * 2, (padding,) * 2, (dilation,) * 2)
    bias = torch.randint(-40, 40, (cout,), generator=gen, dtype=torch.int32)
    theta = torch.randint(1, 50, (cout,), generator=gen, dtype=torch.int32)
    want = reference.spiking_layer_int(y, bias, theta, frac_bits, out_bits, leak_shift, reset)
    identity = None
    if connect != "none":
        a = torch.randint(0, 1 << out_bits, want.shape, generator=gen).to(torch.uint8)
        want = reference.sew_connect_levels(a, want, connect, out_bits)
        identity = pack_feature_levels(a, out_bits)
    got = spiking_conv_planes(pack_feature_levels(levels, s_bits), pack_conv_weight(q, w_bits), c, s_bits=s_bits,
                              bias=bias, theta=theta, frac_bits=frac_bits, out_bits=out_bits, leak_shift=leak_shift,
                              reset=reset, identity=identity, connect=connect, **geometry)
    assert mismatches(got, pack_feature_levels(want, out_bits)) == 0


def test_spiking_layer_int_is_multilevel_lif_int_per_channel():
    """With one theta, no bias and no fraction the epilogue is the HLS integer LIF itself."""
    x = torch.randint(-60, 90, (4, 6, 11), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    for reset in ("hard", "soft"):
        want, _ = reference.multilevel_lif_int(x, 2, 9, 1, 0, reset)
        got = reference.spiking_layer_int(x, torch.zeros(11, dtype=torch.int32), torch.full((11,), 9), 0, 2, 1, reset)
        assert mismatches(got, want) == 0


def test_opcheck():
    case = CASES[1]
    levels, q, _ = _operands(case)
    xp, wp = pack_feature_levels(levels, 2), pack_conv_weight(q, 4)
    geometry = ([2, 2], [1, 1], [1, 1])
    opcheck(torch.ops.qsnn.conv_planes.default, (xp, wp, 64, 2, *geometry))
    cout = q.shape[0]
    bias, theta = torch.arange(cout, dtype=torch.int32) - 5, torch.full((cout,), 7, dtype=torch.int32)
    out = torch.ops.qsnn.spiking_conv_planes(xp, wp, 64, 2, *geometry, bias, theta, 1, 2, 1, "hard", None, "none")
    opcheck(torch.ops.qsnn.spiking_conv_planes.default,
            (xp, wp, 64, 2, *geometry, bias, theta, 1, 2, 1, "soft", out, "ADD"))


def test_errors_before_kernels():
    levels, q, _ = _operands(CASES[0])
    xp, wp = pack_feature_levels(levels, 1), pack_conv_weight(q, 1)
    with pytest.raises(TypeError, match="int32"):
        conv_planes(xp.to(torch.int64), wp, 33, s_bits=1)
    with pytest.raises(ValueError, match="words"):
        conv_planes(xp, wp, 65, s_bits=1)
    with pytest.raises(ValueError, match="multiple of s_bits"):
        conv_planes(xp, wp, 33, s_bits=2)
    with pytest.raises(ValueError, match="does not fit"):
        conv_planes(xp, wp, 33, s_bits=1, dilation=4)
    bad = xp.clone()
    bad[..., -1] |= 1 << 5  # a padding bit beyond C = 33
    with pytest.raises(ValueError, match="padding bits"):
        conv_planes(bad, wp, 33, s_bits=1)
    with pytest.raises(ValueError, match="overflow int32"):  # 9 * 32768 * 128 * 255 >= 2^31
        torch.ops.qsnn.conv_planes(torch.zeros(8, 1, 4, 4, 1024, dtype=torch.int32),
                                   torch.zeros(8, 1, 3, 3, 1024, dtype=torch.int32), 32768, 8, [1, 1], [1, 1], [1, 1])
    cout = q.shape[0]
    ok = dict(s_bits=1, frac_bits=0, out_bits=1, padding=1)
    bias, theta = torch.zeros(cout, dtype=torch.int32), torch.ones(cout, dtype=torch.int32)
    with pytest.raises(ValueError, match="theta must be >= 1"):
        spiking_conv_planes(xp, wp, 33, bias=bias, theta=theta - 1, **ok)
    with pytest.raises(ValueError, match="bias must be an int32"):
        spiking_conv_planes(xp, wp, 33, bias=bias.long(), theta=theta, **ok)
    with pytest.raises(ValueError, match="identity operand"):
        spiking_conv_planes(xp, wp, 33, bias=bias, theta=theta, connect="ADD", **ok)
    with pytest.raises(ValueError, match="identity must be"):
        spiking_conv_planes(xp, wp, 33, bias=bias, theta=theta, connect="ADD", identity=xp[:, :, :2], **ok)
    with pytest.raises(ValueError, match="leave int32"):
        spiking_conv_planes(xp, wp, 33, bias=bias, theta=theta, **{**ok, "frac_bits": 30})
    with pytest.raises(ValueError, match="reset must be"):
        torch.ops.qsnn.spiking_conv_planes(xp, wp, 33, 1, [1, 1], [1, 1], [1, 1], bias, theta, 0, 1, 1, "never",
                                           None, "none")


@pytest.mark.parametrize("reset, s_bits, t_steps, w_bits", [("hard", 2, 3, 4), ("soft", 1, 1, 1), ("hard", 4, 2, 8)])
def test_the_hls_network_on_the_conv_plane_kernels(reset, s_bits, t_steps, w_bits):
    """The integer network of ``python -m qsnn_kernels.hls`` (random_network, checked there against
    the HLS C simulation) run through the integer SEW-ResNet's kernels: the same levels of every
    layer and the same logits, bit for bit."""
    from qsnn_kernels.hls.network import forward_conv_planes, random_network

    net, x = random_network((64, 48, 33, 10), w_bits=w_bits, s_bits=s_bits, t_steps=t_steps, batch=5, reset=reset)
    want, got = net.forward(x), forward_conv_planes(net, x)
    assert [mismatches(a, b) for a, b in zip(got.levels, want.levels)] == [0, 0]
    assert mismatches(got.logits, want.logits) == 0 and mismatches(got.pred, want.pred) == 0
    assert sum(int(lv.sum()) for lv in want.levels) > 0
