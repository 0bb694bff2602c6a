"""Spikformer (models/spikformer.py): registry, parameter counts against the originals, shapes,
forward + backward at several W/S/T, the spiking self-attention against an independent statement
of the original's formula, declared bit widths against the values that really flow, the inference
conversion, torch.compile, and bad input.

Parameter counts: the original's figures (Zhou et al. 2022, Tables 1-2) are checked within 1 %,
and the exact count against a count written out layer by layer here (the original's layer list:
SPS convs without bias + BN, Q/K/V without bias, proj/MLP with bias, BN after each, the head).
"""

import math

import pytest
import timm
import torch

from qsnn_kernels import reference
from qsnn_kernels.models import spikformer as sf
from qsnn_kernels.models.layers import QuantConv2d, QuantLinear, SpikeMatmul

PAPER_PARAMS_M = {  # Spikformer paper: CIFAR10 4-384; ImageNet (1000 classes) the rest
    "spikformer_4_384": 9.32, "spikformer_8_384": 16.81, "spikformer_6_512": 23.37,
    "spikformer_8_512": 29.68, "spikformer_10_512": 36.01, "spikformer_8_768": 66.34,
}


def small(**kw):
    """A Spikformer small enough for many runs: 1 block, D = 32, 2 heads, 16x16 images."""
    args = dict(depth=1, embed_dim=32, num_heads=2, patch_size=4, img_size=16, num_classes=5, w_bits=4,
                s_bits=1, t_steps=2)
    args.update(kw)
    torch.manual_seed(0)
    return sf.Spikformer(**args)


