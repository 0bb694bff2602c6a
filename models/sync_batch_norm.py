"""Batch norm with statistics over every rank of a process group (``qsnn train --sync-bn``).

torch's ``nn.SyncBatchNorm`` refuses CPU tensors (so it cannot run on gloo) and replaces our
multi-step batch norms by a plain one; this one runs on any device and backend that has
``all_reduce``, inside :class:`models.layers.MultiStepBatchNorm2d` / ``1d`` (their ``sync_stats``).

Training forward on rank r's input ``x_r [N_r, C, *]``: the per-channel mean ``m_r`` and biased
variance ``v_r`` are computed locally (two-pass, ``torch.var_mean``); the float64 vector
``[N_r m_r, N_r (v_r + m_r^2), N_r]`` is all-reduced (one call) into the global sum, sum of squares
and count ``N``; ``mean = S / N``, ``var = Q / N - mean^2`` (float64, so the subtraction loses nothing
that matters). The output, the running statistics (unbiased ``var * N / (N - 1)``, momentum or the
cumulative average as in ``nn.BatchNorm``) and ``num_batches_tracked`` are then the same on every
rank and equal to one process's on the concatenated batch, up to float summation order.

Backward, with ``g = dy * weight`` and ``xhat = (x - mean) / sqrt(var + eps)``: the per-channel sums
``sum g`` and ``sum g * xhat`` are all-reduced (one call) and ``dx = (g - sum g / N - xhat sum(g xhat) / N)
/ sqrt(var + eps)``; ``dweight = sum dy xhat`` and ``dbias = sum dy`` stay local (DDP averages them
with the other parameters' gradients). Each rank's ``dy`` is the gradient of its own mean loss, and
DDP's averaging makes the result the gradient of the global mean loss, the convention of torch's
SyncBatchNorm.

Every rank must call the layer the same number of times in the same order (as for any collective).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["global_batch_norm", "sync_world_size"]


def sync_world_size(group=None) -> int:
    """The size of ``group`` (default: the world) when torch.distributed is initialized, else 1."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class _GlobalBatchNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with mean/var over all ranks (module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor, eps, reduce):
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        shape = [1, c] + [1] * (x.dim() - 2)
        n_local = x.numel() // c if c else 0
        if n_local:
            var_l, mean_l = torch.var_mean(x, dim=dims, correction=0)
            mean_l, var_l = mean_l.double(), var_l.double()
        else:  # an empty local batch still takes part in the all-reduce
            mean_l = var_l = x.new_zeros(c, dtype=torch.float64)
        stats = torch.cat([n_local * mean_l, n_local * (var_l + mean_l * mean_l),
                           torch.tensor([float(n_local)], dtype=torch.float64, device=x.device)])
        stats = reduce(stats)
        count = int(stats[-1].item())
        if count < 2:
            raise ValueError(f"global batch norm: expected more than 1 value per channel over all ranks, got {count}")
        mean = stats[:c] / count
        var = (stats[c:2 * c] / count - mean * mean).clamp_min(0.0)
        if running_mean is not None:
            running_mean.mul_(1.0 - factor).add_(mean.to(running_mean.dtype), alpha=factor)
        if running_var is not None:
            running_var.mul_(1.0 - factor).add_((var * count / (count - 1)).to(running_var.dtype), alpha=factor)
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        xhat = (x - mean.to(x.dtype).view(shape)) * invstd.view(shape)
        y = xhat
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.count, ctx.reduce, ctx.has_bias = count, reduce, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        xhat, invstd, weight = ctx.saved_tensors
        c = xhat.shape[1]
        dims = [0] + list(range(2, xhat.dim()))
        shape = [1, c] + [1] * (xhat.dim() - 2)
        sum_dy = dy.sum(dims)
        sum_dy_xhat = (dy * xhat).sum(dims)
        dweight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        dbias = sum_dy if ctx.has_bias and ctx.needs_input_grad[2] else None
        dx = None
        if ctx.needs_input_grad[0]:
            w = weight.view(shape) if weight is not None else 1.0
            sums = ctx.reduce(torch.cat([sum_dy, sum_dy_xhat]))  # gradient through the global mean / var
            if weight is not None:
                sums = sums * torch.cat([weight, weight]).detach()
            mean_g, mean_gx = (sums[:c] / ctx.count).view(shape), (sums[c:] / ctx.count).view(shape)
            dx = (dy * w - mean_g - xhat * mean_gx) * invstd.view(shape)
        return dx, dweight, dbias, None, None, None, None, None


def global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, group=None, reduce=None) -> torch.Tensor:
    """``bn``'s training-mode batch norm of ``x [N, C, *]`` with statistics over every rank of
    ``group`` (default: the world), updating ``bn``'s running statistics as ``bn`` would on the
    concatenated batch. ``reduce`` (a function summing a float64 tensor over the ranks, in place)
    defaults to ``torch.distributed.all_reduce``; tests pass their own. Without an initialized
    process group (and no ``reduce``) this is ``bn``'s plain forward. A bf16/fp16 ``x`` is computed
    in float32 (as autocast runs batch norm). ValueError when ``bn`` is in eval mode (eval uses the
    running statistics: nothing to synchronize) or a channel has fewer than 2 values in total."""
    if not bn.training:
        raise ValueError("global_batch_norm: the module is in eval mode; eval uses the running statistics")
    if reduce is None:
        if sync_world_size(group) == 1:
            return nn.modules.batchnorm._BatchNorm.forward(bn, x)
        reduce = lambda t: _all_reduce_sum(t, group)  # noqa: E731
    factor = 0.0
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    track = bn.track_running_stats
    return _GlobalBatchNorm.apply(x, bn.weight, bn.bias, bn.running_mean if track else None,
                                  bn.running_var if track else None, factor, bn.eps, reduce)
