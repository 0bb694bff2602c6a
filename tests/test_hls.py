"""The HLS mirror (hls/) against the library: g++ C simulation, zero mismatches expected.

Each parameter set compiles one testbench binary (template parameters are compile-time); binaries
are cached across tests and runs by a hash of the sources and defines (qsnn_kernels.hls.csim), so
a rerun costs only the simulations. Expected outputs come from every backend that can run here
(qsnn_kernels.choices.BACKENDS: reference always; the compiled kernels and Triton where available).
"""

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from qsnn_kernels import BackendUnavailable, _extension, choices
from qsnn_kernels import hls
from qsnn_kernels.hls import backends, csim, cycles, network
from qsnn_kernels.hls.__main__ import main as hls_main

needs_cxx = pytest.mark.skipif(hls.compiler() is None, reason="no C++ compiler (g++) on PATH: cannot build the csim")


def _backend_params():
    params = []
    for name in hls.BACKENDS:
        reason = hls.unavailable_reason(name)
        params.append(pytest.param(name, id=name, marks=pytest.mark.skipif(reason is not None, reason=str(reason))))
    return params


BACKEND = _backend_params()


def _assert_clean(result, case):
    assert result.returncode == 0, result.message
    assert result.passed and result.total_mismatches == 0, result.mismatches
    compared = {name: total for name, (_, total) in result.mismatches.items()}
    for name, total in compared.items():  # the testbench compared every element of every output
        assert total == case.arrays[name].numel(), (name, total)


def _iterations(case, w_bits, s_bits_in, t_steps, m, n, k):
    pe, simd = case.defines["PE"], case.defines["SIMD"]
    layer = cycles.Layer("l", m, n, k)
    return cycles.layer_iterations(layer, w_bits=w_bits, s_bits=s_bits_in, t_steps=t_steps, pe=pe, simd=simd)


# --------------------------------------------------------------------------- GEMM

GEMM_SETS = [  # w_bits, s_bits, T, M, N, K, PE, SIMD: every W and S, odd K, PE/SIMD not dividing N/K
    (1, 1, 1, 1, 1, 1, 1, 1),
    (2, 2, 2, 3, 5, 31, 4, 2),
    (4, 4, 3, 2, 7, 33, 3, 1),
    (8, 8, 2, 1, 3, 273, 2, 3),
    (1, 8, 1, 2, 9, 65, 4, 4),
    (8, 1, 4, 2, 4, 31, 1, 2),
]


@needs_cxx
@pytest.mark.parametrize("backend", BACKEND)
@pytest.mark.parametrize("w_bits,s_bits,t_steps,m,n,k,pe,simd", GEMM_SETS)
def test_gemm_csim(backend, w_bits, s_bits, t_steps, m, n, k, pe, simd):
    case = hls.gemm_case(w_bits=w_bits, s_bits=s_bits, t_steps=t_steps, m=m, n=n, k=k, pe=pe, simd=simd, seed=k,
                         backend=backend)
    result = hls.run_case(case)
    _assert_clean(result, case)
    assert result.iterations == _iterations(case, w_bits, s_bits, t_steps, m, n, k)


# --------------------------------------------------------------------------- LIF

LIF_SETS = [  # s_bits, T, neurons, theta, leak_shift, v_reset
    (1, 1, 1, 1, 0, 0),
    (2, 2, 33, 7, 1, -3),
    (4, 5, 31, 100, 3, 5),
    (8, 3, 273, 1000003, 31, 0),
]


@needs_cxx
@pytest.mark.parametrize("backend", BACKEND)
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("s_bits,t_steps,neurons,theta,leak_shift,v_reset", LIF_SETS)
def test_lif_csim(backend, reset, s_bits, t_steps, neurons, theta, leak_shift, v_reset):
    case = hls.lif_case(s_bits=s_bits, t_steps=t_steps, neurons=neurons, theta=theta, leak_shift=leak_shift,
                        v_reset=v_reset, reset=reset, seed=neurons, backend=backend)
    _assert_clean(hls.run_case(case), case)


