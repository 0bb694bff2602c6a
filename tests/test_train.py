"""qsnn train (qsnn_kernels.train): a short run on the embedded digits learns; resume after an
interrupt equals the uninterrupted run; 2-process DDP on gloo equals one process with the same
global batch; bad input gives clear errors; checkpoints are replaced atomically."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
import socket
import sys
from pathlib import Path

import pytest
import torch

from qsnn_kernels.train import TrainConfig, parse_args, run
from qsnn_kernels.train import checkpoint as ckpt_mod
from qsnn_kernels.train import loop as loop_mod


def _cfg(tmp_path, name="run", **kw):
    base = dict(model="spiking_cnn_tiny", model_kwargs={"width": 8}, wst="8/1/2", epochs=2, batch_size=32,
                lr=5e-3, warmup_epochs=0, progress=False, max_steps_per_epoch=6, output=str(tmp_path / name),
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _metrics(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _weights(folder, name="last.pt"):
    return torch.load(os.path.join(folder, name), map_location="cpu", weights_only=True)["model"]


def test_short_run_learns_and_writes_run_folder(tmp_path):
    cfg = _cfg(tmp_path, epochs=3, max_steps_per_epoch=10)
    report = run(cfg)
    rows = _metrics(cfg.output)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1, rows
    assert report["top1_percent"] > 30  # 10 classes: chance is 10 %
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "report.json"):
        assert os.path.isfile(os.path.join(cfg.output, name)), name
    with open(os.path.join(cfg.output, "report.json")) as f:
        on_disk = json.load(f)
    assert on_disk["top1_percent"] == report["top1_percent"] and on_disk["bit_budget"] == 8 * 1 * 2
    assert report["params"] == sum(v.numel() for k, v in _weights(cfg.output).items()
                                   if "running" not in k and "num_batches" not in k)
    assert report["s_ace"] > 0 and report["ns_ace"] > 0 and report["firing_rate"]
    assert all(0.0 <= r <= 1.0 for r in report["firing_rate"].values())
    assert not [n for n in os.listdir(cfg.output) if n.endswith(".tmp")]
    ckpt = torch.load(os.path.join(cfg.output, "last.pt"), map_location="cpu", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["fused"] is True      # AdamW: torch's fused kernel


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch):
    kw = dict(epochs=3, mixup=0.4, smoothing=0.1, model_ema=True, max_steps_per_epoch=4)
    full = _cfg(tmp_path, "full", **kw)
    run(full)

    cut = _cfg(tmp_path, "cut", **kw)
    real_save, saved = ckpt_mod.save_atomic, []

    def save_then_die(obj, path):
        real_save(obj, path)
        saved.append(path)
        if obj["epoch"] == 0 and path.endswith("last.pt"):
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(loop_mod, "save_atomic", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(cut)
    monkeypatch.setattr(loop_mod, "save_atomic", real_save)
    assert len(_metrics(cut.output)) == 1
    cut.resume = True
    run(cut)

    a, b = _weights(full.output), _weights(cut.output)
    assert a.keys() == b.keys()
    mismatched = [k for k in a if not torch.equal(a[k], b[k])]
    assert mismatched == []
    ema_a = torch.load(os.path.join(full.output, "last.pt"), weights_only=True)["ema"]
    ema_b = torch.load(os.path.join(cut.output, "last.pt"), weights_only=True)["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")} for r in rows]
    assert strip(_metrics(full.output)) == strip(_metrics(cut.output))


class _NearestClassMean(torch.nn.Module):
    """A fixed digits classifier of about 90 % accuracy (logits: minus the squared distance to each
    class's mean training image): a model whose val accuracy is far from chance and differs between
    val shards, to check the sharded evaluation's all-reduce (a few training steps stay at chance)."""

    def __init__(self):
        super().__init__()
        from qsnn_kernels.data import build_dataset

        train = build_dataset("digits", None, "train", t_steps=1).dataset
        xs = torch.stack([train[i][0].flatten() for i in range(len(train))])
        ys = torch.tensor([int(train[i][1]) for i in range(len(train))])
        self.register_buffer("means", torch.stack([xs[ys == c].mean(0) for c in range(10)]))

    def forward(self, x):
        return -((x.flatten(1)[:, None] - self.means[None]) ** 2).sum(-1)


def _ddp_worker(rank, world, port, cfg_dict, out_q):
    """One rank: trains, then sends (rank, its report's top-1 in percent, the val samples it evaluated per epoch,
    its final batch-norm buffers, (accuracy over all ranks, over its own shard) of
    :class:`_NearestClassMean` on the val loader) to the test process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    real_evaluate, val_sizes, models_seen, probe = loop_mod._evaluate, [], [], []

    def spy(model, loader, device, autocast, world):
        val_sizes.append(len(loader.dataset))
        models_seen.append(model)
        ncm = _NearestClassMean()
        probe.append((real_evaluate(ncm, loader, device, autocast, world)[1],   # all ranks
                      real_evaluate(ncm, loader, device, autocast)[1]))         # this rank's shard
        return real_evaluate(model, loader, device, autocast, world)

    loop_mod._evaluate = spy
    report = run(TrainConfig(**cfg_dict))
    buffers = {k: v.numpy().copy() for k, v in models_seen[-1].state_dict().items() if "running" in k}
    out_q.put((rank, report["top1_percent"], val_sizes, buffers, probe[-1]))


def _spawn_two(cfg):
    """Run ``cfg`` on 2 gloo processes; {rank: (top1, val sizes, batch-norm buffers, probe)} (see
    :func:`_ddp_worker`)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.to_dict(), q), nprocs=2, join=True)
    return {r: rest for r, *rest in (q.get() for _ in range(2))}


