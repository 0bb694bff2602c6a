"""models/convert.py and the shared pieces it folds and unrolls with (qsnn_kernels.batch_norm,
qsnn_kernels.conv_geometry): batch norm as an affine map, conv geometry against torch, the
converted layers' packed weight built once (no per-forward rebuild or weight host sync), the
fold guard (a conv or batch norm called twice, a conv output read elsewhere), the refusal of
non-zero padding, and the deprecated ``in_bits`` keyword."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from qsnn_kernels import PackedWeight
from qsnn_kernels.batch_norm import batch_norm_affine
from qsnn_kernels.conv_geometry import conv_output_size, im2col_hwc
from qsnn_kernels.models.convert import PackedConv2d, PackedLinear, convert_for_inference
from qsnn_kernels.models.layers import QuantConv2d


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


# --------------------------------------------------------------------------- the packed weight, built once


_SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default}
"""The aten ops that hand a tensor's value to the host (item(), bool(), int(), float(), equal)."""


class _HostSyncs(TorchDispatchMode):
    """Counts host syncs, and those that read data computed from ``sources`` (taint follows every op)."""

    def __init__(self, sources):
        super().__init__()
        self.tainted = {id(t): t for t in sources}
        self.syncs = self.weight_syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        from_weight = any(self.tainted.get(id(t)) is t for t in inputs)
        if func in _SYNCS:
            self.syncs += 1
            self.weight_syncs += from_weight
        out = func(*args, **kwargs)
        if from_weight:
            self.tainted.update({id(t): t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)})
        return out


def _layer(kind: str, s_bits):
    g = torch.Generator().manual_seed(3)
    if kind == "linear":
        pw = PackedWeight.from_float(torch.randn(6, 37, generator=g), 4)
        return PackedLinear(pw, torch.randn(6, generator=g), s_bits=s_bits, in_scale=0.5)
    pw = PackedWeight.from_float(torch.randn(5, 3, 3, 3, generator=g), 2)
    return PackedConv2d(pw, torch.randn(5, generator=g), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                        s_bits=s_bits, in_scale=0.5)


def _input(kind: str, s_bits):
    g = torch.Generator().manual_seed(4)
    shape = (2, 3, 37) if kind == "linear" else (2, 1, 3, 6, 5)
    if s_bits is None:
        return torch.randn(shape, generator=g)
    return torch.randint(0, 1 << s_bits, shape, generator=g).float() * 0.5


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("s_bits", [2, None])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_forward_uses_the_packed_weight_as_is(kind, s_bits, grad, monkeypatch):
    """A converted layer's forward builds no PackedWeight and never syncs the host on the weight
    (or anything computed from it); a real-valued input's forward does not sync at all. Spike input
    syncs once, to check the input's levels (a contract: a ValueError decided on the data), and its
    levels are not checked again by the GEMM."""
    layer, x = _layer(kind, s_bits), _input(kind, s_bits)
    expected = layer(x)
    built = []
    init = PackedWeight.__init__
    monkeypatch.setattr(PackedWeight, "__init__", lambda self, *a, **k: built.append(1) or init(self, *a, **k))
    detector = _HostSyncs([layer.planes, layer.scale, layer.bias])
    with torch.set_grad_enabled(grad), detector:
        for _ in range(3):
            y = layer(x.clone().requires_grad_(grad))
    assert built == [] and detector.weight_syncs == 0
    # real-valued input: no sync; spike input: one per forward, the check of its levels
    assert detector.syncs == (0 if s_bits is None else 3)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_the_sync_detector_catches_a_per_forward_rebuild(monkeypatch):
    """The test above fails for a layer that rebuilds (and so validates) its PackedWeight per forward."""
    layer, x = _layer("linear", None), _input("linear", None)
    monkeypatch.setattr(PackedLinear, "packed_weight",
                        property(lambda self: PackedWeight(self.planes, self.scale, self.weight_shape, self.w_bits)))
    detector = _HostSyncs([layer.planes, layer.scale])
    with torch.no_grad(), detector:
        layer(x)
    assert detector.weight_syncs > 0


def test_the_weight_is_rebuilt_and_checked_when_buffers_change():
    """load_state_dict checks a packing before copying it in (a bad one is a load error, the layer
    unchanged), a good one is used at once; .to(dtype) keeps the scale float32; deepcopy and pickle
    keep the PackedWeight on the buffers' own tensors."""
    layer, x = _layer("conv", 2), _input("conv", 2)
    other = _layer("conv", 2)
    with torch.no_grad():
        other.scale.mul_(2.0)
    layer.load_state_dict(other.state_dict())
    assert layer.packed_weight.scale is layer.scale and torch.equal(layer(x), other(x))
    before = layer.state_dict()
    for key, bad in (("scale", torch.full_like(layer.scale, float("nan"))),
                     ("planes", layer.planes | (1 << 30))):               # K = 27: bit 30 is padding
        with pytest.raises(RuntimeError, match="not a valid packed weight"):
            layer.load_state_dict({**before, key: bad})
        assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())
    moved = copy.deepcopy(layer).double()
    assert moved.scale.dtype == torch.float32 and moved.bias.dtype == torch.float64
    assert moved.packed_weight.planes is moved.planes and moved.packed_weight.scale is moved.scale
    torch.testing.assert_close(moved(x.double()), layer(x).double())
    loaded = pickle.loads(pickle.dumps(layer))
    assert loaded.packed_weight.planes is loaded.planes and torch.equal(loaded(x), layer(x))