# --------------------------------------------------------------------------- layer (GEMM + LIF over T)

LAYER_SETS = [  # w_bits, s_bits_in, s_bits_out, T, M, N, K, PE, SIMD
    (1, 1, 2, 2, 1, 1, 1, 1, 1),
    (2, 4, 1, 3, 2, 33, 31, 4, 2),
    (4, 8, 4, 1, 3, 5, 273, 2, 3),
    (8, 2, 8, 4, 2, 40, 33, 3, 1),
]


@needs_cxx
@pytest.mark.parametrize("backend", BACKEND)
@pytest.mark.parametrize("reset", ["hard", "soft"])
@pytest.mark.parametrize("w_bits,s_bits_in,s_bits_out,t_steps,m,n,k,pe,simd", LAYER_SETS)
def test_layer_csim(backend, reset, w_bits, s_bits_in, s_bits_out, t_steps, m, n, k, pe, simd):
    case = hls.layer_case(w_bits=w_bits, s_bits_in=s_bits_in, s_bits_out=s_bits_out, t_steps=t_steps, m=m, n=n, k=k,
                          reset=reset, leak_shift=2, v_reset=-1, pe=pe, simd=simd, seed=n, backend=backend)
    result = hls.run_case(case)
    _assert_clean(result, case)
    assert result.iterations == _iterations(case, w_bits, s_bits_in, t_steps, m, n, k)
    if case.arrays["levels"].numel() >= 60:  # the layer really spikes, at more than one level
        assert len(torch.unique(case.arrays["levels"])) >= min(3, 2**s_bits_out)


# --------------------------------------------------------------------------- end to end


@needs_cxx
@pytest.mark.parametrize("backend", BACKEND)
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_network_csim(backend, reset):
    net, x = network.random_network((64, 48, 33, 10), w_bits=4, s_bits_in=8, s_bits=2, t_steps=3, batch=7,
                                    reset=reset, seed=1, backend=backend)
    case = network.net_case(net, x, backend=backend)
    result = hls.run_case(case)
    _assert_clean(result, case)
    assert result.mismatches["pred"] == (0, 7)
    for name in ("levels1", "levels2"):  # every level occurs: the network is not silent or saturated
        assert len(torch.unique(case.arrays[name])) == 4, name
    assert len(torch.unique(case.arrays["pred"])) >= 2
    layers = [cycles.Layer(f"l{i}", 7, n, k) for i, (k, n) in enumerate(zip((64, 48, 33), (48, 33, 10)))]
    expected = cycles.layer_iterations(layers[0], w_bits=4, s_bits=8, t_steps=3, pe=4, simd=2) + sum(
        cycles.layer_iterations(layer, w_bits=4, s_bits=2, t_steps=3, pe=4, simd=2) for layer in layers[1:])
    assert result.iterations == expected


def test_network_backends_agree_with_reference():
    """The library's integer inference gives the same spikes and predictions on every backend here."""
    net, x = network.random_network((40, 33, 17, 5), w_bits=2, s_bits_in=8, s_bits=4, t_steps=2, batch=3, seed=2)
    ref = net.forward(x, "reference")
    for backend in hls.BACKENDS:
        if hls.unavailable_reason(backend) is None:
            out = net.forward(x, backend)
            assert all(torch.equal(a, b) for a, b in zip(out.levels, ref.levels)), backend
            assert torch.equal(out.logits, ref.logits) and torch.equal(out.pred, ref.pred), backend


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def gemm_binary():
    if hls.compiler() is None:
        pytest.skip("no C++ compiler (g++) on PATH")
    case = hls.gemm_case(w_bits=2, s_bits=2, t_steps=2, m=3, n=5, k=31, pe=4, simd=2, seed=31)
    return hls.build(case.kind, case.defines), case


