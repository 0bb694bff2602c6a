"""Cost metrics (qsnn_kernels.metrics) against hand counts, their conventions, and `qsnn budget` / `qsnn models`.

The hand-built network uses the contract's layers with inputs whose nonzero counts are chosen, so
that every MAC count, firing rate and total below is worked out by hand, independently of
metrics/formulas.py.
"""

import json
import math

import pytest
import torch
from torch import nn

from qsnn_kernels import PackedWeight
from qsnn_kernels.cli import main
from qsnn_kernels.metrics import Conventions, formulas, paper, profile, recount
from qsnn_kernels.metrics.profiler import LayerRecord
from qsnn_kernels.models import list_models
from qsnn_kernels.models.layers import QuantConv2d, QuantLinear, SpikeMatmul

SPIKFORMER = "qsnn_spikformer_4_384"

# the hand count: MACs per sample and time step of each layer of Tiny
ENC_MACS = 4 * 5 * 5 * 2 * 9  # 4 out channels, 5x5 output, 2 in channels, 3x3 kernel
CONV_MACS = 6 * 3 * 3 * (4 // 2) * 9  # 6 out, 3x3 output (stride 2), groups 2 -> 2 in channels each, 3x3 kernel
FC_MACS = 9 * 6 * 8  # 9 tokens, 6 -> 8
MM_MACS = 2 * 9 * 4 * 9  # 2 heads, [9 x 4] @ [4 x 9]
HEAD_MACS = 8 * 5


def _sparse(shape, nnz, gen, levels=None):
    """A tensor with exactly ``nnz`` nonzeros: integer levels 1..levels, or reals in [0.5, 1.5)."""
    flat = torch.zeros(math.prod(shape))
    idx = torch.randperm(flat.numel(), generator=gen)[:nnz]
    if levels is None:
        flat[idx] = 0.5 + torch.rand(nnz, generator=gen)
    else:
        flat[idx] = torch.randint(1, levels + 1, (nnz,), generator=gen).float()
    return flat.reshape(shape)


class Tiny(nn.Module):
    """Encoding conv on the real image (once, ``[B, ...]``); a grouped stride-2 conv on ``[T, B, ...]``
    spikes; a linear on ``[T*B, tokens, C]`` spikes; a spike matmul ``[T, B, h, 9, 4] @ [T, B, h, 4, 9]``;
    a head on real values called once per step on ``[B, C]``. Spike inputs are fixed buffers with
    known nonzero counts (``nnz``)."""

    def __init__(self, t, b, w_bits, s_bits, nnz, fc_in_bits=None, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.t_steps, self.w_bits, self.s_bits = t, w_bits, s_bits
        lv = (1 << s_bits) - 1
        self.enc = QuantConv2d(2, 4, 3, padding=1, w_bits=w_bits)
        self.conv = QuantConv2d(4, 6, 3, stride=2, padding=1, groups=2, w_bits=w_bits, s_bits=s_bits)
        self.fc = QuantLinear(6, 8, w_bits=w_bits, s_bits=fc_in_bits or s_bits)
        self.mm = SpikeMatmul(s_bits, s_bits)
        self.head = QuantLinear(8, 5, w_bits=w_bits)
        self.register_buffer("s_conv", _sparse((t, b, 4, 5, 5), nnz["conv"], gen, lv))
        self.register_buffer("s_fc", _sparse((t * b, 9, 6), nnz["fc"], gen, lv))
        self.register_buffer("q", _sparse((t, b, 2, 9, 4), nnz["q"], gen, lv))
        self.register_buffer("k", _sparse((t, b, 2, 4, 9), nnz["k"], gen, lv))

    def forward(self, x):
        t, b = self.t_steps, x.shape[0]
        y = self.enc(x)
        self.conv(self.s_conv + 0 * y)
        h = self.fc(self.s_fc)
        self.mm(self.q, self.k)
        feats = h.reshape(t, b, 9, 8).mean(2)
        return torch.stack([self.head(feats[i]) for i in range(t)]).mean(0)


def _tiny(t, b, w_bits, s_bits, **kw):
    gen = torch.Generator().manual_seed(1)
    nnz = {"x": 37 * b, "conv": 23 * t * b, "fc": 19 * t * b, "q": 31 * t * b, "k": 11 * t * b}
    model = Tiny(t, b, w_bits, s_bits, nnz, **kw)
    return model, _sparse((b, 2, 5, 5), nnz["x"], gen), nnz


def _pair_count(a, b):
    """Products a[..., i, k] * b[..., k, j] with both factors nonzero, counted one by one."""
    a, b = (a != 0).reshape(-1, *a.shape[-2:]).tolist(), (b != 0).reshape(-1, *b.shape[-2:]).tolist()
    return sum(1 for m in range(len(a)) for i in range(len(a[m])) for k in range(len(b[m]))
               for j in range(len(b[m][k])) if a[m][i][k] and b[m][k][j])


CASES = [(1, 1, 1, 1), (3, 2, 4, 2), (2, 3, 32, 4)]  # (T, B, W, S): T = 1, B = 1, full precision


@pytest.mark.parametrize("t,b,w_bits,s_bits", CASES)
def test_hand_count_default_conventions(t, b, w_bits, s_bits):
    model, x, nnz = _tiny(t, b, w_bits, s_bits)
    p = profile(model, x)
    rec = {r.name: r for r in p.layers}
    assert list(rec) == ["enc", "conv", "fc", "mm", "head"]
    assert [rec[n].macs for n in rec] == [ENC_MACS, CONV_MACS, FC_MACS, MM_MACS, HEAD_MACS]
    assert [rec[n].kind for n in rec] == ["conv", "conv", "linear", "matmul", "linear"]
    assert [rec[n].t_steps for n in rec] == [1, t, t, t, t]  # encoding ran once; head in a loop of t calls
    w = 16 if w_bits == 32 else w_bits
    assert [rec[n].w_bits for n in rec] == [w, w, w, s_bits, w]
    assert [rec[n].s_bits for n in rec] == [None, s_bits, s_bits, s_bits, None]
    fr = {"enc": nnz["x"] / (b * 50), "conv": nnz["conv"] / (t * b * 100), "fc": nnz["fc"] / (t * b * 54),
          "mm": nnz["q"] / (t * b * 72)}
    for name, rate in fr.items():
        assert rec[name].firing_rate == pytest.approx(rate, rel=1e-12)
    assert rec["mm"].firing_rate_b == pytest.approx(nnz["k"] / (t * b * 72), rel=1e-12)
    assert rec["mm"].pair_rate == pytest.approx(_pair_count(model.q, model.k) / (t * b * MM_MACS), rel=1e-12)
    assert [rec[n].counted for n in rec] == [False, True, True, True, False]
    assert rec["enc"].s_ace is None and rec["head"].sops is None

    tot = p.totals
    assert tot["sops"] == t * s_bits * (CONV_MACS + FC_MACS + MM_MACS)
    assert tot["s_ace"] == t * s_bits * w * (CONV_MACS + FC_MACS) + t * s_bits * s_bits * MM_MACS
    ns = t * s_bits * w * (fr["conv"] * CONV_MACS + fr["fc"] * FC_MACS) + t * s_bits * s_bits * fr["mm"] * MM_MACS
    assert tot["ns_ace"] == pytest.approx(ns, rel=1e-12)
    assert tot["macs"] == ENC_MACS + CONV_MACS + FC_MACS + MM_MACS + HEAD_MACS
    assert tot["real_input_macs"] == ENC_MACS + HEAD_MACS
    assert tot["real_input_layers"] == {"enc": w, "head": w}
    assert tot["bit_budget"] == t * w * s_bits


@pytest.mark.parametrize("bits", [8, 16])
def test_encoding_included(bits):
    t, b, w, s = 3, 2, 4, 2
    model, x, _ = _tiny(t, b, w, s)
    base = profile(model, x).totals
    p = profile(model, x, encoding="include", real_input_bits=bits)
    extra_macs = ENC_MACS * 1 + HEAD_MACS * t  # encoding ran on one step, the head on t
    assert p.totals["sops"] == base["sops"] + extra_macs * bits
    assert p.totals["s_ace"] == base["s_ace"] + extra_macs * bits * w
    rec = {r.name: r for r in p.layers}
    assert rec["enc"].counted and rec["enc"].counted_s_bits == bits and rec["head"].counted_s_bits == bits
    ns = rec["enc"].firing_rate * ENC_MACS * bits * w + rec["head"].firing_rate * HEAD_MACS * t * bits * w
    assert p.totals["ns_ace"] == pytest.approx(base["ns_ace"] + ns, rel=1e-12)


def test_attention_conventions():
    t, b, w, s = 3, 2, 4, 2
    model, x, _ = _tiny(t, b, w, s)
    base = profile(model, x)
    mm = {r.name: r for r in base.layers}["mm"]
    excl = profile(model, x, attention="exclude").totals
    assert excl["sops"] == base.totals["sops"] - MM_MACS * t * s
    assert excl["s_ace"] == base.totals["s_ace"] - MM_MACS * t * s * s
    pair = profile(model, x, attention_rate="pair").totals
    delta = (mm.pair_rate - mm.firing_rate) * MM_MACS * t * s * s
    assert pair["ns_ace"] == pytest.approx(base.totals["ns_ace"] + delta, rel=1e-12)
    assert mm.pair_rate < mm.firing_rate  # the sparse k makes products with both operands nonzero rarer


def test_recount_equals_a_new_profile():
    model, x, _ = _tiny(3, 2, 4, 2, fc_in_bits=4)
    p = profile(model, x)
    for change in ({"encoding": "include", "real_input_bits": 8}, {"attention": "exclude"},
                   {"attention_rate": "pair"}, {"spike_width": "model"}, {"sops_spike_bits": False}):
        again = profile(model, x, **change)
        assert recount(p, **change).to_dict() == again.to_dict()
    assert recount(recount(p, encoding="include"), encoding="exclude").to_dict() == p.to_dict()


def test_spike_width_and_sops_levels():
    t, b, w, s = 2, 1, 2, 2
    model, x, _ = _tiny(t, b, w, s, fc_in_bits=4)  # the fc input declared 4 bits wide, the model's S is 2
    layer = profile(model, x)
    nominal = profile(model, x, spike_width="model")
    assert {r.name: r.counted_s_bits for r in layer.layers if r.counted} == {"conv": 2, "fc": 4, "mm": 2}
    assert {r.name: r.counted_s_bits for r in nominal.layers if r.counted} == {"conv": 2, "fc": 2, "mm": 2}
    assert layer.totals["s_ace"] - nominal.totals["s_ace"] == FC_MACS * t * (4 - 2) * w
    one = profile(model, x, sops_spike_bits=False).totals
    assert one["sops"] == t * (CONV_MACS + FC_MACS + MM_MACS)
    assert one["s_ace"] == layer.totals["s_ace"]


@pytest.mark.parametrize("w_bits", [1, 4, 32])
def test_parameter_totals(w_bits):
    model, x, _ = _tiny(2, 1, w_bits, 1)
    tot = profile(model, x).totals
    count = sum(p.numel() for p in model.parameters())
    assert tot["params_count"] == count
    w = 16 if w_bits == 32 else w_bits
    assert tot["params_16bit_m"] == pytest.approx(count * w / 16 / 1e6, rel=1e-12)
    weights = [m.weight for m in (model.enc, model.conv, model.fc, model.head)]
    n_w = sum(p.numel() for p in weights)
    assert tot["params_16bit_m_per_tensor"] == pytest.approx((n_w * w + (count - n_w) * 16) / 16 / 1e6, rel=1e-12)
    if w_bits == 32:
        packed = count * 4
    else:
        packed = sum(PackedWeight.from_float(p.detach(), w_bits).nbytes for p in weights) + (count - n_w) * 4
    assert tot["params_packed_nbytes"] == packed


def test_profile_leaves_model_as_it_was():
    model, x, _ = _tiny(2, 1, 4, 1)
    model.train()
    profile(model, x)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_profile_errors():
    model, x, _ = _tiny(2, 1, 4, 1)
    with pytest.raises(ValueError, match="encoding must be one of"):
        profile(model, x, encoding="maybe")
    with pytest.raises(ValueError, match="attention_rate must be one of"):
        profile(model, x, attention_rate="b")
    with pytest.raises(ValueError, match="real_input_bits"):
        profile(model, x, encoding="include", real_input_bits=0)
    with pytest.raises(TypeError, match="sops_spike_bits"):
        profile(model, x, sops_spike_bits="yes")
    with pytest.raises(TypeError, match="x must be a tensor"):
        profile(model, [x])
    with pytest.raises(TypeError, match="torch.nn.Module"):
        profile(lambda v: v, x)
    with pytest.raises(ValueError, match="ambiguous"):
        m2, x2, _ = _tiny(2, 2, 4, 1)
        profile(m2, x2)
    plain = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="t_steps"):
        profile(plain, torch.ones(1, 3))
    assert profile(plain, torch.ones(1, 3), t_steps=1).layers[0].macs == 6  # a plain Linear: full precision
    with pytest.raises(ValueError, match="spike_width='model' needs model.s_bits"):
        profile(plain, torch.ones(1, 3), t_steps=1, spike_width="model")
    relu = nn.ReLU()
    relu.t_steps = 1
    with pytest.raises(ValueError, match="no conv, linear"):
        profile(relu, x)
    with pytest.raises(RuntimeError, match="leading dims"):  # a layer that sees [7, 3] when T = 2, B = 1
        profile(_Reshaper(), torch.ones(1, 21), t_steps=2)


class _Reshaper(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x.reshape(7, 3))


def test_formulas():
    assert formulas.bit_budget(4, 16, 1) == 64 and formulas.bit_budget(2, 32, 2) == 64
    assert formulas.counted_weight_bits(32) == 16 and formulas.counted_weight_bits(4) == 4
    assert formulas.sops(10, 3, 2) == 60
    assert formulas.s_ace(10, 3, 2, 4) == 240
    assert formulas.ns_ace(0.25, 10, 3, 2, 4) == 60
    assert formulas.params_16bit_equivalent(32, 4) == 8
    for bad in (lambda: formulas.bit_budget(0, 4, 1), lambda: formulas.ns_ace(1.5, 1, 1, 1, 1),
                lambda: formulas.sops(-1, 1, 1), lambda: formulas.counted_weight_bits(True),
                lambda: formulas.packed_weight_nbytes(3, 5, 16)):
        with pytest.raises(ValueError):
            bad()


def test_formulas_s_in_is_a_deprecated_name_of_s_bits():
    """The input spike width is s_bits; s_in= still works with a FutureWarning, both at once is a TypeError."""
    for call, expected in ((lambda **kw: formulas.sops(10, 3, **kw), 60),
                           (lambda **kw: formulas.s_ace(10, 3, w_bits=4, **kw), 240),
                           (lambda **kw: formulas.ns_ace(0.25, 10, 3, w_bits=4, **kw), 60)):
        assert call(s_bits=2) == expected
        with pytest.warns(FutureWarning, match=r"s_in= is deprecated; use s_bits="):
            assert call(s_in=2) == expected
        with pytest.raises(TypeError, match="got both s_bits= and its former name s_in="):
            call(s_bits=2, s_in=2)
        with pytest.raises(TypeError, match="missing"):
            call()
    with pytest.raises(TypeError, match="missing argument 'w_bits'"):
        formulas.s_ace(10, 3, 2)


def test_layer_record_former_names_warn():
    """LayerRecord's in_bits and s_in read s_bits and counted_s_bits, with a FutureWarning."""
    rec = LayerRecord("fc", "linear", 6, 4, 2, 3, 0.5, counted=True, counted_s_bits=2)
    with pytest.warns(FutureWarning, match="LayerRecord.in_bits is deprecated; read s_bits"):
        assert rec.in_bits == 2
    with pytest.warns(FutureWarning, match="LayerRecord.s_in is deprecated; read counted_s_bits"):
        assert rec.s_in == 2
    assert "in_bits" not in rec.__dataclass_fields__ and "s_in" not in rec.__dataclass_fields__


@pytest.mark.parametrize("w_bits", [1, 2, 4, 8])
@pytest.mark.parametrize("n,k", [(1, 1), (3, 31), (2, 33), (5, 273)])
def test_packed_bytes_match_packed_weight(n, k, w_bits):
    w = torch.randn(n, k)
    assert formulas.packed_weight_nbytes(n, k, w_bits) == PackedWeight.from_float(w, w_bits).nbytes


def test_paper_table2_reading():
    assert len(paper.TABLE2) == 13
    # the first, a middle and the last row as the paper prints them (each field read by its label)
    assert paper.TABLE2[0] == paper.Table2Row(16, 1, 4, 4.15, 59.10, 95.51, 78.21)
    assert paper.TABLE2[6] == paper.Table2Row(2, 1, 2, 0.52, 3.09, 93.56, 75.91)
    assert paper.TABLE2[-1] == paper.Table2Row(8, 2, 1, 2.08, 12.33, 96.29, 80.00)
    assert [r.wst for r in paper.params_outliers()] == ["1/2/2"]
    groups = paper.s_ace_groups()
    assert len(groups) == 2
    assert {r.t_steps for r in groups[1][1]} == {4} and {r.t_steps for r in groups[0][1]} == {1, 2}


# --------------------------------------------------------------------------- the CLI


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_models_lists_registry(capsys):
    rc, out, _ = _run(capsys, "models", "--json")
    rows = json.loads(out)
    names = [r["name"] for r in rows]
    assert rc == 0 and names == list_models() and "qsnn_sew_resnet18_cifar" in names
    assert all(n.startswith("qsnn_") for n in names)
    assert all(r["description"] and r["paper"] and r["params"] > 0 for r in rows)
    by_name = {r["name"]: r for r in rows}
    from qsnn_kernels.models import create_model

    tiny = create_model("spiking_cnn_tiny")  # counted on the meta device by the command; here on a real one
    assert by_name["qsnn_spiking_cnn_tiny"]["params"] == sum(p.numel() for p in tiny.parameters())
    assert by_name["qsnn_sew_resnet34"]["params"] == 21_797_672  # the original's count (README)
    row = by_name[SPIKFORMER]
    assert row["wst"] == "16/1/4" and row["input"] == "3 x 32 x 32" and row["num_classes"] == 10
    assert row["paper"].startswith("Table 2 row 16/1/4 (CIFAR10 95.51%")


def test_models_text(capsys):
    rc, out, _ = _run(capsys, "models")
    assert rc == 0 and "qsnn_sew_resnet34  (21,797,672 parameters at 1000 classes" in out
    assert "paper: " in out and ":func:" not in out  # docstring roles are read as plain words


def test_budget_same_command_same_figures(capsys):
    """The seed covers the model's initial weights, not only the input: the same command twice in one
    process prints the same JSON, whatever the global RNG did in between, and leaves that RNG alone."""
    argv = ["budget", "--model", "spiking_cnn_tiny", "--wst", "4/2/2", "--input-size", "8", "--json"]
    torch.manual_seed(123)
    first = _run(capsys, *argv)
    after = torch.rand(3)
    torch.rand(100)  # move the global RNG: the next run must not depend on it
    second = _run(capsys, *argv)
    assert first[0] == second[0] == 0 and first[1] == second[1]
    torch.manual_seed(123)
    _run(capsys, *argv)
    assert torch.equal(torch.rand(3), after)  # the command did not consume the caller's RNG
    other = json.loads(_run(capsys, *argv, "--seed", "1")[1])
    rates = lambda p: [r["firing_rate"] for r in p["layers"]]  # noqa: E731
    assert rates(other) != rates(json.loads(first[1]))  # another seed: other weights, other firing rates


def test_budget_input_size_defaults_and_hint(capsys, monkeypatch):
    rc, out, _ = _run(capsys, "budget", "--model", "sew_resnet18_cifar", "--wst", "1/1/1", "--json")
    assert rc == 0 and json.loads(out)["input_shape"][-2:] == [32, 32]  # a CIFAR model's size
    import qsnn_kernels.models as qm

    def sizeless(name, **kwargs):  # a model that states no input size at all
        model = real(name, **kwargs)
        model.pretrained_cfg = {}
        return model

    real = qm.create_model
    monkeypatch.setattr(qm, "create_model", sizeless)
    rc, out, err = _run(capsys, "budget", "--model", "spiking_cnn_tiny", "--wst", "4/2/1")
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert "pass --input-size" in err and "8 for the embedded digits" in err and "None" not in err


@pytest.mark.parametrize("name", ["sew_resnet18_cifar", "qsnn_sew_resnet18_cifar"])
def test_budget_json(capsys, name):
    rc, out, _ = _run(capsys, "budget", "--model", name, "--wst", "2/1/2", "--input-size", "8", "--json")
    assert rc == 0
    p = json.loads(out)
    assert p["model"] == "qsnn_sew_resnet18_cifar" and (p["w_bits"], p["s_bits"], p["t_steps"]) == (2, 1, 2)
    layers = {r["name"]: r for r in p["layers"]}
    assert layers["conv1"]["s_bits"] is None and not layers["conv1"]["counted"]
    assert layers["conv1"]["macs"] == 64 * 8 * 8 * 3 * 9  # 3x3 stem, 64 channels, 8x8
    counted = [r for r in p["layers"] if r["counted"]]
    assert p["totals"]["s_ace"] == sum(r["s_ace"] for r in counted)
    assert p["totals"]["sops"] == sum(r["macs"] * r["t_steps"] * r["counted_s_bits"] for r in counted)
    assert p["conventions"]["encoding"] == "exclude"


def test_budget_text(capsys):
    rc, out, _ = _run(capsys, "budget", "--model", "sew_resnet18_cifar", "--wst", "1/2/1", "--input-size", "8",
                      "--encoding", "include")
    assert rc == 0
    assert "S-ACE" in out and "included with S_in = 16 bits" in out and "layer1.0.conv1" in out


@pytest.mark.parametrize("argv,message", [
    (["--model", "sew_resnet18_cifar", "--wst", "3/1/1"], "weight bits W must be one of"),
    (["--model", "sew_resnet18_cifar", "--wst", "4/3/1"], "spike bits S must be one of"),
    (["--model", "sew_resnet18_cifar", "--wst", "4/1/0"], "time steps T must be >= 1"),
    (["--model", "sew_resnet18_cifar", "--wst", "4/1"], "W/S/T with three integers"),
    (["--model", "sew_resnet18_cifar", "--wst", "4/1/1.5"], "W/S/T with three integers"),
    (["--model", "sew_resnet18_cifr", "--wst", "4/1/1"], "did you mean: qsnn_sew_resnet18_cifar"),
    (["--model", "sew_resnet18_cifar"], "give --model and --wst"),
    (["--paper-table2", "--model", "sew_resnet18_cifar"], "leave out --model"),
    (["--model", "sew_resnet18_cifar", "--wst", "4/1/1", "--rows", "1/1/1"], "--rows selects rows"),
    (["--paper-table2", "--rows", "1/1/1,3/3/3"], "Table 2 has no row 3/3/3"),
])
def test_budget_bad_input(capsys, argv, message):
    rc, out, err = _run(capsys, "budget", *argv)
    assert rc == 2 and out == "" and message in err


def test_budget_checkpoint(capsys, tmp_path):
    from qsnn_kernels.models import create_model

    torch.manual_seed(3)
    model = create_model("sew_resnet18_cifar", w_bits=1, s_bits=1, t_steps=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.fill_(2.0)  # every neuron above threshold: firing rates near 1
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    argv = ["budget", "--model", "sew_resnet18_cifar", "--wst", "1/1/1", "--input-size", "8", "--json"]
    fresh = json.loads(_run(capsys, *argv)[1])
    rc, out, _ = _run(capsys, *argv, "--checkpoint", str(tmp_path / "ok.pt"))
    loaded = json.loads(out)
    assert rc == 0 and loaded["totals"]["ns_ace"] > fresh["totals"]["ns_ace"]
    assert loaded["totals"]["s_ace"] == fresh["totals"]["s_ace"]  # firing rates move NS-ACE only
    torch.save({"weight": torch.ones(1)}, tmp_path / "bad.pt")
    rc, _, err = _run(capsys, *argv, "--checkpoint", str(tmp_path / "bad.pt"))
    assert rc == 2 and "does not fit the model" in err
    rc, _, err = _run(capsys, *argv, "--checkpoint", str(tmp_path / "missing.pt"))
    assert rc == 2 and "cannot read checkpoint" in err


def test_budget_bad_argument_type(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["budget", "--model", "sew_resnet18_cifar", "--wst", "1/1/1", "--input-size", "0"])
    assert exc.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


def test_budget_spikformer_hand_counts(capsys):
    rc, out, _ = _run(capsys, "budget", "--model", "spikformer_4_384", "--wst", "4/2/1", "--input-size", "32",
                      "--json")
    assert rc == 0
    p = json.loads(out)
    n, d, head_dim = (32 // 4) ** 2, 384, 384 // 12
    layers = {r["name"]: r for r in p["layers"]}
    products = [r for r in p["layers"] if r["kind"] == "matmul"]
    assert len(products) == 2 * 4 and all(r["macs"] == n * head_dim * d for r in products)  # K^T V, Q (K^T V)
    linears = [r for r in p["layers"] if r["kind"] == "linear" and r["s_bits"] is not None]
    assert sorted({r["macs"] for r in linears}) == [n * d * d, n * d * 4 * d]
    assert layers["head"]["s_bits"] is None and not layers["head"]["counted"]
    assert p["totals"]["params_count"] == pytest.approx(9.32e6, rel=0.01)


def test_budget_spikformer_wrong_input_size(capsys):
    rc, _, err = _run(capsys, "budget", "--model", "spikformer_4_384", "--wst", "4/2/1", "--input-size", "28")
    assert rc == 2 and "32" in err


def test_paper_table2_rows_json(capsys):
    rc, out, _ = _run(capsys, "budget", "--paper-table2", "--rows", "1/1/1,2/1/2", "--json")
    assert rc == 0
    result = json.loads(out)
    assert [r["wst"] for r in result["rows"]] == ["1/1/1", "2/1/2"]
    table = {r.wst: r for r in paper.TABLE2}
    for r in result["rows"]:
        assert r["paper_s_ace_g"] == table[r["wst"]].s_ace_g
        assert r["s_ace_ratio"] == pytest.approx(r["ours_s_ace_g"] / r["paper_s_ace_g"])
        assert r["ours_params_m"] == pytest.approx(result["params_count"] * int(r["wst"][0]) / 16 / 1e6)
    assert any("1/2/2" in note for note in result["notes"])
    assert result["conventions"] == {k: getattr(Conventions(), k) for k in Conventions.__dataclass_fields__}


@pytest.mark.slow
def test_paper_table2_full_text(capsys):
    rc, out, _ = _run(capsys, "budget", "--paper-table2")
    assert rc == 0
    assert all(r.wst in out for r in paper.TABLE2) and "conventions:" in out and "notes:" in out
