"""SEW-ResNet (models/sew_resnet.py), its layers (models/layers.py) and the inference conversion
(models/convert.py): shapes, parameter counts, forward/backward at several W/S/T, the connect
functions, converted-model equivalence, torch.compile, state_dict round trip, bad input."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

import qsnn_kernels.models as qm
from qsnn_kernels import reference
from qsnn_kernels.models import sew_resnet
from qsnn_kernels.models.convert import PackedConv2d, PackedLinear, convert_for_inference, model_nbytes
from qsnn_kernels.models.layers import QuantConv2d, QuantLinear, spiking_neuron
from qsnn_kernels.models.layers import bits_for_levels
from qsnn_kernels.models.sew_resnet import BasicBlock, SEWResNet, sew_connect

SEW_NAMES = ["qsnn_sew_resnet18", "qsnn_sew_resnet34", "qsnn_sew_resnet50", "qsnn_sew_resnet18_cifar",
             "qsnn_sew_resnet34_cifar"]
TORCHVISION = {"18": torchvision.models.resnet18, "34": torchvision.models.resnet34,
               "50": torchvision.models.resnet50}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _tiny(**kw) -> SEWResNet:
    """One BasicBlock per stage, CIFAR stem: the smallest SEW-ResNet (4.9 M parameters)."""
    kw.setdefault("num_classes", 5)
    return SEWResNet(BasicBlock, (1, 1, 1, 1), stem="cifar", **kw)


def _calibrate(model, x) -> None:
    """Running BN statistics = one batch's statistics, so that neurons fire (about 15 % per step)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


# --------------------------------------------------------------------------- registry and counts


def test_registered_names_and_close_name_error():
    assert set(SEW_NAMES) <= set(qm.list_models())
    with pytest.raises(ValueError, match="did you mean: .*qsnn_sew_resnet18"):
        qm.create_model("qsnn_sew_resnet19")
    with pytest.raises(ValueError, match="pretrained"):
        qm.create_model("sew_resnet18_cifar", pretrained=True)


@pytest.mark.parametrize("name", SEW_NAMES)
def test_parameter_count_matches_torchvision_resnet(name):
    """A SEW-ResNet has a ResNet's parameters: torchvision's at 1000 classes (the CIFAR stem: a
    3x3 instead of a 7x7 stem conv)."""
    model = qm.create_model(name, num_classes=1000, w_bits=4, s_bits=2, t_steps=1)
    depth = name.split("resnet")[1][:2]
    expected = _count(TORCHVISION[depth]())
    if name.endswith("_cifar"):
        expected -= (7 * 7 - 3 * 3) * 3 * 64
    assert _count(model) == expected
    if name == "qsnn_sew_resnet34":
        assert abs(_count(model) / 1e6 - 21.79) < 0.01  # 21.797672 M, as usually quoted


@pytest.mark.parametrize("name", SEW_NAMES)
def test_shapes_on_tiny_input(name):
    torch.manual_seed(0)
    model = qm.create_model(name, num_classes=7, w_bits=2, s_bits=1, t_steps=1).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 7) and bool(torch.isfinite(y).all())
    assert (model.w_bits, model.s_bits, model.t_steps) == (2, 1, 1)


def test_cifar_default_classes_and_input_widths():
    model = qm.create_model("sew_resnet18_cifar", w_bits=4, s_bits=2, t_steps=2)
    assert model.fc.out_features == 10
    assert model.conv1.s_bits is None and model.fc.s_bits is None  # encoding layer, pooled head
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d) and m is not model.conv1]
    assert convs and all(m.s_bits == 2 for m in convs)  # clamped ADD: every block output is 2-bit


# --------------------------------------------------------------------------- forward and backward


@pytest.mark.parametrize("w_bits, s_bits, t_steps, connect_f, clamp_add", [
    (1, 1, 1, "ADD", True), (2, 4, 2, "IAND", True), (4, 2, 3, "ADD", False), (8, 8, 1, "AND", True),
    (16, 1, 2, "IAND", True), (32, 2, 1, "ADD", True)])
def test_forward_backward(w_bits, s_bits, t_steps, connect_f, clamp_add):
    torch.manual_seed(1)
    model = _tiny(w_bits=w_bits, s_bits=s_bits, t_steps=t_steps, connect_f=connect_f, clamp_add=clamp_add)
    x = torch.randn(3, 3, 9, 11)
    y = model(x)
    assert y.shape == (3, 5) and bool(torch.isfinite(y).all())
    y.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert float(model.conv1.weight.grad.abs().sum()) > 0  # the gradient reaches the encoding layer