def test_header_rejected_bit_width(gemm_binary, tmp_path):
    exe, _ = gemm_binary
    other = hls.gemm_case(w_bits=4, s_bits=2, t_steps=2, m=3, n=5, k=31)
    result = hls.run(exe, other.write(tmp_path / "w4.bin"))
    assert result.rejected and not result.mismatches
    assert "w_bits = 4" in result.message and "QSNN_W_BITS=2" in result.message


def test_header_rejected_shape(gemm_binary, tmp_path):
    exe, case = gemm_binary
    arrays = dict(case.arrays, x_planes=case.arrays["x_planes"][:, :2])  # 2 rows where 3 were compiled
    result = hls.run(exe, hls.write_vectors(tmp_path / "rows.bin", "gemm", arrays))
    assert result.rejected and "array 'x_planes' has shape [4,2,1]" in result.message and "[4,3,1]" in result.message


def test_header_rejected_kind_and_magic(gemm_binary, tmp_path):
    exe, _ = gemm_binary
    lif = hls.lif_case(s_bits=2, t_steps=2, neurons=3, theta=5)
    result = hls.run(exe, lif.write(tmp_path / "lif.bin"))
    assert result.rejected and "holds a 'lif' test, this is the 'gemm' testbench" in result.message
    (tmp_path / "junk.bin").write_bytes(b"NOTQSNN" + bytes(20))
    result = hls.run(exe, tmp_path / "junk.bin")
    assert result.rejected and "bad magic" in result.message


def test_csim_counts_corrupted_outputs(gemm_binary, tmp_path):
    """The check can fail: two altered expected values are two mismatches and a non-zero exit."""
    exe, case = gemm_binary
    y = case.arrays["y"].clone()
    y[0, 0, 0] += 1
    y[-1, -1, -1] -= 7
    result = hls.run(exe, hls.write_vectors(tmp_path / "bad.bin", "gemm", dict(case.arrays, y=y)))
    assert result.returncode == 1 and result.mismatches["y"] == (2, y.numel()) and not result.passed


def test_vectors_roundtrip_and_errors(tmp_path):
    planes = torch.tensor([[-1, 2**31 - 1], [-(2**31), 0]], dtype=torch.int32)
    empty = torch.zeros(0, 3, dtype=torch.int64)
    path = hls.write_vectors(tmp_path / "v.bin", "gemm", {"w_bits": 2, "w": planes, "e": empty})
    back = hls.read_vectors(path)
    assert int(back["kind"]) == 1 and int(back["w_bits"]) == 2 and torch.equal(back["w"], planes)
    assert back["e"].shape == (0, 3)
    with pytest.raises(TypeError, match="integers"):
        hls.write_vectors(tmp_path / "f.bin", "gemm", {"x": torch.ones(2)})
    with pytest.raises(ValueError, match="int32"):
        hls.write_vectors(tmp_path / "o.bin", "gemm", {"x": torch.tensor([2**31])})
    with pytest.raises(ValueError, match="kind"):
        hls.write_vectors(tmp_path / "k.bin", "conv", {})


def test_case_arguments_validated():
    with pytest.raises(ValueError, match="w_bits"):
        hls.gemm_case(w_bits=3, s_bits=1, t_steps=1, m=1, n=1, k=1)
    with pytest.raises(ValueError, match="s_bits"):
        hls.lif_case(s_bits=5, t_steps=1, neurons=1, theta=1)
    with pytest.raises(ValueError, match="reset"):
        hls.layer_case(w_bits=1, s_bits_in=1, s_bits_out=1, t_steps=1, m=1, n=1, k=1, reset="none")
    with pytest.raises(ValueError, match="backend"):
        hls.gemm_case(w_bits=1, s_bits=1, t_steps=1, m=1, n=1, k=1, backend="fpga")
    with pytest.raises(ValueError, match="s_bits"):
        network.random_network(s_bits=3)
    with pytest.raises(ValueError, match="positive ints"):
        network.random_network((64, 0, 10))
    zero = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="all zero"):
        network.fold_batch_norm(zero, torch.ones(2), torch.zeros(2), torch.zeros(2), torch.ones(2), w_bits=4,
                                in_scale=1.0, v_th=1.0)
    with pytest.raises(ValueError, match="not finite"):
        network.fold_batch_norm(torch.ones(2, 3), torch.ones(2), torch.zeros(2), torch.zeros(2),
                                torch.tensor([1.0, -1.0]), w_bits=4, in_scale=1.0, v_th=1.0)