def images(batch, size, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2


def hand_count(depth, dim, classes, mlp_ratio=4, in_chans=3):
    """The original's trainable parameters, layer by layer (its unused LayerNorms excluded)."""
    sps = 0
    widths = [in_chans, dim // 8, dim // 4, dim // 2, dim, dim]  # 4 stages + the rpe conv
    for cin, cout in zip(widths[:-1], widths[1:]):
        sps += cin * cout * 9 + 2 * cout  # conv3x3 without bias, BN
    hidden = dim * mlp_ratio
    attn = 3 * (dim * dim + 2 * dim) + (dim * dim + dim + 2 * dim)  # q, k, v (+BN); proj (+bias, BN)
    mlp = (dim * hidden + hidden + 2 * hidden) + (hidden * dim + dim + 2 * dim)
    return sps + depth * (attn + mlp) + dim * classes + classes


# --------------------------------------------------------------------------- registry, sizes


def test_all_variants_registered_with_timm():
    names = set(timm.list_models("qsnn_spikformer*"))
    assert names == {"qsnn_" + n for n in sf.VARIANTS}


@pytest.mark.parametrize("name", list(sf.VARIANTS))
def test_parameter_count_matches_original(name):
    with torch.device("meta"):  # the count needs no memory
        model = timm.create_model("qsnn_" + name, w_bits=4, s_bits=2, t_steps=1)
    depth, dim, _, _, img, classes = sf.VARIANTS[name]
    count = sum(p.numel() for p in model.parameters())
    assert count == hand_count(depth, dim, classes)
    assert abs(count / 1e6 - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01
    assert (model.w_bits, model.s_bits, model.t_steps, model.img_size, model.num_classes) == (4, 2, 1, img, classes)


def test_create_model_spikformer_8_512_at_w4_s2_t1():
    with torch.device("meta"):
        model = timm.create_model("qsnn_spikformer_8_512", w_bits=4, s_bits=2, t_steps=1)
    assert isinstance(model, sf.Spikformer)
    assert (model.depth, model.embed_dim, model.num_heads, model.patch_size) == (8, 512, 8, 16)
    layers = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(layers) == 5 + 8 * 6 + 1 and all(m.w_bits == 4 for m in layers)


@pytest.mark.parametrize("name", [n for n in sf.VARIANTS if n != "spikformer_4_384"])
def test_imagenet_variant_forward_on_reduced_images(name):
    """Every ImageNet variant at img_size 32 (2x2 tokens), batch 1, T = 1: logits [1, 1000].
    (Full-precision weights except for the smallest: fake-quantizing 30-66 M weights per forward
    costs seconds here, and quantized forwards are covered on CIFAR.)"""
    w_bits = 2 if name == "spikformer_8_384" else 16
    model = timm.create_model("qsnn_" + name, w_bits=w_bits, s_bits=1, t_steps=1, img_size=32).eval()
    tokens = []
    model.blocks[0].register_forward_hook(lambda m, a, out: tokens.append(out.shape))
    with torch.no_grad():
        y = model(images(1, 32))
    depth, dim = sf.VARIANTS[name][:2]
    assert tokens == [torch.Size([1, 1, 4, dim])]
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


# --------------------------------------------------------------------------- forward, backward


@pytest.mark.parametrize("w_bits, s_bits, t_steps, batch", [(1, 1, 1, 1), (4, 2, 2, 2), (8, 4, 1, 2),
                                                            (16, 1, 3, 1), (32, 8, 1, 1)])
def test_cifar_forward_backward(w_bits, s_bits, t_steps, batch):
    model = timm.create_model("qsnn_spikformer_4_384", w_bits=w_bits, s_bits=s_bits, t_steps=t_steps)
    shapes = []
    model.patch_embed.register_forward_hook(lambda m, a, out: shapes.append(out.shape))
    y = model(images(batch, 32))
    assert shapes == [(t_steps, batch, 64, 384)]  # 32x32 / patch 4 = 8x8 tokens
    assert y.shape == (batch, 10) and torch.isfinite(y).all()
    y.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.head.weight.grad.abs().sum() > 0
    assert model.patch_embed.stages[0].conv.weight.grad.abs().sum() > 0  # through every neuron to the input


def test_direct_encoding_runs_the_first_conv_once():
    model = small(t_steps=3)
    seen = []
    model.patch_embed.stages[0].conv.register_forward_hook(lambda m, a, out: seen.append(a[0].shape))
    model(images(2, 16))
    assert seen == [torch.Size([2, 3, 16, 16])]


def test_time_steps_are_averaged():
    """T = 1 and T = 2 share weights; the logits are the mean over T of the per-step head outputs."""
    model = small(t_steps=2).eval()
    per_step = []
    model.head.register_forward_hook(lambda m, a, out: per_step.append(out))
    with torch.no_grad():
        y = model(images(2, 16))
    assert per_step[0].shape == (2, 2, 5)
    torch.testing.assert_close(y, per_step[0].mean(0), rtol=0, atol=0)


# --------------------------------------------------------------------------- spiking self-attention


def original_ssa_attention(q, k, v, num_heads, s_bits):
    """The original's attention, stated independently: per head ``(Q K^T) V * 0.125``, then a
    neuron with threshold 0.5 (levels of the reference multi-level LIF), output = levels."""
    t, b, n, c = q.shape
    d = c // num_heads
    qh, kh, vh = (x.reshape(t, b, n, num_heads, d).to(torch.float64) for x in (q, k, v))
    y = torch.einsum("tbnhd,tbmhd,tbmhe->tbnhe", qh, kh, vh).reshape(t, b, n, c) * 0.125
    spikes, _ = reference.multilevel_lif(y, s_bits, 0.5, 0.5, 0.0, "hard", "atan", 2.0, True)
    return spikes / 0.5  # the original emits 1 per spike, not v_th


@pytest.mark.parametrize("s_bits", [1, 2, 4])
def test_attention_matches_the_original_formula(s_bits):
    torch.manual_seed(s_bits)
    attn = sf.SpikingSelfAttention(48, 3, w_bits=4, s_bits=s_bits, in_s_bits=2)
    captured = {}
    for name in ("q", "k", "v"):
        getattr(attn, name).register_forward_hook(lambda m, a, out, name=name: captured.__setitem__(name, out))
    attn.attn_lif.register_forward_hook(lambda m, a, out: captured.__setitem__("attn", out))
    x = torch.randint(0, 4, (3, 2, 7, 48)).float()  # T = 3, B = 2, N = 7 tokens
    attn(x)
    levels = (1 << s_bits) - 1
    expected = original_ssa_attention(captured["q"], captured["k"], captured["v"], 3, s_bits)
    assert int((captured["attn"].double() != expected).sum()) == 0
    assert captured["attn"].max() <= levels and expected.sum() > 0  # restricted to S bits; some spikes
    assert attn.qk.s_bits == attn.qk.b_bits == s_bits
    assert attn.attn_v.s_bits == (16 * levels * levels).bit_length() and attn.attn_v.b_bits == s_bits


@pytest.mark.parametrize("s_bits", [1, 2])
def test_declared_bits_hold_the_values_that_flow(s_bits):
    """Every layer with s_bits holds integer inputs in [0, 2^s_bits - 1] (in_scale 1); SpikeMatmul
    operands fit s_bits/b_bits; the encoding conv and the head are the real-valued ones."""
    model = small(depth=3, s_bits=s_bits, t_steps=2)
    checked = []

    def check(m, args, out):
        for x, bits in zip(args, (m.s_bits, m.b_bits) if isinstance(m, SpikeMatmul) else (m.s_bits,)):
            if bits is None:
                continue
            assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= (1 << bits) - 1, (m, bits)
            checked.append(m)

    for m in model.modules():
        if isinstance(m, (QuantConv2d, QuantLinear, SpikeMatmul)):
            m.register_forward_hook(check)
    model(images(2, 16))
    real = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear)) and m.s_bits is None]
    assert real == [model.patch_embed.stages[0].conv, model.head]
    assert len(set(checked)) == 4 + 3 * 8  # SPS convs after the first, 6 linears + 2 matmuls per block
    assert model.blocks[0].attn.q.linear.s_bits == {1: 2, 2: 4}[s_bits]  # the SPS output reaches 2 L


