"""The training configuration: :class:`TrainConfig` (every ``qsnn train`` flag is a field), loaded
from flags (:func:`parse_args`), from a YAML file (``--config run.yaml``; flags given on the command
line override it) or built directly (``run(TrainConfig(epochs=3))``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from dataclasses import dataclass, fields

from ..argtypes import (Parser, float_in, int_in, nonempty_text, nonnegative_int, one_line, output_folder,
                        positive_float, positive_int)
from ..extras import require
from ..bits import FULL_PRECISION_BITS, SPIKE_BITS, WEIGHT_BITS

__all__ = ["TrainConfig", "MAX_T_STEPS", "MAX_INPUT_SIZE", "SCHEDULERS", "build_parser", "parse_args", "parse_wst",
           "load_yaml", "check_dict", "check_field"]

DEFAULT_MODEL = "qsnn_spiking_cnn_tiny"

MAX_T_STEPS = 1024
"""The most time steps T a run may use (``--wst W/S/T``; a sweep's budget, whose split 1/1/BB has
T = BB). A sanity bound, refused before anything is allocated: activations grow linearly with T
(the digits' tiny CNN needs about 0.26 MB per step per batch of 64 in one layer alone, so T =
100000 asked for 26 GB and died in the allocator), and the paper's runs use T <= 8."""

MAX_INPUT_SIZE = 1024
"""The largest image side ``--input-size`` may ask for (training, ``qsnn budget``): a sanity bound
like :data:`MAX_T_STEPS` (ImageNet runs use 224; 1024 is already 20x the pixels)."""

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "rsqrt", "constant")
"""``--sched``: the names timm's ``create_scheduler_v2`` knows (another name silently gives no schedule)."""


@dataclass
class TrainConfig:
    """One training run. ``wst`` is "W/S/T" (e.g. "4/2/1": 4-bit weights, 2-bit spikes, 1 step).
    ``data``: a :func:`qsnn_kernels.data.build_dataset` name ("digits", the embedded default);
    ``events`` uses the event variant ("digits" -> "digits-events"). ``resume``: False, True (the
    run folder's last.pt) or a checkpoint path. ``overwrite``: replace the run already in ``output``
(without it, or ``resume``, such a folder is refused). ``amp``: "auto" (bf16 autocast on CUDA only),
    "bf16" (CUDA only) or "none". ``device``: "auto", "cpu", "cuda" or "cuda:N".

    Augmentation (cifar10, cifar100, imagenet): ``augment`` turns on the training augmentation
    (CIFAR random crop + flip; ImageNet timm's training transform); ``randaug``, a timm RandAugment
    policy string such as "rand-m9-mstd0.5-inc1" (sections m<magnitude>, n<ops per image>,
    mstd<std>, mmax<max magnitude>, inc<0|1>, p<probability>, t<weights|3a|3aw>), adds RandAugment
    to it (and implies ``augment``); a bad policy, or one for another data set, is a ValueError
    before training starts. ``mixup``/``cutmix``/``smoothing`` go through timm's Mixup.

    Every field has a type and a range (:func:`check_field`: counts >= 1, ``lr`` > 0, rates in
    range, choices for ``amp``/``on_error``/``sched``/``device``, T <= :data:`MAX_T_STEPS`,
    ``input_size`` <= :data:`MAX_INPUT_SIZE`); flags
    and YAML values are refused outside them, naming the flag or key, before anything runs.

    ``precise_bn`` (default 200): before each evaluation the batch-norm statistics are recomputed
    with the epoch's final weights over up to this many training batches, each weighing the same
    (:func:`qsnn_kernels.train.loop.recompute_batch_norm`); so the accuracy reported, and the
    model saved, do not depend on the last few batches' running averages. 0 keeps the running
    averages.

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
    int8: str = "auto"
    model_ema: bool = False
    model_ema_decay: float = 0.998
    precise_bn: int = 200
    seed: int = 0
    output: str = "runs/train"
    resume: bool | str = False
    overwrite: bool = False
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
        """The config of mapping ``d`` (field name -> value), every value checked by
        :func:`check_field` (strings from a command line or YAML are converted). ValueError naming
        the first key that is not a field (with the close names) or whose value is refused."""
        return cls(**check_dict(d))


def check_dict(d: dict) -> dict:
    """``d`` with each value checked and converted by :func:`check_field`; ValueError naming the
    first unknown key (and the close field names) or refused value."""
    import difflib

    if not isinstance(d, dict):
        raise ValueError(f"a training config must be a mapping of options, got {type(d).__name__}")
    names = [f.name for f in fields(TrainConfig)]
    unknown = [k for k in d if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else f"; known: {', '.join(names)}"
        raise ValueError(f"unknown training option {key!r}{hint}")
    return {k: check_field(k, v) for k, v in d.items()}


_text = nonempty_text


def _choice(*names):
    def parse(value):
        if value not in names:
            raise argparse.ArgumentTypeError(f"expected {parse.expected}, got {value!r}")
        return value

    parse.__name__ = "choice"
    parse.expected = f"one of {', '.join(names)}"
    return parse


def _data_name(value):
    from ..data.registry import DATASETS  # no torch: the names only

    value = _text(value)
    if value not in DATASETS:
        import difflib

        close = difflib.get_close_matches(value, DATASETS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise argparse.ArgumentTypeError(f"unknown data set {value!r}{hint} (known: {', '.join(DATASETS)})")
    return value


def _json_object(value):
    """model_kwargs: a JSON object (from a flag) or a mapping (from YAML)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"width\": 8}}', got {value!r} "
                                             f"({e.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object (keyword arguments of the model), got {value!r}")
    return value


