"""qsnn train (qsnn_kernels.train): a short run on the embedded digits learns; resume after an
interrupt equals the uninterrupted run; 2-process DDP on gloo equals one process with the same
global batch; bad input gives clear errors; checkpoints are replaced atomically."""

from __future__ import annotations

import json
import os
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
    return torch.load(os.path.join(folder, name), map_location="cpu", weights_only=False)["model"]


def test_short_run_learns_and_writes_run_folder(tmp_path):
    cfg = _cfg(tmp_path, epochs=3, max_steps_per_epoch=10)
    report = run(cfg)
    rows = _metrics(cfg.output)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1, rows
    assert report["top1"] > 0.3  # 10 classes: chance is 0.1
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "report.json"):
        assert os.path.isfile(os.path.join(cfg.output, name)), name
    with open(os.path.join(cfg.output, "report.json")) as f:
        on_disk = json.load(f)
    assert on_disk["top1"] == report["top1"] and on_disk["bit_budget"] == 8 * 1 * 2
    assert report["params"] == sum(v.numel() for k, v in _weights(cfg.output).items()
                                   if "running" not in k and "num_batches" not in k)
    assert report["s_ace"] > 0 and report["ns_ace"] > 0 and report["firing_rate"]
    assert all(0.0 <= r <= 1.0 for r in report["firing_rate"].values())
    assert not [n for n in os.listdir(cfg.output) if n.endswith(".tmp")]


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
    ema_a = torch.load(os.path.join(full.output, "last.pt"), weights_only=False)["ema"]
    ema_b = torch.load(os.path.join(cut.output, "last.pt"), weights_only=False)["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("images_per_s", "epoch_time_s")} for r in rows]
    assert strip(_metrics(full.output)) == strip(_metrics(cut.output))


def _ddp_worker(rank, world, port, cfg_dict, out_q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    report = run(TrainConfig(**cfg_dict))
    out_q.put((rank, report["top1"]))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process(tmp_path, monkeypatch):
    """Exact up to float summation order: no batch norm (norm=False; per-rank BN statistics would
    differ from the global batch's), no dropout, no mixup; the global batch 32 is 2 x 16 per rank and
    the DistributedSampler gives the two ranks the same samples one process reads per step. The
    gradients' all-reduce sums in another order than one process's batch reduction, so the weights
    are compared at float32 tolerance, not bitwise."""
    import torch.multiprocessing as mp

    # the spawned ranks unpickle _ddp_worker from this module: they get this process's sys.path, to
    # which the repository root is appended (last, so that the installed qsnn_kernels stays first)
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).resolve().parents[1])])
    kw = dict(model_kwargs={"width": 8, "norm": False}, epochs=1, max_steps_per_epoch=4, batch_size=32)
    one = _cfg(tmp_path, "one", **kw)
    run(one)
    two = _cfg(tmp_path, "two", **kw)
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.spawn(_ddp_worker, args=(2, _free_port(), two.to_dict(), q), nprocs=2, join=True)
    accs = dict(q.get() for _ in range(2))
    assert accs[0] == accs[1]                          # both ranks hold the same weights
    a, b = _weights(one.output), _weights(two.output)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    (r1,), (r2,) = _metrics(one.output), _metrics(two.output)
    assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-5)  # the loss over both ranks' samples
    init = _cfg(tmp_path, "init", **dict(kw, lr=0.0, weight_decay=0.0))
    run(init)                                          # the weights moved: the comparison is not trivial
    assert max((a[k] - w).abs().max().item() for k, w in _weights(init.output).items() if w.is_floating_point()) > 1e-3


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
    assert report["data"] == "digits-events" and 0.0 <= report["top1"] <= 1.0


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
    torch.save(dict(model_name="qsnn_sew_resnet18_cifar", wst=[8, 1, 2], model={}, epoch=0), other / "last.pt")
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
