"""The epoch loop of :func:`qsnn_kernels.train.run`: optimizer, schedule, EMA, batch-norm statistics
recomputed before each evaluation (``precise_bn``), resume, the run folder (config.yaml,
metrics.jsonl, last.pt, best.pt, report.json; written in the order and the way
:mod:`qsnn_kernels.train.run_folder` describes, so that a kill at any point leaves it consistent
and resumable) and the progress shown: one line per epoch on stdout, and a progress bar on stderr
when stderr is a terminal (a log file or a pipe gets the lines only). Accuracies are top-1 in
percent (``val_top1_percent``, ``top1_percent``, ``best_top1_percent``)."""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from ..extras import require
from . import run_folder as rf
from .checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from .engine import _criterion, _evaluate, _loaders, _profile_report, _seed_epoch

__all__ = ["train_loop", "resume_checkpoint", "finished_report"]


FUSED_OPTIMIZERS = ("adam", "adamw")
"""timm optimizer names that map to torch's Adam/AdamW, created with ``fused=True`` (one kernel over
all parameters instead of one per tensor)."""


def resume_checkpoint(cfg, model_name, wst) -> tuple[str | None, dict | None]:
    """(path, checkpoint) that ``cfg.resume`` names (the run folder's last.pt for True), read and
    checked by :func:`load_checkpoint`; (None, None) without ``resume``."""
    if not cfg.resume:
        return None, None
    path = cfg.resume if isinstance(cfg.resume, str) else os.path.join(cfg.output, rf.LAST)
    ckpt = load_checkpoint(path, model_name, wst)
    if "best_top1_percent" not in ckpt:
        raise ValueError(f"--resume: {path} was written by an older qsnn_kernels (accuracies as fractions); "
                         f"start a new run (--overwrite) or use another --output")
    return path, ckpt


def finished_report(cfg, ckpt, main: bool = True) -> dict | None:
    """For ``--resume`` of a run whose last epoch is done and whose report.json is written: its
    report (and a line saying there is nothing to do; the folder is left as it is). None when
    there is something to do (epochs left, or the report of a run killed before writing it)."""
    report_path = os.path.join(cfg.output, rf.REPORT)
    if ckpt is None or ckpt["epoch"] + 1 < cfg.epochs or not os.path.isfile(report_path):
        return None
    if main:
        print(f"qsnn train: the run in {cfg.output} is finished (epoch {ckpt['epoch'] + 1}/{cfg.epochs} done, "
              f"report.json written); nothing to do", flush=True)
    with open(report_path) as f:
        return json.load(f)


class _LossWatch:
    """The epoch's training loss, summed on the device (no host sync per step), and a check that
    every loss was finite, made when the host reads it (:meth:`check`): a non-finite loss raises
    FloatingPointError naming the first bad value and the steps since the last check (the weights
    have taken those steps' updates; the run is to be restarted with a lower learning rate anyway)."""

    def __init__(self, device):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.first_bad = torch.zeros((), dtype=torch.float32, device=device)
        self.checked = -1  # the last step checked

    def add(self, loss: torch.Tensor, batch: int) -> None:
        loss = loss.detach().float()
        nonfinite = ~torch.isfinite(loss)
        self.first_bad = torch.where(nonfinite & ~self.bad, loss, self.first_bad)
        self.bad |= nonfinite
        self.total += loss.double() * batch

    def check(self, epoch: int, step: int) -> None:
        if bool(self.bad):
            steps = f"step {step}" if step == self.checked + 1 else f"steps {self.checked + 1}-{step}"
            raise FloatingPointError(f"epoch {epoch + 1} {steps}: the loss is {self.first_bad.item()}; lower --lr")
        self.checked = step

    def sum(self) -> float:
        return float(self.total)


