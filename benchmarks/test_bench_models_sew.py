"""SEW-ResNet-18 (CIFAR stem) on the CPU: ours against the same architecture built with
spikingjelly's neurons and plain PyTorch layers, in one run; and converted-model inference.

    pytest benchmarks/test_bench_models_sew.py --benchmark-only --benchmark-columns=min,median,rounds
    python benchmarks/test_bench_models_sew.py bitserial     # the bit-serial training measurement

Batch 8, 32x32 input, W/S/T in {4/2/1, 16/1/4}. "forward" is inference (eval, no autograd
graph); "forward_backward" is a training-mode forward plus ``loss.backward()``.

* ours: ``qsnn_kernels.models.sew_resnet.SEWResNet`` (QuantConv2d with fake-quantized weights,
  the fused MultiLevelLIF kernel, time-major [T*B] convolutions, the encoding conv run once).
* spikingjelly: the same blocks, widths and clamped-ADD connection, with plain ``nn.Conv2d`` /
  ``nn.BatchNorm2d`` / ``nn.Linear`` (float weights, no quantization cost) on [T*B, ...] and
  spikingjelly 2.0's multi-step neurons (torch backend, the one available on CPU): ``LIFNode``
  (tau=2, decay_input=False, hard reset to 0, atan, detach_reset) for S = 1, ``ILIFNode``
  (multi-level, its own soft reset and MultiLevelSpikeCount surrogate) for S > 1; the stem conv runs
  on the T-repeated input, as spikingjelly's examples do.

extra_info: ms (best round) and peak RSS in MiB of a fresh process that builds the model and runs
the same step twice (``resource.getrusage`` ru_maxrss, minus the RSS after imports); the
converted-model case also records the model bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

BATCH, SIZE = 8, 32
WST = {"W4S2T1": (4, 2, 1), "W16S1T4": (16, 1, 4)}
ROUNDS = 3


# --------------------------------------------------------------------------- models


def build(impl: str, w_bits: int, s_bits: int, t_steps: int) -> nn.Module:
    """The SEW-ResNet-18 CIFAR model of ``impl`` ("qsnn" or "spikingjelly"), 10 classes."""
    from qsnn_kernels.models import sew_resnet

    torch.manual_seed(0)
    model = sew_resnet.qsnn_sew_resnet18_cifar(w_bits=w_bits, s_bits=s_bits, t_steps=t_steps)
    if impl == "qsnn":
        return model
    return _to_spikingjelly(model, s_bits, t_steps)


class _PlainConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2]) if x.dim() == 5 else super().forward(x)


class _PlainBN(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2]) if x.dim() == 5 else super().forward(x)


class _SJModel(nn.Module):
    """Our module tree with plain layers and spikingjelly neurons; the stem sees the T-repeated image."""

    def __init__(self, body: nn.Module, t_steps: int):
        super().__init__()
        self.body, self.t_steps = body, t_steps

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.body)
        b = self.body
        x = x.unsqueeze(0).repeat(self.t_steps, 1, 1, 1, 1)
        x = b.sn1(b.bn1(b.conv1(x)))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return b.fc(x.mean(dim=(3, 4))).mean(0)


def _to_spikingjelly(model: nn.Module, s_bits: int, t_steps: int) -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    from qsnn_kernels.lif import MultiLevelLIF
    from qsnn_kernels.models.layers import QuantConv2d, QuantLinear

    def neuron_node():
        if s_bits == 1:
            return neuron.LIFNode(tau=2.0, decay_input=False, v_reset=0.0, detach_reset=True,
                                  surrogate_function=surrogate.ATan(), step_mode="m")
        return neuron.ILIFNode(tau=2.0, surrogate_function=surrogate.MultiLevelSpikeCount((1 << s_bits) - 1),
                               step_mode="m")

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, QuantConv2d):
                new = _PlainConv(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                 child.padding, bias=child.bias is not None)
                new.weight = child.weight
            elif isinstance(child, QuantLinear):
                new = nn.Linear(child.in_features, child.out_features)
            elif isinstance(child, nn.BatchNorm2d):
                new = _PlainBN(child.num_features)
            elif isinstance(child, MultiLevelLIF):
                new = neuron_node()
            else:
                continue
            setattr(parent, name, new)
    return _SJModel(model, t_steps)


def step(model: nn.Module, x: torch.Tensor, mode: str) -> None:
    if mode == "forward":
        model.eval()
        with torch.no_grad():
            model(x)
    else:
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()


# --------------------------------------------------------------------------- peak memory

_PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    sys.path.insert(0, {bench_dir!r})
    import test_bench_models_sew as b
    impl, w, s, t, mode = {args!r}
    model = b.build(impl, w, s, t)
    if impl == "converted":
        pass
    x = torch.randn(b.BATCH, 3, b.SIZE, b.SIZE)
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    base = rss()
    for _ in range(2):
        b.step(model, x, mode)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({{"peak_MiB": (peak - base) / 2**20}}))
""")