def _wst(value):
    """W/S/T with W in :data:`qsnn_kernels.bits.ALLOWED_W_BITS`, S in ``SPIKE_BITS``, 1 <= T <=
    :data:`MAX_T_STEPS` (the widths the models accept, checked without importing torch)."""
    from ..bits import ALLOWED_W_BITS, SPIKE_BITS, check_bits

    try:
        w, s, t = parse_wst(value)
        check_bits(w, ALLOWED_W_BITS, "w_bits")
        check_bits(s, SPIKE_BITS, "s_bits")
        if t < 1:
            raise ValueError(f"t_steps must be an int >= 1, got {t}")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace(f"--wst {value}: ", "").replace("--wst ", "")) from None
    return value


_DEVICE = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def _device(value):
    """auto, cpu, cuda or cuda:N (the form; :func:`_device_index` checks N once the flags are parsed)."""
    if not isinstance(value, str) or _DEVICE.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(f"expected {_device.expected}, got {value!r}")
    return value


_device.expected = "auto, cpu, cuda or cuda:N"


def _device_index(value):
    """cuda:N with N below the count of CUDA devices here (counted without initializing CUDA);
    whether plain ``cuda`` is available is the run's check."""
    m = _DEVICE.fullmatch(value)
    if m.group(2):
        import torch

        count = torch.cuda.device_count()
        if int(m.group(2)[1:]) >= count:
            raise argparse.ArgumentTypeError(f"{value}: this machine has {count} CUDA device(s)")
    return value


def _optimizer(value):
    """A timm optimizer name (importing timm to list them costs seconds: done by :func:`check_field`
    after the flags are parsed, and only for a name other than the default)."""
    value = _text(value)
    if value != TrainConfig.opt:
        known = require("timm.optim", "checking --opt").list_optimizers()
        if value.lower() not in known:
            import difflib

            close = difflib.get_close_matches(value.lower(), known, n=3)
            raise argparse.ArgumentTypeError(f"unknown optimizer {value!r} (a timm optimizer name"
                                             + (f"; did you mean {', '.join(close)}?)" if close else ")"))
    return value


def _resume(value):
    """False/True (the run folder's last.pt) or a checkpoint path (whether it is there is checked
    by the run, before it writes anything)."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str) or not value:
        raise argparse.ArgumentTypeError(f"expected true, false or a checkpoint path, got {value!r}")
    return value


INT8_CHOICES = {"auto": None, "on": True, "off": False}
"""``--int8`` values and the layers' ``int8`` rule each sets (:func:`qsnn_kernels.models.layers.set_int8`)."""

_FIELD_TYPES = {
    "model": _text, "model_kwargs": _json_object, "wst": _wst, "data": _data_name, "data_root": _text,
    "input_size": int_in(1, MAX_INPUT_SIZE), "on_error": _choice("skip", "raise"), "epochs": positive_int,
    "batch_size": positive_int, "lr": positive_float, "weight_decay": float_in(0.0), "opt": _text,
    "sched": _choice(*SCHEDULERS), "warmup_epochs": nonnegative_int, "warmup_lr": float_in(0.0),
    "min_lr": float_in(0.0), "smoothing": float_in(0.0, 1.0, hi_open=True), "mixup": float_in(0.0),
    "cutmix": float_in(0.0), "precise_bn": nonnegative_int, "randaug": _text,
    "model_ema_decay": float_in(0.0, 1.0), "seed": int_in(),
    "output": output_folder, "resume": _resume, "workers": nonnegative_int, "amp": _choice("auto", "bf16", "none"),
    "device": _device, "log_interval": positive_int, "max_steps_per_epoch": positive_int,
    "int8": _choice(*INT8_CHOICES),
}
"""The type of each field: an argparse type that also takes the field's own Python type (YAML
values). Boolean fields use :func:`_bool`; a field missing here is a string. These never import
torch, timm or tonic, so that ``qsnn train --help`` and a misused flag answer at once."""

