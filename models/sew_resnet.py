"""SEW-ResNet (Fang et al., "Deep Residual Learning in Spiking Neural Networks", NeurIPS 2021),
quantized: W-bit weights, S-bit multi-level spikes, T time steps.

Architecture (the paper's, on torchvision's ResNet layout): every conv is followed by batch norm
and a spiking neuron (:func:`models.layers.spiking_neuron`); a block computes ``S = SN(BN(conv(...)))``
along its residual path, ``A`` is its input (or ``SN(BN(conv1x1(input)))`` when it downsamples), and
its output is ``g(A, S)``, the spike-element-wise connect function:

* ``"ADD"``  g = A + S.
* ``"AND"``  g = A AND S (binary: A * S; S > 1: min(A, S)).
* ``"IAND"`` g = (NOT A) AND S (binary: (1 - A) * S; S > 1: min(L - A, S), the min/complement
  lattice form that reduces to the paper's for S = 1).

(values: A, S are levels times v_th; L = 2^S - 1 the top level.)

Block outputs restricted to the chosen spike bits: with ``clamp_add=True`` (default) the ADD
output is clamped to the top level, ``min(A + S, L * v_th)``, so that every conv after the stem
takes S-bit spikes (its ``s_bits`` is the model's); the clamp passes gradients straight through
(the identity path of SEW keeps its unit gradient). With ``clamp_add=False`` the paper's unbounded
sum is kept and the next convs' ``s_bits`` is the smallest spike width (1, 2, 4, 8) holding the
largest possible level, or None (treated as real-valued) beyond 8 bits. AND/IAND never leave ``[0, L]``.

Stems: ``"imagenet"`` 7x7/2 conv, BN, neuron, 3x3/2 max pool; ``"cifar"`` 3x3/1 conv, BN, neuron, no
pool. The stem conv is the encoding layer (``s_bits=None``): it runs once on the real-valued image
and its batch-normed output is repeated over T before the first neuron (direct encoding). The head
averages each step's feature map (so the fc input is real-valued, ``s_bits=None``), applies the fc
per step and returns the mean over T: ``[B, C, H, W] -> [B, num_classes]``.

timm's model contract (features averaged over T, classifier, intermediates, checkpointing, weights):
:mod:`models.timm_support`. Features (``feature_info``): the stem's neuron ``sn1`` (64 channels,
before the max pool) and the four stages ``layer1`` .. ``layer4``.
"""

from __future__ import annotations

import functools

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices
from torch import nn

from ..data.images import CIFAR_MEAN, CIFAR_STD
from ..deprecation import NOT_GIVEN, renamed_keyword
from .layers import (MultiStepBatchNorm2d, QuantConv2d, QuantLinear, SpikeMaxPool2d, batch_norm_spikes,
                     batch_norm_spikes_for, bits_for_levels, check_model_args, feed, mean_over_time, spiking_neuron)
from .timm_support import SpikingTimmModel, build_qsnn, qsnn_cfg, register_entry_point, run_blocks

__all__ = ["SEWResNet", "BasicBlock", "Bottleneck", "CONNECT_FUNCTIONS", "VARIANTS", "sew_connect"]

CONNECT_FUNCTIONS = ("ADD", "AND", "IAND")


class _ClampedAdd(torch.autograd.Function):
    """``min(a + s, top)`` with the gradient of ``a + s`` (straight through the clamp): two passes
    over the output (the sum, the clamp in place) where the detach form takes four."""

    @staticmethod
    def forward(ctx, a, s, top: float):
        ctx.shapes = (a.shape, s.shape)
        return (a + s).clamp_(max=top)

    @staticmethod
    def backward(ctx, grad):
        return grad.sum_to_size(ctx.shapes[0]), grad.sum_to_size(ctx.shapes[1]), None


def sew_connect(a: torch.Tensor, s: torch.Tensor, connect_f: str, top: float, binary: bool, clamp: bool):
    """g(A, S) of the module docstring; ``top = L * v_th`` (the largest spike value)."""
    if connect_f == "ADD":
        if not clamp:
            return a + s
        if isinstance(a, torch.fx.Proxy) or isinstance(s, torch.fx.Proxy):  # an fx trace: plain ops
            out = a + s
            return out - (out - top).clamp(min=0).detach()
        return _ClampedAdd.apply(a, s, top)
    if connect_f == "AND":
        return a * s / top if binary else torch.minimum(a, s)
    return (top - a) * s / top if binary else torch.minimum(top - a, s)


