"""The ``qsnn_`` models under timm's model contract: their pretrained configs, the builder, the base
class of the architectures (classifier, pooling, features over time, checkpointing) and the fx leaves.

**Time.** Inside a model every activation is time-major, ``[T, B, ...]``. What leaves a model through
timm's API is its **mean over the T steps** (for spikes: the spike value ``level * v_th`` times the
firing rate), so that a spiking backbone looks like any other:

* ``forward_features(x)``: the last stage averaged over T: ``[B, C, H, W]`` (SEW-ResNet, the tiny
  CNN) or tokens ``[B, N, D]`` (Spikformer). ``forward_per_step(x)``: the same before the average.
* ``forward_head(x, pre_logits=False)`` on that: the pooled features ``[B, num_features]``
  (``pre_logits``) or the classifier on them. ``forward(x)`` applies the classifier at every step
  and then averages (the paper's order, and what the profiler counts): the same logits up to float
  rounding, since the classifier is affine and its input real-valued.
* ``forward_intermediates`` and ``features_only=True`` (timm's ``FeatureGetterNet`` over it, the
  default feature class): each feature of ``feature_info`` averaged over T, in ``output_fmt``
  (``NCHW`` by default; ``NHWC``, ``NLC``, ``NCL`` too).
* fx graphs (``timm.models.create_feature_extractor``, ``features_only=True, feature_cls="fx"``)
  return what the modules compute: time-major ``[T, B, ...]``; ``.mean(0)`` gives the above. The
  layers that branch on their input (quantized conv/linear, batch norms, the LIF neuron, the spike
  product) are leaf modules, the input checks leaf functions (registered below with timm's helpers).

**W/S/T.** ``w_bits``, ``s_bits``, ``t_steps`` are keyword arguments of every architecture; its
defaults (the constructor's: the original paper's full-precision row) are in its cfg's ``notes``
(:func:`cfg_wst`), the values a model was built with are its attributes and its ``_model_args``
(what timm writes as ``model_args`` of an exported config.json and rebuilds from).

**Weights.** ``pretrained=True`` needs a file: ``pretrained_cfg_overlay=dict(file=PATH)`` (a ``qsnn
train`` checkpoint, a safetensors file, an exported folder; read and checked by
:func:`models.weights.load_weights` through the model's ``load_pretrained``), or
``timm.create_model("local-dir:DIR", pretrained=True)`` on a folder written by ``qsnn export``;
without one it is a ValueError (no weights are published).

**Weight decay.** The models define no ``no_weight_decay``: their only parameters are conv/linear
weights, biases and batch-norm affines, and timm's optimizer factory already leaves the 1-d ones
(biases, batch norms) out of weight decay.
"""

from __future__ import annotations

import inspect

import torch
from timm.layers import Format, nchw_to, register_notrace_function, register_notrace_module
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq, register_model, resolve_pretrained_cfg
from torch import nn

from ..lif import MultiLevelLIF
from .layers import (MultiStepBatchNorm1d, MultiStepBatchNorm2d, QuantConv2d, QuantLinear, SpikeMatmul,
                     SpikeMaxPool2d, input_frames, mean_over_time, repeat_frame)

__all__ = ["WST_KEYS", "LICENSE", "GLOBAL_POOLS", "qsnn_cfg", "cfg_wst", "constructor_wst", "build_qsnn",
           "SpikingTimmModel", "check_wst_match", "register_entry_point", "run_blocks",
           "run_checkpointed"]

WST_KEYS = ("w_bits", "s_bits", "t_steps")
LICENSE = "apache-2.0"
GLOBAL_POOLS = ("avg", "")
"""``global_pool`` values: ``"avg"`` (mean over positions or tokens) or ``""`` (none)."""

_WST_NOTE = "default W/S/T: "

for _leaf in (QuantConv2d, QuantLinear, MultiStepBatchNorm2d, MultiStepBatchNorm1d, MultiLevelLIF, SpikeMatmul,
              SpikeMaxPool2d):
    register_notrace_module(_leaf)
for _fn in (input_frames, repeat_frame):
    register_notrace_function(_fn)


# --------------------------------------------------------------------------- configs


def constructor_wst(model_cls) -> tuple[int, int, int]:
    """The W/S/T defaults of an architecture's constructor."""
    params = inspect.signature(model_cls).parameters
    return tuple(params[k].default for k in WST_KEYS)


def qsnn_cfg(model_cls, *, input_size, num_classes, first_conv, classifier, mean, std, crop_pct=1.0,
             interpolation="bilinear", paper_name=None, **kwargs) -> dict:
    """A pretrained cfg (the dict :func:`timm.models.generate_default_cfgs` takes) of a ``qsnn_``
    model: data settings, layer names, license, and the architecture's W/S/T defaults in ``notes``.
    No weight source: none is published."""
    w, s, t = constructor_wst(model_cls)
    return dict(input_size=tuple(input_size), num_classes=num_classes, first_conv=first_conv,
                classifier=classifier, mean=tuple(mean), std=tuple(std), crop_pct=crop_pct,
                interpolation=interpolation, license=LICENSE, paper_name=paper_name,
                notes=(f"{_WST_NOTE}{w}/{s}/{t}",), **kwargs)