_LATE_CHECKS = {"opt": _optimizer, "device": _device_index}
"""Checks that need torch or timm: made by :func:`check_field` (after argparse, for flags)."""


def _field_type(name: str):
    f = next(f for f in fields(TrainConfig) if f.name == name)
    if name in _FIELD_TYPES:
        return _FIELD_TYPES[name]
    return _bool if isinstance(f.default, bool) else _text


def check_field(name: str, value):
    """``value`` for field ``name``, checked (and converted when it is a string); None passes
    for the fields whose default is None. ValueError ``"<name>: expected ..., got ..."``."""
    f = next((f for f in fields(TrainConfig) if f.name == name), None)
    if f is None:
        raise ValueError(f"unknown training option {name!r}")
    if value is None and f.default is None:
        return None
    try:
        value = _field_type(name)(value)
        return _LATE_CHECKS[name](value) if name in _LATE_CHECKS else value
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ValueError(f"{name}: {one_line(e)}") from None


def parse_wst(wst: str) -> tuple[int, int, int]:
    """"W/S/T" -> (w_bits, s_bits, t_steps) ints; ValueError on another form or T above
    :data:`MAX_T_STEPS` (W, S and T >= 1 are checked by the model)."""
    parts = str(wst).split("/")
    try:
        if not isinstance(wst, str) or len(parts) != 3:
            raise ValueError
        w, s, t = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--wst must be W/S/T, three integers such as 4/2/1, got {wst!r}") from None
    if t > MAX_T_STEPS:
        raise ValueError(f"--wst {wst}: time steps T must be at most {MAX_T_STEPS} (MAX_T_STEPS), got {t}")
    return w, s, t


def read_config_file(path: str) -> dict:
    """The TrainConfig fields of the ``--config`` YAML file ``path``, each value checked
    (:func:`check_dict`). ValueError starting ``--config <path>``: the file is missing, not YAML or
    not a mapping, or a key or value is wrong."""
    try:
        raw = load_yaml(path)
    except ValueError as e:  # the message starts with the path
        raise ValueError(f"--config {e}") from None
    try:
        return check_dict(raw)
    except ValueError as e:
        raise ValueError(f"--config {path}: {e}") from None


def load_yaml(path: str) -> dict:
    """The mapping in a YAML file. ValueError naming the file when it is missing, unreadable, not
    YAML or not a mapping."""
    yaml = require("yaml", "reading a YAML configuration")
    try:
        with open(path) as f:
            d = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a training config must be a YAML mapping, got {type(d).__name__}")
    return d


def _bool(s) -> bool:
    if isinstance(s, bool):
        return s
    if isinstance(s, str) and s.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(s, str) and s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


_HELP = {
    "model": "registered model, with or without the qsnn_ prefix (see `qsnn models`)",
    "model_kwargs": 'extra model arguments as a JSON object, e.g. \'{"width": 8}\'',
    "wst": f"weight bits / spike bits / time steps: W in {', '.join(map(str, WEIGHT_BITS))} "
           f"({', '.join(map(str, FULL_PRECISION_BITS))}: float weights), S in {', '.join(map(str, SPIKE_BITS))}, "
           f"1 <= T <= {MAX_T_STEPS}",
    "data": "data set (digits and digits-events are embedded; the others need --data-root)",
    "data_root": "folder holding the data set (not needed for digits, digits-events)",
    "events": "train on event frames: digits becomes digits-events (simulated saccades); the DVS data sets "
              "are event data already",
    "input_size": f"image side in pixels for imagenet (default there: 224; at most {MAX_INPUT_SIZE}); the "
                  f"other data sets have a fixed size",
    "on_error": "a data file that fails to decode: skip it (counted in report.json) or raise (stop, naming it)",
    "epochs": "training epochs",
    "batch_size": "global batch size (split evenly over the torchrun processes)",
    "lr": "peak learning rate, reached after the warmup",
    "weight_decay": "weight decay of the optimizer",
    "opt": "optimizer, a timm name (adamw, sgd, lamb, ...)",
    "sched": "learning-rate schedule (timm), stepped once per epoch",
    "warmup_epochs": "epochs of linear warmup from --warmup-lr to --lr",
    "warmup_lr": "learning rate at the start of the warmup",
    "min_lr": "learning rate at the end of the schedule",
    "smoothing": "label smoothing",
    "mixup": "mixup alpha (0: off)",
    "cutmix": "cutmix alpha (0: off; images only, not --events)",
    "augment": "training augmentation of cifar10/cifar100 (random crop, flip) and imagenet (timm's)",
    "randaug": "timm RandAugment policy for cifar/imagenet training, e.g. rand-m9-mstd0.5-inc1 (implies "
               "--augment)",
    "sync_bn": "batch-norm statistics over all ranks under torchrun (extra communication; off: per-rank "
               "statistics)",
    "int8": "exact int8 forward of the spike-input layers: auto (on a CPU with int8 dot-product units), "
            "on (wherever the input is eligible; the way to use the CUDA int8 kernels) or off",
    "model_ema": "evaluate, report and save an exponential moving average of the weights",
    "model_ema_decay": "decay of --model-ema per step",
    "precise_bn": "before each evaluation, recompute the batch-norm statistics over this many training "
                  "batches with the epoch's final weights (0: keep the running averages)",
    "seed": "seed of the weights, the data order and the augmentation",
    "output": "run folder: config.yaml, metrics.jsonl, last.pt, best.pt, report.json",
    "resume": "continue the run in --output from its last.pt, or from the given checkpoint",
    "overwrite": "replace the run already in --output",
    "workers": "data-loader worker processes (0: load in the training process)",
    "amp": "autocast: auto (bf16 on CUDA, none on CPU), bf16 (CUDA only) or none",
    "device": "device to train on (auto: cuda when available, else cpu)",
    "log_interval": "steps between updates of the progress bar's loss and speed",
    "progress": "a progress bar per epoch when stderr is a terminal (in a log or a pipe: the epoch lines only)",
    "max_steps_per_epoch": "cap on the training steps of an epoch, for quick checks (none: the whole epoch)",
}
"""The help line of each TrainConfig field's flag (``qsnn train --help`` adds the choices and the default)."""