@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_missing_backend_is_an_error_not_a_fallback(backend, monkeypatch):
    if backend == "auto":  # as if the extension were not built
        monkeypatch.setattr(_extension, "load", lambda: (None, "simulated: not built"))
    elif torch.cuda.is_available():
        pytest.skip("triton runs on the GPU here; the interpreter switch cannot make it missing")
    else:  # as if TRITON_INTERPRET were not set on a machine without a GPU
        monkeypatch.delenv("TRITON_INTERPRET")
    assert hls.unavailable_reason(backend) is not None
    with pytest.raises(BackendUnavailable):
        hls.gemm_case(w_bits=1, s_bits=1, t_steps=1, m=1, n=1, k=1, backend=backend)


def test_vector_header_is_the_compiled_defines():
    """Each file names its compiled parameters as the testbench's -D defines in lower case (PE and
    SIMD excluded), and carries the reset as the kernels' hard_reset flag."""
    gemm = hls.gemm_case(w_bits=2, s_bits=4, t_steps=2, m=3, n=5, k=31, pe=3, simd=1)
    assert {name: int(gemm.arrays[name]) for name in ("w_bits", "s_bits_in", "t_steps", "m_rows", "n_out", "k_in")} \
        == {"w_bits": 2, "s_bits_in": 4, "t_steps": 2, "m_rows": 3, "n_out": 5, "k_in": 31}
    assert "pe" not in gemm.arrays and "simd" not in gemm.arrays
    for reset, flag in (("hard", 1), ("soft", 0)):
        lif = hls.lif_case(s_bits=2, t_steps=2, neurons=3, theta=5, reset=reset)
        assert lif.arrays["hard_reset"] == flag and int(lif.arrays["s_bits_out"]) == 2
        assert "soft_reset" not in lif.arrays


@needs_cxx
def test_bit_width_outside_the_contract_does_not_compile():
    with pytest.raises(hls.CsimBuildError, match="WEIGHT_BITS"):
        hls.build("gemm", {"W_BITS": 3})
    with pytest.raises(hls.CsimBuildError, match="SPIKE_BITS"):
        hls.build("lif", {"S_BITS_OUT": 16})


def test_former_keyword_names_warn_and_still_work():
    new = hls.gemm_case(w_bits=2, s_bits=4, t_steps=2, m=2, n=3, k=5)
    with pytest.warns(FutureWarning, match="s_bits="):
        old = hls.gemm_case(w_bits=2, x_bits=4, t_steps=2, m=2, n=3, k=5)
    assert old.defines == new.defines and all(torch.equal(torch.as_tensor(old.arrays[name]), torch.as_tensor(v))
                                               for name, v in new.arrays.items())
    new = hls.layer_case(w_bits=2, s_bits_in=4, s_bits_out=2, t_steps=2, m=2, n=3, k=5)
    with pytest.warns(FutureWarning) as record:
        old = hls.layer_case(w_bits=2, s_in=4, s_out=2, t_steps=2, m=2, n=3, k=5)
    said = " ".join(str(w.message) for w in record)
    assert "use s_bits_in=" in said and "use s_bits_out=" in said
    assert old.defines == new.defines and torch.equal(old.arrays["levels"], new.arrays["levels"])
    with pytest.warns(FutureWarning, match="s_bits_in="):
        net, _ = network.random_network(s_in=4, seed=3)
    assert net.s_bits_in == 4
    with pytest.raises(TypeError, match="both"):
        hls.gemm_case(w_bits=2, s_bits=4, x_bits=4, t_steps=2, m=2, n=3, k=5)