def peak_rss_mib(impl: str, wst, mode: str) -> float:
    """Peak RSS above the post-import baseline of a fresh process running ``step`` twice."""
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    code = _PEAK_SCRIPT.format(bench_dir=bench_dir, args=(impl, *wst, mode))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_MiB"]


# --------------------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("wst", list(WST))
@pytest.mark.parametrize("impl", ["qsnn", "spikingjelly"])
def test_sew_resnet18_cifar(benchmark, impl, wst, mode):
    if impl == "spikingjelly":
        pytest.importorskip("spikingjelly.activation_based.neuron")
    else:
        from qsnn_kernels import _extension

        _extension.require("cpu")
    model = build(impl, *WST[wst])
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    step(model, x, mode)  # warm-up
    benchmark.pedantic(step, args=(model, x, mode), rounds=ROUNDS, iterations=1)
    benchmark.extra_info["ms"] = benchmark.stats.stats.min * 1e3
    benchmark.extra_info["peak_rss_MiB"] = peak_rss_mib(impl, WST[wst], mode)
    benchmark.extra_info["threads"] = torch.get_num_threads()


@pytest.mark.parametrize("which", ["float_W32S1T1", "converted_W1S1T1"])
def test_sew_resnet18_cifar_inference(benchmark, which):
    from qsnn_kernels import _extension
    from qsnn_kernels.models.convert import convert_for_inference, model_nbytes

    _extension.require("cpu")
    w_bits = 32 if which.startswith("float") else 1
    model = build("qsnn", w_bits, 1, 1).eval()
    if which.startswith("converted"):
        model = convert_for_inference(model)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    step(model, x, "forward")
    benchmark.pedantic(step, args=(model, x, "forward"), rounds=ROUNDS, iterations=1)
    benchmark.extra_info["ms"] = benchmark.stats.stats.min * 1e3
    benchmark.extra_info["model_bytes"] = model_nbytes(model)


# --------------------------------------------------------------------------- bit-serial training


def measure_bitserial_training(repeat: int = 3) -> list[dict]:
    """Forward+backward of one spike-input QuantConv2d (128 -> 128, 3x3, [T*B = 8, 128, 16, 16]),
    dense fake-quant conv against the bit-serial forward (``bitserial=True``), per w_bits and
    s_bits: best-of-``repeat`` ms. The input to choosing ``layers.BITSERIAL_TRAIN_BITS``."""
    from qsnn_kernels.models.layers import QuantConv2d

    rows = []
    for s_bits in (1, 2):
        for w_bits in (1, 2, 4, 8):
            torch.manual_seed(0)
            conv = QuantConv2d(128, 128, 3, padding=1, bias=False, w_bits=w_bits, in_bits=s_bits)
            x = torch.randint(0, 1 << s_bits, (8, 128, 16, 16)).float().requires_grad_()
            row = {"w_bits": w_bits, "s_bits": s_bits}
            for mode in (False, True):
                conv.bitserial = mode
                best = float("inf")
                for _ in range(repeat + 1):
                    t0 = time.perf_counter()
                    conv(x).sum().backward()
                    best = min(best, time.perf_counter() - t0)
                row["bitserial_ms" if mode else "dense_ms"] = round(best * 1e3, 1)
            rows.append(row)
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["bitserial"]:
        for r in measure_bitserial_training():
            print(r)
