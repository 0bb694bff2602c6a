"""The training configuration: :class:`TrainConfig` (every ``qsnn train`` flag is a field), loaded
from flags (:func:`parse_args`), from a YAML file (``--config run.yaml``; flags given on the command
line override it) or built directly (``run(TrainConfig(epochs=3))``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, fields

__all__ = ["TrainConfig", "build_parser", "parse_args", "parse_wst", "load_yaml"]

DEFAULT_MODEL = "qsnn_spiking_cnn_tiny"


@dataclass
class TrainConfig:
    """One training run. ``wst`` is "W/S/T" (e.g. "4/2/1": 4-bit weights, 2-bit spikes, 1 step).
    ``data``: a :func:`qsnn_kernels.data.build_dataset` name ("digits", the embedded default);
    ``events`` uses the event variant ("digits" -> "digits-events"). ``resume``: False, True (the
    run folder's last.pt) or a checkpoint path. ``amp``: "auto" (bf16 autocast on CUDA only),
    "bf16" (CUDA only) or "none". ``device``: "auto", "cpu", "cuda" or "cuda:N".

    Augmentation (cifar10, cifar100, imagenet): ``augment`` turns on the training augmentation
    (CIFAR random crop + flip; ImageNet timm's training transform); ``randaug``, a timm RandAugment
    policy string such as "rand-m9-mstd0.5-inc1" (sections m<magnitude>, n<ops per image>,
    mstd<std>, mmax<max magnitude>, inc<0|1>, p<probability>, t<weights|3a|3aw>), adds RandAugment
    to it (and implies ``augment``); a bad policy, or one for another data set, is a ValueError
    before training starts. ``mixup``/``cutmix``/``smoothing`` go through timm's Mixup.

    ``sync_bn`` (default False): under ``torchrun`` batch norm computes its training statistics
    over the global batch (all ranks; one all-reduce per batch-norm layer forward and one in its
    backward), so that N processes train as one process with the same global batch. Off by default:
    the extra communication per layer costs time, and the per-rank statistics of a large per-rank
    batch are usually good enough. Plain all-reduces, so any backend (tested on CPU with gloo; the
    same code runs on nccl); models whose batch norms are not
    :class:`qsnn_kernels.models.MultiStepBatchNorm2d`/``1d`` are refused with a ValueError."""

    model: str = DEFAULT_MODEL
    model_kwargs: dict | None = None
    wst: str = "4/2/4"
    data: str = "digits"
    data_root: str | None = None
    events: bool = False
    input_size: int | None = None
    on_error: str = "skip"
    epochs: int = 15
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    opt: str = "adamw"
    sched: str = "cosine"
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    min_lr: float = 1e-6
    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    augment: bool = False
    randaug: str | None = None
    sync_bn: bool = False
    model_ema: bool = False
    model_ema_decay: float = 0.998
    seed: int = 0
    output: str = "runs/train"
    resume: bool | str = False
    workers: int = 0
    amp: str = "auto"
    device: str = "auto"
    log_interval: int = 10
    progress: bool = True
    max_steps_per_epoch: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """ValueError naming any key that is not a field."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        return cls(**d)


def parse_wst(wst: str) -> tuple[int, int, int]:
    """"W/S/T" -> (w_bits, s_bits, t_steps) ints; ValueError on another form (the values themselves
    are checked by the model)."""
    parts = str(wst).split("/")
    try:
        if len(parts) != 3:
            raise ValueError
        w, s, t = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--wst must be W/S/T, three integers such as 4/2/1, got {wst!r}") from None
    return w, s, t


def load_yaml(path: str) -> dict:
    """The mapping in a YAML file (ValueError when it is not a mapping)."""
    import yaml

    with open(path) as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a training config must be a YAML mapping, got {type(d).__name__}")
    return d


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add every TrainConfig field as ``--name`` (underscores as dashes) with no default (so that
    only the flags given override the YAML file and the dataclass defaults), plus ``--config``."""
    p = parser or argparse.ArgumentParser(prog="qsnn train", description="train a registered qsnn model")
    p.add_argument("--config", help="a YAML file of TrainConfig fields (flags override it)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        help_ = f"(default: {default!r})"
        if f.name == "model_kwargs":
            p.add_argument(flag, dest=f.name, type=json.loads, default=None,
                           help='extra model arguments as JSON, e.g. \'{"width": 8}\'')
        elif f.name == "resume":
            p.add_argument(flag, dest=f.name, nargs="?", const=True, default=None,
                           help="continue from the run folder's last.pt, or from the given checkpoint")
        elif f.name == "randaug":
            p.add_argument(flag, dest=f.name, default=None, metavar="POLICY",
                           help="timm RandAugment policy for cifar/imagenet training, e.g. rand-m9-mstd0.5-inc1 "
                                "(implies --augment; default: none)")
        elif f.name == "sync_bn":
            p.add_argument(flag, dest=f.name, nargs="?", const=True, default=None, type=_bool,
                           help="batch-norm statistics over all ranks under torchrun (extra communication; "
                                "default: off, per-rank statistics)")
        elif isinstance(default, bool):
            p.add_argument(flag, dest=f.name, nargs="?", const=True, default=None, type=_bool, help=help_)
        elif f.name in ("lr", "weight_decay", "warmup_lr", "min_lr", "smoothing", "mixup", "cutmix",
                        "model_ema_decay"):
            p.add_argument(flag, dest=f.name, type=float, default=None, help=help_)
        elif f.name in ("epochs", "batch_size", "warmup_epochs", "seed", "workers", "log_interval",
                        "input_size", "max_steps_per_epoch"):
            p.add_argument(flag, dest=f.name, type=int, default=None, help=help_)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=help_)
    return p


def config_from_namespace(ns: argparse.Namespace) -> TrainConfig:
    d = load_yaml(ns.config) if getattr(ns, "config", None) else {}
    for f in fields(TrainConfig):
        v = getattr(ns, f.name, None)
        if v is not None:
            d[f.name] = v
    return TrainConfig.from_dict(d)


def parse_args(argv=None) -> TrainConfig:
    return config_from_namespace(build_parser().parse_args(argv))