def cfg_wst(pretrained_cfg) -> tuple[int, int, int]:
    """The default (w_bits, s_bits, t_steps) recorded in a ``qsnn_`` cfg (a dict or PretrainedCfg)."""
    notes = pretrained_cfg["notes"] if isinstance(pretrained_cfg, dict) else pretrained_cfg.notes
    note = next(n for n in notes if n.startswith(_WST_NOTE))
    return tuple(int(v) for v in note[len(_WST_NOTE):].split("/"))


# --------------------------------------------------------------------------- building


def check_wst_match(what: str, source: dict, architecture: str, wst: tuple, requested_arch: str) -> None:
    """ValueError naming both when weights (``source``: architecture and W/S/T) are not those of
    the model asked for (``requested_arch`` at ``wst``). ``what`` names the weights."""
    src_wst = tuple(source.get(k) for k in WST_KEYS)
    if architecture != requested_arch or src_wst != tuple(wst):
        have = f"{architecture} at W/S/T {'/'.join(map(str, src_wst))}"
        want = f"{requested_arch} at W/S/T {'/'.join(map(str, wst))}"
        raise ValueError(f"{what} holds weights of {have}, not of the model asked for, {want}; build the model "
                         f"with the checkpoint's architecture and w_bits/s_bits/t_steps")


