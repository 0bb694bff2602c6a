"""A tiny spiking CNN for small inputs (the 8x8 digits of ``qsnn train``'s embedded default).

Three 3x3 conv-BN-SN stages (16, 32, 64 channels; the second and third with stride 2), a spatial
mean and a QuantLinear head: about 24 k parameters at the default width. The stem conv is the
encoding layer (``s_bits=None``): on an image ``[B, C, H, W]`` it runs once and its output is
repeated over T (:func:`encode_direct`); on event frames ``[B, T, C, H, W]`` (T = ``t_steps``) it
runs on frame t at step t. The other convs take S-bit spikes (their ``s_bits`` is the model's); the
head sees the spatial mean of spikes, a real value (``s_bits=None``).

timm's model contract (features averaged over T, classifier, intermediates, checkpointing, weights):
:mod:`models.timm_support`. Features (``feature_info``): the three neurons ``sn1``, ``sn2``, ``sn3``.
"""

from __future__ import annotations

import torch
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from .layers import (MultiStepBatchNorm2d, QuantConv2d, QuantLinear, check_model_args, mean_over_time,
                     spiking_neuron)
from .timm_support import SpikingTimmModel, build_qsnn, qsnn_cfg, run_checkpointed

__all__ = ["SpikingCNNTiny", "qsnn_spiking_cnn_tiny"]


class SpikingCNNTiny(SpikingTimmModel):
    """conv(in_chans -> c) BN SN, conv(c -> 2c, /2) BN SN, conv(2c -> 4c, /2) BN SN, mean, fc.

    ``w_bits`` in 1, 2, 4, 8, 16, 32, ``s_bits`` in 1, 2, 4, 8, ``t_steps >= 1``, ``width`` (c) >= 1,
    ``num_classes >= 0`` (0: no classifier), ``global_pool`` "avg" or "" (with num_classes 0),
    ``drop_rate`` the classifier's dropout; ValueError otherwise. ``norm=False`` leaves out the batch
    norms (then a batch's output does not depend on the other samples in it: used to check
    data-parallel training exactly). forward: a float image ``[B, in_chans, H, W]`` or event frames
    ``[B, t_steps, in_chans, H, W]`` -> logits ``[B, num_classes]`` (mean over time).
    """

    def __init__(self, *, w_bits: int = 32, s_bits: int = 1, t_steps: int = 4, num_classes: int = 10,
                 in_chans: int = 1, width: int = 16, norm: bool = True, neuron_kw: dict | None = None,
                 global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        check_model_args(w_bits, s_bits, t_steps, num_classes)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an int >= 1, got {width!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        neuron_kw = dict(neuron_kw or {})
        self.v_th = float(neuron_kw.get("v_th", 1.0))
        self.w_bits, self.s_bits, self.t_steps = w_bits, s_bits, t_steps
        self.in_chans, self.width, self.norm = in_chans, width, bool(norm)
        c = width
        bn = MultiStepBatchNorm2d if norm else (lambda ch: nn.Identity())
        self.conv1 = QuantConv2d(in_chans, c, 3, padding=1, bias=False, w_bits=w_bits)
        self.bn1, self.sn1 = bn(c), spiking_neuron(s_bits, **neuron_kw)
        self.conv2 = QuantConv2d(c, 2 * c, 3, stride=2, padding=1, bias=False, w_bits=w_bits, s_bits=s_bits,
                                 in_scale=self.v_th)
        self.bn2, self.sn2 = bn(2 * c), spiking_neuron(s_bits, **neuron_kw)
        self.conv3 = QuantConv2d(2 * c, 4 * c, 3, stride=2, padding=1, bias=False, w_bits=w_bits, s_bits=s_bits,
                                 in_scale=self.v_th)
        self.bn3, self.sn3 = bn(4 * c), spiking_neuron(s_bits, **neuron_kw)
        self.feature_info = [dict(num_chs=c * 2 ** i, reduction=2 ** i, module=f"sn{i + 1}") for i in range(3)]
        self._init_head(4 * c, num_classes, global_pool, drop_rate)

    def _make_classifier(self, num_classes: int) -> QuantLinear:
        return QuantLinear(self.num_features, num_classes, w_bits=self.w_bits, s_bits=None, in_scale=self.v_th)

    def _stage1(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn1(self._encode(x, lambda z: self.bn1(self.conv1(z))))

    def _stage2(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn2(self.bn2(self.conv2(x)))

    def _stage3(self, x: torch.Tensor) -> torch.Tensor:
        return self.sn3(self.bn3(self.conv3(x)))

    def _stages(self) -> tuple:
        return self._stage1, self._stage2, self._stage3

    def forward_per_step(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``[B, C, H, W]`` or event frames ``[B, T, C, H, W]`` -> ``sn3``'s spikes ``[T, B, 4c, H', W']``."""
        for stage in self._stages():
            x = run_checkpointed(stage, x, self.grad_checkpointing)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's forward_intermediates over :attr:`feature_info` (``sn1``, ``sn2``, ``sn3``), each
        averaged over T in ``output_fmt``; with the final features unless ``intermediates_only``.
        ``norm`` changes nothing (no final norm)."""
        self._check_fmt(output_fmt)
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        stages = self._stages()[:max_index + 1] if stop_early else self._stages()
        x, intermediates = self._run_collecting(stages, x, take_indices, output_fmt)
        return intermediates if intermediates_only else (mean_over_time(x), intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Replace the stages after the last feature of ``indices`` by identities (and the classifier
        when ``prune_head`` or when features end earlier); returns the absolute indices kept."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        for i in range(max_index + 2, len(self.feature_info) + 1):
            for name in (f"conv{i}", f"bn{i}", f"sn{i}"):
                setattr(self, name, nn.Identity())
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        return take_indices


default_cfgs = generate_default_cfgs({
    "qsnn_spiking_cnn_tiny": qsnn_cfg(SpikingCNNTiny, input_size=(1, 8, 8), pool_size=(2, 2), num_classes=10,
                                      first_conv="conv1", classifier="fc", mean=(0.0,), std=(1.0,),
                                      description="8x8 digits in [0, 1] (qsnn train's embedded default)"),
})


@register_model
def qsnn_spiking_cnn_tiny(pretrained=False, **kwargs) -> SpikingCNNTiny:
    """The tiny spiking CNN (10 classes, 1 input channel by default): the embedded default's model."""
    return build_qsnn(SpikingCNNTiny, "qsnn_spiking_cnn_tiny", pretrained, feature_count=3, **kwargs)