def test_in_bits_is_a_deprecated_alias_of_s_bits():
    pw = PackedWeight.from_float(torch.randn(4, 8), 2)
    with pytest.warns(FutureWarning, match="s_bits"):
        old = PackedLinear(pw, None, in_bits=2)
    assert old.s_bits == 2
    with pytest.warns(FutureWarning, match="s_bits"):
        assert old.in_bits == 2
    with pytest.raises(TypeError, match="s_bits"):
        PackedLinear(pw, None, s_bits=2, in_bits=2)
    state = dict(old.__dict__)
    state["in_bits"] = state.pop("s_bits")                                   # a layer pickled before the rename
    del state["_packed"]
    revived = PackedLinear.__new__(PackedLinear)
    revived.__setstate__(state)
    assert revived.s_bits == 2 and revived.packed_weight.planes is revived.planes


# --------------------------------------------------------------------------- batch-norm folding


def _bn(channels: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
    return bn


class _ConvTwice(nn.Module):
    """One conv called twice, each output into its own batch norm."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn1, self.bn2 = QuantConv2d(3, 4, 3, padding=1, w_bits=4), _bn(4, 1), _bn(4, 2)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(2 * x))


class _BatchNormTwice(nn.Module):
    """One batch norm called on a conv's output and on another tensor."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = QuantConv2d(3, 4, 3, padding=1, w_bits=4), _bn(4, 3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.bn(x[:, :1].expand(-1, 4, -1, -1))


class _OutputReadTwice(nn.Module):
    """A conv's output read by its batch norm and by an add outside any module."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = QuantConv2d(3, 4, 3, padding=1, w_bits=4), _bn(4, 4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _Foldable(_OutputReadTwice):
    def forward(self, x):
        return self.bn(self.conv(x))


@pytest.mark.parametrize("model, folded", [(_ConvTwice, 0), (_BatchNormTwice, 0), (_OutputReadTwice, 0),
                                           (_Foldable, 1)])
def test_fold_only_a_batch_norm_that_sees_the_conv_alone(model, folded):
    """A conv or batch norm called twice, or a conv output read by anything else, is not folded (the
    converted model computes what the original does); a plain conv -> BN pair is."""
    torch.manual_seed(0)
    original = model().eval()
    x = torch.randn(2, 3, 6, 5)
    converted = convert_for_inference(original, x)
    assert sum(isinstance(m, nn.Identity) for m in converted.modules()) == folded
    with torch.no_grad():
        torch.testing.assert_close(converted(x), original(x), rtol=1e-5, atol=1e-5)


def test_a_real_input_layer_compiles_whole():
    """The packed weight is an attribute read as it is: a dense-path layer traces in one graph."""
    layer, x = _layer("conv", None), _input("conv", None)
    torch.testing.assert_close(torch.compile(layer, fullgraph=True)(x), layer(x))


@pytest.mark.parametrize("padding, mode", [("same", "zeros"), (1, "reflect")])
def test_a_conv_that_does_not_pad_with_zeros_is_refused(padding, mode):
    model = nn.Sequential(QuantConv2d(3, 4, 3, w_bits=4, padding=padding))
    model[0].padding_mode = mode
    with pytest.raises(ValueError, match="pads with zeros"):
        convert_for_inference(model, torch.randn(1, 3, 5, 5))


# --------------------------------------------------------------------------- integer SEW-ResNet


def _sew(w_bits, s_bits, t_steps, seed=0, connect_f="ADD", block="basic", **kw):
    from qsnn_kernels.models.sew_resnet import BasicBlock, Bottleneck, SEWResNet

    torch.manual_seed(seed)
    kw.setdefault("stem", "cifar")
    model = SEWResNet(BasicBlock if block == "basic" else Bottleneck, (1, 1, 1, 1), w_bits=w_bits, s_bits=s_bits,
                      t_steps=t_steps, num_classes=10, connect_f=connect_f, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # batch norms with spread statistics and some negative factors
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.weight[0] = -m.weight[0]
                m.bias.uniform_(-0.2, 0.8, generator=g)
    return model.eval()


@pytest.mark.parametrize("wst, connect_f, block, size, batch", [
    ((1, 1, 1), "ADD", "basic", 16, 2), ((4, 2, 2), "AND", "basic", 9, 1), ((2, 4, 1), "IAND", "basic", 12, 2),
    pytest.param((8, 1, 3), "ADD", "basic", 7, 1, marks=pytest.mark.slow), ((1, 2, 1), "ADD", "bottleneck", 8, 1)])
def test_integer_sew_resnet_kernels_are_the_reference(wst, connect_f, block, size, batch):
    """Every block's output levels, the pooled integer features and the integer read-out of the
    kernel path (packed planes, qsnn::spiking_conv_planes) equal reference.py's, bit for bit."""
    from qsnn_kernels.testing import mismatches

    model = _sew(*wst, connect_f=connect_f, block=block)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    im = convert_for_inference(model, x, integer=True)
    got, want = im.run(x, collect=True), im.run(x, "reference", collect=True)
    assert len(got.blocks) == len(want.blocks) == 4
    assert [mismatches(a, b) for a, b in zip(got.blocks, want.blocks)] == [0] * 4
    assert mismatches(got.features, want.features) == 0 and mismatches(got.z, want.z) == 0
    assert sum(int(b.sum()) for b in got.blocks) > 0  # the network spikes


@pytest.mark.parametrize("wst, connect_f, stem", [((1, 1, 1), "ADD", "cifar"), ((4, 2, 2), "IAND", "cifar"),
                                                  ((2, 4, 1), "AND", "cifar"), ((1, 2, 2), "ADD", "imagenet")])
def test_integer_sew_resnet_equals_the_float_converted_model(wst, connect_f, stem):
    """The integer model against the float converted model on the same weights: every block's
    levels equal and the logits equal up to float rounding. They may differ only where a membrane
    lies within the rounding of an integer threshold (relative 2^-F / theta, F >= 10 here) of a
    threshold; on these seeds no membrane does, which the exact level comparison checks."""
    from qsnn_kernels.testing import mismatches

    model = _sew(*wst, connect_f=connect_f, stem=stem)
    size = 16 if stem == "cifar" else 40  # the ImageNet stem: 7x7/2 conv and a 3x3/2 max pool
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    fm, im = convert_for_inference(model, x), convert_for_inference(model, x, integer=True)
    assert min(layer.frac_bits for b in im.blocks for layer in b.layers) >= 10
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, out: seen.append(out)) for s in fm._stages() for b in s]
    with torch.no_grad():
        logits = fm(x)
    for h in hooks:
        h.remove()
    out = im.run(x, collect=True)
    for float_spikes, levels in zip(seen, out.blocks):
        float_levels = torch.round(float_spikes / fm.v_th).to(torch.uint8).permute(0, 1, 3, 4, 2)
        assert mismatches(float_levels, levels) == 0
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(im(x).argmax(1), logits.argmax(1))


