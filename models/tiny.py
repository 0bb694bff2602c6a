"""A tiny spiking CNN for small inputs (the 8x8 digits of ``qsnn train``'s embedded default).

Three 3x3 conv-BN-SN stages (16, 32, 64 channels; the second and third with stride 2), a spatial
mean and a QuantLinear head: about 24 k parameters, trained in a minute on a 2-core CPU. The stem
conv is the encoding layer (``in_bits=None``): on an image ``[B, C, H, W]`` it runs once and its
output is repeated over T (:func:`encode_direct`); on event frames ``[B, T, C, H, W]`` (T =
``t_steps``) it runs on frame t at step t. The other convs see S-bit spikes (``in_bits = s_bits``);
the head sees the spatial mean of spikes, a real value (``in_bits=None``).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from .layers import (MultiStepBatchNorm2d, QuantConv2d, QuantLinear, check_model_args, encode_input,
                     mean_over_time, spiking_neuron)

__all__ = ["SpikingCNNTiny", "qsnn_spiking_cnn_tiny"]


class SpikingCNNTiny(nn.Module):
    """conv(in_chans -> c) BN SN, conv(c -> 2c, /2) BN SN, conv(2c -> 4c, /2) BN SN, mean, fc.

    ``w_bits`` in 1, 2, 4, 8, 16, 32, ``s_bits`` in 1, 2, 4, 8, ``t_steps >= 1``, ``width`` (c) >= 1;
    ValueError otherwise. ``norm=False`` leaves out the batch norms (then a batch's output does not
    depend on the other samples in it: used to check data-parallel training exactly). forward: a float image ``[B, in_chans, H, W]`` or event frames
    ``[B, t_steps, in_chans, H, W]`` -> logits ``[B, num_classes]`` (mean over time).
    """

    def __init__(self, *, w_bits: int = 32, s_bits: int = 1, t_steps: int = 4, num_classes: int = 10,
                 in_chans: int = 1, width: int = 16, norm: bool = True, neuron_kw: dict | None = None):
        super().__init__()
        check_model_args(w_bits, s_bits, t_steps, num_classes)
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an int >= 1, got {width!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        neuron_kw = dict(neuron_kw or {})
        v_th = float(neuron_kw.get("v_th", 1.0))
        self.w_bits, self.s_bits, self.t_steps, self.num_classes = w_bits, s_bits, t_steps, num_classes
        self.in_chans = in_chans
        c = width
        bn = MultiStepBatchNorm2d if norm else (lambda ch: nn.Identity())
        self.conv1 = QuantConv2d(in_chans, c, 3, padding=1, bias=False, w_bits=w_bits)
        self.bn1, self.sn1 = bn(c), spiking_neuron(s_bits, **neuron_kw)
        self.conv2 = QuantConv2d(c, 2 * c, 3, stride=2, padding=1, bias=False, w_bits=w_bits, in_bits=s_bits,
                                 in_scale=v_th)
        self.bn2, self.sn2 = bn(2 * c), spiking_neuron(s_bits, **neuron_kw)
        self.conv3 = QuantConv2d(2 * c, 4 * c, 3, stride=2, padding=1, bias=False, w_bits=w_bits, in_bits=s_bits,
                                 in_scale=v_th)
        self.bn3, self.sn3 = bn(4 * c), spiking_neuron(s_bits, **neuron_kw)
        self.fc = QuantLinear(4 * c, num_classes, w_bits=w_bits, in_bits=None, in_scale=v_th)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = encode_input(x, lambda z: self.bn1(self.conv1(z)), self.t_steps, self.in_chans, type(self).__name__)
        x = self.sn1(x)
        x = self.sn2(self.bn2(self.conv2(x)))
        x = self.sn3(self.bn3(self.conv3(x)))
        return mean_over_time(self.fc(x.mean(dim=(3, 4))))


@register_model
def qsnn_spiking_cnn_tiny(pretrained=False, **kwargs) -> SpikingCNNTiny:
    """The tiny spiking CNN (10 classes, 1 input channel by default): the embedded default's model."""
    if pretrained:
        raise ValueError("qsnn models have no pretrained weights; use pretrained=False")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return SpikingCNNTiny(**kwargs)