class _Block(nn.Module):
    """Shared by both block types: the downsample path and the connect function."""

    def _init_common(self, inplanes, planes_out, stride, w_bits, s_bits, in_s_bits, connect_f, clamp_add, neuron_kw):
        self.connect_f, self.clamp_add = connect_f, clamp_add
        self.v_th = float(neuron_kw.get("v_th", 1.0))
        self.top_level = (1 << s_bits) - 1
        self.binary = s_bits == 1
        if stride != 1 or inplanes != planes_out:
            self.downsample = nn.Sequential(
                _conv(inplanes, planes_out, 1, stride, 0, w_bits, in_s_bits, self.v_th),
                MultiStepBatchNorm2d(planes_out), spiking_neuron(s_bits, **neuron_kw))
        else:
            self.downsample = None

    def _out_levels(self, in_levels: int) -> int:
        identity_levels = self.top_level if self.downsample is not None else in_levels
        if self.connect_f == "ADD" and not self.clamp_add:
            return identity_levels + self.top_level
        return self.top_level

    def _connect(self, x, out):
        if self.downsample is None:
            identity = x
        else:
            conv, bn, neuron = self.downsample
            identity = batch_norm_spikes(bn, neuron, conv(x))
        return sew_connect(identity, out, self.connect_f, self.top_level * self.v_th, self.binary, self.clamp_add)


def _conv(cin, cout, k, stride, padding, w_bits, s_bits, v_th):
    return QuantConv2d(cin, cout, k, stride=stride, padding=padding, bias=False, w_bits=w_bits, s_bits=s_bits,
                       in_scale=v_th)


class BasicBlock(_Block):
    """3x3 conv-BN-SN, 3x3 conv-BN-SN, g(A, S). ``s_bits``: the spike width of the block's neurons;
    ``in_s_bits``: that of its input (``in_bits``: its deprecated name)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride, *, w_bits, s_bits, in_s_bits=NOT_GIVEN, connect_f, clamp_add,
                 neuron_kw, in_bits=NOT_GIVEN):
        super().__init__()
        in_s_bits = renamed_keyword(type(self).__name__, "in_s_bits", in_s_bits, "in_bits", in_bits)
        self._init_common(inplanes, planes, stride, w_bits, s_bits, in_s_bits, connect_f, clamp_add, neuron_kw)
        self.conv1 = _conv(inplanes, planes, 3, stride, 1, w_bits, in_s_bits, self.v_th)
        self.bn1, self.sn1 = MultiStepBatchNorm2d(planes), spiking_neuron(s_bits, **neuron_kw)
        self.conv2 = _conv(planes, planes, 3, 1, 1, w_bits, s_bits, self.v_th)
        self.bn2, self.sn2 = MultiStepBatchNorm2d(planes), spiking_neuron(s_bits, **neuron_kw)

    def forward(self, x):
        out, levels = batch_norm_spikes_for(self.conv2, self.bn1, self.sn1, self.conv1(x))
        out = batch_norm_spikes(self.bn2, self.sn2, feed(self.conv2, out, levels))
        return self._connect(x, out)


class Bottleneck(_Block):
    """1x1, 3x3 (stride), 1x1 (x4 channels) conv-BN-SN, then g(A, S). Widths as in :class:`BasicBlock`."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, *, w_bits, s_bits, in_s_bits=NOT_GIVEN, connect_f, clamp_add,
                 neuron_kw, in_bits=NOT_GIVEN):
        super().__init__()
        in_s_bits = renamed_keyword(type(self).__name__, "in_s_bits", in_s_bits, "in_bits", in_bits)
        self._init_common(inplanes, planes * 4, stride, w_bits, s_bits, in_s_bits, connect_f, clamp_add, neuron_kw)
        self.conv1 = _conv(inplanes, planes, 1, 1, 0, w_bits, in_s_bits, self.v_th)
        self.bn1, self.sn1 = MultiStepBatchNorm2d(planes), spiking_neuron(s_bits, **neuron_kw)
        self.conv2 = _conv(planes, planes, 3, stride, 1, w_bits, s_bits, self.v_th)
        self.bn2, self.sn2 = MultiStepBatchNorm2d(planes), spiking_neuron(s_bits, **neuron_kw)
        self.conv3 = _conv(planes, planes * 4, 1, 1, 0, w_bits, s_bits, self.v_th)
        self.bn3, self.sn3 = MultiStepBatchNorm2d(planes * 4), spiking_neuron(s_bits, **neuron_kw)

    def forward(self, x):
        out, levels = batch_norm_spikes_for(self.conv2, self.bn1, self.sn1, self.conv1(x))
        out, levels = batch_norm_spikes_for(self.conv3, self.bn2, self.sn2, feed(self.conv2, out, levels))
        out = batch_norm_spikes(self.bn3, self.sn3, feed(self.conv3, out, levels))
        return self._connect(x, out)


