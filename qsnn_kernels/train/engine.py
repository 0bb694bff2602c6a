"""The training loop behind ``qsnn train``: :func:`run` (one process, or one rank under ``torchrun``).

Built on timm's utilities: ``timm.create_model`` (our ``qsnn_`` registry), ``create_optimizer_v2``,
``create_scheduler_v2`` (stepped per epoch, warmup included), ``LabelSmoothingCrossEntropy`` /
``SoftTargetCrossEntropy`` with ``timm.data.Mixup``, ``ModelEmaV3``.

Determinism and resume: every random choice of epoch ``e`` comes from seeds derived from
``(seed, e, rank)`` set at the start of the epoch (the sampler's permutation: DistributedSampler
``seed`` + ``set_epoch(e)``; mixup, dropout, augmentation: torch / numpy / random reseeded), so a run
resumed after epoch ``e`` draws exactly what the uninterrupted run drew. The checkpoint also keeps
the RNG states, optimizer, scheduler, EMA and epoch.

Data parallel: under ``torchrun`` (WORLD_SIZE > 1) the process group is gloo on CPU, nccl on CUDA;
each rank reads ``batch_size // world`` samples per step (``batch_size`` is the GLOBAL batch), the
DistributedSampler gives rank r the positions ``r, r + world, ...`` of the epoch's permutation, so
one step's samples over all ranks are the ones a single process reads with the same global batch.
DDP averages the gradients, which equals the single-process mean loss's gradient up to float
summation order. Batch norm computes its training statistics per rank unless ``sync_bn`` (then over
the global batch: :mod:`qsnn_kernels.models.sync_batch_norm`; torch's SyncBatchNorm refuses CPU
tensors), so without it the runs of a model with batch norm differ by that. Validation: each rank
evaluates the val samples ``rank, rank + world, ...`` (:func:`val_shard`, no padding) and the correct
counts, loss sums and sample counts are all-reduced, so the accuracy is exactly the global one;
rank 0 logs, writes metrics and checkpoints.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch import nn

from ..extras import require
from .config import INT8_CHOICES, TrainConfig, parse_wst
from .run_folder import check_output

__all__ = ["run", "resolve_model_name", "DistInfo", "enable_sync_batch_norm", "val_shard"]


class DistInfo:
    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, owned: bool = False):
        self.rank, self.world, self.local_rank, self.owned = rank, world, local_rank, owned

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_type: str) -> DistInfo:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, owned=False)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank, world, local, owned=True)


def resolve_model_name(name: str) -> str:
    """The registered ``qsnn_`` name for ``name`` (prefix optional); ValueError listing close names."""
    from .. import models

    if not isinstance(name, str) or not name:
        raise ValueError(f"--model must be a model name, got {name!r}")
    full = name if name.startswith(models.PREFIX) else models.PREFIX + name
    if full not in models.list_models():
        models.create_model(full)  # raises the ValueError with the close names
    return full


def _resolve_device(cfg: TrainConfig) -> torch.device:
    dev = cfg.device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    return device


def _check_config(cfg: TrainConfig) -> tuple[int, int, int]:
    w, s, t = parse_wst(cfg.wst)
    from ..models.layers import check_model_args

    try:
        check_model_args(w, s, t)
    except ValueError as e:
        raise ValueError(f"--wst {cfg.wst}: {e}") from None
    for name in ("epochs", "batch_size"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {v!r}")
    if cfg.amp not in ("auto", "bf16", "none"):
        raise ValueError(f"--amp must be auto, bf16 or none, got {cfg.amp!r}")
    if cfg.on_error not in ("skip", "raise"):
        raise ValueError(f"--on-error must be skip or raise, got {cfg.on_error!r}")
    if not (0.0 <= cfg.smoothing < 1.0) or cfg.mixup < 0 or cfg.cutmix < 0:
        raise ValueError("--smoothing must be in [0, 1), --mixup and --cutmix >= 0")
    if cfg.randaug is not None:
        from ..data.images import check_randaug
        from ..data.registry import RANDAUG_DATASETS

        try:
            check_randaug(cfg.randaug)
        except ValueError as e:
            raise ValueError(f"--{e}") from None
        if _dataset_name(cfg) not in RANDAUG_DATASETS:
            raise ValueError(f"--randaug applies to {', '.join(RANDAUG_DATASETS)} images, not to "
                             f"{_dataset_name(cfg)!r}")
    return w, s, t


def _dataset_name(cfg: TrainConfig) -> str:
    if not cfg.events:
        return cfg.data
    if cfg.data == "digits":
        return "digits-events"
    if cfg.data in ("digits-events", "cifar10-dvs", "dvs128-gesture", "n-caltech101"):
        return cfg.data
    raise ValueError(f"--events: {cfg.data!r} has no event variant; use digits or an event data set")


def _build_data(cfg: TrainConfig, t_steps: int):
    from ..data import build_dataset

    name = _dataset_name(cfg)
    kw = dict(t_steps=t_steps, input_size=cfg.input_size, on_error=cfg.on_error)
    augment = cfg.augment or cfg.randaug is not None
    train = build_dataset(name, cfg.data_root, "train", augment=augment, randaug=cfg.randaug, **kw)
    val = build_dataset(name, cfg.data_root, "val", augment=False, **kw)
    return train, val


def enable_sync_batch_norm(model: nn.Module, model_name: str = "the model") -> int:
    """Set ``sync_stats`` on every batch norm of ``model`` (``--sync-bn``: statistics over all ranks,
    :mod:`qsnn_kernels.models.sync_batch_norm`); returns how many. ValueError naming the batch norms
    that cannot (any ``nn.BatchNorm*`` that is not a ``MultiStepBatchNorm2d``/``1d``), before any
    training."""
    bns = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    unsupported = [f"{name} ({type(m).__name__})" for name, m in bns if not hasattr(m, "sync_stats")]
    if unsupported:
        shown = ", ".join(unsupported[:3]) + (f" and {len(unsupported) - 3} more" if len(unsupported) > 3 else "")
        raise ValueError(f"--sync-bn: {model_name} has batch norms without cross-rank statistics: {shown}; "
                         f"only MultiStepBatchNorm2d/1d synchronize (leave --sync-bn off for this model)")
    for _, m in bns:
        m.sync_stats = True
    return len(bns)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    s = (seed * 1_000_003 + epoch * 1009 + rank) % (2 ** 31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _loaders(cfg, train_info, val_info, dist_info, batch_per_rank, epoch_gen, pin_memory: bool = False):
    from torch.utils.data import DataLoader, DistributedSampler

    drop_last = cfg.mixup > 0 or cfg.cutmix > 0
    sampler = DistributedSampler(train_info.dataset, num_replicas=dist_info.world, rank=dist_info.rank,
                                 shuffle=True, seed=cfg.seed, drop_last=drop_last)
    train = DataLoader(train_info.dataset, batch_size=batch_per_rank, sampler=sampler, num_workers=cfg.workers,
                       drop_last=drop_last, generator=epoch_gen, persistent_workers=False, pin_memory=pin_memory)
    val = DataLoader(val_shard(val_info.dataset, dist_info.rank, dist_info.world), batch_size=max(batch_per_rank, 64),
                     shuffle=False, num_workers=cfg.workers, pin_memory=pin_memory)
    return sampler, train, val


def val_shard(dataset, rank: int, world: int):
    """Rank ``rank``'s part of the val set: the samples ``rank, rank + world, ...`` (a Subset; the
    whole data set when ``world == 1``). The parts are disjoint and cover every sample once, with
    no padding (unlike DistributedSampler, which repeats samples to even the ranks out), so the
    counts summed over the ranks are exactly the val set's."""
    from torch.utils.data import Subset

    if world == 1:
        return dataset
    return Subset(dataset, range(rank, len(dataset), world))