def _full_val_top1(model, t_steps=2):
    """(top-1 in percent of ``model`` on the whole digits val set in this one process, val set size)."""
    from torch.utils.data import DataLoader

    from qsnn_kernels.data import build_dataset
    from qsnn_kernels.train.engine import _evaluate

    val = build_dataset("digits", None, "val", t_steps=t_steps).dataset
    return _evaluate(model, DataLoader(val, batch_size=100), torch.device("cpu"), contextlib.nullcontext)[1], len(val)


def _trained(folder, model_kwargs, wst=(8, 1, 2)):
    from qsnn_kernels.models import create_model

    model = create_model("qsnn_spiking_cnn_tiny", w_bits=wst[0], s_bits=wst[1], t_steps=wst[2], **model_kwargs)
    model.load_state_dict(_weights(folder))
    return model


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process(tmp_path, monkeypatch):
    """Exact up to float summation order: no batch norm (norm=False; per-rank BN statistics would
    differ from the global batch's), no dropout, no mixup; the global batch 32 is 2 x 16 per rank and
    the DistributedSampler gives the two ranks the same samples one process reads per step. The
    gradients' all-reduce sums in another order than one process's batch reduction, so the weights
    are compared at float32 tolerance, not bitwise. Validation: each rank evaluates half the val set
    and the all-reduced accuracy equals one process's on the whole set with the same weights."""
    # the spawned ranks unpickle _ddp_worker from this module: they get this process's sys.path, to
    # which the repository root is appended (last, so that the installed qsnn_kernels stays first)
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).resolve().parents[1])])
    kw = dict(model_kwargs={"width": 8, "norm": False}, epochs=1, max_steps_per_epoch=4, batch_size=32)
    one = _cfg(tmp_path, "one", **kw)
    report_one = run(one)
    two = _cfg(tmp_path, "two", **kw)
    ranks = _spawn_two(two)
    assert ranks[0][0] == ranks[1][0]                  # both ranks report the same (all-reduced) accuracy
    a, b = _weights(one.output), _weights(two.output)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    (r1,), (r2,) = _metrics(one.output), _metrics(two.output)
    assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-5)  # the loss over both ranks' samples
    # validation is sharded (each rank half of the val set, no sample twice) and the accuracy is the
    # exact global one: that of the same weights on the whole val set in one process
    top1_full, n_val = _full_val_top1(_trained(two.output, kw["model_kwargs"]))
    assert ranks[0][1] == [(n_val + 1) // 2] and ranks[1][1] == [n_val // 2]
    assert ranks[0][0] == top1_full == r2["val_top1_percent"]
    assert report_one["top1_percent"] == top1_full             # and the single-process run's (weights equal to 1e-5)
    # 4 steps leave the spiking model near chance; a fixed 90 % classifier on the same val loaders:
    # each rank's shard accuracy differs, the all-reduced one is exactly the whole set's
    ncm_full, _ = _full_val_top1(_NearestClassMean())
    (global0, local0), (global1, local1) = ranks[0][3], ranks[1][3]
    assert global0 == global1 == ncm_full > 80
    assert local0 != local1
    assert local0 * ((n_val + 1) // 2) + local1 * (n_val // 2) == pytest.approx(ncm_full * n_val)
    init = _cfg(tmp_path, "init", **dict(kw, lr=0.0, weight_decay=0.0))
    run(init)                                          # the weights moved: the comparison is not trivial
    assert max((a[k] - w).abs().max().item() for k, w in _weights(init.output).items() if w.is_floating_point()) > 1e-3


def test_ddp_sync_bn_two_processes_equal_one_process(tmp_path, monkeypatch):
    """With batch norm and --sync-bn, 2 gloo processes (16 samples each) train as 1 process with the
    global batch 32: the batch-norm statistics are taken over both ranks in the forward and the
    gradient flows through them in the backward (models/sync_batch_norm.py). Tolerance as in the
    test above (rtol 1e-4, atol 1e-5): the all-reduces of gradients and statistics sum in another
    order than one process. Without --sync-bn each rank normalizes its 16 samples by their own
    statistics and the weights differ by far more (this comparison then fails)."""
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).resolve().parents[1])])
    kw = dict(model_kwargs={"width": 8}, epochs=1, max_steps_per_epoch=4, batch_size=32, sync_bn=True)
    one = _cfg(tmp_path, "one", **kw)
    report_one = run(one)                              # one process: --sync-bn is plain batch norm
    two = _cfg(tmp_path, "two", **kw)
    ranks = _spawn_two(two)
    a, b = _weights(one.output), _weights(two.output)
    assert any("running_var" in k for k in a)
    for k in a:                                        # weights and running statistics
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    for k, v in ranks[1][2].items():                   # rank 1's running statistics are rank 0's
        torch.testing.assert_close(torch.from_numpy(v), torch.from_numpy(ranks[0][2][k]), rtol=1e-6, atol=1e-7, msg=k)
    top1_full, _ = _full_val_top1(_trained(two.output, kw["model_kwargs"]))
    assert ranks[0][0] == ranks[1][0] == top1_full
    assert report_one["top1_percent"] == pytest.approx(top1_full, abs=100 / 360)  # at most one of 360 predictions differs