@pytest.mark.parametrize("connect_f, clamp_add", [("ADD", True), ("ADD", False), ("IAND", True)])
def test_block_outputs_are_levels_in_range(connect_f, clamp_add):
    """Every block output is level * v_th with the level an integer in [0, bound], bound = 2^S - 1
    (clamped ADD, IAND) or the builder's running bound (unclamped ADD), and the next convs' s_bits
    holds that bound."""
    torch.manual_seed(2)
    v_th = 0.5
    model = _tiny(w_bits=4, s_bits=2, t_steps=2, connect_f=connect_f, clamp_add=clamp_add,
                  neuron_kw={"v_th": v_th})
    _calibrate(model, torch.randn(4, 3, 12, 12))
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append((m, o))) for b in model.modules()
             if isinstance(b, BasicBlock)]
    with torch.no_grad():
        model(torch.randn(4, 3, 12, 12))
    for h in hooks:
        h.remove()
    blocks = [b for b in model.modules() if isinstance(b, BasicBlock)]
    levels_in = 3
    for (block, out), nxt in zip(outs, blocks[1:] + [None]):
        lv = out / v_th
        bound = block._out_levels(levels_in)
        assert int((lv != lv.round()).sum()) == 0 and float(lv.min()) >= 0 and float(lv.max()) <= bound
        if nxt is not None:
            assert nxt.conv1.s_bits == bits_for_levels(bound)
        levels_in = bound
    if connect_f == "ADD" and not clamp_add:
        assert max(float(o.max()) for _, o in outs) / v_th > 3  # the unbounded sum exceeds 2 bits


def test_connect_functions_binary_match_the_paper():
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 2, (1000,), generator=g).float()
    s = torch.randint(0, 2, (1000,), generator=g).float()
    ab, sb = a.bool(), s.bool()
    assert torch.equal(sew_connect(a, s, "ADD", 1.0, True, False), a + s)
    assert torch.equal(sew_connect(a, s, "ADD", 1.0, True, True), (ab | sb).float())
    assert torch.equal(sew_connect(a, s, "AND", 1.0, True, True), (ab & sb).float())
    assert torch.equal(sew_connect(a, s, "IAND", 1.0, True, True), (~ab & sb).float())
    # the clamped ADD passes the gradient straight through to both operands
    a2, s2 = a.clone().requires_grad_(), s.clone().requires_grad_()
    sew_connect(a2, s2, "ADD", 1.0, True, True).sum().backward()
    assert bool((a2.grad == 1).all()) and bool((s2.grad == 1).all())
    # multi-level IAND/AND: min lattice form, within [0, L]
    a3, s3 = torch.tensor([0.0, 1, 3, 2]), torch.tensor([3.0, 3, 3, 0])
    assert torch.equal(sew_connect(a3, s3, "IAND", 3.0, False, True), torch.tensor([3.0, 2, 0, 0]))
    assert torch.equal(sew_connect(a3, s3, "AND", 3.0, False, True), torch.tensor([0.0, 1, 3, 0]))


@pytest.mark.parametrize("w_bits, s_bits, cin, k, stride, pad", [
    (1, 1, 1, 1, 1, 0), (2, 2, 31, 1, 2, 0), (4, 1, 33, 3, 1, 1), (8, 4, 3, 3, 2, 1)])
