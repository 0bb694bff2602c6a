"""Spikformer (Zhou et al., "Spikformer: When Spiking Neural Network Meets Transformer", ICLR 2023)
with the W/S/T allocation of Shen et al. (CVPR 2024) as arguments: ``w_bits``, ``s_bits``, ``t_steps``.

Architecture (the original's, in our layers):

* **Spiking Patch Splitting** (:class:`SpikingPatchSplitting`): four stages conv3x3-BN-LIF with
  D/8, D/4, D/2, D channels, a 3x3 stride-2 max pool after each of the last log2(patch_size)
  stages (CIFAR, patch 4: after stages 3 and 4; ImageNet, patch 16: after all four), then the
  relative position embedding ``x + LIF(BN(conv3x3(x)))``. Direct encoding: the first conv and its
  BN run once on the real-valued image, the result is repeated over T before the first neuron.
* **Spiking Self-Attention** (:class:`SpikingSelfAttention`): Q, K, V = LIF(BN(Linear(x))) (no
  bias, as the original's ``qkv_bias=False``), per head ``(Q K^T) V * 0.125`` without softmax, the
  attention neuron (threshold 0.5 in the original), then LIF(BN(Linear(.))) projection.
* **MLP**: LIF(BN(Linear(D, 4D))), LIF(BN(Linear(4D, D))); blocks ``x + SSA(x)``, ``x + MLP(x)``.
* Head: mean over tokens, Linear to classes, applied per time step, then the mean over T.

Token layout inside the blocks is ``[T, B, N, D]`` (channels last), so every 1x1 conv of the
original is a :class:`QuantLinear` on the last dimension and BN runs on ``[T*B*N, D]``; this is
the same computation as the original's Conv1d / transposed BatchNorm1d, without the copies.

Conventions (documented choices; the profiler and the inference conversion read them):

* All neurons come from :func:`spiking_neuron` (decay 0.5 without input decay: the paper's Eq. 6;
  the original used spikingjelly's ``LIFNode(tau=2)`` with ``decay_input=True``, which halves the
  input, a scale the preceding BN absorbs). Spike values are integer levels ``0 .. 2^S - 1``.
* The attention neuron: the original fires (value 1) when ``0.125 (Q K^T) V`` integrated reaches
  0.5. Here it is a neuron with threshold 1 on ``0.25 (Q K^T) V``: the same decisions bit for bit
  (all factors are powers of two), and integer levels ``0 .. 2^S - 1`` like every other spike, so
  the attention output is restricted to ``s_bits``. ``attn_scale`` (0.125) and ``attn_v_th`` (0.5)
  are kept as the paper's numbers.
* ``Q K^T`` is not restricted (it is not a neuron output in the original): its entries are
  integers ``0 .. d_head (2^S - 1)^2``; the second :class:`SpikeMatmul` declares that width as
  its ``s_bits`` (e.g. 6 bits for d_head = 32, S = 1), V's as ``b_bits``, the model's ``s_bits``.
* The product order: without a softmax ``(Q K^T) V = Q (K^T V)``, the same integers. With more
  tokens than head dimensions (N > d_head: ImageNet's 196 tokens, head dim 64) the attention runs
  ``Q (K^T V)``: ``N d^2`` MACs per head instead of ``N^2 d`` and no ``[N, N]`` matrix to keep for
  the backward (spikingjelly's Spikformer does the same). ``K^T V``'s entries are integers
  ``0 .. N (2^S - 1)^2``, the width the second product declares as ``b_bits``. The profiler counts
  the products that run. Float sums are exact below 2^24 in either order.
* ``s_bits`` of a layer (its input's spike width): the model's after a neuron or a max pool of
  spikes. The residual stream
  is not restricted (as in the original): it carries sums of spikes, up to 2 L after the patch
  splitting and (2 + 2 i) L after block i (L = 2^S - 1), so the Q/K/V and first MLP layers get
  the smallest spike width (1, 2, 4, 8) holding that level, or None (counted as real-valued)
  beyond 8 bits: :func:`models.layers.bits_for_levels`, the convention of SEW-ResNet with
  ``clamp_add=False``. The encoding conv and the head (mean over tokens) take real values:
  ``s_bits = None``.
* Every layer, the encoding conv and the head included, has ``w_bits`` weights.
* Parameters: the original's blocks also hold two LayerNorms that its forward never uses; they
  are left out (depth * 2 * 2 D parameters, < 0.1 %; the papers' counts match without them).

timm's model contract (features averaged over T, classifier, intermediates, checkpointing, weights):
:mod:`models.timm_support`. Features (``feature_info``): the blocks' outputs ``blocks.i`` (tokens on
the ``img_size / patch_size`` grid; ``output_fmt`` "NLC" gives them as ``[B, N, D]``).
"""