def test_backend_names_are_the_library_s():
    assert hls.BACKENDS is choices.BACKENDS
    assert backends.backend_name("auto") == "auto"
    with pytest.warns(FutureWarning, match="'auto'"):
        assert backends.backend_name("cpu") == "auto"
    with pytest.raises(ValueError, match="backend"):
        backends.backend_name("fpga")


@pytest.mark.skipif(hls.unavailable_reason("auto") is not None, reason="the C++ extension is not built")
def test_former_command_line_spellings_warn_and_write_the_same_file(tmp_path, capsys):
    common = ["--w-bits", "2", "--t-steps", "2", "--m", "2", "--n", "3", "--k", "5"]
    assert hls_main(["export", "layer", "--out", str(tmp_path / "new.bin"), "--backend", "auto", "--s-bits-in", "4",
                     "--s-bits-out", "1", *common]) == 0
    with pytest.warns(FutureWarning) as record:
        assert hls_main(["export", "layer", "--out", str(tmp_path / "old.bin"), "--backend", "cpu", "--s-in", "4",
                         "--s-out", "1", *common]) == 0
    said = " ".join(str(w.message) for w in record)
    assert "'auto'" in said and "--s-bits-in" in said and "--s-bits-out" in said
    assert (tmp_path / "new.bin").read_bytes() == (tmp_path / "old.bin").read_bytes()
    with pytest.warns(FutureWarning, match="--net-s-bits-in"):
        assert hls_main(["export", "net", "--out", str(tmp_path / "net.bin"), "--net-s0", "4"]) == 0
    assert int(hls.read_vectors(tmp_path / "net.bin")["net_s_bits_in"]) == 4
    capsys.readouterr()