def test_conversion_for_inference_agrees():
    from qsnn_kernels.models.convert import convert_for_inference

    model = small(depth=2, w_bits=2, s_bits=2, t_steps=2)
    x = images(2, 16)
    model.train()
    model(x)  # BN running statistics away from their initial values
    model.eval()
    converted = convert_for_inference(model)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- compile


def test_torch_compile_small_model():
    torch._dynamo.reset()
    model = small(depth=1, w_bits=2, s_bits=2, t_steps=2)
    x = images(2, 16)
    compiled = torch.compile(model, backend="aot_eager")
    y_eager = model(x)
    y = compiled(x)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw, match", [
    (dict(w_bits=3), "w_bits"), (dict(s_bits=3), "s_bits"), (dict(s_bits=16), "s_bits"),
    (dict(t_steps=0), "t_steps"), (dict(t_steps=1.0), "t_steps"), (dict(num_classes=-1), "num_classes"),
    (dict(img_size=30), "multiple of patch_size"), (dict(patch_size=3), "patch_size"),
    (dict(num_heads=5), "num_heads"), (dict(depth=0), "depth"),
])
def test_bad_model_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_bad_registry_arguments():
    with pytest.raises(ValueError, match="s_bits"):
        timm.create_model("qsnn_spikformer_4_384", s_bits=5)
    with pytest.raises(TypeError, match="unexpected argument"):
        timm.create_model("qsnn_spikformer_4_384", depth=2)
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("qsnn_spikformer_4_384", pretrained=True)
    with pytest.raises(ValueError, match="spikformer_4_384"):
        sf.spikformer("spikformer_4_385")


@pytest.mark.parametrize("x, error, match", [
    (torch.randn(3, 16, 16), ValueError, r"\[B, 3, H, W\]"),
    (torch.randn(2, 1, 3, 16, 16), ValueError, r"event input must be float \[B, 2, 3, H, W\] frames"),
    (torch.randn(2, 4, 16, 16), ValueError, r"\[B, 3, H, W\]"),
    (torch.randn(2, 3, 32, 32), ValueError, "16x16"),
    (torch.randn(2, 3, 16, 15), ValueError, "16x16"),
    (torch.zeros(2, 3, 16, 16, dtype=torch.int64), TypeError, "float"),
    ("image", TypeError, "tensor"),
])
def test_bad_forward_input(x, error, match):
    model = small()
    with pytest.raises(error, match=match):
        model(x)


@pytest.mark.parametrize("s_bits", [1, 2])
def test_attention_with_more_tokens_than_head_dims_runs_q_times_kv(s_bits):
    """tokens > d_head: the products run as Q (K^T V) (``kv``, ``q_kv``), the original's formula
    bit for bit, with the same values and gradients as the (Q K^T) V order of the same weights;
    K^T V's entries fit q_kv's b_bits; another token count is a ValueError."""
    torch.manual_seed(s_bits)
    n, levels = 21, (1 << s_bits) - 1
    both = [sf.SpikingSelfAttention(48, 3, w_bits=4, s_bits=s_bits, in_s_bits=2, tokens=tokens)
            for tokens in (n, None)]
    both[1].load_state_dict(both[0].state_dict())
    kv_first, qk_first = both
    assert hasattr(kv_first, "kv") and not hasattr(kv_first, "qk") and hasattr(qk_first, "qk")
    assert kv_first.q_kv.b_bits == (n * levels * levels).bit_length() and kv_first.kv.s_bits == s_bits
    captured = {}
    kv_first.kv.register_forward_hook(lambda m, a, out: captured.__setitem__("kv", out))
    for name in ("q", "k", "v"):
        getattr(kv_first, name).register_forward_hook(lambda m, a, out, name=name: captured.__setitem__(name, out))
    kv_first.attn_lif.register_forward_hook(lambda m, a, out: captured.__setitem__("attn", out))
    x = torch.randint(0, 4, (2, 2, n, 48)).float()
    outs, grads = [], []
    for attn in both:
        xi = x.clone().requires_grad_()
        y = attn(xi)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        outs.append(y)
        grads.append([xi.grad, *(p.grad for p in attn.parameters())])
    expected = original_ssa_attention(captured["q"], captured["k"], captured["v"], 3, s_bits)
    assert int((captured["attn"].double() != expected).sum()) == 0 and expected.sum() > 0
    assert captured["kv"].max() <= (1 << kv_first.q_kv.b_bits) - 1
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # float gradients summed in another order
    with pytest.raises(ValueError, match="built for 21 tokens, got 20"):
        kv_first(x[:, :, :20])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="tokens"):
            sf.SpikingSelfAttention(48, 3, w_bits=4, s_bits=1, in_s_bits=2, tokens=bad)