from __future__ import annotations

import functools
import math

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from ..data.images import CIFAR_MEAN, CIFAR_STD
from ..deprecation import NOT_GIVEN, renamed_keyword
from ..spike_attention import spike_attention
from .layers import (MultiStepBatchNorm1d, MultiStepBatchNorm2d, QuantConv2d, QuantLinear, SpikeMatmul, SpikeMaxPool2d,
                     batch_norm_spikes, batch_norm_spikes_for, bits_for_levels, check_model_args, feed, levels_for,
                     mean_over_time, repeat_frame, spiking_neuron)
from .timm_support import SpikingTimmModel, build_qsnn, qsnn_cfg, register_entry_point, run_blocks

__all__ = ["Spikformer", "SpikingPatchSplitting", "SpikingSelfAttention", "SpikformerMLP", "SpikformerBlock",
           "TokenBatchNorm", "VARIANTS", "spikformer"]

ATTN_SCALE = 0.125
ATTN_V_TH = 0.5

VARIANTS = {
    # name: (depth, embed_dim, num_heads, patch_size, img_size, num_classes)
    "spikformer_4_384": (4, 384, 12, 4, 32, 10),  # CIFAR10 (cifar10.yml of the original)
    "spikformer_8_384": (8, 384, 12, 16, 224, 1000),
    "spikformer_6_512": (6, 512, 8, 16, 224, 1000),
    "spikformer_8_512": (8, 512, 8, 16, 224, 1000),
    "spikformer_10_512": (10, 512, 8, 16, 224, 1000),
    "spikformer_8_768": (8, 768, 12, 16, 224, 1000),
}
"""The registered variants ``qsnn_<name>``; heads: 8 for D = 512 (the original's ImageNet code),
12 for D = 384 (its CIFAR config) and 768 (head dim 64). Heads change no parameter count."""


def _int_bits(max_value: int) -> int:
    """Bits of an unsigned integer in ``[0, max_value]``."""
    return max(1, int(max_value).bit_length())


