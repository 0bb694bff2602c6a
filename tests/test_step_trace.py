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


def test_triton_launchers_are_fused_composites_are_expanded():
    """The LIF ops' CUDA kernels are Triton launchers (one fused op); a CUDA kernel made of torch ops
    (qsnn::spike_levels) is traced through, its parts recorded as within it."""
    assert step_trace.is_launcher(step_trace.cuda_kernel("qsnn::lif_forward"))
    kernel = step_trace.cuda_kernel("qsnn::spike_levels")
    assert kernel is not None and not step_trace.is_launcher(kernel)
    trace = step_trace.Trace()
    x = torch.empty(T, 16, device="meta")
    with step_trace.Recorder(trace):
        torch.ops.qsnn.spike_levels(x, 1.0, 1, False)
    assert trace.ops and all(o["within"] == "qsnn::spike_levels" and o["category"] != "fused" for o in trace.ops)