def build_qsnn(model_cls, variant: str, pretrained: bool = False, *, feature_count: int, **kwargs):
    """``timm.models.build_model_with_cfg`` for a ``qsnn_`` model (see the module docstring).

    Beyond timm's: ``features_only=True`` uses timm's ``FeatureGetterNet`` (forward_intermediates)
    unless ``feature_cls`` says otherwise, and returns all ``feature_count`` features of
    ``feature_info`` unless ``out_indices`` says otherwise; ``pretrained=True`` without a weight file, or with an
    exported folder (``local-dir:``) of another W/S/T than the one asked for, is a ValueError
    before anything is built; weight files are read by the model's ``load_pretrained``
    (:func:`models.weights.load_weights`); the W/S/T built are recorded in ``model._model_args``."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    defaults = dict(zip(WST_KEYS, constructor_wst(model_cls)))
    wst = tuple(kwargs.get(k, defaults[k]) for k in WST_KEYS)
    if pretrained and cfg.source == "local-dir":
        source = dict(defaults, **(kwargs.get("pretrained_model_args") or {}))
        check_wst_match(f"local-dir:{cfg.file}", source, variant, wst, variant)
    elif pretrained and not (cfg.file or cfg.state_dict):
        raise ValueError(f"{variant}: no pretrained weights are published; give a file with "
                         f"pretrained_cfg_overlay=dict(file=PATH) (a qsnn train checkpoint, a .safetensors file "
                         f"or a folder written by `qsnn export`), or use pretrained=False")
    if cfg.source != "local-dir":  # our files are read, verified and checked by model.load_pretrained
        kwargs["pretrained_cfg_overlay"] = dict(kwargs.get("pretrained_cfg_overlay") or {}, custom_load=True)
    feature_cfg = dict(feature_cls="getter", out_indices=tuple(range(feature_count)))
    feature_cfg.update(kwargs.pop("feature_cfg", None) or {})
    model = build_model_with_cfg(model_cls, variant, pretrained, feature_cfg=feature_cfg, **kwargs)
    model._model_args = dict(getattr(model, "_model_args", {}), **dict(zip(WST_KEYS, wst)))
    return model


def register_entry_point(namespace: dict, name: str, description: str, build) -> None:
    """Register with timm the entry point ``name(pretrained=False, **kwargs)``, which returns
    ``build(pretrained, **kwargs)``, as a function ``name`` (docstring ``description``) of the module
    whose globals are ``namespace`` (timm files a model under its entry point's module)."""
    def entry(pretrained: bool = False, **kwargs):
        return build(pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = namespace["__name__"]
    entry.__doc__ = description
    namespace[name] = entry
    register_model(entry)


def run_blocks(blocks, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """``blocks`` (an nn.Sequential or a list of modules) in order on ``x``; with ``checkpointed``
    each block's activations are recomputed in the backward instead of being kept (timm's
    ``checkpoint_seq``: one segment per block)."""
    if checkpointed and not torch.jit.is_scripting():
        return checkpoint_seq(blocks, x)
    for block in blocks:
        x = block(x)
    return x


def run_checkpointed(fn, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    """``fn(x)``, checkpointed (timm's ``checkpoint``) when asked."""
    if checkpointed and not torch.jit.is_scripting():
        return checkpoint(fn, x)
    return fn(x)


# --------------------------------------------------------------------------- the base class


class SpikingTimmModel(nn.Module):
    """timm's classification/feature API for a time-major spiking model (module docstring).

    A subclass sets ``classifier_name`` (its head's attribute), ``token_features`` (True: features
    are tokens ``[.., N, D]``; False: maps ``[.., C, H, W]``), calls :meth:`_init_head` in its
    constructor and defines ``forward_per_step`` (input -> time-major last stage),
    ``_make_classifier(num_classes)``, ``forward_intermediates`` and ``prune_intermediate_layers``.
    """

    classifier_name = "fc"
    token_features = False

    def _init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float) -> None:
        """num_features, head_hidden_size, pooling, classifier dropout and the classifier."""
        self.num_features = self.head_hidden_size = num_features
        self.grad_checkpointing = False
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
            raise ValueError(f"drop_rate must be a number in [0, 1), got {drop_rate!r}")
        self.drop_rate = float(drop_rate)
        self.head_drop = nn.Dropout(self.drop_rate) if self.drop_rate else nn.Identity()
        self.reset_classifier(num_classes, global_pool)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none, the model returns pooled features) with the
        model's ``w_bits``, and ``global_pool`` ("avg" or "": no pooling; None keeps the current).
        ValueError for another pool, a negative count, or ``""`` with a classifier on feature maps."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
        pool = getattr(self, "global_pool", "avg") if global_pool is None else global_pool
        if pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        if pool == "" and num_classes > 0 and not self.token_features:
            raise ValueError(f"{type(self).__name__}: global_pool='' (no pooling) needs num_classes=0: "
                             f"the classifier takes pooled features")
        self.num_classes, self.global_pool = num_classes, pool
        setattr(self, self.classifier_name, self._make_classifier(num_classes) if num_classes > 0 else nn.Identity())

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them (the same
        outputs and gradients; as with any torch checkpoint, a batch norm in training mode updates
        its running statistics again when its block is recomputed)."""
        self.grad_checkpointing = enable

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """The input checked, as the encoding layer takes it (:func:`models.layers.input_frames`).
        Called here, not in the architectures' modules: fx patches a leaf function where the traced
        forward was defined, and every model's forward is this class's."""
        return input_frames(x, self.t_steps, self.in_chans, type(self).__name__, getattr(self, "img_size", None))

    def _encode(self, x: torch.Tensor, stem) -> torch.Tensor:
        """The encoding layer ``stem`` on the input, over time ``[T, B, ...]``: once on an image
        (repeated: direct encoding), at every step on event frames."""
        return repeat_frame(stem(self._frames(x)), self.t_steps)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over positions ``[.., C, H, W] -> [.., C]`` or tokens ``[.., N, D] -> [.., D]``."""
        if not self.global_pool:
            return x
        return x.mean(dim=-2) if self.token_features else x.mean(dim=(-2, -1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> the last stage averaged over T (module docstring)."""
        return mean_over_time(self.forward_per_step(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """:meth:`forward_features`' output -> pooled features (``pre_logits``) or logits."""
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> logits ``[B, num_classes]``: the classifier at every step, then the mean over T."""
        x = self.head_drop(self._pool(self.forward_per_step(x)))
        return mean_over_time(self.get_classifier()(x))

    def _run_collecting(self, stages, x: torch.Tensor, take_indices, output_fmt, *, first_index: int = 0,
                        run=run_checkpointed, grid=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``stages`` in order on ``x``, each as ``run(stage, x, self.grad_checkpointing)``
        (:func:`run_checkpointed` or :func:`run_blocks`); returns the last output and, in order,
        the features (:meth:`_intermediate`) of the stages whose index (counted from
        ``first_index``) is in ``take_indices``: the loop of every ``forward_intermediates``."""
        intermediates = []
        for i, stage in enumerate(stages, start=first_index):
            x = run(stage, x, self.grad_checkpointing)
            if i in take_indices:
                intermediates.append(self._intermediate(x, output_fmt, grid))
        return x, intermediates

    def _intermediate(self, x: torch.Tensor, output_fmt, grid=None) -> torch.Tensor:
        """A time-major feature ``[T, B, C, H, W]`` (or tokens ``[T, B, N, D]`` on a ``grid``) averaged
        over T, in ``output_fmt``."""
        x = mean_over_time(x)
        if self.token_features:
            x = x.transpose(1, 2).unflatten(2, grid)  # [B, D, H', W']
        return nchw_to(x, Format(output_fmt))

    @staticmethod
    def _check_fmt(output_fmt) -> None:
        try:
            Format(output_fmt)
        except ValueError:
            raise ValueError(f"output_fmt must be one of {[f.value for f in Format]}, got {output_fmt!r}") from None

    @torch.jit.ignore
    def load_pretrained(self, path: str) -> None:
        """Load weights from ``path`` (timm calls this for ``pretrained=True``):
        :func:`models.weights.load_weights`."""
        from .weights import load_weights

        load_weights(self, path)