class _ThreadRanks:
    """``world`` threads standing in for ranks: ``reduce(rank)`` is an in-place all-reduce (sum, in
    rank order: the same result on every rank) for :func:`global_batch_norm`."""

    def __init__(self, world):
        self.barrier, self.parts = threading.Barrier(world, timeout=60), [None] * world

    def reduce(self, rank):
        def all_reduce(t):
            self.parts[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.parts)
            self.barrier.wait()
            return t.copy_(total)

        return all_reduce


@pytest.mark.parametrize("split,momentum", [((2, 3), 0.1), ((1, 4), None), ((5, 0), 0.1)])
def test_global_batch_norm_equals_batch_norm_of_the_whole_batch(split, momentum):
    """Ranks holding (2, 3), (1, 4) and (5, 0) of 5 samples (a rank with none takes part too): output,
    input gradient, summed weight/bias gradients and running statistics equal one BatchNorm over the
    concatenated batch, in float64 to 1e-12 (summation order only)."""
    from qsnn_kernels.models.layers import MultiStepBatchNorm2d
    from qsnn_kernels.models.sync_batch_norm import global_batch_norm

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 2, 3, dtype=torch.float64) * 3 + 5        # [T, B, C, H, W], mean far from 0
    dy = torch.randn_like(x)
    ref = MultiStepBatchNorm2d(3, momentum=momentum).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.normal_()
    bns = [copy.deepcopy(ref) for _ in split]
    x_ref = x.clone().requires_grad_()
    y_ref = ref(x_ref)
    (y_ref * dy).sum().backward()

    ranks, outs, grads, errors = _ThreadRanks(len(split)), [None] * len(split), [None] * len(split), []
    bounds = [0, split[0], sum(split)]

    def rank_step(r):
        try:
            xr = x[:, bounds[r]:bounds[r + 1]].clone().requires_grad_()
            y = global_batch_norm(bns[r], xr.flatten(0, 1), reduce=ranks.reduce(r)).unflatten(0, xr.shape[:2])
            (y * dy[:, bounds[r]:bounds[r + 1]]).sum().backward()
            outs[r], grads[r] = y.detach(), xr.grad
        except BaseException as e:  # noqa: BLE001 - reported by the test thread below
            errors.append(e)

    threads = [threading.Thread(target=rank_step, args=(r,)) for r in range(len(split))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    tol = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat(outs, 1), y_ref.detach(), **tol)
    torch.testing.assert_close(torch.cat(grads, 1), x_ref.grad, **tol)
    torch.testing.assert_close(sum(bn.weight.grad for bn in bns), ref.weight.grad, **tol)
    torch.testing.assert_close(sum(bn.bias.grad for bn in bns), ref.bias.grad, **tol)
    for bn in bns:
        torch.testing.assert_close(bn.running_mean, ref.running_mean, **tol)
        torch.testing.assert_close(bn.running_var, ref.running_var, **tol)
        assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 1