def _criterion(cfg, num_classes):
    Mixup = require("timm.data", "training").Mixup
    losses = require("timm.loss", "training")
    LabelSmoothingCrossEntropy, SoftTargetCrossEntropy = losses.LabelSmoothingCrossEntropy, losses.SoftTargetCrossEntropy
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mix = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.smoothing,
                    num_classes=num_classes)
        return mix, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return None, nn.CrossEntropyLoss()


@torch.no_grad()
def _evaluate(model, loader, device, autocast, world: int = 1):
    """(mean loss, top-1 accuracy in percent: ``100 * correct / n``) over the val set. Each rank
    evaluates its :func:`val_shard`; with ``world > 1`` the loss sums, correct counts and sample
    counts are all-reduced (summed), so every rank returns the global figures (exact counts: the
    accuracy is the one a single process gets with the same weights)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, n: summed on the device
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            out = model(x)
        out = out.float()
        sums[0] += nn.functional.cross_entropy(out, y, reduction="sum").double()
        sums[1] += (out.argmax(1) == y).sum()
        sums[2] += y.numel()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    loss_sum, correct, n = sums[0].item(), int(sums[1].item()), int(sums[2].item())
    return loss_sum / max(n, 1), 100.0 * correct / max(n, 1)


def _autocast_factory(cfg, device):
    import contextlib

    if cfg.amp == "bf16" and device.type != "cuda":
        raise ValueError("--amp bf16 runs on CUDA only (this CPU has no bf16 units); use --amp none or auto")
    if device.type == "cuda" and cfg.amp in ("auto", "bf16"):
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _profile_report(model, val_info, device, t_steps, model_name):
    from ..metrics import profile

    b = min(len(val_info.dataset), 16)
    if b == t_steps and b > 1:
        b -= 1
    xs = torch.stack([val_info.dataset[i][0] for i in range(b)]).to(device)
    prof = profile(model, xs, model_name=model_name)
    tot = prof.totals
    return dict(params=int(tot.get("params_count", sum(p.numel() for p in model.parameters()))),
                bit_budget=tot.get("bit_budget"), s_ace=tot.get("s_ace"), ns_ace=tot.get("ns_ace"),
                firing_rate={rec.name: rec.firing_rate for rec in prof.layers},
                input_bits={rec.name: rec.s_bits for rec in prof.layers})


def run(config: TrainConfig) -> dict:
    """Train ``config.model`` on ``config.data`` and return the final report (also written as
    ``report.json`` in ``config.output``): ``top1_percent`` (final top-1 val accuracy in percent, of
    the EMA model when ``model_ema``; with ``precise_bn``, evaluated with batch-norm statistics
    recomputed over training batches), ``best_top1_percent`` (the best epoch's, whose weights are
    best.pt), ``epochs``, ``wall_time_s``, ``images_per_s`` (training),
    ``params``, ``bit_budget``, ``s_ace``, ``ns_ace``, ``firing_rate`` ({layer: rate, the nonzero
    fraction of the layer's input}) and ``input_bits`` ({layer: the bits of its input spikes, None
    for a real-valued input such as the encoding conv or a head after a mean: the profiler's
    ``LayerRecord.s_bits``; the layers with an int take spikes}) from
    :func:`qsnn_kernels.metrics.profile` on val samples, ``model``, ``wst``, ``data``, ``world_size``.

    The run folder (:mod:`qsnn_kernels.train.run_folder`): a folder that already holds a run is
    refused unless ``resume`` (continue it; a finished one is left as it is, one line says there
    is nothing to do, and its report is returned) or ``overwrite`` (replace it). Checkpoints hold
    tensors and plain values only and are read with ``weights_only=True`` and a checksum
    (:mod:`qsnn_kernels.train.checkpoint`).

    Raises ValueError (unknown model, impossible W/S/T, bad option, an output folder holding a run,
    a checkpoint of another model, a corrupted or foreign checkpoint), FileNotFoundError (missing
    data folder or checkpoint) before training starts."""
    from .loop import finished_report, resume_checkpoint, train_loop

    if not isinstance(config, TrainConfig):
        raise TypeError(f"run: expected a TrainConfig, got {type(config).__name__}")
    cfg = config
    wst = _check_config(cfg)
    model_name = resolve_model_name(cfg.model)
    device = _resolve_device(cfg)
    autocast = _autocast_factory(cfg, device)
    if cfg.events and cfg.cutmix > 0:
        raise ValueError("--cutmix cuts image patches; it does not apply to --events frames")
    check_output(cfg.output, cfg.resume, cfg.overwrite)
    resumed = resume_checkpoint(cfg, model_name, wst)
    done = finished_report(cfg, resumed[1], int(os.environ.get("RANK", "0")) == 0)
    if done is not None:
        return done
    dist_info = _init_distributed(device.type)
    try:
        if device.type == "cuda" and dist_info.world > 1 and device.index is None:
            device = torch.device("cuda", dist_info.local_rank)
            torch.cuda.set_device(device)
        if cfg.batch_size % dist_info.world:
            raise ValueError(f"--batch-size {cfg.batch_size} (the global batch) must divide by the "
                             f"{dist_info.world} processes")
        train_info, val_info = _build_data(cfg, wst[2])
        torch.manual_seed(cfg.seed)
        kw = dict(cfg.model_kwargs or {})
        kw.update(w_bits=wst[0], s_bits=wst[1], t_steps=wst[2], num_classes=train_info.num_classes,
                  in_chans=train_info.in_chans)
        from .. import models

        model = models.create_model(model_name, **kw).to(device)
        models.layers.set_int8(model, INT8_CHOICES[cfg.int8])
        if cfg.sync_bn:
            enable_sync_batch_norm(model, model_name)
        return train_loop(cfg, model, model_name, wst, train_info, val_info, device, dist_info, autocast, resumed)
    finally:
        if dist_info.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
