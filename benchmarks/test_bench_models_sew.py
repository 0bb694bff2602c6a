"""SEW-ResNet-18 (CIFAR stem) on the CPU: ours against the same architecture built with
spikingjelly's neurons and plain PyTorch layers, in one run; and converted-model inference.

    pytest benchmarks/test_bench_models_sew.py --benchmark-only --benchmark-columns=min,median,rounds
    python benchmarks/test_bench_models_sew.py layer-paths   # one layer: dense / int8 / bit-serial forward

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
* spikingjelly_zoo (training-step suite): spikingjelly's own model-zoo network,
  ``spikingjelly.activation_based.model.sew_resnet.sew_resnet18(cnf="ADD")`` with the CIFAR stem
  (3x3/1 conv, no max pool), multi-step, on the T-repeated image, the neurons of the line above;
  its ADD is the paper's unclamped sum (ours clamps to the top level), float weights.

extra_info: ms (best round, wall), cpu_ms (best process CPU time of a step, all threads: steadier
on a shared machine); ``peak_MiB``, the peak RSS of a fresh process during one step after a
warm-up step (/proc/self/clear_refs resets VmHWM before it), and ``step_MiB``, that peak above the
RSS before the step (Linux; quick mode, ``QSNN_BENCH_QUICK=1``: on forward_backward only); the
converted-model case records the model bytes.
"""

from __future__ import annotations

import functools
import sys
import textwrap
import time

import pytest
import torch
from fresh_process import run_json
from quick_mode import pick
from torch import nn

BATCH, SIZE = pick((8, 32), (2, 16))
WST = pick({"W4S2T1": (4, 2, 1), "W16S1T4": (16, 1, 4)}, {"W4S2T1": (4, 2, 1)})
ROUNDS = pick(3, 1)
PEAK_MODES = pick(("forward", "forward_backward"), ("forward_backward",))  # peak memory measured (fresh process)


# --------------------------------------------------------------------------- models


def build(impl: str, w_bits: int, s_bits: int, t_steps: int) -> nn.Module:
    """The SEW-ResNet-18 CIFAR model of ``impl`` ("qsnn", "spikingjelly" or "spikingjelly_zoo"), 10 classes."""
    from qsnn_kernels.models import sew_resnet

    torch.manual_seed(0)
    if impl == "spikingjelly_zoo":
        return _zoo(s_bits, t_steps)
    model = sew_resnet.qsnn_sew_resnet18_cifar(w_bits=w_bits, s_bits=s_bits, t_steps=t_steps)
    if impl == "qsnn":
        return model
    return _to_spikingjelly(model, s_bits, t_steps)


def _sj_neuron(s_bits: int):
    """A factory of the spikingjelly neuron standing for ours at ``s_bits`` (module docstring)."""
    from spikingjelly.activation_based import neuron, surrogate

    if s_bits == 1:
        return functools.partial(neuron.LIFNode, tau=2.0, decay_input=False, v_reset=0.0, detach_reset=True,
                                 surrogate_function=surrogate.ATan(), step_mode="m")
    return functools.partial(neuron.ILIFNode, tau=2.0,
                             surrogate_function=surrogate.MultiLevelSpikeCount((1 << s_bits) - 1), step_mode="m")


class _ZooModel(nn.Module):
    """A spikingjelly multi-step model on the T-repeated image: ``[B, C, H, W] -> [B, classes]``
    (the mean of its per-step logits), its state reset first."""

    def __init__(self, net: nn.Module, t_steps: int):
        super().__init__()
        self.net, self.t_steps = net, t_steps

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        return self.net(x.unsqueeze(0).repeat(self.t_steps, 1, 1, 1, 1)).mean(0)