def test_spikformer_picks_the_product_order_by_tokens_and_head_dims():
    """The model passes its token count: Q (K^T V) where N > d_head (ImageNet's 196 tokens at head
    dim 64, CIFAR's 64 at head dim 32), (Q K^T) V where N <= d_head."""
    assert hasattr(small().blocks[0].attn, "qk")  # 16 tokens, head dim 16
    assert hasattr(small(img_size=32).blocks[0].attn, "kv")  # 64 tokens, head dim 16


def test_attention_width_formula():
    """s_bits of (Q K^T) @ V: Q K^T entries reach d_head (2^S - 1)^2 exactly when Q = K = top level."""
    attn = sf.SpikingSelfAttention(32, 2, w_bits=4, s_bits=2, in_s_bits=2)
    top = torch.full((1, 1, 3, 2, 16), 3.0)
    entry = attn.qk(top, top.transpose(-2, -1)).max().item()
    assert entry == 16 * 9 and math.ceil(math.log2(entry + 1)) == attn.attn_v.s_bits


def test_spike_matmul_a_bits_is_a_deprecated_alias_of_s_bits():
    """SpikeMatmul's left-operand width is s_bits (what the profiler reads); ``a_bits=`` and
    ``.a_bits`` still work with a FutureWarning naming s_bits; both, or no b_bits, is a TypeError;
    a product pickled whole under the old name loads with s_bits."""
    with pytest.warns(FutureWarning, match="s_bits"):
        old = SpikeMatmul(a_bits=6, b_bits=2)
    new = SpikeMatmul(6, 2)
    assert old.s_bits == new.s_bits == 6 and repr(old) == repr(new)
    with pytest.warns(FutureWarning, match="s_bits"):
        assert new.a_bits == 6
    with pytest.raises(TypeError, match="s_bits"):
        SpikeMatmul(6, 2, a_bits=6)
    with pytest.raises(TypeError, match="b_bits"):
        SpikeMatmul(6)
    state = new.__getstate__()
    state["a_bits"] = state.pop("s_bits")
    loaded = SpikeMatmul.__new__(SpikeMatmul)
    loaded.__setstate__(state)
    assert loaded.s_bits == 6 and "a_bits" not in loaded.__dict__


@pytest.mark.parametrize("s_bits, b_bits", [(1, 1), (6, 2), (3, 16)])
def test_spike_matmul_backward_keeps_one_byte_levels(s_bits, b_bits):
    """Training on the CPU, SpikeMatmul keeps each operand of <= 8 bits as uint8 levels (a wider
    one as float), with torch.matmul's value and gradients (broadcast batch dims included); an
    operand that is not such integers is a ValueError."""
    g = torch.Generator().manual_seed(s_bits)
    a = torch.randint(0, 1 << s_bits, (2, 3, 5, 7), generator=g).float().requires_grad_()
    b_top = 1 << min(b_bits, 8)
    b = torch.randint(0, b_top, (3, 7, 4), generator=g).float().requires_grad_()
    mm = SpikeMatmul(s_bits, b_bits)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = mm(a, b)
    assert [t.dtype for t in saved] == [torch.uint8, torch.uint8 if b_bits <= 8 else torch.float32]
    ref = torch.matmul(a, b)
    assert torch.equal(y, ref)
    grad = torch.randn(y.shape, generator=g)
    for u, v in zip(torch.autograd.grad(y, (a, b), grad), torch.autograd.grad(ref, (a, b), grad)):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=f"not {s_bits}-bit spikes"):
        mm(a + 0.5, b)
