"""Every misuse of a ``qsnn`` command: one line ``qsnn <command>: error: ...`` naming the argument on
stderr, exit status 2, nothing written (no traceback, no run folder). Failures from outside during a
run (disk full) and data errors during a run: one line too (qsnn_kernels.argtypes holds the contract).

Parse-time cases never train; the few cases that must reach the training loop run one step of the
tiny model on the embedded digits."""

from __future__ import annotations

import argparse
import errno
import os

import pytest
import torch

from qsnn_kernels.argtypes import float_in, int_in
from qsnn_kernels.cli import main

FAST = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "16", "--progress", "false", "--device", "cpu"]
SWEEP_FAST = ["--epochs", "1", "--set", "max_steps_per_epoch=1", "--set", "device=cpu"]


def _files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, dirs, names in os.walk(root) for n in dirs + names}


def _call(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse refusals exit; the run's own refusals return the status
        return e.code


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp_path as the working folder (so a default output such as runs/train would land in it),
    holding a regular file and a few YAML files the cases point at."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "typo.yaml").write_text("epoch: 3\n")
    (tmp_path / "badtype.yaml").write_text("epochs: ten\n")
    (tmp_path / "floatint.yaml").write_text("batch_size: 3.5\n")
    (tmp_path / "list.yaml").write_text("lr: [1, 2]\n")
    (tmp_path / "notyaml.yaml").write_text("epochs: [\n")
    (tmp_path / "notmap.yaml").write_text("- 1\n")
    cif = tmp_path / "cifar" / "cifar-10-batches-py"
    cif.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (cif / name).write_bytes(b"garbage\n")
    return tmp_path


# (command, argv after the command, text the error line must contain: the flag or the value it names)
MISUSES = [
    # qsnn train: flags refused at parse time
    ("train", ["--max-steps-per-epoch", "0"], "--max-steps-per-epoch"),
    ("train", ["--input-size", "-5"], "--input-size"),
    ("train", ["--input-size", "100000"], "--input-size"),
    ("train", ["--warmup-epochs", "-1"], "--warmup-epochs"),
    ("train", ["--epochs", "0"], "--epochs"),
    ("train", ["--batch-size", "-2"], "--batch-size"),
    ("train", ["--lr", "0"], "--lr"),
    ("train", ["--lr", "nan"], "--lr"),
    ("train", ["--weight-decay", "-1"], "--weight-decay"),
    ("train", ["--warmup-lr", "-1e-3"], "--warmup-lr"),
    ("train", ["--min-lr", "-1"], "--min-lr"),
    ("train", ["--smoothing", "1"], "--smoothing"),
    ("train", ["--mixup", "-0.5"], "--mixup"),
    ("train", ["--cutmix", "-1"], "--cutmix"),
    ("train", ["--model-ema-decay", "1.5"], "--model-ema-decay"),
    ("train", ["--workers", "-1"], "--workers"),
    ("train", ["--log-interval", "0"], "--log-interval"),
    ("train", ["--seed", "x"], "--seed"),
    ("train", ["--amp", "fp16"], "--amp"),
    ("train", ["--on-error", "ignore"], "--on-error"),
    ("train", ["--sched", "cosinus"], "--sched"),
    ("train", ["--opt", "adamz"], "--opt"),
    ("train", ["--device", "tpu"], "--device"),
    ("train", ["--device", "cuda:99"], "--device"),
    ("train", ["--wst", "4/2/100000"], "--wst"),
    ("train", ["--wst", "4/2"], "--wst"),
    ("train", ["--wst", "3/1/1"], "--wst"),
    ("train", ["--model-kwargs", "{width: 4"], "--model-kwargs"),
    ("train", ["--model-kwargs", "[1]"], "--model-kwargs"),
    ("train", ["--progress", "maybe"], "--progress"),
    ("train", ["--output", "a_file"], "--output"),
    ("train", ["--output", "a_file/run"], "--output"),
    ("train", ["--no-such-flag"], "--no-such-flag"),
    # qsnn train: the --config file
    ("train", ["--config", "missing.yaml"], "--config missing.yaml"),
    ("train", ["--config", "typo.yaml"], "'epoch' (did you mean epochs?)"),
    ("train", ["--config", "badtype.yaml"], "epochs: expected an integer >= 1, got 'ten'"),
    ("train", ["--config", "floatint.yaml"], "batch_size"),
    ("train", ["--config", "list.yaml"], "lr"),
    ("train", ["--config", "notyaml.yaml"], "--config notyaml.yaml"),
    ("train", ["--config", "notmap.yaml"], "--config notmap.yaml"),
    # qsnn train: refused by the run, before it writes anything
    ("train", ["--model", "no_such_model"], "no_such_model"),
    ("train", ["--data", "mnist"], "mnist"),
    ("train", ["--data", "cifar10", "--data-root", "nowhere"], "nowhere"),
    ("train", ["--data", "cifar10", "--data-root", "cifar", "--on-error", "raise"], "cifar"),  # corrupt files
    ("train", ["--resume", "nope.pt"], "nope.pt"),
    ("train", ["--amp", "bf16", "--device", "cpu"], "--amp"),
    # qsnn sweep
    ("sweep", ["--budget", "0"], "--budget"),
    ("sweep", ["--budget", "2000"], "--budget"),
    ("sweep", ["--budget", "2", "--epochs", "0"], "--epochs"),
    ("sweep", ["--budget", "2", "--batch-size", "0"], "--batch-size"),
    ("sweep", ["--budget", "2", "--seed", "x"], "--seed"),
    ("sweep", ["--budget", "2", "--output", "a_file/sweep"], "--output"),
    ("sweep", ["--budget", "2", "--config", "missing.yaml"], "--config"),
    ("sweep", ["--budget", "2", "--config", "badtype.yaml"], "epochs"),
    ("sweep", ["--budget", "2", "--set", "epochs=0"], "--set epochs=0"),
    ("sweep", ["--budget", "2", "--set", "max_steps_per_epoch=-1"], "--set max_steps_per_epoch=-1"),
    ("sweep", ["--budget", "2", "--set", "no_such_field=1"], "no_such_field"),
    ("sweep", ["--budget", "2", "--model", "no_such_model"], "no_such_model"),  # refused by the first split's run
    # qsnn budget
    ("budget", ["--model", "spiking_cnn_tiny", "--wst", "1/1/5000"], "--wst"),
    ("budget", ["--model", "spiking_cnn_tiny", "--wst", "3/1/1"], "--wst"),
    ("budget", ["--model", "spiking_cnn_tiny", "--wst", "1/1/1", "--input-size", "0"], "--input-size"),
    ("budget", ["--model", "sew_resnet18", "--wst", "1/1/1", "--input-size", "100000"], "--input-size"),
    ("budget", ["--model", "spiking_cnn_tiny", "--wst", "1/1/1", "--batch", "-1"], "--batch"),
    ("budget", ["--model", "spiking_cnn_tiny", "--wst", "1/1/1", "--encoding", "maybe"], "--encoding"),
    ("budget", ["--model", "no_such_model", "--wst", "1/1/1"], "no_such_model"),
    # qsnn demo
    ("demo", ["--out-features", "0"], "--out-features"),
    ("demo", ["--in-features", "-3"], "--in-features"),
    ("demo", ["--out-features", "x"], "--out-features"),
]


@pytest.mark.parametrize("command, argv, named", MISUSES, ids=[f"{c} {' '.join(a)}" for c, a, _ in MISUSES])
def test_misuse_is_one_line_exit_2_nothing_written(workdir, capsys, command, argv, named):
    # one short step ahead of the misuse (a later flag wins), so that a misuse wrongly accepted trains
    # for a moment, not for 15 epochs; and an output folder inside workdir
    if command == "train":
        argv = [*FAST, *argv, "--output", "out"]
    elif command == "sweep":
        argv = [*SWEEP_FAST, *argv] + ([] if "--output" in argv else ["--output", "out"])
    before = _files(workdir)
    code = _call([command, *argv])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"qsnn {command}: error: "), lines[0]
    assert named in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert _files(workdir) == before  # no run folder, no sweep folder, nothing else


