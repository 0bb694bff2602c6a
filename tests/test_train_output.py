"""What ``qsnn train`` shows: ``--help`` and a misused flag answer without importing torch, timm or
tonic; every flag's help says what it does and the values it takes; the run ends with one summary
line (top-1 in percent; ``--json`` for the report); a log or a pipe gets one line per epoch and no
progress bars; ``--resume`` of a finished run says in one line that there is nothing to do; under
torchrun only rank 0 prints an error and every rank exits with its status. And the batch-norm
statistics a run evaluates and saves are recomputed over training batches (``precise_bn``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qsnn_kernels.train import TrainConfig, main, run
from qsnn_kernels.train import loop as loop_mod
from qsnn_kernels.train.config import build_parser

REPO = str(Path(__file__).resolve().parents[1])
HEAVY = ("torch", "timm", "tonic")
TINY = ["--model", "spiking_cnn_tiny", "--model-kwargs", '{"width": 8}', "--wst", "8/1/2", "--epochs", "2",
        "--batch-size", "32", "--lr", "5e-3", "--warmup-epochs", "0", "--max-steps-per-epoch", "3", "--device", "cpu"]


def _python(*args, env=None, timeout=120):
    """Run ``python -X importtime *args`` in a fresh process; (returncode, stdout, stderr without the
    import-time lines, the top-level packages imported)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    imported, err = set(), []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
        else:
            err.append(line)
    return proc.returncode, proc.stdout, err, imported


@pytest.mark.parametrize("command", [["-m", "qsnn_kernels.train"], ["-m", "qsnn_kernels.cli", "train"]])
def test_help_imports_no_torch(command):
    code, out, err, imported = _python(*command, "--help")
    assert code == 0 and "--precise-bn" in out and not err
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


@pytest.mark.parametrize("flags,match", [
    (["--epochs", "0"], "argument --epochs"),
    (["--wst", "4/2/4", "--wst", "3/1/1"], "w_bits must be one of"),
    (["--wst", "4/2/0"], "t_steps"),
    (["--data", "mnist"], "unknown data set 'mnist'"),
    (["--device", "gpu"], "auto, cpu, cuda or cuda:N"),
    (["--amp", "fp8"], "one of auto, bf16, none"),
    (["--on-error", "ignore"], "one of skip, raise"),
    (["--opt", "adamw", "--sched", "linear"], "one of cosine"),
])
def test_bad_argument_is_refused_without_torch(flags, match):
    code, out, err, imported = _python("-m", "qsnn_kernels.train", *flags)
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith("qsnn train: error: ") and match in err[0], err
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))


def test_every_flag_has_help_with_its_choices():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    for dest, action in actions.items():
        assert action.help and not action.help.startswith("(default"), dest  # says what the flag does
    text = parser.format_help()
    from qsnn_kernels.data import DATASETS

    data_help = " ".join(actions["data"].help.split())
    assert all(name in data_help for name in DATASETS), data_help
    assert "auto, cpu, cuda or cuda:N" in actions["device"].help
    assert "one of auto, bf16, none" in actions["amp"].help
    assert "one of skip, raise" in actions["on_error"].help
    assert "percent" in text


