"""benchmarks/step_trace.py: the op trace of a training step on meta tensors (bytes, FLOPs,
categories, saved activations, JSON), on a tiny network traced in seconds."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import step_trace  # noqa: E402  (before qsnn_kernels: it watches the CUDA kernel registrations)

from qsnn_kernels import MultiLevelLIF  # noqa: E402

T, B, C, HW, CLASSES = 2, 3, 4, 8, 10


class _Tiny(nn.Module):
    """conv (on the T-repeated image) -> LIF -> mean over T -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.lif = MultiLevelLIF(s_bits=1)
        self.fc = nn.Linear(C * HW * HW, CLASSES)

    def forward(self, img):
        x = self.conv(img.unsqueeze(0).repeat(T, 1, 1, 1, 1).flatten(0, 1))
        s = self.lif(x.view(T, img.shape[0], C, HW, HW))
        return self.fc(s.mean(0).flatten(1))


@pytest.fixture(scope="module")
def traced():
    return step_trace.trace_step(_Tiny(), B, HW, CLASSES)


def _ops(result, name, phase):
    return [o for o in result["ops"] if o["op"] == name and o["phase"] == phase]


def test_trace_lists_ops_of_every_category(traced):
    cats = {o["category"] for o in traced["ops"]}
    assert {"fused", "gemm", "glue", "optimizer"} <= cats
    assert {o["phase"] for o in traced["ops"]} == {"forward", "backward", "optimizer"}


def test_gemm_flops_equal_the_formulas(traced):
    (conv,) = _ops(traced, "aten::convolution", "forward")
    assert conv["flops"] == 2 * (T * B) * C * HW * HW * 3 * 9
    (linear,) = _ops(traced, "aten::addmm", "forward")
    assert linear["flops"] == 2 * B * (C * HW * HW) * CLASSES
    assert conv["category"] == linear["category"] == "gemm"


def test_lif_bytes_equal_the_formula(traced):
    """bf16 under autocast: forward reads x, writes spikes and h (no v_last: the module drops it);
    backward reads grad_spikes and h, writes grad_x (no grad_v_init: no v_init): 6 + 6 B per neuron-step."""
    n = B * C * HW * HW
    (fwd,) = _ops(traced, "qsnn::lif_forward", "forward")
    (bwd,) = _ops(traced, "qsnn::lif_backward", "backward")
    assert (fwd["bytes_read"], fwd["bytes_written"]) == (2 * T * n, 4 * T * n)
    assert (bwd["bytes_read"], bwd["bytes_written"]) == (4 * T * n, 2 * T * n)
    assert fwd["element_steps"] == bwd["element_steps"] == T * n
    per = step_trace.summarize(traced)["neuron_bytes_per_element_step"]
    assert (per["forward"], per["backward"]) == (6.0, 6.0)


def test_saved_activations_hold_h():
    """h (bf16, T * N) is saved for the LIF's backward; the parameters are not counted."""
    result = step_trace.trace_step(_Tiny(), B, HW, CLASSES)
    assert result["saved_bytes"] >= 2 * T * B * C * HW * HW
    assert result["params"] == 3 * C * 9 + C * HW * HW * CLASSES + CLASSES


@pytest.mark.parametrize("save_h, emit_v_last", [(True, False), (False, True)])
def test_lif_bytes_follow_the_arguments(save_h, emit_v_last):
    """A frame broadcast over T is read once; h and v_last count only when the op writes them."""
    n = 40
    x = torch.empty(1, n, dtype=torch.bfloat16, device="meta").expand(T, n)
    outs = torch.ops.qsnn.lif_forward(x, None, 1, 1.0, 0.5, 0.0, True, "atan", 2.0, True, save_h, emit_v_last)
    read, written = step_trace.lif_bytes("qsnn::lif_forward", (x, None), outs)
    assert read == 2 * n
    assert written == 2 * T * n + (2 * T * n if save_h else 0) + (4 * n if emit_v_last else 0)


def test_time_model():
    op = dict(category="gemm", bytes_read=4.3e9, bytes_written=0, flops=0)
    assert step_trace.op_seconds(op, 4.3e12, 1e15, 5e-6) == pytest.approx(1e-3 + 5e-6)
    op.update(flops=2e12)
    assert step_trace.op_seconds(op, 4.3e12, 1e15, 0.0) == pytest.approx(2e-3)
    op.update(category="glue")
    assert step_trace.op_seconds(op, 4.3e12, 1e15, 0.0) == pytest.approx(1e-3)