def test_bitserial_training_path_matches_dense(w_bits, s_bits, cin, k, stride, pad):
    """``bitserial=True`` (exact kernel forward, dense STE backward) gives the dense path's output
    and gradients; inputs non-contiguous, odd channel counts (K = 1, 31, 33, 27)."""
    torch.manual_seed(4)
    v_th = 0.75
    conv = QuantConv2d(cin, 6, k, stride=stride, padding=pad, w_bits=w_bits, s_bits=s_bits, in_scale=v_th)
    lv = torch.randint(0, 1 << s_bits, (2, 2, 7, 5, cin)).float().permute(0, 1, 4, 2, 3)  # non-contiguous
    outs = []
    for mode in (False, True):
        conv.bitserial = mode
        x = (lv * v_th).requires_grad_()
        conv.zero_grad(set_to_none=True)
        y = conv(x)
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
        outs.append((y.detach(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
    for dense, serial in zip(*outs):
        torch.testing.assert_close(serial, dense, rtol=1e-5, atol=1e-5)
    lin = QuantLinear(cin, 4, w_bits=w_bits, s_bits=s_bits, in_scale=v_th)
    xs = lv[0, :, :, :, 0].transpose(1, 2) * v_th  # [2, 7, cin], non-contiguous
    y_dense = lin(xs)
    lin.bitserial = True
    torch.testing.assert_close(lin(xs), y_dense, rtol=1e-5, atol=1e-5)


def test_bitserial_path_rejects_input_that_is_not_spikes():
    """The bit-serial forward reads its input's levels through the one checked conversion
    (quantize.spike_levels): a value that is not ``level * in_scale`` is a ValueError naming
    s_bits, not a silently rounded level."""
    lin = QuantLinear(4, 3, w_bits=4, s_bits=1, in_scale=0.5, bitserial=True)
    conv = QuantConv2d(4, 3, 1, w_bits=4, s_bits=1, in_scale=0.5, bitserial=True)
    for layer, x in ((lin, torch.zeros(2, 4)), (conv, torch.zeros(1, 4, 2, 2))):
        layer(x)  # level 0: fine
        for bad in (0.3, 1.0, -0.5):  # off the grid, level 2 > 1, negative
            x.view(-1)[1] = bad
            with pytest.raises(ValueError, match="s_bits=1"):
                layer(x)
            x.view(-1)[1] = 0.0


def test_bitserial_is_off_unless_asked():
    """The forward path is chosen per layer by its arguments: the bit-serial kernel only with
    ``bitserial=True``, at every weight width."""
    from qsnn_kernels.models.layers import uses_bitserial

    for w_bits in (1, 2, 4, 8):
        assert not uses_bitserial(QuantLinear(4, 3, w_bits=w_bits, s_bits=1))
        assert uses_bitserial(QuantLinear(4, 3, w_bits=w_bits, s_bits=1, bitserial=True))
    assert not uses_bitserial(QuantLinear(4, 3, w_bits=16, s_bits=1, bitserial=True))  # float weight
    assert not uses_bitserial(QuantLinear(4, 3, w_bits=4, s_bits=None, bitserial=True))  # real-valued input


# --------------------------------------------------------------------------- renamed keywords


def _layers(**kw):
    return QuantLinear(4, 3, w_bits=4, **kw), QuantConv2d(4, 3, 3, padding=1, w_bits=4, **kw)


def test_in_bits_is_a_deprecated_alias_of_s_bits():
    """``in_bits=`` (the former name of a layer's input spike width) still builds the same layer,
    with a FutureWarning naming s_bits; both names at once is a TypeError; reading ``.in_bits``
    warns and gives s_bits; ``s_bits=`` alone warns nothing."""
    with pytest.warns(FutureWarning, match="s_bits") as record:
        old = _layers(in_bits=2)
    assert [r.filename for r in record] == [__file__] * 2  # the warning points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = _layers(s_bits=2)
        _layers()
    for a, b in zip(old, new):
        assert a.s_bits == b.s_bits == 2 and repr(a) == repr(b)
        with pytest.warns(FutureWarning, match="s_bits"):
            assert a.in_bits == 2
    with pytest.raises(TypeError, match="s_bits"):
        QuantLinear(4, 3, s_bits=2, in_bits=2)
    with pytest.raises(TypeError, match="s_bits"):
        QuantConv2d(4, 3, 3, s_bits=1, in_bits=1)


def test_blocks_take_in_s_bits_and_the_former_in_bits():
    """The blocks' input width is ``in_s_bits`` (``in_bits`` deprecated, FutureWarning); both or
    neither is a TypeError."""
    from qsnn_kernels.models.sew_resnet import Bottleneck
    from qsnn_kernels.models.spikformer import SpikformerMLP, SpikingSelfAttention

    kw = dict(w_bits=4, s_bits=1, connect_f="ADD", clamp_add=True, neuron_kw={})
    for block in (BasicBlock, Bottleneck):
        assert block(8, 8, 1, in_s_bits=2, **kw).conv1.s_bits == 2
        with pytest.warns(FutureWarning, match="in_s_bits") as record:
            assert block(8, 8, 1, in_bits=2, **kw).conv1.s_bits == 2
        assert [r.filename for r in record] == [__file__]
        with pytest.raises(TypeError, match="in_s_bits"):
            block(8, 8, 1, in_s_bits=2, in_bits=2, **kw)
        with pytest.raises(TypeError, match="in_s_bits"):
            block(8, 8, 1, **kw)
    assert SpikingSelfAttention(16, 2, 4, 1, 2).q.linear.s_bits == 2
    with pytest.warns(FutureWarning, match="in_s_bits"):
        assert SpikingSelfAttention(16, 2, 4, 1, in_bits=4).q.linear.s_bits == 4
    with pytest.warns(FutureWarning, match="in_s_bits"):
        assert SpikformerMLP(16, 32, 4, 1, in_bits=None).fc1.linear.s_bits is None
    with pytest.raises(TypeError, match="in_s_bits"):
        SpikformerMLP(16, 32, 4, 1, 2, in_bits=2)


def test_checkpoints_and_pickles_survive_the_rename():
    """s_bits is an attribute, not state: a layer's state_dict holds the tensors of its torch base
    only, so checkpoints load as before; a layer pickled whole before the rename (``in_bits`` in
    its __dict__) loads with its width as s_bits."""
    for layer in _layers(s_bits=2):
        base = torch.nn.Linear(4, 3) if isinstance(layer, QuantLinear) else torch.nn.Conv2d(4, 3, 3)
        assert layer.state_dict().keys() == base.state_dict().keys()
        state = layer.__getstate__()
        state["in_bits"] = state.pop("s_bits")  # the old layout
        old = type(layer).__new__(type(layer))
        old.__setstate__(state)
        assert old.s_bits == 2 and "in_bits" not in old.__dict__
        buf = io.BytesIO()
        torch.save(old, buf)
        buf.seek(0)
        assert torch.load(buf, weights_only=False).s_bits == 2


# --------------------------------------------------------------------------- inference conversion


@pytest.mark.parametrize("w_bits, s_bits, t_steps, connect_f", [
    (1, 1, 1, "ADD"), (2, 1, 2, "IAND"), (4, 2, 2, "ADD"), (8, 4, 1, "ADD"), (32, 1, 2, "ADD")])
def test_converted_model_matches(w_bits, s_bits, t_steps, connect_f):
    torch.manual_seed(5)
    model = _tiny(w_bits=w_bits, s_bits=s_bits, t_steps=t_steps, connect_f=connect_f)
    x = torch.randn(4, 3, 12, 12) * 2
    _calibrate(model, x)
    conv = convert_for_inference(model)
    assert model.training is False and isinstance(model.conv1, QuantConv2d)  # the original is untouched
    with torch.no_grad():
        y0, y1 = model(x), conv(x)
    assert float(y0.std(0).mean()) > 1e-3  # the network is not silent: logits depend on the input
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in conv.modules())
    assert n_bn == 0  # every BN folded
    if w_bits <= 8:
        packed = [m for m in conv.modules() if isinstance(m, (PackedConv2d, PackedLinear))]
        assert list(conv.parameters()) == [] and len(packed) == 12 + 1  # stem + 8 block convs + 3 downsamples, + fc
        expected = sum(m.planes.nbytes + m.scale.nbytes + m.bias.nbytes for m in packed)
        assert model_nbytes(conv) == expected
        assert model_nbytes(conv) < model_nbytes(model) * w_bits / 32 * 1.1 + 64 * 1024
        assert all(m.spike_input for m in packed if m is not conv.conv1 and m is not conv.fc)


def test_converted_integer_part_is_exact():
    """PackedConv2d's int32 GEMM equals the float64 convolution of the integer levels and codes."""
    torch.manual_seed(6)
    model = _tiny(w_bits=4, s_bits=2, t_steps=1)
    _calibrate(model, torch.randn(2, 3, 8, 8))
    layer = convert_for_inference(model).layer2[0].conv1
    levels = torch.randint(0, 4, (3, 64, 9, 7))
    q = layer.int_codes().to(torch.float64)
    expected = F.conv2d(levels.double(), q, stride=layer.stride, padding=layer.padding)
    got = layer.integer_forward(levels)
    assert got.dtype == torch.int32 and int((got.double() != expected).sum()) == 0


def test_converted_state_dict_round_trip():
    torch.manual_seed(7)
    x = torch.randn(2, 3, 10, 10)
    a, b = _tiny(w_bits=2, s_bits=2, t_steps=2), _tiny(w_bits=2, s_bits=2, t_steps=2)
    _calibrate(a, x)
    ca, cb = convert_for_inference(a), convert_for_inference(b)
    buf = io.BytesIO()
    torch.save(ca.state_dict(), buf)
    buf.seek(0)
    cb.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        assert torch.equal(cb(x), ca(x))


# --------------------------------------------------------------------------- compile


def test_torch_compile_small_model():
    torch.manual_seed(8)
    model = _tiny(w_bits=4, s_bits=2, t_steps=2)
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, backend="aot_eager")
    y_eager = model(x)
    y = compiled(x)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
    y.sum().backward()
    assert model.conv1.weight.grad is not None


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, match", [
    ({"w_bits": 3}, "w_bits"), ({"w_bits": 0}, "w_bits"), ({"s_bits": 3}, "s_bits"), ({"s_bits": 16}, "s_bits"),
    ({"t_steps": 0}, "t_steps"), ({"t_steps": 1.5}, "t_steps"), ({"connect_f": "OR"}, "connect_f"),
    ({"num_classes": -1}, "num_classes")])