def test_global_batch_norm_one_rank_gradcheck_and_errors():
    """One rank (an identity all-reduce): gradcheck of the custom backward in float64; eval mode
    and a channel with a single value are refused; without a process group --sync-bn's layer is
    the plain batch norm (bitwise)."""
    from qsnn_kernels.models.layers import MultiStepBatchNorm1d, MultiStepBatchNorm2d
    from qsnn_kernels.models.sync_batch_norm import global_batch_norm

    torch.manual_seed(1)
    bn = MultiStepBatchNorm1d(4, track_running_stats=False).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    from qsnn_kernels.models.sync_batch_norm import _GlobalBatchNorm

    def one_rank(x, w, b):
        return _GlobalBatchNorm.apply(x, w, b, None, None, 0.0, bn.eps, lambda t: t)

    assert torch.autograd.gradcheck(one_rank, (x, bn.weight, bn.bias))
    plain_bn = torch.nn.BatchNorm1d.forward(bn, x)                  # one rank: the plain batch norm
    torch.testing.assert_close(global_batch_norm(bn, x, reduce=lambda t: t), plain_bn)
    with pytest.raises(ValueError, match="more than 1 value"):
        global_batch_norm(bn, torch.randn(1, 4, dtype=torch.float64), reduce=lambda t: t)
    with pytest.raises(ValueError, match="eval mode"):
        global_batch_norm(bn.eval(), x, reduce=lambda t: t)
    plain, synced = MultiStepBatchNorm2d(3), MultiStepBatchNorm2d(3)
    synced.sync_stats = True
    z = torch.randn(2, 4, 3, 5, 5).transpose(3, 4)                    # [T, B, C, H, W], not contiguous
    assert torch.equal(plain(z), synced(z)) and torch.equal(plain.running_var, synced.running_var)


def test_sync_bn_flag_and_unsupported_batch_norm(tmp_path):
    from qsnn_kernels.models import create_model
    from qsnn_kernels.train.engine import enable_sync_batch_norm

    assert parse_args(["--sync-bn"]).sync_bn is True and parse_args([]).sync_bn is False
    m = create_model("qsnn_spiking_cnn_tiny", width=4)
    assert enable_sync_batch_norm(m) == 3 and all(m.get_submodule(f"bn{i}").sync_stats for i in (1, 2, 3))
    for name in ("qsnn_sew_resnet18_cifar", "qsnn_spikformer_4_384"):               # every architecture's BNs
        model = create_model(name, num_classes=2)
        n_bn = sum(isinstance(b, torch.nn.modules.batchnorm._BatchNorm) for b in model.modules())
        assert enable_sync_batch_norm(model) == n_bn > 0
    foreign = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"--sync-bn: .*1 \(BatchNorm2d\)"):
        enable_sync_batch_norm(foreign)