def _choices_text(name: str) -> str | None:
    """The values a flag takes, for its help line (None when the type does not say)."""
    if name == "data":
        from ..data.registry import DATASETS

        return "one of " + ", ".join(DATASETS)
    return getattr(_FIELD_TYPES.get(name), "expected", None)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add every TrainConfig field as ``--name`` (underscores as dashes) with no default (so that
    only the flags given override the YAML file and the dataclass defaults), plus ``--config`` and
    ``--json`` (the output of the command, not a field). Each flag's help says what it does, the
    values it takes and its default. Building it imports neither torch nor timm."""
    p = parser or Parser(prog="qsnn train", description="train a registered qsnn model (default: a tiny spiking CNN "
                         "on the embedded 8x8 digits); accuracies are top-1 in percent")
    p.add_argument("--config", help="a YAML file of training options (the flag names with underscores); flags "
                                    "given on the command line override it")
    p.add_argument("--json", action="store_true",
                   help="end with the report as JSON (top-1 in percent) instead of the one-line summary")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = "none" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) else f.default
        choices = _choices_text(f.name)
        help_ = _HELP[f.name] + (f" ({choices}; default: {default})" if choices else f" (default: {default})")
        help_ = help_.replace("%", "%%")
        if f.name == "model_kwargs":
            p.add_argument(flag, dest=f.name, type=_json_object, default=None, metavar="JSON", help=_HELP[f.name])
        elif f.name == "resume":
            p.add_argument(flag, dest=f.name, nargs="?", const=True, default=None, type=_resume, metavar="CHECKPOINT",
                           help=_HELP[f.name])
        elif isinstance(f.default, bool):
            p.add_argument(flag, dest=f.name, nargs="?", const=True, default=None, type=_bool, metavar="BOOL",
                           help=help_.replace(" (default:", " (true/false; default:"))
        else:
            p.add_argument(flag, dest=f.name, type=_field_type(f.name), default=None, help=help_)
    return p


def config_from_namespace(ns: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed flags: the ``--config`` YAML file (each value checked, ValueError
    naming the file and key), then the flags given."""
    d = read_config_file(ns.config) if getattr(ns, "config", None) else {}
    for f in fields(TrainConfig):
        v = getattr(ns, f.name, None)
        if v is None:
            continue
        if f.name in _LATE_CHECKS:  # the checks that need torch or timm, once every flag is parsed
            try:
                _LATE_CHECKS[f.name](v)
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"argument --{f.name.replace('_', '-')}: {e}") from None
        d[f.name] = v
    return TrainConfig.from_dict(d)


def parse_args(argv=None) -> TrainConfig:
    """The TrainConfig of ``qsnn train`` flags. A misuse (a bad flag value, a missing or bad
    ``--config`` file, an unknown or ill-typed YAML key, ``--resume`` with nothing to resume)
    exits with status 2 after one line ``qsnn train: error: ...`` on stderr, before anything runs
    (a missing ``--resume`` checkpoint is the run's to refuse, also before it writes anything)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return config_from_namespace(ns)
    except ValueError as e:
        parser.error(str(e))