def test_bad_model_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        qm.create_model("sew_resnet18_cifar", **kw)


def test_bad_input():
    model = _tiny(w_bits=4, s_bits=1, t_steps=1)
    with pytest.raises(ValueError, match=r"event input must be float \[B, 1, 3, H, W\] frames"):
        model(torch.randn(1, 2, 3, 8, 8))  # time-major, or frames of another T
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="QuantConv2d"):
        QuantConv2d(3, 4, 3)(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="QuantLinear"):
        QuantLinear(3, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match="s_bits"):
        QuantLinear(3, 4, s_bits=0)
    with pytest.raises(ValueError, match="s_bits"):
        spiking_neuron(3)
    with pytest.raises(TypeError):
        qm.create_model(18)


def test_weights_are_fake_quantized():
    """A QuantConv2d computes with Eq. 5's per-channel codes (the reference quantizer)."""
    torch.manual_seed(9)
    conv = QuantConv2d(5, 4, 3, padding=1, w_bits=2, bias=False)
    x = torch.randn(2, 5, 6, 6)
    q, scale = reference.quantize_weight(conv.weight.detach(), 2)
    expected = F.conv2d(x.double(), (q.double() * scale.double()[:, None, None, None]), padding=1)
    torch.testing.assert_close(conv(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_fake_quant_gradient_and_eval_cache():
    """The layer's STE equals reference.fake_quantize_weight (values and gradient); the cached
    inference weight follows in-place updates of the master weight."""
    torch.manual_seed(10)
    lin = QuantLinear(33, 3, w_bits=4)
    x = torch.randn(5, 33)
    lin(x).square().sum().backward()
    w = lin.weight.detach().clone().requires_grad_()
    F.linear(x, reference.fake_quantize_weight(w, 4), lin.bias.detach()).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, w.grad, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        y1 = lin(x)
        lin.weight.mul_(-2.0)
        y2 = lin(x)
    expected = F.linear(x, reference.fake_quantize_weight(lin.weight.detach(), 4), lin.bias.detach())
    assert not torch.equal(y1, y2) and torch.equal(y2, expected)


def test_converted_layer_paths_agree_and_reject_non_spikes():
    """The all-integer path (no autograd) and the bitserial_linear path (autograd) give the same
    float output; input that is not whole levels in range is a ValueError."""
    torch.manual_seed(11)
    model = _tiny(w_bits=2, s_bits=2, t_steps=1, neuron_kw={"v_th": 0.5})
    _calibrate(model, torch.randn(2, 3, 8, 8))
    conv = convert_for_inference(model)
    layer, first = conv.layer3[0].conv2, conv.layer1[0].conv1
    x = torch.randint(0, 4, (2, 3, layer.weight_shape[1], 5, 7)).float() * 0.5
    with torch.no_grad():
        y_int = layer(x)
    y_grad = layer(x.clone().requires_grad_())
    assert torch.equal(y_int, y_grad.detach())
    y_grad.sum().backward()
    with torch.no_grad(), pytest.raises(ValueError, match="levels"):
        first(torch.full((1, 64, 4, 4), 0.3))
    with torch.no_grad(), pytest.raises(ValueError, match="levels"):
        first(torch.full((1, 64, 4, 4), 2.0))  # level 4 > 3