def _write_cifar10(root, n=3):
    """torchvision's CIFAR-10 layout with ``n`` random images per batch file."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": [int(v) for v in rng.integers(0, 10, n)]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def _randaug_ops(transform):
    from timm.data.auto_augment import RandAugment

    found = [t for t in transform.transforms if isinstance(t, RandAugment)]
    assert len(found) == 1, transform
    return found[0]


def test_randaug_policy_reaches_cifar_and_imagenet_transforms(tmp_path):
    from timm.data.auto_augment import RandAugment

    from qsnn_kernels.data.images import imagenet_transform
    from qsnn_kernels.train.engine import _build_data

    _write_cifar10(tmp_path)
    cfg = _cfg(tmp_path, data="cifar10", data_root=str(tmp_path), randaug="rand-m7-n3-mstd0.5-inc1")
    train, val = _build_data(cfg, 1)
    ra = _randaug_ops(train.dataset.transform)
    assert ra.num_layers == 3 and ra.ops and {op.magnitude for op in ra.ops} == {7}
    assert {op.magnitude_std for op in ra.ops} == {0.5}
    assert not any(isinstance(t, RandAugment) for t in val.dataset.transform.transforms)
    names = [type(t).__name__ for t in train.dataset.transform.transforms]
    assert names[:2] == ["RandomCrop", "RandomHorizontalFlip"] and names[-2:] == ["ToTensor", "Normalize"]
    x, _ = train.dataset[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32   # RandAugment ran on the PIL image
    # without --randaug, --augment is crop + flip only
    plain, _ = _build_data(_cfg(tmp_path, data="cifar10", data_root=str(tmp_path), augment=True), 1)
    assert not any(isinstance(t, RandAugment) for t in plain.dataset.transform.transforms)
    ra = _randaug_ops(imagenet_transform(40, True, "rand-m5-n1"))
    assert ra.num_layers == 1 and {op.magnitude for op in ra.ops} == {5}


@pytest.mark.parametrize("policy,match", [("rand-m9-bogus", "unknown section 'bogus'"), ("rnd-m9", "rand-m9"),
                                          ("rand-mx", "unknown section 'mx'"), ("rand-m9.5", "needs a number"),
                                          ("rand-tfoo", "unknown op set"), ("rand-p1.5", "out of range"),
                                          ("augmix-m5", "rand-m9")])
def test_bad_randaug_policy_is_a_clear_error_before_training(tmp_path, policy, match):
    from qsnn_kernels.data import build_dataset

    cfg = _cfg(tmp_path, data="cifar10", data_root=str(tmp_path / "nowhere"), randaug=policy)
    with pytest.raises(ValueError, match="--randaug .*" + match):
        run(cfg)
    assert not os.path.exists(cfg.output)                              # nothing started
    with pytest.raises(ValueError, match=match):                       # checked before the folder is looked at
        build_dataset("imagenet", str(tmp_path / "nowhere"), "train", t_steps=1, augment=True, randaug=policy)


def test_randaug_only_for_image_data_sets(tmp_path):
    from qsnn_kernels.data import build_dataset

    with pytest.raises(ValueError, match="--randaug applies to cifar10, cifar100, imagenet.*'digits'"):
        run(_cfg(tmp_path, randaug="rand-m9"))
    with pytest.raises(ValueError, match="not to 'digits-events'"):
        build_dataset("digits-events", None, "train", t_steps=2, augment=True, randaug="rand-m9")
    with pytest.raises(ValueError, match="needs augment=True"):
        build_dataset("imagenet", str(tmp_path), "train", t_steps=1, augment=False, randaug="rand-m9")


@pytest.mark.parametrize("n,world", [(360, 2), (7, 2), (10, 3), (2, 3), (5, 1)])
def test_val_shard_disjoint_no_padding(n, world):
    from qsnn_kernels.train.engine import val_shard

    data = list(range(n))
    shards = [list(val_shard(data, r, world)) for r in range(world)]
    assert sorted(sum(shards, [])) == data                             # every sample exactly once
    assert [len(s) for s in shards] == [len(range(r, n, world)) for r in range(world)]


def test_event_input_frame_per_step(tmp_path, monkeypatch):
    monkeypatch.setenv("QSNN_CACHE_DIR", str(tmp_path / "cache"))  # the event frames' cache, not ~/.cache
    from qsnn_kernels.models import create_model
    from qsnn_kernels.models.layers import encode_direct

    x = torch.randn(3, 5, 2, 4, 4)
    assert torch.equal(encode_direct(x, 5, events=True), x.transpose(0, 1))
    with pytest.raises(ValueError, match=r"T=4"):
        encode_direct(x, 4, events=True)
    img = torch.randn(3, 2, 4, 4)
    assert torch.equal(encode_direct(img, 2)[1], img)
    m = create_model("spiking_cnn_tiny", t_steps=5, in_chans=2, width=4).eval()
    y = m(x)
    assert y.shape == (3, 10)
    # a different frame at one step changes the output; repeating one frame equals the image input
    same = x[:, :1].expand(3, 5, 2, 4, 4).contiguous()
    torch.testing.assert_close(m(same), m(x[:, 0]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="event input"):
        m(torch.randn(3, 4, 2, 4, 4))

    cfg = _cfg(tmp_path, events=True, epochs=1, max_steps_per_epoch=2)
    report = run(cfg)
    assert report["data"] == "digits-events" and 0.0 <= report["top1_percent"] <= 100.0


def test_bad_inputs_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'qsnn_spiking_cnn_tinyy'.*did you mean"):
        run(_cfg(tmp_path, model="spiking_cnn_tinyy"))
    with pytest.raises(ValueError, match="w_bits"):
        run(_cfg(tmp_path, wst="3/1/2"))
    with pytest.raises(ValueError, match="t_steps"):
        run(_cfg(tmp_path, wst="4/1/0"))
    with pytest.raises(ValueError, match="W/S/T"):
        run(_cfg(tmp_path, wst="4/2"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(_cfg(tmp_path, data="cifar10", data_root=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="unknown data set"):
        run(_cfg(tmp_path, data="mnist"))
    with pytest.raises(ValueError, match="bf16"):
        run(_cfg(tmp_path, amp="bf16"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(_cfg(tmp_path, "empty", resume=True))
    # a checkpoint written for another model
    other = tmp_path / "other"
    other.mkdir()
    ckpt_mod.save_atomic(dict(model_name="qsnn_sew_resnet18_cifar", wst=[8, 1, 2], model={}, epoch=0),
                         str(other / "last.pt"))
    with pytest.raises(ValueError, match="qsnn_sew_resnet18_cifar.*not of 'qsnn_spiking_cnn_tiny'"):
        run(_cfg(tmp_path, "other", resume=True))
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})


def test_half_written_checkpoint_never_replaces_good_one(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    ckpt_mod.save_atomic({"good": torch.ones(3)}, path)

    def torch_save_dies(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", torch_save_dies)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.save_atomic({"bad": 1}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["good"], torch.ones(3))
    assert os.listdir(tmp_path) == ["last.pt"]


def test_cli_flags_and_yaml(tmp_path, capsys):
    from qsnn_kernels.cli import main

    yml = tmp_path / "c.yaml"
    yml.write_text("epochs: 7\nwst: 4/2/1\nlr: 0.001\nmodel_kwargs: {width: 4}\n")
    cfg = parse_args(["--config", str(yml), "--wst", "2/1/3", "--model-ema"])
    assert (cfg.epochs, cfg.wst, cfg.lr, cfg.model_ema, cfg.model_kwargs) == (7, "2/1/3", 1e-3, True, {"width": 4})
    assert parse_args(["--resume"]).resume is True and parse_args(["--resume", "x.pt"]).resume == "x.pt"
    assert main(["train", "--model", "no_such_model", "--output", str(tmp_path / "r")]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_loss_watch_sums_on_the_device_and_raises_on_a_non_finite_loss():
    """The training loop's loss sum and finiteness check read the device only when checked: the sum
    is exact, and a NaN/inf loss raises FloatingPointError naming the first bad value and the steps
    since the last check."""
    watch = loop_mod._LossWatch(torch.device("cpu"))
    watch.add(torch.tensor(0.5), 4)
    watch.check(0, 0)
    watch.add(torch.tensor(0.25), 2)
    watch.add(torch.tensor(float("inf")), 2)
    watch.add(torch.tensor(float("nan")), 2)
    assert watch.total.device.type == "cpu" and watch.total.dtype == torch.float64
    with pytest.raises(FloatingPointError, match=r"epoch 2 steps 1-3: the loss is inf; lower --lr"):
        watch.check(1, 3)
    ok = loop_mod._LossWatch(torch.device("cpu"))
    for loss in (1.0, 2.0, 3.0):
        ok.add(torch.tensor(loss, requires_grad=True) * 1, 3)
    ok.check(0, 2)
    assert ok.sum() == 18.0


def test_int8_flag_sets_every_quantized_layer(tmp_path, monkeypatch):
    """``--int8 on|off|auto`` sets the int8 rule of every QuantLinear/QuantConv2d of the model
    trained (set_int8), and a bad value is refused when the flags are parsed."""
    from qsnn_kernels.models import layers as layers_mod

    assert parse_args(["--int8", "on"]).int8 == "on" and parse_args([]).int8 == "auto"
    with pytest.raises(SystemExit):
        parse_args(["--int8", "always"])
    seen, set_int8 = {}, layers_mod.set_int8

    def spy(model, int8):
        seen["int8"], seen["layers"] = int8, set_int8(model, int8)
        return seen["layers"]

    monkeypatch.setattr(layers_mod, "set_int8", spy)
    run(_cfg(tmp_path, epochs=1, max_steps_per_epoch=2, int8="off"))
    assert seen["int8"] is False and seen["layers"] > 0
    with pytest.raises(ValueError):
        layers_mod.set_int8(torch.nn.Linear(2, 2), "on")