def test_unknown_command_is_one_line(workdir, capsys):
    assert _call(["trian"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("qsnn: error: ") and "trian" in err[0]


def test_parse_args_refuses_yaml_values_it_used_to_pass_on(tmp_path):
    """TrainConfig.from_dict checks every value like the flag does (one fact: config._FIELD_TYPES)."""
    from qsnn_kernels.train import TrainConfig

    with pytest.raises(ValueError, match="warmup_epochs: expected an integer >= 0, got -1"):
        TrainConfig.from_dict({"warmup_epochs": -1})
    with pytest.raises(ValueError, match="epochs: expected an integer >= 1, got True"):
        TrainConfig.from_dict({"epochs": True})
    cfg = TrainConfig.from_dict({"epochs": "3", "lr": 1, "input_size": None, "progress": "no"})
    assert (cfg.epochs, cfg.lr, cfg.input_size, cfg.progress) == (3, 1.0, None, False)


FULL_DISK = [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
    OSError(errno.ENOSPC, "No space left on device"),
]


@pytest.mark.parametrize("exc", FULL_DISK, ids=["torch-enforce-fail", "ENOSPC"])
def test_full_disk_while_saving_is_one_line_exit_1(workdir, capsys, monkeypatch, exc):
    """A checkpoint write that fails for want of space: one line naming the run folder, status 1
    (an outside failure of a run that had started, not a misuse: argtypes' contract)."""
    def no_space(obj, f, *args, **kwargs):
        raise exc

    monkeypatch.setattr(torch, "save", no_space)
    code = _call(["train", *FAST, "--output", "full_run"])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("qsnn train: error: "), err
    assert "full_run" in lines[0] and ("space" in lines[0] or "disk" in lines[0]), lines[0]
    assert "Traceback" not in err


def test_corrupt_file_during_training_is_one_line(workdir, capsys, monkeypatch):
    """The data loaders' CorruptFileError raised from inside the epoch loop (a file that turns
    out unreadable when it is read): one line naming the file, status 2."""
    from qsnn_kernels.data.common import CorruptFileError
    from qsnn_kernels.train import engine

    real = engine._build_data

    class Unreadable(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            raise CorruptFileError(f"digits: corrupt file /data/sample_{i}.png")

    def build(cfg, t_steps):
        train, val = real(cfg, t_steps)
        train.dataset = Unreadable(train.dataset)
        return train, val

    monkeypatch.setattr(engine, "_build_data", build)
    code = _call(["train", *FAST, "--output", "run"])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("qsnn train: error: digits: corrupt file /data/sample_"), err


def test_sweep_full_disk_stops_with_one_line(workdir, capsys, monkeypatch):
    """A full disk stops the sweep (every later split would fail the same way): one line, status 1,
    instead of a failed row per split."""
    def no_space(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    code = _call(["sweep", "--budget", "2", "--epochs", "1", "--output", "sw", "--quiet",
                  "--set", "max_steps_per_epoch=1", "--set", "device=cpu"])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("qsnn sweep: error: ") and "No space left" in lines[0], err


def test_sweep_quiet_prints_no_progress(workdir, capsys):
    """--quiet: no progress bars (tqdm, stderr), no per-epoch lines, no [sweep] lines; the table only."""
    code = _call(["sweep", "--budget", "1", "--epochs", "1", "--output", "sw", "--quiet",
                  "--set", "max_steps_per_epoch=2", "--set", "device=cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == ""
    assert "epoch 1/1" not in out and "[sweep" not in out
    assert "1/1/1" in out  # the table
    assert (workdir / "sw" / "sweep.csv").is_file()


@pytest.mark.parametrize("exc, status, text", [
    (ValueError("--wst 4/2: bad"), 2, "--wst 4/2: bad"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/y"), 2, "/x/y: No such file or directory"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "out: No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/run"), 1, "/ro/run: Permission denied"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"), 1, "disk full"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 26214400000 bytes.\nmore"), 1, "not enough memory"),
    (FloatingPointError("epoch 1 step 3: the loss is nan; lower --lr"), 1, "the loss is nan"),
    (KeyError("a bug"), None, None),
    (RuntimeError("some internal assertion"), None, None),
])
def test_error_status_sorts_misuse_outside_failures_and_bugs(exc, status, text):
    from qsnn_kernels.argtypes import error_status

    got = error_status(exc, output="out")
    if status is None:
        assert got is None  # a bug keeps its traceback
    else:
        assert got[0] == status and text in got[1] and "\n" not in got[1]


def test_a_bug_during_the_run_keeps_its_traceback(workdir, monkeypatch):
    import qsnn_kernels.train as train

    def buggy(cfg):
        raise KeyError("an internal bug")

    monkeypatch.setattr(train, "run", buggy)
    with pytest.raises(KeyError, match="an internal bug"):
        main(["train", "--output", "out"])


# ----------------------------------------------------------------------------- argtypes' number types

INT_1_100, INT_1, ANY_INT = int_in(1, 100), int_in(1), int_in()
NONNEG, FRACTION, POSITIVE, ANY_NUMBER = float_in(0.0), float_in(0.0, 1.0, hi_open=True), float_in(0.0, lo_open=True), float_in()


@pytest.mark.parametrize("parse, value, expected", [
    (INT_1_100, "7", 7), (INT_1_100, " 100 ", 100), (ANY_INT, 10**30, 10**30),
    (NONNEG, "2.5", 2.5), (NONNEG, 3, 3.0), (FRACTION, "0", 0.0), (POSITIVE, 1e-9, 1e-9),
])
def test_number_types_accept(parse, value, expected):
    got = parse(value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("parse, value, message", [
    (INT_1_100, "0", "expected an integer >= 1 and <= 100, got 0"),
    (INT_1_100, "101", "expected an integer >= 1 and <= 100, got 101"),
    (INT_1, "x", "expected an integer >= 1, got 'x'"),
    (INT_1, "1.5", "expected an integer >= 1, got '1.5'"),
    (INT_1, 1.0, "expected an integer >= 1, got 1.0 (float)"),
    (INT_1, True, "expected an integer >= 1, got True"),
    (FRACTION, "1", "expected a number >= 0 and < 1, got 1"),
    (POSITIVE, 0, "expected a number > 0, got 0"),
    (NONNEG, "nan", "expected a number >= 0, got nan"),
    (ANY_NUMBER, "inf", "expected a number, got inf"),
    (NONNEG, False, "expected a number >= 0, got False"),
    (NONNEG, [1], "expected a number >= 0, got [1] (list)"),
])
def test_number_types_refuse_with_what_they_expected(parse, value, message):
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        parse(value)
    assert str(exc.value) == message