class SEWResNet(SpikingTimmModel):
    """SEW-ResNet with W-bit weights, S-bit spikes and T steps (module docstring).

    ``block``: :class:`BasicBlock` or :class:`Bottleneck`; ``layers``: blocks per stage (18: 2,2,2,2;
    34: 3,4,6,3; 50: 3,4,6,3 with Bottleneck). ``w_bits`` in 1, 2, 4, 8, 16, 32 (16/32: float
    weights), ``s_bits`` in 1, 2, 4, 8, ``t_steps >= 1``, ``num_classes >= 0`` (0: no classifier),
    ``connect_f`` in :data:`CONNECT_FUNCTIONS`, ``stem`` "imagenet" or "cifar", ``global_pool`` "avg"
    or "" (with num_classes 0), ``drop_rate`` the classifier's dropout; ``neuron_kw`` overrides
    :func:`spiking_neuron`'s defaults. ValueError on any bad argument; ``forward`` raises
    TypeError/ValueError on an input that is not a float ``[B, in_chans, H, W]`` image or
    ``[B, t_steps, in_chans, H, W]`` event frames.
    """

    def __init__(self, block, layers, *, w_bits: int = 32, s_bits: int = 1, t_steps: int = 4,
                 num_classes: int = 1000, connect_f: str = "ADD", stem: str = "imagenet", in_chans: int = 3,
                 clamp_add: bool = True, neuron_kw: dict | None = None, global_pool: str = "avg",
                 drop_rate: float = 0.0):
        super().__init__()
        check_model_args(w_bits, s_bits, t_steps, num_classes)
        if connect_f not in CONNECT_FUNCTIONS:
            raise ValueError(f"connect_f must be one of {CONNECT_FUNCTIONS}, got {connect_f!r}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if block not in (BasicBlock, Bottleneck) or len(layers) != 4 or any(n < 1 for n in layers):
            raise ValueError("SEWResNet: block must be BasicBlock or Bottleneck and layers four counts >= 1")
        neuron_kw = dict(neuron_kw or {})
        self.w_bits, self.s_bits, self.t_steps = w_bits, s_bits, t_steps
        self.connect_f, self.stem, self.in_chans, self.clamp_add = connect_f, stem, in_chans, clamp_add
        self.v_th = float(neuron_kw.get("v_th", 1.0))
        if stem == "imagenet":
            self.conv1 = QuantConv2d(in_chans, 64, 7, stride=2, padding=3, bias=False, w_bits=w_bits)
            self.maxpool = SpikeMaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = QuantConv2d(in_chans, 64, 3, stride=1, padding=1, bias=False, w_bits=w_bits)
            self.maxpool = nn.Identity()
        self.bn1, self.sn1 = MultiStepBatchNorm2d(64), spiking_neuron(s_bits, **neuron_kw)
        self._inplanes, self._levels = 64, (1 << s_bits) - 1
        common = dict(w_bits=w_bits, s_bits=s_bits, connect_f=connect_f, clamp_add=clamp_add, neuron_kw=neuron_kw)
        self.layer1 = self._make_layer(block, 64, layers[0], 1, common)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, common)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, common)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, common)
        self.out_levels = self._levels
        del self._inplanes, self._levels
        stem_stride, pool_stride = (2, 2) if stem == "imagenet" else (1, 1)
        self.feature_info = [dict(num_chs=64, reduction=stem_stride, module="sn1")] + [
            dict(num_chs=planes * block.expansion, reduction=stem_stride * pool_stride * 2 ** i, module=f"layer{i + 1}")
            for i, planes in enumerate((64, 128, 256, 512))]
        self._init_head(512 * block.expansion, num_classes, global_pool, drop_rate)
        for m in self.modules():
            if isinstance(m, QuantConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_classifier(self, num_classes: int) -> QuantLinear:
        return QuantLinear(self.num_features, num_classes, w_bits=self.w_bits, s_bits=None, in_scale=self.v_th)

    def _make_layer(self, block, planes, blocks, stride, common):
        stage = []
        for i in range(blocks):
            b = block(self._inplanes, planes, stride if i == 0 else 1, in_s_bits=bits_for_levels(self._levels),
                      **common)
            self._levels = b._out_levels(self._levels)
            self._inplanes = planes * block.expansion
            stage.append(b)
        return nn.Sequential(*stage)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> the stem neuron's spikes ``[T, B, 64, H', W']`` (before the max pool)."""
        return self.sn1(self._encode(x, lambda z: self.bn1(self.conv1(z))))

    def _pool_steps(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def _stages(self) -> tuple:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def forward_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, C, H, W]`` or event frames ``[B, T, C, H, W]`` -> the last stage's block outputs
        ``[T, B, C', H', W']``."""
        x = self._pool_steps(self._stem(x))
        for stage in self._stages():
            x = run_blocks(stage, x, self.grad_checkpointing)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's forward_intermediates: features ``indices`` of :attr:`feature_info` (0: the stem
        neuron, 1-4: the stages; an int n: the last n; None: all), each averaged over T in
        ``output_fmt``; with the final features (as :meth:`forward_features`) unless
        ``intermediates_only``. ``norm`` is accepted and changes nothing (no final norm)."""
        self._check_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self._stem(x)
        intermediates = [self._intermediate(x, output_fmt)] if 0 in take_indices else []
        stages = self._stages()[:max_index] if stop_early else self._stages()
        x, later = self._run_collecting(stages, self._pool_steps(x), take_indices, output_fmt, first_index=1,
                                        run=run_blocks)
        intermediates += later
        return intermediates if intermediates_only else (mean_over_time(x), intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last feature of ``indices`` (and the classifier when
        ``prune_head``, or when the features no longer end at the last stage); returns the absolute
        indices kept."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        for i in range(max_index + 1, len(self.feature_info)):
            setattr(self, f"layer{i}", nn.Sequential())
        if max_index == 0:
            self.maxpool = nn.Identity()
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        return take_indices


# --------------------------------------------------------------------------- timm registry


def _cfg(stem: str, **kwargs) -> dict:
    if stem == "cifar":
        data = dict(input_size=(3, 32, 32), pool_size=(4, 4), num_classes=10, mean=CIFAR_MEAN, std=CIFAR_STD,
                    crop_pct=1.0)
    else:
        data = dict(input_size=(3, 224, 224), pool_size=(7, 7), num_classes=1000, mean=IMAGENET_DEFAULT_MEAN,
                    std=IMAGENET_DEFAULT_STD, crop_pct=0.875)
    return qsnn_cfg(SEWResNet, first_conv="conv1", classifier="fc",
                    paper_name="Deep Residual Learning in Spiking Neural Networks", **data, **kwargs)


VARIANTS = {
    # name: (block, blocks per stage, stem, description)
    "sew_resnet18": (BasicBlock, (2, 2, 2, 2), "imagenet", "SEW-ResNet-18, ImageNet stem (1000 classes by default)."),
    "sew_resnet34": (BasicBlock, (3, 4, 6, 3), "imagenet",
                     "SEW-ResNet-34, ImageNet stem (about 21.79 M parameters at 1000 classes)."),
    "sew_resnet50": (Bottleneck, (3, 4, 6, 3), "imagenet", "SEW-ResNet-50 (Bottleneck), ImageNet stem."),
    "sew_resnet18_cifar": (BasicBlock, (2, 2, 2, 2), "cifar",
                           "SEW-ResNet-18, CIFAR stem (3x3 conv, no max pool; 10 classes by default)."),
    "sew_resnet34_cifar": (BasicBlock, (3, 4, 6, 3), "cifar", "SEW-ResNet-34, CIFAR stem (10 classes by default)."),
}
"""The registered variants ``qsnn_<name>`` (the timm entry points' docstrings are the descriptions)."""

default_cfgs = generate_default_cfgs({f"qsnn_{name}": _cfg(stem) for name, (_, _, stem, _) in VARIANTS.items()})


def _build(variant: str, block, layers, stem: str, pretrained: bool = False, **kwargs) -> SEWResNet:
    return build_qsnn(SEWResNet, variant, pretrained, feature_count=5, block=block, layers=layers, stem=stem,
                      **kwargs)


for _name, (_block, _layers, _stem, _description) in VARIANTS.items():
    register_entry_point(globals(), f"qsnn_{_name}", _description,
                         functools.partial(_build, f"qsnn_{_name}", _block, _layers, _stem))
del _name, _block, _layers, _stem, _description
