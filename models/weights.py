"""Weights of the ``qsnn_`` models in files: reading them, loading them into a model after checking
that they are its weights, and exporting a training run as a timm / Hugging Face style folder.

Files :func:`read_weights` reads (no code in any of them runs):

* a ``qsnn train`` checkpoint (``last.pt``, ``best.pt``), read by
  :func:`qsnn_kernels.train.checkpoint.read_checkpoint` (``weights_only=True``, its sha256
  verified). Its weights are the EMA model's when the run kept one (the model the run evaluated and
  chose best.pt by), else the model's. It names its architecture, W/S/T, classes, input channels
  and model arguments.
* a ``.safetensors`` file; those :func:`export_run` writes hold the same facts in their metadata
  (key ``qsnn``, JSON).
* a folder written by :func:`export_run`: its ``model.safetensors``.
* any other torch file holding a state dict (``weights_only=True``; a ``state_dict`` or ``model``
  entry of a dict is taken): it names nothing, so only its keys and shapes are checked.

:func:`load_weights` (what ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=
dict(file=PATH))`` calls): weights of another architecture or another W/S/T than the model's are a
ValueError naming both (the shapes are the same at every W/S/T: nothing else would notice), as is
another value of a model argument the model keeps as an attribute (``width``, ``connect_f``, ...)
or a missing, extra or misshapen tensor. As timm's own loader does, a classifier for another number
of classes is left out (the model keeps its new one: fine-tuning) and a first conv for another
number of input channels is adapted (timm's ``adapt_input_conv``).

:func:`export_run` (``qsnn export RUN_DIR``): the run's best.pt (or last.pt) as ``model.safetensors``
(the weights, with the facts above as metadata) and ``config.json`` (timm's layout, as
``timm.models.save_config_for_hf`` writes it: ``architecture``, ``num_classes``, ``num_features``,
``model_args`` with W/S/T and the model arguments, ``pretrained_cfg``; plus ``qsnn``: the
checkpoint it came from, its sha256, epoch and W/S/T). Each file is written atomically
(:func:`qsnn_kernels.train.run_folder.write_atomic`), the weights first: a folder with a
config.json is complete. ``timm.create_model("local-dir:DIR", pretrained=True)`` loads it offline.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

import torch

from .timm_support import WST_KEYS, check_wst_match

__all__ = ["EXPORT_WEIGHTS", "EXPORT_CONFIG", "WeightsInfo", "read_weights", "load_weights", "export_run"]

EXPORT_WEIGHTS, EXPORT_CONFIG = "model.safetensors", "config.json"
_META_KEY = "qsnn"
_NOT_COMPARED = set(WST_KEYS) | {"num_classes", "in_chans", "img_size", "global_pool", "drop_rate"}
"""Model arguments not compared attribute by attribute: W/S/T are checked together, classes and
input channels are adapted, and the others do not change which weights fit."""


@dataclass
class WeightsInfo:
    """What a weight file says about the model it holds (None: it does not say)."""

    architecture: str | None = None
    wst: tuple[int, int, int] | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    model_args: dict = field(default_factory=dict)
    sha256: str | None = None
    epoch: int | None = None

    def create_kwargs(self) -> dict:
        """Keyword arguments of ``timm.create_model(architecture, ...)`` rebuilding the model."""
        kw = dict(self.model_args)
        kw.update(zip(WST_KEYS, self.wst), num_classes=self.num_classes, in_chans=self.in_chans)
        return kw

    def to_metadata(self) -> dict:
        return dict(architecture=self.architecture, w_bits=self.wst[0], s_bits=self.wst[1], t_steps=self.wst[2],
                    num_classes=self.num_classes, in_chans=self.in_chans, model_args=self.model_args)


def _from_metadata(meta: dict | None) -> WeightsInfo:
    if not meta or _META_KEY not in meta:
        return WeightsInfo()
    d = json.loads(meta[_META_KEY])
    return WeightsInfo(d["architecture"], tuple(d[k] for k in WST_KEYS), d.get("num_classes"), d.get("in_chans"),
                       dict(d.get("model_args") or {}))


def _read_safetensors(path: str) -> tuple[dict, WeightsInfo]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata()
        return state, _from_metadata(meta)
    except Exception as e:  # noqa: BLE001 - a truncated, corrupted or foreign file
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {first})") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_weights(path: str) -> tuple[dict, WeightsInfo]:
    """``(state dict, WeightsInfo)`` of the weight file or exported folder ``path`` (module
    docstring). FileNotFoundError when there is none; ValueError when it is unreadable, corrupted
    or holds no state dict."""
    path = os.fspath(path)
    if os.path.isdir(path):
        file = os.path.join(path, EXPORT_WEIGHTS)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{path}: no {EXPORT_WEIGHTS} in this folder (not one written by qsnn export)")
        return read_weights(file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weight file at {path}")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    from ..train.checkpoint import is_training_checkpoint, read_checkpoint

    obj = read_checkpoint(path, "weights")
    if is_training_checkpoint(obj):
        if obj.get("ema") is not None:
            state = {k.removeprefix("module."): v for k, v in obj["ema"].items()}
        else:
            state = obj["model"]
        kwargs = dict((obj.get("config") or {}).get("model_kwargs") or {})
        return state, WeightsInfo(obj["model_name"], tuple(obj["wst"]), obj.get("num_classes"), obj.get("in_chans"),
                                  kwargs, obj.get("sha256"), obj.get("epoch"))
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            obj = obj[key]
    if not _is_state_dict(obj):
        raise ValueError(f"{path} holds no state dict (a dict of tensors) nor a qsnn train checkpoint")
    return obj, WeightsInfo()


def _model_architecture(model) -> str:
    return (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__


def _check_model_args(path: str, info: WeightsInfo, model) -> None:
    for key, value in info.model_args.items():
        if key in _NOT_COMPARED or not hasattr(model, key):
            continue
        have = getattr(model, key)
        if have != value:
            raise ValueError(f"{path} holds weights built with {key}={value!r}; the model has {key}={have!r}")


def _adapt(state: dict, model) -> set:
    """timm's adaptations in place: the classifier dropped when the model's differs in shape
    (another class count), the first conv adapted to the model's input channels. Returns the model
    keys that may stay missing (its new classifier)."""
    from timm.models import adapt_input_conv

    cfg = getattr(model, "pretrained_cfg", None) or {}
    own = model.state_dict()
    may_miss = set()
    classifier = cfg.get("classifier")
    if classifier:
        keys = [f"{classifier}.weight", f"{classifier}.bias"]
        if any(k in state and (k not in own or own[k].shape != state[k].shape) for k in keys):
            for k in keys:
                state.pop(k, None)
            may_miss = {k for k in keys if k in own}
    first = f"{cfg.get('first_conv')}.weight"
    if first in state and first in own and state[first].shape[1] != own[first].shape[1]:
        state[first] = adapt_input_conv(own[first].shape[1], state[first])
    return may_miss


def load_weights(model, path: str) -> None:
    """Load the weights at ``path`` (:func:`read_weights`) into ``model`` after the checks and
    adaptations of the module docstring; ValueError (naming both sides) when they do not fit."""
    state, info = read_weights(path)
    arch = _model_architecture(model)
    if info.architecture is not None:
        wst = tuple(getattr(model, k) for k in WST_KEYS)
        check_wst_match(str(path), dict(zip(WST_KEYS, info.wst)), info.architecture, wst, arch)
        _check_model_args(str(path), info, model)
    state = dict(state)
    may_miss = _adapt(state, model)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:4] if line.strip())
        raise ValueError(f"{path}: the weights do not fit {arch}: {detail}") from None
    missing = [k for k in result.missing_keys if k not in may_miss]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: the weights do not fit {arch}: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})")


def _timm_config(model) -> dict:
    """config.json as timm writes it for ``model`` (``timm.models.save_config_for_hf``)."""
    from timm.models._hub import save_config_for_hf

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, EXPORT_CONFIG)
        save_config_for_hf(model, path)
        with open(path) as f:
            return json.load(f)


def export_run(run_dir: str, output: str | None = None, checkpoint: str = "best") -> str:
    """Write the run folder ``run_dir``'s ``best.pt`` (``checkpoint="last"``: ``last.pt``) as a
    timm / Hugging Face style folder (module docstring) into ``output`` (default ``RUN_DIR/export``;
    created; its model.safetensors and config.json replaced). Returns the folder.
    FileNotFoundError: no such run folder or checkpoint; ValueError: a corrupted checkpoint, one
    that is not a ``qsnn train`` checkpoint, or weights that do not fit their own architecture."""
    import safetensors.torch
    import timm

    from ..train.run_folder import BEST, LAST, write_atomic

    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    path = os.path.join(run_dir, BEST if checkpoint == "best" else LAST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint (has the run finished an epoch?)")
    state, info = read_weights(path)
    if info.architecture is None or info.wst is None:
        raise ValueError(f"{path} is not a qsnn train checkpoint")
    model = timm.create_model(info.architecture, **info.create_kwargs())
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit {info.architecture}: {str(e).splitlines()[0]}") from None
    config = _timm_config(model)
    config[_META_KEY] = dict(checkpoint=os.path.abspath(path), sha256=info.sha256, epoch=info.epoch,
                             wst="/".join(map(str, info.wst)))
    out = output or os.path.join(run_dir, "export")
    os.makedirs(out, exist_ok=True)
    metadata = {"format": "pt", _META_KEY: json.dumps(info.to_metadata())}
    write_atomic(os.path.join(out, EXPORT_WEIGHTS), safetensors.torch.save(model.state_dict(), metadata=metadata))
    write_atomic(os.path.join(out, EXPORT_CONFIG), json.dumps(config, indent=2))
    return out