def test_summary_line_json_epoch_lines_and_finished_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--output", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    report = json.loads((out / "report.json").read_text())
    # one line per epoch (stderr is no terminal here: no progress bar), then the summary line
    assert [line.split()[:2] for line in lines[:-1]] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert captured.err == ""
    assert lines[-1] == (f"qsnn train: top-1 {report['top1_percent']:.2f}% final, "
                         f"{report['best_top1_percent']:.2f}% best; 2 epochs in {report['wall_time_s']:.1f} s; "
                         f"run folder {out}")
    assert f"val top-1 {report['top1_percent']:.2f}%" in lines[-2]  # the same figure, the same unit
    assert 0.0 <= report["top1_percent"] <= report["best_top1_percent"] <= 100.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_top1_percent"] == report["top1_percent"]
    assert max(r["val_top1_percent"] for r in rows) == report["best_top1_percent"]
    # --resume of the finished run: one line says so, the report as JSON with --json, exit 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*TINY, "--output", str(out), "--resume", "--json"]) == 0
    captured = capsys.readouterr()
    first, rest = captured.out.split("\n", 1)
    assert "is finished" in first and first.endswith("nothing to do") and captured.err == ""
    assert json.loads(rest) == report
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_progress_bar_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    cfg = dict(model="spiking_cnn_tiny", model_kwargs={"width": 8}, wst="8/1/2", epochs=1, batch_size=32,
               max_steps_per_epoch=3, device="cpu", progress=True)
    run(TrainConfig(**cfg, output=str(tmp_path / "pipe")))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.count("\n") == 1  # the epoch line only
    monkeypatch.setattr(loop_mod, "_is_terminal", lambda stream: True)
    run(TrainConfig(**cfg, output=str(tmp_path / "tty")))
    assert "step" in capsys.readouterr().err  # the tqdm bar


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flags,collective", [
    (["--epochs", "0"], False),                                        # refused while parsing
    (["--data", "cifar10", "--data-root", "no_such_folder"], True),    # refused after the process group formed
])
def test_torchrun_error_is_printed_by_rank_0_only(tmp_path, flags, collective):
    """Two ranks as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT; gloo): rank 0 prints
    the one error line, rank 1 nothing; both exit 2 (no traceback, no hang)."""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "qsnn_kernels.train", *flags, "--device", "cpu",
                                       "--output", str(tmp_path / "run")],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    (out0, err0), (out1, err1) = (p.communicate(timeout=180) for p in procs)
    assert [p.returncode for p in procs] == [2, 2]
    err0 = [line for line in err0.splitlines() if line.startswith("qsnn") or "Traceback" in line]
    assert len(err0) == 1 and err0[0].startswith("qsnn train: error: "), err0
    assert ("no_such_folder" if collective else "--epochs") in err0[0]
    assert out0 == out1 == "" and "qsnn" not in err1 and "Traceback" not in err1, err1
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- precise_bn


class _BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 4)
        self.bn = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.lin(x))


def test_recompute_batch_norm_is_the_average_over_the_batches():
    import contextlib

    torch.manual_seed(0)
    net = _BNNet()
    batches = [(torch.randn(8, 3) * (i + 1) + i, torch.zeros(8)) for i in range(5)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    used = loop_mod.recompute_batch_norm(net, batches, 3, torch.device("cpu"), contextlib.nullcontext)
    assert used == 3 and not net.training and net.bn.momentum == 0.1
    with torch.no_grad():
        h = [net.lin(x) for x, _ in batches[:3]]
    torch.testing.assert_close(net.bn.running_mean, torch.stack([z.mean(0) for z in h]).mean(0))
    torch.testing.assert_close(net.bn.running_var, torch.stack([z.var(0) for z in h]).mean(0))
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    assert loop_mod.recompute_batch_norm(torch.nn.Linear(3, 4), batches, 3, torch.device("cpu"),
                                         contextlib.nullcontext) == 0


def test_saved_and_evaluated_statistics_are_recomputed_over_the_training_batches(tmp_path):
    """The run's final model (last.pt, the report's top1_percent) carries batch-norm statistics
    averaged over the training batches with the final weights, not the running averages of the
    last few batches (which made ``--events --wst 1/2/4`` lose 10 points in its last epoch)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from qsnn_kernels.data import build_dataset
    from qsnn_kernels.models import create_model

    cfg = TrainConfig(model="spiking_cnn_tiny", model_kwargs={"width": 8}, wst="8/1/2", epochs=1, batch_size=32,
                      max_steps_per_epoch=4, precise_bn=3, device="cpu", progress=False, output=str(tmp_path / "r"))
    report = run(cfg)
    saved = torch.load(tmp_path / "r" / "last.pt", weights_only=True)["model"]
    model = create_model("qsnn_spiking_cnn_tiny", w_bits=8, s_bits=1, t_steps=2, width=8)
    model.load_state_dict(saved)
    train = build_dataset("digits", None, "train", t_steps=2).dataset
    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed)
    sampler.set_epoch(0)  # the epoch's order, as the run read it
    loader = DataLoader(train, batch_size=32, sampler=sampler)
    batch_means = []
    hook = model.bn2.register_forward_hook(lambda m, inp, out: batch_means.append(inp[0].mean((0, 1, 3, 4))))
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i == 3:
                break
            model(x)
    hook.remove()
    torch.testing.assert_close(saved["bn2.running_mean"], torch.stack(batch_means).mean(0), rtol=1e-5, atol=1e-6)
    assert report["top1_percent"] == json.loads((tmp_path / "r" / "metrics.jsonl").read_text())["val_top1_percent"]