def test_missing_compiler_is_reported(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-qsnn")
    assert hls.compiler() is None
    with pytest.raises(FileNotFoundError, match="no-such-compiler-qsnn"):
        hls.build("gemm", {})


# --------------------------------------------------------------------------- batch-norm folding


@pytest.mark.parametrize("w_bits", [1, 8])
def test_fold_batch_norm_is_exact_up_to_half_a_unit(w_bits):
    gen = torch.Generator().manual_seed(0)
    n, k, in_scale, v_th = 6, 37, 1 / 255, 0.5
    weight = torch.randn(n, k, generator=gen, dtype=torch.float64)
    gamma = torch.tensor([-1.3, 0.7, 1.0, 2.0, 0.5, 1.1], dtype=torch.float64)
    beta, mean = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    var = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    layer, delta = network.fold_batch_norm(weight, gamma, beta, mean, var, w_bits=w_bits, in_scale=in_scale, v_th=v_th)
    levels = torch.randint(0, 256, (4, k), generator=gen)
    y = levels @ layer.q.to(torch.int64).T
    # the float layer with the folded, quantized weight (alpha q, alpha = delta / in_scale) and batch norm
    g = gamma / torch.sqrt(var + 1e-5)
    c = delta * y.to(torch.float64) + (beta - g * mean)
    assert torch.all((delta * (y + layer.bias).to(torch.float64) - c).abs() <= delta / 2 + 1e-12)
    assert abs(layer.theta * delta - v_th) <= delta / 2 + 1e-12
    # the signs of gamma went into the weights: q agrees in sign with g * W wherever it is non-zero
    nz = layer.q != 0
    assert torch.all(torch.sign(layer.q.to(torch.float64))[nz] == torch.sign(g[:, None] * weight)[nz])


# --------------------------------------------------------------------------- cycle model


def test_cycle_model_follows_bit_budget():
    """The pipelined work is exactly proportional to BB and split-invariant; the pipeline fill, paid
    once per step and row, is what makes a larger T slightly slower."""
    layers = [cycles.Layer("a", 64, 128, 1152), cycles.Layer("b", 16, 256, 2304)]  # spiking layers only
    kw = {"pe": 16, "simd": 4}
    work, total = {}, {}
    for bb in (8, 16, 32, 64):
        for s, t in cycles.splits(bb, 4):
            work.setdefault(bb, set()).add(
                sum(cycles.layer_iterations(layer, w_bits=4, s_bits=s, t_steps=t, **kw) for layer in layers))
            total[(s, t)] = sum(cycles.layer_cycles(layer, w_bits=4, s_bits=s, t_steps=t, **kw) for layer in layers)
    assert all(len(v) == 1 for v in work.values())  # equal BB, equal work, whatever the split
    base = next(iter(work[8]))
    assert [next(iter(work[b])) for b in (8, 16, 32, 64)] == [base * f for f in (1, 2, 4, 8)]
    assert total[(1, 4)] > total[(2, 2)] > total[(4, 1)]  # BB 16: the overhead grows with T
    one = cycles.layer_cycles(layers[0], w_bits=1, s_bits=1, t_steps=1, pe=16, simd=4, depth=5)
    assert one == 64 * (8 * math.ceil(36 / 4) + 5)


def test_cycles_command(capsys):
    assert hls_main(["cycles", "--net", "resnet19-cifar", "--bb", "32", "64", "--pe", "64", "--simd", "8"]) == 0
    out = capsys.readouterr().out
    assert "8/2/2" in out and "343.52" in out and "8/8/1" in out and "155.23" in out


@needs_cxx
def test_export_and_csim_commands(tmp_path, capsys):
    path = tmp_path / "lif.bin"
    assert hls_main(["export", "lif", "--out", str(path), "--s-bits-out", "4", "--t-steps", "2", "--neurons", "9"]) == 0
    assert "-DQSNN_S_BITS_OUT=4" in capsys.readouterr().out and int(hls.read_vectors(path)["s_bits_out"]) == 4
    assert hls_main(["csim", "lif", "--s-bits-out", "4", "--t-steps", "2", "--neurons", "9", "--reset", "soft"]) == 0
    assert "lif    PASS" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")
def test_python_builds_with_the_makefile_flags():
    proc = subprocess.run(["make", "-s", "-C", str(hls.hls_dir()), "--eval", "print-cxxflags: ; @echo $(CXXFLAGS)",
                           "print-cxxflags"], capture_output=True, text=True, check=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "CXXFLAGS"})
    assert csim.cxxflags() == proc.stdout.split() and "-DQSNN_TRIP_COUNT" in proc.stdout


@needs_cxx
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not on PATH")
def test_make_csim(tmp_path):
    """`make -C hls csim`: the default parameter set, vectors exported by the Python command."""
    root = hls.hls_dir()
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["make", "-C", str(root), "csim", f"BUILD={tmp_path}"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("RESULT PASS mismatches=0") == 4 and "csim: all testbenches passed" in proc.stdout


# --------------------------------------------------------------------------- Vitis (only where installed)


@pytest.mark.skipif(shutil.which("vitis_hls") is None, reason="vitis_hls is not on PATH")
def test_vitis_csim(tmp_path):
    root = hls.hls_dir()
    (root / "build").mkdir(exist_ok=True)
    assert hls_main(["export", "layer", "--out", str(root / "build" / "layer.bin")]) == 0
    proc = subprocess.run(["vitis_hls", "-f", str(root / "scripts" / "run_vitis.tcl"), "-tclargs", "layer", "csim"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    assert proc.returncode == 0 and "RESULT PASS mismatches=0" in proc.stdout, proc.stdout[-3000:]