def test_json_is_written(tmp_path, capsys):
    path = tmp_path / "trace.json"
    args = step_trace.parse_args(["--model", "tiny", "--img", str(HW), "--batch", str(B), "--t-steps", str(T),
                                  "--classes", str(CLASSES), "--json", str(path)])
    step_trace.run(args, build_fn=lambda *a: _Tiny())
    data = json.loads(path.read_text())
    total = data["builds"]["qsnn"]["categories"]["total"]
    assert total["launches"] > 0 and total["bytes"] > 0 and total["est_ms"] > 0
    assert "saved activations" in capsys.readouterr().out


def test_triton_launchers_are_fused_composites_are_expanded(monkeypatch):
    """The LIF and spike-levels ops' CUDA kernels are Triton launchers (one fused op); a CUDA kernel
    made of torch ops (here the torch formula of qsnn::spike_levels, registered as its CUDA kernel
    for the test) is traced through, its parts recorded as within it."""
    from qsnn_kernels import quantize

    for op in ("qsnn::lif_forward", "qsnn::spike_levels", "qsnn::spike_attention", "qsnn::spike_attention_backward"):
        assert step_trace.is_launcher(step_trace.cuda_kernel(op))
    monkeypatch.setitem(step_trace._CUDA_KERNELS, "qsnn::spike_levels", quantize._spike_levels_torch)
    kernel = step_trace.cuda_kernel("qsnn::spike_levels")
    assert kernel is not None and not step_trace.is_launcher(kernel)
    trace = step_trace.Trace()
    x = torch.empty(T, 16, device="meta")
    with step_trace.Recorder(trace):
        torch.ops.qsnn.spike_levels(x, 1.0, 1, False)
    assert trace.ops and all(o["within"] == "qsnn::spike_levels" and o["category"] != "fused" for o in trace.ops)


class _TinyInt8(nn.Module):
    """conv -> LIF -> an int8 QuantLinear on the spikes of each step -> mean over T."""

    def __init__(self):
        super().__init__()
        from qsnn_kernels.models.layers import QuantLinear

        self.conv = nn.Conv2d(3, C, 3, padding=1, bias=False)
        self.lif = MultiLevelLIF(s_bits=1)
        self.fc = QuantLinear(C * HW * HW, CLASSES, w_bits=4, s_bits=1, int8=True)

    def forward(self, img):
        x = self.conv(img.unsqueeze(0).repeat(T, 1, 1, 1, 1).flatten(0, 1))
        s = self.lif(x.view(T, img.shape[0], C, HW, HW))
        return self.fc(s.flatten(2)).mean(0)


def test_int8_ops_are_gemms_at_the_int8_rate():
    """With int8 layers (``--int8 on``) the trace takes the int8 op on meta as on CUDA: one record
    of its launches (weight quantization, the levels' conversion pass, the GEMM), its bytes by
    int8_traffic, 2 operations per MAC, timed at INT8_MATRIX_RATE; its backward's products are
    ordinary GEMMs."""
    result = step_trace.trace_step(_TinyInt8(), B, HW, CLASSES, optimizer=False)
    (op,) = _ops(result, "qsnn::int8_linear", "forward")
    k, m = C * HW * HW, T * B
    assert op["category"] == "gemm" and op["int8"] and op["launches"] == 3
    assert op["flops"] == 2 * m * CLASSES * k
    weight = CLASSES * k
    x_bf16 = m * k * 2  # the LIF's spikes under the emulated autocast
    assert op["bytes_read"] == 4 * weight + x_bf16 + m * k + weight + 4 * CLASSES + 4 * CLASSES
    assert op["bytes_written"] == weight + 4 * CLASSES + m * k + m * CLASSES * 2
    assert _ops(result, "aten::mm", "backward")
    slow = step_trace.op_seconds(op, 4.3e12, 1e9, 0.0, int8_rate=1e9)
    assert slow == pytest.approx(op["flops"] / 1e9)
    assert step_trace.op_seconds(op, 4.3e12, 1e9, 0.0, int8_rate=2e9) == pytest.approx(slow / 2)
