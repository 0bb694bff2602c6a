"""The end-to-end check: a small integer-only spiking network, in the library and in hls/.

:class:`IntegerSpikingMLP` is the library's integer inference: linear layers as bit-serial GEMMs of
W-bit codes, integer biases, the integer multi-level LIF with integer thresholds, and an integer
read-out. Its operators come from :mod:`.backends` (reference, compiled kernels or Triton), so the
HLS C simulation of ``hls/src/net_top.cpp`` is checked against each of them, layer by layer.
:func:`forward_conv_planes` runs the same network on the integer SEW-ResNet's kernels
(:mod:`qsnn_kernels.conv_planes`), so the integer inference of converted models and the HLS
network share one contract, checked bit for bit.

Batch-norm folding (:func:`fold_batch_norm`). A float layer with input ``a = in_scale * s``
(s the integer levels), weight ``W`` and batch norm ``(gamma, beta, mean, var, eps)`` computes
``c_n = g_n (W a)_n + b'_n`` with ``(g, b')`` the batch norm's affine map
(:func:`qsnn_kernels.batch_norm.batch_norm_affine`: ``g = gamma / sqrt(var + eps)``,
``b' = beta - g * mean``), and its neuron fires levels ``floor(c / v_th)``. Folding ``W' = g * W``
(per row, signs included) and quantizing ``W'`` with one scale per layer (``alpha``, Eq. 5 per
tensor) makes every current an integer multiple of ``delta = alpha * in_scale``:
``c ~ delta * (Y + bias)`` with ``Y`` the integer GEMM, ``bias = round(b' / delta)`` and threshold
``theta = max(1, round(v_th / delta))``; the output levels feed the next layer with
``in_scale = v_th``. One scale per layer (not per channel) is what lets one integer theta serve
the whole layer, as the LIF contract has a scalar threshold. The read-out layer has no neuron:
``logits = sum_t (Y_t + bias)`` (T times the float logits / delta, up to rounding), prediction =
first index of the largest logit.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .. import reference
from ..batch_norm import batch_norm_affine
from ..bits import SPIKE_BITS, WEIGHT_BITS, check_bits
from ..choices import RESETS, check_choice
from ..deprecation import NOT_GIVEN, renamed_keyword
from . import backends
from .export import Case, hard_reset_flag, make_case


@dataclasses.dataclass
class IntegerLayer:
    """``q`` int8 ``[N, K]`` (W-bit codes), ``bias`` int32 ``[N]``, ``theta`` (None: the read-out)."""

    q: torch.Tensor
    bias: torch.Tensor
    theta: int | None


@dataclasses.dataclass
class NetOutput:
    levels: list  # uint8 [T, M, N_l] per spiking layer
    logits: torch.Tensor  # int32 [M, N_out]
    pred: torch.Tensor  # int64 [M]


def fold_batch_norm(weight, gamma, beta, mean, var, *, eps: float = 1e-5, w_bits: int, in_scale: float,
                    v_th: float | None) -> tuple[IntegerLayer, float]:
    """Fold batch norm into a W-bit integer layer (module docstring); returns it and ``delta``.

    ``weight`` float ``[N, K]``; the batch-norm tensors ``[N]``; ``v_th`` None for the read-out.
    The folded weight is quantized as one channel by :func:`qsnn_kernels.reference.quantize_weight`
    (Eq. 5 with one scale for the layer). Raises ValueError for a bad ``w_bits``, batch-norm
    tensors of another length, or a folded weight that is all zero or not finite (no integer scale
    exists).
    """
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    g, folded_b = batch_norm_affine(mean, var, eps, gamma, beta)
    folded_w = weight.to(torch.float64) * g[:, None]
    if not bool(folded_w.ne(0).any()) or not bool(torch.isfinite(folded_w).all()):
        raise ValueError("fold_batch_norm: the folded weight is all zero or not finite; no integer scale exists")
    q, alpha = reference.quantize_weight(folded_w.reshape(1, -1), w_bits)
    delta = float(alpha) * in_scale
    bias = torch.round(folded_b / delta).to(torch.int32)
    theta = None if v_th is None else max(1, round(v_th / delta))
    return IntegerLayer(q.reshape(folded_w.shape), bias, theta), delta


@dataclasses.dataclass
class IntegerSpikingMLP:
    """Spiking layers then a read-out, all integer. Input: ``s_bits_in``-bit levels (e.g. 8-bit
    pixels), ``[M, K0]`` (static, repeated at every step: direct encoding) or ``[T, M, K0]``; the
    spiking layers emit ``s_bits``-bit levels."""

    layers: list
    w_bits: int
    s_bits_in: int
    s_bits: int
    t_steps: int
    leak_shift: int = 1
    v_reset: int = 0
    reset: str = "hard"

    def __post_init__(self):
        check_bits(self.w_bits, WEIGHT_BITS, "w_bits")
        check_bits(self.s_bits_in, SPIKE_BITS, "s_bits_in")
        check_bits(self.s_bits, SPIKE_BITS, "s_bits")
        check_choice(self.reset, RESETS, "reset")
        if not self.layers or self.layers[-1].theta is not None or any(l.theta is None for l in self.layers[:-1]):
            raise ValueError("IntegerSpikingMLP: spiking layers (theta set) followed by one read-out (theta None)")

    def _steps(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return x.unsqueeze(0).expand(self.t_steps, *x.shape)
        if x.dim() != 3 or x.shape[0] != self.t_steps:
            raise ValueError(f"input must be [M, K0] or [T={self.t_steps}, M, K0], got {tuple(x.shape)}")
        return x

    def forward(self, x: torch.Tensor, backend: str = "reference") -> NetOutput:
        """Integer inference: spike levels of every spiking layer, logits and predictions.

        Raises OverflowError if a current leaves int32."""
        a, bits, levels = self._steps(x), self.s_bits_in, []
        for layer in self.layers:
            y = backends.gemm(a, layer.q, s_bits=bits, w_bits=self.w_bits, backend=backend)
            current = y.to(torch.int64) + layer.bias
            if layer.theta is None:
                logits = current.sum(0)
                if logits.abs().max() >= 2**31:
                    raise OverflowError("read-out logits leave int32")
                logits = logits.to(torch.int32)
                return NetOutput(levels, logits, torch.argmax(logits, dim=1))
            if current.abs().max() >= 2**31:
                raise OverflowError("a layer's input current leaves int32")
            a, _ = backends.lif(current.to(torch.int32), s_bits=self.s_bits, theta=layer.theta,
                                leak_shift=self.leak_shift, v_reset=self.v_reset, reset=self.reset, v_init=None,
                                backend=backend)
            levels.append(a)
            bits = self.s_bits
        raise AssertionError("unreachable: the last layer is the read-out")


def forward_conv_planes(net: IntegerSpikingMLP, x: torch.Tensor) -> NetOutput:
    """``net.forward(x)`` on the kernels of the integer SEW-ResNet (:mod:`qsnn_kernels.conv_planes`),
    bit for bit: each linear layer is a 1x1 convolution of a 1x1 image (``K`` channels) over packed
    planes; each spiking layer is ``qsnn::spiking_conv_planes`` with the layer's bias, its one theta
    in every channel and no fraction (``reference.spiking_layer_int`` is then
    ``multilevel_lif_int``); the read-out sums ``Y_t + bias`` over the steps (``qsnn::conv_planes``).
    ValueError for ``v_reset != 0`` (the integer SEW layers reset to 0) or a bad input shape;
    BackendUnavailable without the compiled extension."""
    from ..conv_planes import conv_planes, pack_conv_weight, pack_feature_levels, spiking_conv_planes

    if net.v_reset != 0:
        raise ValueError(f"forward_conv_planes: the integer conv layers reset to 0, this network to {net.v_reset}")
    a = net._steps(x)  # [T, M, K0]
    planes, bits, levels = pack_feature_levels(a[:, :, None, None, :], net.s_bits_in), net.s_bits_in, []
    for layer in net.layers:
        n, k = layer.q.shape
        w_planes = pack_conv_weight(layer.q.reshape(n, 1, 1, k), net.w_bits)
        if layer.theta is None:
            y = conv_planes(planes, w_planes, k, s_bits=bits)[:, :, 0, 0, :]  # [T, M, N]
            logits = (y.to(torch.int64) + layer.bias).sum(0)
            if logits.abs().max() >= 2**31:
                raise OverflowError("read-out logits leave int32")
            logits = logits.to(torch.int32)
            return NetOutput(levels, logits, torch.argmax(logits, dim=1))
        theta = torch.full((n,), layer.theta, dtype=torch.int32)
        planes = spiking_conv_planes(planes, w_planes, k, s_bits=bits, bias=layer.bias.to(torch.int32), theta=theta,
                                     frac_bits=0, out_bits=net.s_bits, leak_shift=net.leak_shift, reset=net.reset)
        by_bit = planes.unflatten(0, (-1, net.s_bits)).transpose(0, 1).contiguous()
        levels.append(torch.ops.qsnn.unpack_bits(by_bit, n, False)[:, :, 0, 0, :])
        bits = net.s_bits
    raise AssertionError("unreachable: the last layer is the read-out")


def random_network(sizes=(64, 48, 33, 10), *, w_bits: int = 4, s_bits_in: int = 8, s_bits: int = 2,
                   t_steps: int = 3, batch: int = 5, reset: str = "hard", leak_shift: int = 1, seed: int = 0,
                   backend: str = "reference", s_in: int = NOT_GIVEN) -> tuple[IntegerSpikingMLP, torch.Tensor]:
    """A random float MLP with batch norm, calibrated on a random ``s_bits_in``-bit input batch (the
    batch-norm statistics are that batch's), folded to integers layer by layer.

    Returns the network and the input levels uint8 ``[batch, sizes[0]]``. The thresholds are
    ``v_th = 2 / 2^s_bits`` in batch-norm units, so that the levels spread over their range.
    ``s_in`` is the deprecated former name of ``s_bits_in``. Raises ValueError for an argument
    outside its range, BackendUnavailable for a backend that cannot run here.
    """
    s_bits_in = renamed_keyword("random_network", "s_bits_in", s_bits_in, "s_in", s_in, default=8)
    backend = backends.backend_name(backend)
    check_bits(w_bits, WEIGHT_BITS, "w_bits")
    check_bits(s_bits_in, SPIKE_BITS, "s_bits_in")
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    check_choice(reset, RESETS, "reset")
    if len(sizes) < 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (*sizes, batch, t_steps)):
        raise ValueError(f"random_network: sizes (K0, ..., N_out), batch and t_steps must be positive ints, got "
                         f"{sizes}, {batch}, {t_steps}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 1 << s_bits_in, (batch, sizes[0]), generator=gen).to(torch.uint8)
    a = x.unsqueeze(0).expand(t_steps, *x.shape)
    in_scale, bits, layers = 1.0 / ((1 << s_bits_in) - 1), s_bits_in, []
    v_th = 2.0 / (1 << s_bits)
    for i, (k, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        weight = torch.randn(n, k, generator=gen, dtype=torch.float64) / math.sqrt(k)
        u = (a.to(torch.float64) * in_scale) @ weight.T  # [T, M, N]
        mean, var = u.mean(dim=(0, 1)), u.var(dim=(0, 1), unbiased=False)
        gamma = torch.empty(n, dtype=torch.float64).uniform_(0.6, 1.4, generator=gen)
        gamma[0] = -gamma[0]  # a negative scale folds into the weights' signs
        beta = torch.empty(n, dtype=torch.float64).uniform_(-0.2, 0.6, generator=gen)
        readout = i == len(sizes) - 2
        layer, _ = fold_batch_norm(weight, gamma, beta, mean, var, w_bits=w_bits, in_scale=in_scale,
                                   v_th=None if readout else v_th)
        layers.append(layer)
        if not readout:
            y = backends.gemm(a, layer.q, s_bits=bits, w_bits=w_bits, backend=backend)
            a, _ = backends.lif(y + layer.bias, s_bits=s_bits, theta=layer.theta, leak_shift=leak_shift, v_reset=0,
                                reset=reset, v_init=None, backend=backend)
            in_scale, bits = v_th, s_bits
    net = IntegerSpikingMLP(layers, w_bits, s_bits_in, s_bits, t_steps, leak_shift=leak_shift, v_reset=0, reset=reset)
    return net, x


def net_case(net: IntegerSpikingMLP, x: torch.Tensor, *, pe: int = 4, simd: int = 2,
             backend: str = "reference") -> Case:
    """The vectors of ``hls/src/net_top.cpp`` (two spiking layers and a read-out) for input ``x``
    ``[M, K0]``, expected outputs from ``net.forward(x, backend)``. Raises ValueError for a network
    of another depth, BackendUnavailable for a backend that cannot run here."""
    backend = backends.backend_name(backend)
    if len(net.layers) != 3:
        raise ValueError(f"the HLS network top has 2 spiking layers and a read-out; this network has {len(net.layers)}")
    out = net.forward(x, backend)
    l1, l2, l3 = net.layers
    arrays = {
        "theta1": l1.theta, "theta2": l2.theta, "leak_shift": net.leak_shift, "v_reset": net.v_reset,
        "hard_reset": hard_reset_flag(net.reset),
        "x_planes": backends.pack_levels_planes(net._steps(x), net.s_bits_in, backend),
        "w1_planes": backends.pack_weight_planes(l1.q, net.w_bits, backend), "b1": l1.bias,
        "w2_planes": backends.pack_weight_planes(l2.q, net.w_bits, backend), "b2": l2.bias,
        "w3_planes": backends.pack_weight_planes(l3.q, net.w_bits, backend), "b3": l3.bias,
        "levels1": out.levels[0], "levels2": out.levels[1], "logits": out.logits, "pred": out.pred,
    }
    defines = {"W_BITS": net.w_bits, "NET_S_BITS_IN": net.s_bits_in, "S_BITS_OUT": net.s_bits,
               "T_STEPS": net.t_steps, "M_ROWS": x.shape[0], "NET_K0": x.shape[1], "NET_N1": l1.q.shape[0],
               "NET_N2": l2.q.shape[0], "NET_N3": l3.q.shape[0], "PE": pe, "SIMD": simd}
    return make_case("net", defines, arrays)