class TokenBatchNorm(MultiStepBatchNorm1d):
    """BatchNorm over the last dimension of ``[..., C]`` (statistics over all other dimensions):
    the original's BatchNorm1d on transposed ``[T*B, C, N]`` tokens, without the transposes.
    ``sync_stats`` (``qsnn train --sync-bn``) as in :class:`MultiStepBatchNorm1d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalize(x.reshape(-1, x.shape[-1])).view(x.shape)


class _LinearBNLIF(nn.Module):
    """``LIF(BN(Linear(x)))`` on ``[T, B, N, C_in]`` tokens -> ``[T, B, N, C_out]`` spikes."""

    def __init__(self, in_features: int, out_features: int, bias: bool, w_bits: int, s_bits: int,
                 in_s_bits: int | None):
        super().__init__()
        self.linear = QuantLinear(in_features, out_features, bias=bias, w_bits=w_bits, s_bits=in_s_bits)
        self.bn = TokenBatchNorm(out_features)
        self.lif = spiking_neuron(s_bits)

    def forward(self, x: torch.Tensor, levels: torch.Tensor | None = None) -> torch.Tensor:
        """``levels``: x's spike levels, when the neuron that made x emitted them."""
        return batch_norm_spikes(self.bn, self.lif, feed(self.linear, x, levels), channel_dim=-1)

    def spikes_for(self, consumer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(spikes, levels)``: :meth:`forward`, and the spikes' levels when the layer ``consumer``
        reads them (:func:`models.layers.batch_norm_spikes_for`)."""
        return batch_norm_spikes_for(consumer, self.bn, self.lif, self.linear(x), channel_dim=-1)


class _ConvBNLIF(nn.Module):
    """``LIF(BN(conv3x3(x)))`` on ``[T, B, C, H, W]``; with ``t_steps`` the encoding layer: the input
    is a real image ``[B, C, H, W]`` (conv and BN run once and the result is repeated over
    ``t_steps``: direct encoding) or event frames ``[T, B, C, H, W]`` (:func:`repeat_frame`).
    Tensors are channels-last in memory (module docstring of :class:`SpikingPatchSplitting`)."""

    def __init__(self, in_ch: int, out_ch: int, w_bits: int, s_bits: int, in_s_bits: int | None):
        super().__init__()
        self.conv = QuantConv2d(in_ch, out_ch, 3, padding=1, bias=False, w_bits=w_bits, s_bits=in_s_bits)
        self.bn = MultiStepBatchNorm2d(out_ch)
        self.lif = spiking_neuron(s_bits)

    def forward(self, x: torch.Tensor, t_steps: int | None = None) -> torch.Tensor:
        if t_steps is None:
            return batch_norm_spikes(self.bn, self.lif, self.conv(x))
        y = repeat_frame(self.bn(self.conv(x)), t_steps)
        # the neuron walks its input in memory order: give it [T, B, H, W, C], a view here
        return self.lif(y.movedim(-3, -1)).movedim(-1, -3)


class SpikingPatchSplitting(nn.Module):
    """SPS: image ``[B, C, H, W]`` -> tokens ``[T, B, N, D]``, N = (H / patch) (W / patch).

    Four conv-BN-LIF stages (D/8, D/4, D/2, D channels), a max pool (3x3, stride 2, pad 1) after
    each of the last log2(patch_size) stages, then ``x + LIF(BN(conv3x3(x)))`` (relative position
    embedding). Output: integer spike sums in ``[0, 2 (2^S - 1)]``.

    Activations are ``[T, B, C, H, W]`` tensors stored channels-last (``[T, B, H, W, C]`` in
    memory): oneDNN's convolutions run faster on that layout on the CPU, BN and max pool keep it,
    and the tokens ``[T, B, N, D]`` at the end are a view rather than a transposed copy.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, w_bits: int, s_bits: int):
        super().__init__()
        n_pool = int(math.log2(patch_size))
        widths = [in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        self.stages = nn.ModuleList(
            _ConvBNLIF(widths[i], widths[i + 1], w_bits, s_bits, None if i == 0 else s_bits) for i in range(4))
        self.pool_after = tuple(i >= 4 - n_pool for i in range(4))
        self.pool = SpikeMaxPool2d(kernel_size=3, stride=2, padding=1)
        self.rpe = _ConvBNLIF(embed_dim, embed_dim, w_bits, s_bits, s_bits)

    def _maxpool(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def forward(self, x: torch.Tensor, t_steps: int) -> torch.Tensor:
        """An image ``[B, C, H, W]`` or event frames ``[T, B, C, H, W]`` (T = ``t_steps``)."""
        x = x.movedim(-3, -1).contiguous().movedim(-1, -3)  # channels-last in memory, either rank
        for i, stage in enumerate(self.stages):
            x = stage(x, t_steps) if i == 0 else stage(x)
            if self.pool_after[i]:
                x = self._maxpool(x)
        x = (x + self.rpe(x)).movedim(2, -1)  # [T, B, H', W', D]
        # [T, B, N, D]: a view when channels-last; made dense once here otherwise (the residual
        # stream keeps this layout, and every linear would copy a strided input)
        return x.flatten(2, 3).contiguous()


class SpikingSelfAttention(nn.Module):
    """SSA on ``[T, B, N, D]`` spike tokens (module docstring: conventions).

    ``s_bits``: the spike width of its neurons; ``in_s_bits``: that of the block input (the
    residual stream; None: wider than 8 bits; ``in_bits``: its deprecated name). ``tokens``: N, the
    number of tokens it will see; with N > d_head the products run as ``Q (K^T V)`` (``kv``,
    ``q_kv``; module docstring), else (and when None) as ``(Q K^T) V`` (``qk``, ``attn_v``); a
    token count other than ``tokens`` is then a ValueError. Output: spikes ``[T, B, N, D]``.
    """

    def __init__(self, dim: int, num_heads: int, w_bits: int, s_bits: int, in_s_bits: int | None = NOT_GIVEN, *,
                 in_bits=NOT_GIVEN, tokens: int | None = None):
        super().__init__()
        in_s_bits = renamed_keyword(type(self).__name__, "in_s_bits", in_s_bits, "in_bits", in_bits)
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise ValueError(f"SpikingSelfAttention: tokens must be an int >= 1 or None, got {tokens!r}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = _LinearBNLIF(dim, dim, False, w_bits, s_bits, in_s_bits)
        self.k = _LinearBNLIF(dim, dim, False, w_bits, s_bits, in_s_bits)
        self.v = _LinearBNLIF(dim, dim, False, w_bits, s_bits, in_s_bits)
        levels = (1 << s_bits) - 1
        self.tokens = tokens
        if tokens is not None and tokens > self.head_dim:
            self.kv = SpikeMatmul(s_bits, s_bits)
            self.q_kv = SpikeMatmul(s_bits, _int_bits(tokens * levels * levels))
        else:
            self.qk = SpikeMatmul(s_bits, s_bits)
            self.attn_v = SpikeMatmul(_int_bits(self.head_dim * levels * levels), s_bits)
        self.attn_scale, self.attn_v_th = ATTN_SCALE, ATTN_V_TH
        self.attn_lif = spiking_neuron(s_bits)  # threshold 1 on (scale / attn_v_th) * (Q K^T) V
        self.proj = _LinearBNLIF(dim, dim, True, w_bits, s_bits, s_bits)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(2, 3)  # [T, B, h, N, d]

    def fuses_products(self, q: torch.Tensor) -> bool:
        """Whether the products run as one op (:func:`qsnn_kernels.spike_attention.spike_attention`:
        the token layout read and written directly, no head copies): while training off the CPU
        (CUDA, and the meta device of traces). Elsewhere the two :class:`SpikeMatmul` modules run,
        which the profiler counts (it runs without gradients) and which keep one-byte operands
        for the CPU's backward."""
        if isinstance(q, torch.fx.Proxy):  # an fx trace records the modules
            return False
        return self.training and torch.is_grad_enabled() and q.device.type != "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = levels_for(self.q.linear, x)  # the stream's levels, converted once for Q, K and V
        q, k, v = (m(x, levels) for m in (self.q, self.k, self.v))
        scale = self.attn_scale / self.attn_v_th
        if self.fuses_products(q):
            y = spike_attention(q, k, v, self.num_heads, scale)
        else:
            q, k, v = self._heads(q), self._heads(k), self._heads(v)
            if hasattr(self, "kv"):
                if q.shape[-2] != self.tokens:
                    raise ValueError(f"SpikingSelfAttention: built for {self.tokens} tokens, got {q.shape[-2]}")
                y = self.q_kv(q, self.kv(k.transpose(-2, -1), v))  # K^T V: [T, B, h, d, d], integers
            else:
                y = self.attn_v(self.qk(q, k.transpose(-2, -1)), v)  # Q K^T: [T, B, h, N, N], integers
            y = y.transpose(2, 3).flatten(-2) * scale  # [T, B, N, D]
        return self.proj(self.attn_lif(y))


class SpikformerMLP(nn.Module):
    """``LIF(BN(Linear(4D -> D)))(LIF(BN(Linear(D -> 4D)))(x))`` on ``[T, B, N, D]``; widths as in
    :class:`SpikingSelfAttention`."""

    def __init__(self, dim: int, hidden: int, w_bits: int, s_bits: int, in_s_bits: int | None = NOT_GIVEN, *,
                 in_bits=NOT_GIVEN):
        super().__init__()
        in_s_bits = renamed_keyword(type(self).__name__, "in_s_bits", in_s_bits, "in_bits", in_bits)
        self.fc1 = _LinearBNLIF(dim, hidden, True, w_bits, s_bits, in_s_bits)
        self.fc2 = _LinearBNLIF(hidden, dim, True, w_bits, s_bits, s_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(*self.fc1.spikes_for(self.fc2.linear, x))


class SpikformerBlock(nn.Module):
    """``x + SSA(x)``, then ``x + MLP(x)``. ``in_max``: the largest value of the input stream;
    ``tokens``: as :class:`SpikingSelfAttention`'s."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, w_bits: int, s_bits: int, in_max: int,
                 tokens: int | None = None):
        super().__init__()
        levels = (1 << s_bits) - 1
        self.attn = SpikingSelfAttention(dim, num_heads, w_bits, s_bits, bits_for_levels(in_max), tokens=tokens)
        self.mlp = SpikformerMLP(dim, int(dim * mlp_ratio), w_bits, s_bits, bits_for_levels(in_max + levels))
        self.out_max = in_max + 2 * levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class Spikformer(SpikingTimmModel):
    """Spikformer-``depth``-``embed_dim``: image ``[B, in_chans, H, W]`` (float, real-valued: direct
    encoding; H = W = ``img_size``) or event frames ``[B, t_steps, in_chans, H, W]`` -> logits
    ``[B, num_classes]`` (mean over T).

    * ``w_bits`` in (1, 2, 4, 8, 16, 32) (16/32: float weights), ``s_bits`` in (1, 2, 4, 8),
      ``t_steps >= 1``, ``num_classes >= 0`` (0: no classifier) (ValueError otherwise, before
      anything is built).
    * ``patch_size`` in (1, 2, 4, 8, 16): 2^k, a max pool after each of the last k SPS stages;
      ``img_size`` a positive multiple of it (an int, or a square ``(H, W)`` as timm passes it);
      ``embed_dim`` a multiple of 8 and of ``num_heads``.
    * ``global_pool`` "avg" (mean over tokens) or "" (the classifier on every token); ``drop_rate``
      the classifier's dropout.
    * forward raises TypeError (not a float tensor) or ValueError (rank, channels, size not
      ``img_size``) before any computation.
    """

    classifier_name = "head"
    token_features = True

    def __init__(self, *, depth: int, embed_dim: int, num_heads: int, patch_size: int = 16, img_size=224,
                 in_chans: int = 3, num_classes: int = 1000, mlp_ratio: float = 4.0, w_bits: int = 16,
                 s_bits: int = 1, t_steps: int = 4, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        check_model_args(w_bits, s_bits, t_steps, num_classes)
        img_size = _square_size(img_size)
        for name, value in (("depth", depth), ("embed_dim", embed_dim), ("num_heads", num_heads),
                            ("img_size", img_size), ("in_chans", in_chans)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Spikformer: {name} must be an int >= 1, got {value!r}")
        if patch_size not in (1, 2, 4, 8, 16):
            raise ValueError(f"Spikformer: patch_size must be one of (1, 2, 4, 8, 16), got {patch_size!r}")
        if img_size % patch_size:
            raise ValueError(f"Spikformer: img_size {img_size} is not a multiple of patch_size {patch_size}")
        if embed_dim % 8 or embed_dim % num_heads:
            raise ValueError(f"Spikformer: embed_dim {embed_dim} must be a multiple of 8 and of num_heads {num_heads}")
        if not mlp_ratio > 0:
            raise ValueError(f"Spikformer: mlp_ratio must be > 0, got {mlp_ratio!r}")
        self.w_bits, self.s_bits, self.t_steps = w_bits, s_bits, t_steps
        self.depth, self.embed_dim, self.num_heads = depth, embed_dim, num_heads
        self.patch_size, self.img_size, self.in_chans = patch_size, img_size, in_chans
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = SpikingPatchSplitting(in_chans, embed_dim, patch_size, w_bits, s_bits)
        stream_max = 2 * ((1 << s_bits) - 1)
        blocks = []
        for _ in range(depth):
            blocks.append(SpikformerBlock(embed_dim, num_heads, mlp_ratio, w_bits, s_bits, stream_max,
                                          tokens=math.prod(self.grid_size)))
            stream_max = blocks[-1].out_max
        self.blocks = nn.ModuleList(blocks)
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self._init_head(embed_dim, num_classes, global_pool, drop_rate)
        self.apply(self._init_weights)

    def _make_classifier(self, num_classes: int) -> QuantLinear:
        head = QuantLinear(self.embed_dim, num_classes, w_bits=self.w_bits, s_bits=None)
        self._init_weights(head)
        return head

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):  # as the original: truncated normal, zero bias
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> the patch splitting's tokens ``[T, B, N, D]`` (the first stage runs once on an image)."""
        return self.patch_embed(self._frames(x), self.t_steps)

    def forward_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, C, H, W]`` or event frames ``[B, T, C, H, W]`` -> the last block's tokens ``[T, B, N, D]``."""
        return run_blocks(self.blocks, self._embed(x), self.grad_checkpointing)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's forward_intermediates over the blocks (:attr:`feature_info`; an int n: the last n,
        None: all): each block's tokens averaged over T, as ``[B, D, H', W']`` ("NCHW") or
        ``[B, N, D]`` ("NLC"); with the final tokens ``[B, N, D]`` (as :meth:`forward_features`)
        unless ``intermediates_only``. ``norm`` changes nothing (no final norm)."""
        self._check_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        x, intermediates = self._run_collecting(blocks, self._embed(x), take_indices, output_fmt, grid=self.grid_size)
        return intermediates if intermediates_only else (mean_over_time(x), intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last of ``indices`` and, with ``prune_head``, the classifier;
        returns the absolute indices kept."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"patch_size={self.patch_size}, img_size={self.img_size}, w_bits={self.w_bits}, "
                f"s_bits={self.s_bits}, t_steps={self.t_steps}")


def _square_size(img_size):
    """An int side from an int or a square (H, W) pair (timm passes the cfg's input size as a pair)."""
    if isinstance(img_size, (tuple, list)):
        if len(img_size) != 2 or img_size[0] != img_size[1]:
            raise ValueError(f"Spikformer: img_size must be an int or a square (H, W), got {img_size!r}")
        return img_size[0]
    return img_size


# --------------------------------------------------------------------------- timm registry

MODEL_ARGS = ("w_bits", "s_bits", "t_steps", "num_classes", "img_size", "in_chans", "global_pool", "drop_rate")
"""The keyword arguments a registered variant accepts (the architecture itself is fixed)."""

_TIMM_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args", "features_only",
              "out_indices", "feature_cls", "feature_cfg")
"""Passed by timm.create_model to the builder (not to the model)."""


def _cfg(name: str) -> dict:
    _, dim, _, patch, img, classes = VARIANTS[name]
    cifar = img == 32
    return qsnn_cfg(Spikformer, input_size=(3, img, img), fixed_input_size=True, num_classes=classes,
                    first_conv="patch_embed.stages.0.conv", classifier="head",
                    mean=CIFAR_MEAN if cifar else IMAGENET_DEFAULT_MEAN, std=CIFAR_STD if cifar else IMAGENET_DEFAULT_STD,
                    crop_pct=1.0 if cifar else 0.875,
                    paper_name="Spikformer: When Spiking Neural Network Meets Transformer")


default_cfgs = generate_default_cfgs({f"qsnn_{name}": _cfg(name) for name in VARIANTS})


def spikformer(variant: str, pretrained: bool = False, **kwargs) -> Spikformer:
    """Build a registered variant (``"spikformer_8_512"``, with or without the ``qsnn_`` prefix)
    through timm's builder (:func:`models.timm_support.build_qsnn`).

    ``kwargs``: any of :data:`MODEL_ARGS` (and timm's builder arguments); defaults: the paper's
    full-precision baseline w_bits=16, s_bits=1, t_steps=4, and the variant's dataset (CIFAR10 32x32
    or ImageNet 224x224). ValueError: unknown variant, ``pretrained=True`` without a weight file;
    TypeError: an argument that is not one of :data:`MODEL_ARGS`.
    """
    name = variant.removeprefix("qsnn_")
    if name not in VARIANTS:
        raise ValueError(f"unknown Spikformer variant {variant!r}; known: {', '.join(VARIANTS)}")
    unknown = sorted(set(kwargs) - set(MODEL_ARGS) - set(_TIMM_ARGS))
    if unknown:
        raise TypeError(f"qsnn_{name}: unexpected argument(s) {', '.join(unknown)}; accepted: {', '.join(MODEL_ARGS)}")
    depth, dim, heads, patch, _, _ = VARIANTS[name]
    return build_qsnn(Spikformer, f"qsnn_{name}", pretrained, feature_count=depth, depth=depth, embed_dim=dim,
                      num_heads=heads, patch_size=patch, **kwargs)


for _name in VARIANTS:
    register_entry_point(globals(), f"qsnn_{_name}",
                         f"Spikformer-{_name.split('_', 1)[1].replace('_', '-')} (see :func:`spikformer`).",
                         functools.partial(spikformer, _name))
del _name