def test_integer_sew_resnet_event_frames_and_state():
    from qsnn_kernels.testing import mismatches

    model = _sew(1, 2, 3)
    frames = torch.randn(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    im = convert_for_inference(model, frames, integer=True)
    got, want = im.run(frames), im.run(frames, "reference")
    assert mismatches(got.z, want.z) == 0
    state = im.state_dict()
    assert state["blocks.0.layers.0.w_planes"].dtype == state["blocks.0.layers.0.theta"].dtype == torch.int32
    again = pickle.loads(pickle.dumps(im))
    assert torch.equal(again(frames), im(frames))


def test_integer_conversion_refuses_what_the_contract_cannot_express():
    from qsnn_kernels.models.sew_resnet import BasicBlock, SEWResNet

    with pytest.raises(TypeError, match="SEWResNet"):
        convert_for_inference(nn.Sequential(nn.Linear(3, 3)), torch.randn(1, 3), integer=True)
    small = dict(w_bits=1, s_bits=1, t_steps=1, num_classes=10, stem="cifar")
    with pytest.raises(ValueError, match="decay must be 2"):
        convert_for_inference(SEWResNet(BasicBlock, (1, 1, 1, 1), neuron_kw={"decay": 0.3}, **small),
                              torch.randn(1, 3, 8, 8), integer=True)
    with pytest.raises(ValueError, match="v_reset must be 0"):
        convert_for_inference(SEWResNet(BasicBlock, (1, 1, 1, 1), neuron_kw={"v_reset": 0.25}, **small),
                              torch.randn(1, 3, 8, 8), integer=True)
    with pytest.raises(ValueError, match="stateful"):
        convert_for_inference(SEWResNet(BasicBlock, (1, 1, 1, 1), neuron_kw={"stateful": True}, **small),
                              torch.randn(1, 3, 8, 8), integer=True)
    with pytest.raises(ValueError, match="clamp_add"):
        convert_for_inference(SEWResNet(BasicBlock, (1, 1, 1, 1), clamp_add=False, **small),
                              torch.randn(1, 3, 8, 8), integer=True)
    with pytest.raises(ValueError, match="backend must be"):
        convert_for_inference(_sew(1, 1, 1), torch.randn(1, 3, 8, 8), integer=True).run(torch.randn(1, 3, 8, 8),
                                                                                        "triton")
