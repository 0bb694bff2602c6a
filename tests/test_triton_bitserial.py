"""Triton bit-serial GEMM kernels against the reference spec, bit-exactly.

Without CUDA the kernels run on CPU tensors under TRITON_INTERPRET=1 (set by conftest) on small
shapes; with CUDA the same tests run on the GPU, plus the ``gpu``-marked ones on larger shapes.
Every integer comparison counts mismatches and expects zero.
"""

import os
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qsnn_kernels import reference
from qsnn_kernels.choices import REDUCTIONS
from qsnn_kernels.packing import pack_levels
from qsnn_kernels.testing import random_codes, run_without_interpreter
from qsnn_kernels.triton import bitserial as tb

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
KERNEL_DEVICE = "cpu" if INTERPRETING or not torch.cuda.is_available() else "cuda"
STRATEGIES = ("bitserial", "dot")
BITS = (1, 2, 4, 8)

# (P, M, K, N), rotated over the bit widths so that every (strategy, w_bits) and every
# (strategy, s_bits) meets every shape. Under the interpreter's 16 x 16 x 4-word tile: K = 273
# (9 words) spans three K tiles, 3 * 7 = 21 rows of reduce="none" two row tiles, N = 17 two
# column tiles.
SHAPES = [(1, 1, 1, 5), (3, 7, 31, 1), (3, 1, 33, 5), (2, 3, 100, 17), (1, 2, 273, 1)]


@pytest.fixture(autouse=True)
def _one_tile_config(monkeypatch):
    """On GPU, one default tile (autotuning every width would compile dozens of kernels)."""
    monkeypatch.setenv("QSNN_TRITON_AUTOTUNE", "0")


def _pack_x(x: torch.Tensor, s_bits: int) -> torch.Tensor:
    """Levels ``[P, M, K]`` -> planes ``[P * s_bits, M, words]``, plane p * s_bits + b = bit b of step p."""
    return pack_levels(x, s_bits, backend="reference")


def _inputs(steps, m, k, n, s_bits, w_bits, seed, device=KERNEL_DEVICE):
    g = torch.Generator().manual_seed(seed)
    x = random_codes((steps, m, k), s_bits, signed=False, generator=g)
    q = random_codes((n, k), w_bits, signed=True, generator=g)
    return x, q, _pack_x(x, s_bits).to(device), reference.pack_bits(q, w_bits, True).to(device)


