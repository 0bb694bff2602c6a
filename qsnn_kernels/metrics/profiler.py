"""``profile(model, x)``: the paper's cost metrics measured on a real forward pass.

Forward hooks record, for every layer that multiplies and accumulates:

* ``nn.Conv1d/2d/3d`` and ``nn.Linear`` (``QuantConv2d`` and ``QuantLinear`` are subclasses; a
  plain one counts as a full-precision weight and, unless it carries ``s_bits``, a real-valued input);
* spike matrix products: any module with ``s_bits`` and ``b_bits`` attributes whose forward is
  ``(a, b) -> a @ b`` (``SpikeMatmul``, spiking self-attention's two products, in the order they run).

Per layer: MACs per sample and time step, the weight width (``b_bits`` for a product), the input
spike width ``s_bits`` (its first operand's for a product; ``None`` = real-valued input, such as the
encoding layer), the time steps it ran on, and the measured input firing rate (fraction of nonzero
input elements). The formulas are :mod:`qsnn_kernels.metrics.formulas`; the conventions below
are explicit arguments, each defaulting to the paper's reading.

Not seen: products computed functionally (``F.linear``, ``torch.matmul`` outside a hooked module,
``nn.MultiheadAttention``'s internals); a hooked layer that never runs is left out of the records.

Time and batch dims: the model input is ``[B, ...]`` and layers see ``[T, B, ...]``, ``[T*B, ...]``
(steps = T) or ``[B, ...]`` (one step: an encoding layer computed once and repeated over T).
A layer called several times per forward (a loop over T) sums its steps. ``B == T > 1`` would make
these layouts ambiguous and is refused; profile with batch 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from . import formulas

ENCODING = ("exclude", "include")
ATTENTION = ("include", "exclude")
ATTENTION_RATE = ("a", "pair")
SPIKE_WIDTH = ("layer", "model")


@dataclass(frozen=True)
class Conventions:
    """How the metrics count; every field is an argument of :func:`profile`.

    * ``encoding``: layers fed real values (``s_bits is None``: the encoding layer, or a layer
      after a float op) are no spike operations. ``"exclude"`` (default, the paper's: only this
      reading fits its ImageNet figures) leaves them out of SOPs / S-ACE / NS-ACE and reports their
      MACs and weight bits separately; ``"include"`` counts them with ``S_in = real_input_bits``.
    * ``real_input_bits``: the width a real-valued input counts as under ``encoding="include"``
      (default 16: full precision as the paper counts it).
    * ``attention``: ``"include"`` (default) counts spike matrix products as MACs between a
      ``s_bits``- and a ``b_bits``-wide operand (BB = T * s_bits * b_bits); ``"exclude"`` drops them.
    * ``attention_rate``: the firing rate NS-ACE uses for a product. ``"a"`` (default): the nonzero
      fraction of its first operand, like any layer's input; ``"pair"``: the exact fraction of its
      MACs whose two operands are both nonzero.
    * ``spike_width``: the ``S_in`` of a layer fed spikes. ``"layer"`` (default): its declared input
      width ``s_bits`` (a product's too), the true width of what it receives; a residual
      stream of summed spikes, or Q K^T's integer scores, are wider than the model's S. ``"model"``:
      the model's nominal ``s_bits`` for every spike input, as ``BB = T * W * S`` reads (a product's
      ``b_bits`` is kept).
    * ``sops_spike_bits``: True (default, DESIGN.md) counts a multi-level spike as ``S_in`` binary
      operations in SOPs; False counts it as one. S-ACE and NS-ACE always use ``S_in`` (Eq. 8).
    """

    encoding: str = "exclude"
    real_input_bits: int = formulas.FULL_PRECISION_COUNTED_BITS
    attention: str = "include"
    attention_rate: str = "a"
    spike_width: str = "layer"
    sops_spike_bits: bool = True

    def __post_init__(self):
        for name, allowed in (("encoding", ENCODING), ("attention", ATTENTION), ("attention_rate", ATTENTION_RATE),
                              ("spike_width", SPIKE_WIDTH)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        b = self.real_input_bits
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"real_input_bits must be an integer >= 1, got {b!r}")
        if not isinstance(self.sops_spike_bits, bool):
            raise TypeError(f"sops_spike_bits must be a bool, got {self.sops_spike_bits!r}")


@dataclass
class LayerRecord:
    """One layer's measurements (per sample) and its share of the totals.

    ``macs`` is per sample and time step; ``t_steps`` the steps the layer ran on; ``w_bits`` as the
    metrics count it (16 for full precision); ``s_bits`` the declared width of its input spikes,
    None for a real-valued input; ``firing_rate`` the nonzero fraction of its input (for a product,
    of ``a``; ``firing_rate_b`` and ``pair_rate`` are the product's others). ``counted`` says
    whether the totals include it; ``counted_s_bits`` (the S_in the formulas use, under the
    conventions), ``sops``, ``s_ace``, ``ns_ace`` are None when they do not. ``in_bits`` and
    ``s_in`` are the former names of ``s_bits`` and ``counted_s_bits`` (deprecated, FutureWarning).
    """

    name: str
    kind: str
    macs: int
    w_bits: int
    s_bits: int | None
    t_steps: int
    firing_rate: float
    counted: bool
    counted_s_bits: int | None = None
    sops: int | None = None
    s_ace: int | None = None
    ns_ace: float | None = None
    firing_rate_b: float | None = None
    pair_rate: float | None = None

    @property
    def in_bits(self) -> int | None:
        warnings.warn("LayerRecord.in_bits is deprecated; read s_bits (same value)", FutureWarning, stacklevel=2)
        return self.s_bits

    @property
    def s_in(self) -> int | None:
        warnings.warn("LayerRecord.s_in is deprecated; read counted_s_bits (same value)", FutureWarning,
                      stacklevel=2)
        return self.counted_s_bits


@dataclass
class Profile:
    """The result of :func:`profile`: per-layer records, totals per sample, and the conventions."""

    model: str
    input_shape: tuple
    t_steps: int
    w_bits: int | None
    s_bits: int | None
    conventions: Conventions
    layers: list = field(default_factory=list)
    totals: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain JSON-serializable data."""
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out


class _Tally:
    """What the hooks accumulate for one module over the forward pass."""

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.macs = self.steps = self.nnz = self.numel = 0
        self.nnz_b = self.numel_b = self.pairs = 0


def _kind(module: nn.Module) -> str | None:
    if hasattr(module, "s_bits") and hasattr(module, "b_bits"):
        return "matmul"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _steps(lead: tuple, t: int, b: int, name: str) -> int:
    """Time steps covered by one call whose leading (time/batch/token) dims are ``lead``."""
    if len(lead) >= 2 and lead[0] == t and lead[1] == b:
        return t
    if len(lead) >= 1 and lead[0] == t * b:
        return t
    if len(lead) >= 1 and lead[0] == b:
        return 1
    raise RuntimeError(
        f"profile: layer {name!r} ran on leading dims {tuple(lead)}, which start with none of "
        f"[T, B] = [{t}, {b}], T*B = {t * b} or B = {b}; the time/batch layout is not the contract's"
    )


def _hook(tally: _Tally, t: int, b: int):
    def hook(module, args, kwargs, output):
        inputs = list(args) + list(kwargs.values())
        x = inputs[0]
        if tally.kind == "matmul":
            a, bm = inputs[0], inputs[1]
            batch = torch.broadcast_shapes(a.shape[:-2], bm.shape[:-2])
            m, k, n = a.shape[-2], a.shape[-1], bm.shape[-1]
            macs, steps = math.prod(batch) * m * k * n, _steps(tuple(batch), t, b, tally.name)
            tally.nnz_b += int(torch.count_nonzero(bm))
            tally.numel_b += bm.numel()
            tally.pairs += int(((a != 0).to(torch.float64) @ (bm != 0).to(torch.float64)).sum().item())
        elif tally.kind == "conv":
            nd = len(module.kernel_size)
            lead = tuple(output.shape[: output.dim() - 1 - nd])
            per_image = module.out_channels * math.prod(output.shape[-nd:])
            per_image *= (module.in_channels // module.groups) * math.prod(module.kernel_size)
            macs, steps = math.prod(lead) * per_image, _steps(lead, t, b, tally.name)
        else:
            lead = tuple(x.shape[:-1])
            macs, steps = math.prod(lead) * module.in_features * module.out_features, _steps(lead, t, b, tally.name)
        tally.macs += macs
        tally.steps += steps
        tally.nnz += int(torch.count_nonzero(x))
        tally.numel += x.numel()

    return hook


def _record(tally: _Tally, module: nn.Module, b: int) -> LayerRecord:
    """The measurement of one layer, before any convention is applied."""
    if tally.macs % (b * tally.steps):
        raise RuntimeError(f"profile: layer {tally.name!r}: {tally.macs} MACs do not split over {b} samples "
                           f"and {tally.steps} steps")
    macs = tally.macs // (b * tally.steps)
    if tally.kind == "matmul":
        w_bits = int(module.b_bits)
        s_bits = formulas.counted_weight_bits(int(module.s_bits))  # a float operand (32) counts as 16
    else:
        w_bits, s_bits = int(getattr(module, "w_bits", 32)), getattr(module, "s_bits", None)
    fr = tally.nnz / tally.numel if tally.numel else 0.0
    rec = LayerRecord(tally.name, tally.kind, macs, formulas.counted_weight_bits(w_bits),
                      None if s_bits is None else int(s_bits), tally.steps, fr, counted=True)
    if tally.kind == "matmul":
        rec.firing_rate_b = tally.nnz_b / tally.numel_b if tally.numel_b else 0.0
        rec.pair_rate = tally.pairs / tally.macs if tally.macs else 0.0
    return rec


def _count(rec: LayerRecord, conv: Conventions, model_s_bits: int | None) -> LayerRecord:
    """A copy of ``rec`` with its share of the totals under ``conv`` (``model_s_bits``: the model's S)."""
    rec = replace(rec, counted=True, counted_s_bits=None, sops=None, s_ace=None, ns_ace=None)
    if rec.kind == "matmul" and conv.attention == "exclude":
        rec.counted = False
    elif rec.s_bits is None and conv.encoding == "exclude":
        rec.counted = False
    if not rec.counted:
        return rec
    if rec.s_bits is None:
        rec.counted_s_bits = conv.real_input_bits
    else:
        rec.counted_s_bits = model_s_bits if conv.spike_width == "model" else rec.s_bits
    rate = rec.pair_rate if rec.kind == "matmul" and conv.attention_rate == "pair" else rec.firing_rate
    t = rec.t_steps
    s = rec.counted_s_bits
    rec.sops = formulas.sops(rec.macs, t, s if conv.sops_spike_bits else 1)
    rec.s_ace = formulas.s_ace(rec.macs, t, s, rec.w_bits)
    rec.ns_ace = formulas.ns_ace(rate, rec.macs, t, s, rec.w_bits)
    return rec


def _check_s_bits(s_bits, conv: Conventions) -> None:
    if conv.spike_width == "model" and (isinstance(s_bits, bool) or not isinstance(s_bits, int) or s_bits < 1):
        raise ValueError(f"profile: spike_width='model' needs model.s_bits (an int >= 1), got {s_bits!r}")


def _layer_totals(layers: list, t: int, w_bits, s_bits) -> dict:
    counted = [r for r in layers if r.counted]
    real = [r for r in layers if r.s_bits is None]
    return {
        "macs": sum(r.macs for r in layers),
        "counted_macs": sum(r.macs for r in counted),
        "real_input_macs": sum(r.macs for r in real),
        "real_input_layers": {r.name: r.w_bits for r in real},
        "sops": sum(r.sops for r in counted),
        "s_ace": sum(r.s_ace for r in counted),
        "ns_ace": sum(r.ns_ace for r in counted),
        "bit_budget": None if w_bits is None or s_bits is None else formulas.bit_budget(t, w_bits, s_bits),
    }


def recount(p: Profile, **conventions) -> Profile:
    """The same measurement (``p``'s layers, rates, parameters) counted under other conventions
    (keyword arguments of :func:`profile`; those not given keep ``p``'s). No forward pass."""
    conv = replace(p.conventions, **conventions)
    _check_s_bits(p.s_bits, conv)
    layers = [_count(r, conv, p.s_bits) for r in p.layers]
    totals = {**p.totals, **_layer_totals(layers, p.t_steps, p.w_bits, p.s_bits)}
    return replace(p, conventions=conv, layers=layers, totals=totals)


def _parameter_totals(model: nn.Module, model_w_bits: int | None) -> dict:
    """Parameter count, 16-bit-equivalent millions (uniform and per tensor) and packed bytes."""
    weight_bits = {}  # id(weight) -> (w_bits, out_features, in_features) of conv/linear weights
    for module in model.modules():
        if _kind(module) in ("conv", "linear") and isinstance(getattr(module, "weight", None), torch.Tensor):
            w = module.weight
            weight_bits[id(w)] = (int(getattr(module, "w_bits", 32)), w.shape[0], w[0].numel())
    count = bits16 = nbytes = 0
    for p in model.parameters():  # unique tensors
        count += p.numel()
        w_bits, n, k = weight_bits.get(id(p), (None, 0, 0))
        counted = formulas.FULL_PRECISION_COUNTED_BITS if w_bits is None else formulas.counted_weight_bits(w_bits)
        bits16 += p.numel() * counted
        if w_bits is not None and counted < formulas.FULL_PRECISION_COUNTED_BITS:
            nbytes += formulas.packed_weight_nbytes(n, k, w_bits)
        else:
            nbytes += p.numel() * p.element_size()
    uniform = None if model_w_bits is None else formulas.params_16bit_equivalent(count, model_w_bits) / 1e6
    return {
        "params_count": count,
        "params_16bit_m": uniform,
        "params_16bit_m_per_tensor": bits16 / 16 / 1e6,
        "params_packed_nbytes": nbytes,
    }


def profile(model: nn.Module, x: torch.Tensor, *, encoding: str = "exclude",
            real_input_bits: int = formulas.FULL_PRECISION_COUNTED_BITS, attention: str = "include",
            attention_rate: str = "a", spike_width: str = "layer", sops_spike_bits: bool = True,
            t_steps: int | None = None,
            model_name: str | None = None) -> Profile:
    """Run ``model(x)`` once (eval mode, no grad) and measure its cost metrics per sample.

    ``x``: the model input ``[B, ...]``, B >= 1 and B != T unless T == 1. ``t_steps`` defaults to
    ``model.t_steps`` (required one way or the other); ``model.w_bits`` and ``model.s_bits``, when
    present, give the model's Bit Budget ``T * W * S`` and the paper's parameter figure
    ``count * W / 16``. The conventions are those of :class:`Conventions`.

    Totals (per sample): ``macs`` (per time step, every hooked layer), ``counted_macs``,
    ``real_input_macs`` with ``real_input_layers`` ({name: w_bits}), ``sops``, ``s_ace``, ``ns_ace``,
    ``bit_budget``, ``params_count``, ``params_16bit_m`` (count * model W / 16, in millions; None
    without ``model.w_bits``), ``params_16bit_m_per_tensor`` (each conv/linear weight at its own
    width, every other parameter at 16 bits), ``params_packed_nbytes`` (1-8-bit weights as
    ``PackedWeight`` holds them, the rest at their dtype's size; batch norm not folded).

    Raises TypeError for a non-module model or non-tensor input, ValueError for a bad convention,
    a missing t_steps, ``B == T > 1`` or a model without any hooked layer; the model's own errors
    (wrong input rank or size) propagate unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"profile: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise TypeError(f"profile: x must be a tensor [B, ...] with B >= 1, got {getattr(x, 'shape', type(x))}")
    conv = Conventions(encoding, real_input_bits, attention, attention_rate, spike_width, sops_spike_bits)
    t = getattr(model, "t_steps", None) if t_steps is None else t_steps
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"profile: t_steps must be an integer >= 1 (argument or model.t_steps), got {t!r}")
    b = x.shape[0]
    if b == t and t > 1:
        raise ValueError(f"profile: batch {b} equals t_steps {t}, which makes [T, B, ...] ambiguous; use batch 1")
    tallies, handles = {}, []
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is not None and module not in tallies:
            tallies[module] = _Tally(name or type(module).__name__, kind)
    if not tallies:
        raise ValueError("profile: the model has no conv, linear or spike-matmul layer to measure")
    _check_s_bits(getattr(model, "s_bits", None), conv)
    was_training = model.training
    try:
        for module, tally in tallies.items():
            handles.append(module.register_forward_hook(_hook(tally, t, b), with_kwargs=True))
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    w_bits, s_bits = getattr(model, "w_bits", None), getattr(model, "s_bits", None)
    layers = [_count(_record(tally, m, b), conv, s_bits) for m, tally in tallies.items() if tally.steps]
    totals = _layer_totals(layers, t, w_bits, s_bits)
    totals.update(_parameter_totals(model, w_bits))
    return Profile(model_name or type(model).__name__, tuple(x.shape), t, w_bits, s_bits, conv, layers, totals)