def train_loop(cfg, model, model_name, wst, train_info, val_info, device, dist_info, autocast,
               resumed: tuple[str | None, dict | None] = (None, None)) -> dict:
    """Train from scratch, or from ``resumed`` (:func:`resume_checkpoint`'s (path, checkpoint)),
    writing the run folder; returns the report."""
    create_optimizer_v2 = require("timm.optim", "training").create_optimizer_v2
    create_scheduler_v2 = require("timm.scheduler", "training").create_scheduler_v2
    ModelEmaV3 = require("timm.utils", "training").ModelEmaV3
    main = dist_info.main
    out = cfg.output
    t_start = time.perf_counter()
    report_path, metrics_path = os.path.join(out, rf.REPORT), os.path.join(out, rf.METRICS)
    start_epoch, best_top1, best_epoch, history, wall_before = 0, -1.0, -1, [], 0.0
    resumed_from, ckpt = resumed
    if ckpt is not None:
        start_epoch = ckpt["epoch"] + 1
    fused = {"fused": True} if cfg.opt.lower() in FUSED_OPTIMIZERS and device.type in ("cpu", "cuda") else {}
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=max(cfg.epochs // 3, 1),
                                       warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
                                       min_lr=cfg.min_lr)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
    mixup, criterion = _criterion(cfg, train_info.num_classes)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"])
        best_top1, best_epoch = ckpt["best_top1_percent"], ckpt["best_epoch"]
        history, wall_before = list(ckpt["history"]), ckpt["wall_time_s"]
    if scheduler is not None:
        scheduler.step(start_epoch)
    train_model = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if main:  # after DDP's first collective: every rank has checked the folder before it changes
        _start_folder(cfg, out, resumed_from, ckpt, history)
    batch_per_rank = cfg.batch_size // dist_info.world
    gen = torch.Generator()
    sampler, train_loader, val_loader = _loaders(cfg, train_info, val_info, dist_info, batch_per_rank, gen,
                                                 pin_memory=device.type == "cuda")
    for epoch in range(start_epoch, cfg.epochs):
        _seed_epoch(cfg.seed, epoch, dist_info.rank)
        gen.manual_seed(cfg.seed + epoch)
        sampler.set_epoch(epoch)
        train_model.train()
        steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
        bar = None
        if main and cfg.progress and _is_terminal(sys.stderr):
            bar = require("tqdm", "training's progress bars").tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False, dynamic_ncols=True)
        # the loss stays on the device: the host reads it (one sync) every log_interval steps only
        losses = _LossWatch(device)
        n_seen, t0 = 0, time.perf_counter()
        for step, (x, y) in enumerate(train_loader):
            if step >= steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            with autocast():
                logits = train_model(x)
            loss = criterion(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model)
            losses.add(loss, y.shape[0])
            n_seen += y.shape[0]
            if step % max(cfg.log_interval, 1) == 0 or step == steps - 1:
                losses.check(epoch, step)
                if bar is not None:
                    el = time.perf_counter() - t0
                    bar.set_postfix(loss=f"{losses.sum() / n_seen:.3f}",
                                    img_s=f"{n_seen * dist_info.world / max(el, 1e-9):.0f}")
            if bar is not None:
                bar.update(1)
        loss_sum = losses.sum()
        epoch_time = time.perf_counter() - t0
        n_total = n_seen * dist_info.world
        if dist_info.world > 1:  # the epoch's loss over every rank's samples
            import torch.distributed as dist

            sums = torch.tensor([loss_sum, float(n_seen)], dtype=torch.float64, device=device)  # NCCL: on the GPU
            dist.all_reduce(sums)
            loss_sum, n_total = sums[0].item(), int(sums[1].item())
        if bar is not None:
            bar.close()
        if scheduler is not None:
            scheduler.step(epoch + 1)
        eval_model = ema.module if ema is not None else model
        if cfg.precise_bn:
            recompute_batch_norm(eval_model, train_loader, min(cfg.precise_bn, steps), device, autocast,
                                 dist_info.world)
        val_loss, acc = _evaluate(eval_model, val_loader, device, autocast, dist_info.world)
        is_best = acc > best_top1
        if is_best:
            best_top1, best_epoch = acc, epoch
        row = dict(epoch=epoch, train_loss=loss_sum / max(n_total, 1), val_loss=val_loss, val_top1_percent=acc,
                   lr=optimizer.param_groups[0]["lr"], images=n_total, images_per_s=n_total / max(epoch_time, 1e-9),
                   epoch_time_s=epoch_time)
        history.append(row)
        if main:  # metrics.jsonl, last.pt, best.pt: in this order (see run_folder)
            rf.write_metrics(metrics_path, history)
            ckpt = dict(model_name=model_name, wst=list(wst), epoch=epoch, best_top1_percent=best_top1,
                        best_epoch=best_epoch,
                        model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict() if scheduler is not None else None,
                        ema=ema.state_dict() if ema is not None else None, rng=rng_state(), config=cfg.to_dict(),
                        num_classes=train_info.num_classes, in_chans=train_info.in_chans, history=list(history),
                        wall_time_s=wall_before + time.perf_counter() - t_start)
            save_atomic(ckpt, os.path.join(out, rf.LAST))
            if is_best:
                rf.copy_atomic(os.path.join(out, rf.LAST), os.path.join(out, rf.BEST))
            print(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  val loss {val_loss:.4f}  "
                  f"val top-1 {acc:.2f}%  {row['images_per_s']:.0f} img/s  {epoch_time:.1f}s", flush=True)
    final_model = ema.module if ema is not None else model
    train_time = sum(r["epoch_time_s"] for r in history)
    images_total = sum(r["images"] for r in history)
    report = dict(model=model_name, wst="/".join(map(str, wst)), data=train_info_name(cfg), epochs=cfg.epochs,
                  top1_percent=history[-1]["val_top1_percent"] if history else None,
                  best_top1_percent=best_top1 if history else None,
                  wall_time_s=wall_before + time.perf_counter() - t_start,
                  train_time_s=train_time, images_per_s=images_total / train_time if train_time > 0 else None,
                  world_size=dist_info.world, skipped_files=int(getattr(train_info, "skipped", 0))
                  + int(getattr(val_info, "skipped", 0)))
    report.update(_profile_report(final_model, val_info, device, wst[2], model_name))
    if main:
        rf.write_json(report_path, report)
    return report


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@torch.no_grad()
def recompute_batch_norm(model, loader, batches: int, device, autocast, world: int = 1) -> int:
    """Replace the running statistics of every batch norm in ``model`` by their average over the
    first ``batches`` batches of ``loader`` (each batch weighing the same; with ``world > 1`` also
    averaged over the ranks, which all read the same number of batches), computed with the
    weights as they are, which it leaves unchanged. The model is left in eval mode. Returns how
    many batches each rank used (0 when the model has no batch norm: nothing runs).

    Why (``precise_bn``, on by default): the running averages (momentum 0.1) follow the last ten
    or so batches, and a spiking network's thresholds make its accuracy swing with them from one
    epoch to the next (figures in the README's Training section)."""
    bns = [m for m in model.modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or batches < 1:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch weighs the same
    model.train()
    used = 0
    try:
        for x, _ in loader:
            if used >= batches:
                break
            with autocast():
                model(x.to(device, non_blocking=True))
            used += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.eval()
    if world > 1:
        import torch.distributed as dist

        for m in bns:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf)
                buf.div_(world)
    return used


def _start_folder(cfg, out, resumed_from, ckpt, history) -> None:
    """The run folder before the first epoch (run_folder's step 1): created; stale temporary files
    removed; an ``overwrite``'s old run removed; the report.json of a finished run resumed with
    more epochs removed (it is not finished any more); best.pt repaired from the checkpoint resumed
    from; config.yaml; metrics.jsonl with the rows of the checkpoint resumed from."""
    os.makedirs(out, exist_ok=True)
    rf.clean_stale_temps(out)
    if ckpt is None and cfg.overwrite:
        rf.remove_run(out)
    elif os.path.lexists(os.path.join(out, rf.REPORT)):
        os.unlink(os.path.join(out, rf.REPORT))
    if ckpt is not None:
        rf.repair_best(out, resumed_from, ckpt)
    rf.write_config(os.path.join(out, rf.CONFIG), cfg.to_dict())
    rf.write_metrics(os.path.join(out, rf.METRICS), history)


def train_info_name(cfg) -> str:
    from .engine import _dataset_name

    return _dataset_name(cfg)