def _assert_exact(y: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert y.dtype == torch.int32, what
    assert y.shape == expected.shape, f"{what}: shape {tuple(y.shape)} != {tuple(expected.shape)}"
    mismatches = int((y.cpu() != expected).sum())
    assert mismatches == 0, f"{what}: {mismatches} of {expected.numel()} entries differ"


@pytest.mark.parametrize("s_bits", BITS)
@pytest.mark.parametrize("w_bits", BITS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_reference(strategy, w_bits, s_bits):
    """Every strategy x w_bits x s_bits x reduce, on two odd shapes each, bit-exactly."""
    rot = BITS.index(w_bits) + BITS.index(s_bits)
    for shape in (SHAPES[rot % len(SHAPES)], SHAPES[(rot + 2) % len(SHAPES)]):
        steps, m, k, n = shape
        x, q, xp, wp = _inputs(*shape, s_bits, w_bits, seed=rot)
        for reduce in REDUCTIONS:
            y = tb.bitserial_matmul_triton(xp, wp, k, s_bits, reduce, strategy)
            _assert_exact(y, reference.bitserial_matmul(x, q, reduce), f"{strategy} {shape} {reduce}")


# (s_bits, P, reduce) -> the dot kernel's (combine, offset) regime, checked so that the cases
# keep covering all four; extreme codes (max level, most negative weight) stress the offset.
DOT_REGIMES = [
    (1, 4, "bitplane", (True, 0)),  # four binary bit planes: one 4-bit level, one dot
    (1, 8, "bitplane", (True, 128)),  # levels up to 255: stored as level - 128
    (4, 9, "time", (True, 128)),  # 9 * 15 = 135 > 127
    (8, 1, "none", (True, 128)),  # 8-bit levels
    (8, 3, "time", (False, 128)),  # one dot per step, each offset
    (4, 20, "time", (False, 0)),  # 300 > 255: one dot per step, levels <= 15
    (2, 7, "bitplane", (False, 0)),  # 3 * 127 > 255
]


@pytest.mark.parametrize("s_bits,steps,reduce,regime", DOT_REGIMES)
@pytest.mark.parametrize("extreme", [False, True])
def test_dot_level_regimes(s_bits, steps, reduce, regime, extreme):
    assert tb._dot_plan(s_bits, 1 if reduce == "none" else steps, reduce)[:2] == regime
    m, k, n, w_bits = 3, 45, 5, 8
    x, q, _, _ = _inputs(steps, m, k, n, s_bits, w_bits, seed=s_bits * 100 + steps)
    if extreme:
        x = torch.full_like(x, (1 << s_bits) - 1)
        q[: n - 1] = -128  # one row keeps random codes
    xp, wp = _pack_x(x, s_bits).to(KERNEL_DEVICE), reference.pack_bits(q, w_bits, True).to(KERNEL_DEVICE)
    expected = reference.bitserial_matmul(x, q, reduce)
    for strategy in STRATEGIES if extreme else ("dot",):  # random codes: the sweep covers bitserial
        y = tb.bitserial_matmul_triton(xp, wp, k, s_bits, reduce, strategy)
        _assert_exact(y, expected, f"{strategy} extreme={extreme}")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exact_when_partial_sums_wrap(strategy):
    """Partial sums may leave int32 (here the dot's -128 offset shifted by 2^19); the result is exact
    modulo 2^32, hence exact whenever it fits int32, as the API guarantees."""
    steps, m, k, n, s_bits, w_bits = 20, 2, 40, 3, 8, 2
    x, q, _, _ = _inputs(steps, m, k, n, s_bits, w_bits, seed=7)
    x[3:] = 0  # a small final result although the high planes carry large coefficients
    assert tb._dot_plan(s_bits, steps, "bitplane") == (False, 128, tb._wrap_int32(128 * (2**steps - 1)))
    xp, wp = _pack_x(x, s_bits).to(KERNEL_DEVICE), reference.pack_bits(q, w_bits, True).to(KERNEL_DEVICE)
    y = tb.bitserial_matmul_triton(xp, wp, k, s_bits, "bitplane", strategy)
    _assert_exact(y, reference.bitserial_matmul(x, q, "bitplane"), strategy)


@settings(max_examples=12, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 80), st.integers(1, 9)),
    s_bits=st.sampled_from(BITS),
    w_bits=st.sampled_from(BITS),
    reduce=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_strategies_agree_with_reference(shape, s_bits, w_bits, reduce, seed):
    x, q, xp, wp = _inputs(*shape, s_bits, w_bits, seed=seed)
    expected = reference.bitserial_matmul(x, q, reduce)
    for strategy in STRATEGIES:
        y = tb.bitserial_matmul_triton(xp, wp, shape[2], s_bits, reduce, strategy)
        _assert_exact(y, expected, f"{strategy} {shape} {s_bits}x{w_bits} {reduce}")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_non_contiguous_inputs(strategy):
    steps, m, k, n, s_bits, w_bits = 2, 5, 70, 9, 2, 4
    x, q, xp, wp = _inputs(steps, m, k, n, s_bits, w_bits, seed=3)
    xp_view = xp.transpose(0, 1).contiguous().transpose(0, 1)  # same values, plane stride 3 words
    wide = torch.zeros(w_bits, 2 * n, wp.shape[-1], dtype=torch.int32, device=wp.device)
    wide[:, ::2] = wp
    wp_view = wide[:, ::2]  # every other row of a wider matrix
    assert not xp_view.is_contiguous() and not wp_view.is_contiguous()
    for reduce in REDUCTIONS:
        y = tb.bitserial_matmul_triton(xp_view, wp_view, k, s_bits, reduce, strategy)
        _assert_exact(y, reference.bitserial_matmul(x, q, reduce), f"{strategy} {reduce}")


@pytest.mark.parametrize("s_bits,w_bits", [(1, 1), (4, 2)])
def test_auto_strategy(s_bits, w_bits):
    chosen = tb.choose_strategy(s_bits, w_bits)
    assert chosen == ("bitserial" if s_bits * w_bits <= tb.AUTO_BITSERIAL_MAX_PLANE_PAIRS else "dot")
    x, q, xp, wp = _inputs(2, 4, 33, 5, s_bits, w_bits, seed=11)
    y = tb.bitserial_matmul_triton(xp, wp, 33, s_bits, "time", "auto")
    _assert_exact(y, reference.bitserial_matmul(x, q, "time"), f"auto -> {chosen}")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("m,n", [(0, 3), (3, 0)])
def test_empty_rows_or_columns(strategy, m, n):
    _, _, xp, wp = _inputs(2, m, 33, n, 1, 2, seed=0)
    assert tb.bitserial_matmul_triton(xp, wp, 33, 1, "none", strategy).shape == (2, m, n)
    assert tb.bitserial_matmul_triton(xp, wp, 33, 1, "time", strategy).shape == (m, n)


@pytest.mark.parametrize("rows,n,kw", [(1, 1, 1), (4096, 64, 18), (1024, 4096, 128)])
def test_autotune_pruning_keeps_a_fitting_config(rows, n, kw):
    for configs in (tb._BITSERIAL_CONFIGS, tb._DOT_CONFIGS):
        kept = tb._prune_configs(configs, dict(R=rows, N=n, KW=kw))
        assert kept and all(c in configs for c in kept)
        if rows >= 1024 and n >= 1024:
            assert kept == configs  # large problems try every tile


# Compiles (does not run) the kernels for an H100/H200 (sm_90a) with Triton's bundled ptxas, in a
# process without the interpreter: catches GPU-only lowering errors (libdevice.popc, int8 tl.dot,
# reshape) on a machine without a GPU.
_LOWER_SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from qsnn_kernels.triton import bitserial as tb

    def compile_for_sm90(fn, constexprs, meta):
        constexprs = dict(constexprs, **{k: v for k, v in meta.items() if not k.startswith("num_")})
        signature = {
            name: "constexpr" if name in constexprs else ("*i32" if name.endswith("_ptr") else "i32")
            for name in fn.arg_names
        }
        options = {k: v for k, v in meta.items() if k.startswith("num_")}
        src = ASTSource(fn, signature, constexprs=constexprs)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]

    ptx = compile_for_sm90(
        tb._bitserial_popcount_kernel, dict(S_BITS=2, W_BITS=4, SHIFT_BY_STEP=1, USE_SWAR=False),
        tb._DEFAULT_GPU_META["bitserial"])
    print("bitserial popc", "popc.b32" in ptx)
    for sb, wb, combine, offset in [(8, 2, False, 128), (1, 1, True, 0)]:
        ptx = compile_for_sm90(
            tb._bitserial_dot_kernel,
            dict(S_BITS=sb, W_BITS=wb, SHIFT_BY_STEP=1, COMBINE=combine, OFFSET=offset),
            tb._DEFAULT_GPU_META["dot"])
        print("dot wgmma", "wgmma" in ptx and ".s8" in ptx)
    """
)


@pytest.mark.skipif(KERNEL_DEVICE == "cuda", reason="with a GPU, the other tests compile and run the kernels")
def test_kernels_lower_for_sm90():
    """The GPU path compiles to PTX + cubin for sm_90a; the PTX uses popc and int8 wgmma."""
    backend = Path(tb.triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not backend.exists():
        pytest.skip("triton's bundled ptxas is not installed")
    done = run_without_interpreter(_LOWER_SCRIPT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")
    assert "bitserial popc True" in lines and lines.count("dot wgmma True") == 2, done.stdout


# --------------------------------------------------------------------------- GPU only

needs_cuda = pytest.mark.skipif(KERNEL_DEVICE != "cuda", reason="needs a CUDA device (not the interpreter)")
GPU_SHAPES = [(2, 96, 1000, 129), (4, 300, 273, 64), (1, 64, 4096, 256), (3, 1, 4608, 512)]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gpu_larger_shapes(strategy, shape):
    steps, m, k, n = shape
    for s_bits, w_bits in [(1, 1), (1, 8), (2, 4), (4, 2), (8, 8)]:
        x, q, xp, wp = _inputs(*shape, s_bits, w_bits, seed=s_bits + 10 * w_bits)
        for reduce in REDUCTIONS:
            y = tb.bitserial_matmul_triton(xp, wp, k, s_bits, reduce, strategy)
            _assert_exact(y, reference.bitserial_matmul(x, q, reduce), f"{s_bits}x{w_bits} {reduce}")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gpu_every_autotune_config(strategy):
    """Each tile the autotuner may pick is exact, not only the one it happens to pick here."""
    configs = tb._BITSERIAL_CONFIGS if strategy == "bitserial" else tb._DOT_CONFIGS
    steps, m, k, n = 3, 200, 1000, 150
    for s_bits, w_bits, reduce in [(1, 1, "none"), (8, 4, "time"), (2, 2, "bitplane")]:
        x, q, xp, wp = _inputs(steps, m, k, n, s_bits, w_bits, seed=5)
        expected = reference.bitserial_matmul(x, q, reduce)
        for config in configs:
            y = tb._launch(xp, wp, k, s_bits, reduce, strategy, config=config)
            _assert_exact(y, expected, f"{config} {s_bits}x{w_bits} {reduce}")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("strategy", ("auto",) + STRATEGIES)
def test_gpu_autotuned(strategy, monkeypatch):
    monkeypatch.setenv("QSNN_TRITON_AUTOTUNE", "1")
    x, q, xp, wp = _inputs(2, 128, 576, 64, 2, 2, seed=9)
    y = tb.bitserial_matmul_triton(xp, wp, 576, 2, "none", strategy)
    _assert_exact(y, reference.bitserial_matmul(x, q, "none"), strategy)
