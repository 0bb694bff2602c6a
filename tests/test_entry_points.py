"""Every entry point finds the compiled kernels right after ``import qsnn_kernels`` in a fresh process:
raw ``torch.ops.qsnn.*`` calls, ``torch.compile(fullgraph=True)`` and a program saved by
``torch.export`` and loaded in another process. Each check runs in its own interpreter, since a
process in which some earlier call had loaded the extension would hide a missing load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("qsnn_kernels._C", reason="needs the compiled extension")

NO_TRITON = "assert 'triton' not in sys.modules, 'importing qsnn_kernels imported triton'\n"


def run_fresh(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned as a dict."""
    env = dict(os.environ, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_raw_ops_after_import():
    out = run_fresh("""
        import json, sys, torch
        import qsnn_kernels as qk
        from qsnn_kernels import reference as ref
        """ + NO_TRITON + """
        torch.manual_seed(0)
        ok = {}
        x = torch.randn(3, 40)
        s, v, h = torch.ops.qsnn.lif_forward(x, None, 2, 1.0, 0.5, 0.0, True, "atan", 2.0, False)
        s_ref, v_ref = ref.multilevel_lif(x.double(), 2, 1.0, 0.5, 0.0, "hard")
        ok["lif_forward"] = torch.allclose(s.double(), s_ref) and torch.allclose(v.double(), v_ref, atol=1e-5)
        xi = torch.randint(-50, 100, (3, 40), dtype=torch.int32)
        lv, vi = torch.ops.qsnn.lif_int(xi, None, 2, 40, 1, 0, True)
        lv_ref, vi_ref = ref.multilevel_lif_int(xi, 2, 40, 1, 0, "hard")
        ok["lif_int"] = torch.equal(lv.to(torch.int64), lv_ref.to(torch.int64)) and torch.equal(vi, vi_ref)
        codes = torch.randint(-8, 8, (5, 33), dtype=torch.int32)
        planes = torch.ops.qsnn.pack_bits(codes, 4, True)
        ok["pack_bits"] = torch.equal(planes, ref.pack_bits(codes, 4, True))
        ok["unpack_bits"] = torch.equal(torch.ops.qsnn.unpack_bits(planes, 33, True).to(torch.int32), codes)
        spikes = torch.randint(0, 2, (2, 4, 33), dtype=torch.int32)
        x_planes = torch.ops.qsnn.pack_bits(spikes.reshape(8, 33), 1, False).reshape(1, 2, 4, -1)
        y = torch.ops.qsnn.bitserial_matmul_packed(x_planes[0], planes, 33, 1, "none")
        ok["bitserial_matmul_packed"] = torch.equal(y.to(torch.int64), ref.bitserial_matmul(spikes, codes))
        w = torch.randn(6, 33)
        q, scale = torch.ops.qsnn.quantize_weight(w, 4)
        q_ref, scale_ref = ref.quantize_weight(w, 4)
        ok["quantize_weight"] = torch.equal(q.to(torch.int64), q_ref.to(torch.int64)) and torch.equal(scale, scale_ref)
        ok["dequantized_weight"] = torch.allclose(torch.ops.qsnn.dequantized_weight(w, 4), ref.fake_quantize_weight(w, 4))
        print(json.dumps(ok))
    """)
    assert out == {name: True for name in out} and len(out) == 7, out


def test_compile_fullgraph_after_import():
    out = run_fresh("""
        import json, sys, torch
        import qsnn_kernels as qk
        """ + NO_TRITON + """
        torch.manual_seed(0)
        def lif(x):
            return qk.multilevel_lif(x, s_bits=2)[0]
        x = torch.randn(3, 5, 40, requires_grad=True)
        ok = {}
        y = torch.compile(lif, fullgraph=True)(x)  # first kernel call of the process: from the compiled graph
        y.sum().backward()
        x_eager = x.detach().clone().requires_grad_()
        lif(x_eager).sum().backward()
        ok["lif"] = torch.equal(y, lif(x_eager)) and torch.allclose(x.grad, x_eager.grad)
        w = qk.PackedWeight.from_float(torch.randn(8, 40), w_bits=4)
        def layer(x):
            return qk.bitserial_linear(lif(x), w, x_scale=1.0, s_bits=2)
        ok["layer"] = torch.allclose(torch.compile(layer, fullgraph=True)(x), layer(x))
        print(json.dumps(ok))
    """)
    assert out == dict(lif=True, layer=True)


def test_export_saved_and_loaded_in_fresh_processes(tmp_path):
    program, io = str(tmp_path / "model.pt2"), str(tmp_path / "io.pt")
    run_fresh("""
        import json, sys, torch
        import qsnn_kernels as qk
        torch.manual_seed(0)
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lif = qk.MultiLevelLIF(s_bits=2)
                self.w = qk.PackedWeight.from_float(torch.randn(8, 40), w_bits=4)
            def forward(self, x):
                return qk.bitserial_linear(self.lif(x), self.w, x_scale=1.0, s_bits=2)
        net, x = Net(), torch.randn(3, 5, 40)
        torch.export.save(torch.export.export(net, (x,)), sys.argv[1])
        torch.save(dict(x=x, y=net(x)), sys.argv[2])
        print(json.dumps({}))
    """, program, io)
    out = run_fresh("""
        import json, sys, torch
        import qsnn_kernels
        """ + NO_TRITON + """
        program = torch.export.load(sys.argv[1])
        io = torch.load(sys.argv[2], weights_only=True)
        print(json.dumps(dict(equal=torch.equal(program.module()(io["x"]), io["y"]))))
    """, program, io)
    assert out == dict(equal=True)