def _zoo(s_bits: int, t_steps: int) -> nn.Module:
    from spikingjelly.activation_based import functional, layer
    from spikingjelly.activation_based.model import sew_resnet as zoo

    net = zoo.sew_resnet18(num_classes=10, cnf="ADD", spiking_neuron=_sj_neuron(s_bits))
    net.conv1 = layer.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)  # the CIFAR stem
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    functional.set_step_mode(net, "m")
    return _ZooModel(net, t_steps)


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
    from qsnn_kernels.lif import MultiLevelLIF
    from qsnn_kernels.models.layers import QuantConv2d, QuantLinear

    neuron_node = _sj_neuron(s_bits)
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


def cpu_ms(model: nn.Module, x: torch.Tensor, mode: str, rounds: int = ROUNDS) -> float:
    """Best process CPU time of one step (all threads): steadier than wall time on a shared machine."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        step(model, x, mode)
        best = min(best, time.process_time() - t0)
    return best * 1e3


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
    import json
    import torch
    import test_bench_models_sew as b
    impl, w, s, t, mode = {args!r}
    model = b.build(impl, w, s, t)
    x = torch.randn(b.BATCH, 3, b.SIZE, b.SIZE)
    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
    b.step(model, x, mode)  # warm-up: lazy allocations, pools
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    base = status("VmRSS")
    b.step(model, x, mode)
    print(json.dumps({{"peak_MiB": status("VmHWM") / 2**20, "step_MiB": (status("VmHWM") - base) / 2**20}}))
""")


def peak_rss_mib(impl: str, wst, mode: str) -> dict:
    """Peak RSS of one step in a fresh process, after a warm-up step (VmHWM reset just before it):
    ``peak_MiB`` the process's peak, ``step_MiB`` that peak above the RSS before the step."""
    return run_json(_PEAK_SCRIPT.format(args=(impl, *wst, mode)))


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
    benchmark.extra_info["cpu_ms"] = cpu_ms(model, x, mode)
    if mode in PEAK_MODES:
        for key, value in peak_rss_mib(impl, WST[wst], mode).items():
            benchmark.extra_info[key] = value
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
    benchmark.extra_info["cpu_ms"] = cpu_ms(model, x, "forward")
    benchmark.extra_info["model_bytes"] = model_nbytes(model)


# --------------------------------------------------------------------------- bit-serial training


def measure_layer_paths(repeat: int = 3) -> list[dict]:
    """Forward+backward of one spike-input 3x3 QuantConv2d (C -> C on [T*B = 8, C, H, H] spikes) on
    each forward path: dense float (``int8=False``), exact int8 (``int8=True``, models/int8.py) and
    bit-serial (``bitserial=True``); best-of-``repeat`` ms. The input to choosing
    ``int8.MIN_CONV_POSITIONS`` (output positions 8*H*H) and to a layer's ``bitserial=``."""
    from qsnn_kernels.models.layers import QuantConv2d

    cases = [(c, h, s, w) for s in (1, 2) for w in (1, 2, 4, 8) for c, h in [(128, 16)]]
    cases += [(c, h, 1, 4) for c, h in [(64, 32), (256, 8), (512, 4), (512, 2)]]
    rows = []
    for channels, size, s_bits, w_bits in cases:
        torch.manual_seed(0)
        conv = QuantConv2d(channels, channels, 3, padding=1, bias=False, w_bits=w_bits, s_bits=s_bits)
        x = torch.randint(0, 1 << s_bits, (8, channels, size, size)).float().requires_grad_()
        row = {"channels": channels, "size": size, "positions": 8 * size * size, "w_bits": w_bits, "s_bits": s_bits}
        for name, bitserial, int8 in (("dense", False, False), ("int8", False, True), ("bitserial", True, False)):
            conv.bitserial, conv.int8 = bitserial, int8
            best = float("inf")
            for _ in range(repeat + 1):
                t0 = time.perf_counter()
                conv(x).sum().backward()
                best = min(best, time.perf_counter() - t0)
            row[f"{name}_ms"] = round(best * 1e3, 2)
        rows.append(row)
    return rows


if __name__ == "__main__":
    if sys.argv[1:] == ["layer-paths"]:
        for r in measure_layer_paths():
            print(r)
