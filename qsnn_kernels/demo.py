"""``qsnn demo``: a tour of the ops on this machine, each result checked.

Five sections, in the order a user meets the library:

1. packing: a float32 weight quantized and packed at every W (bytes against float32, exact round trip);
2. the bit-serial GEMM (Eq. 3) at a few W/S/T against a float32 ``torch.matmul`` of the same shape,
   each result equal to the definition (the float64 product of the integer levels and codes,
   exact at these sizes) with zero mismatches;
3. the fused multi-level LIF against :func:`qsnn_kernels.reference.multilevel_lif`, spikes and
   membranes equal bit for bit;
4. a converted model: the tiny spiking CNN after :func:`qsnn_kernels.models.convert_for_inference`
   (batch norm folded, packed weights, the bit-serial GEMM on spike inputs), its logits equal to the
   float model's within the documented tolerance (rtol 1e-4, atol 1e-5);
5. where to go next.

Timings run on the CPU with torch's threads; each is the median of at least ``repeats`` runs (of
more for a fast op) after one untimed warm-up run, so they are only as steady as the machine is idle.
:func:`run_demo` returns 0 when every check passed, 1 otherwise (the failed checks named on stderr).
"""

from __future__ import annotations

import statistics
import sys
import time

__all__ = ["GEMM_SPLITS", "SIZES", "run_demo"]

GEMM_SPLITS = ((1, 1, 1), (1, 1, 4), (4, 1, 1), (4, 2, 2), (8, 4, 1))
"""The W/S/T of the GEMM section: Bit Budgets 1, 4, 4, 16 and 32."""

SIZES = {False: dict(n=512, k=2048, m=64, repeats=3), True: dict(n=128, k=256, m=16, repeats=3)}
"""Default problem sizes: ``SIZES[quick]``; N x K the weight, M the spike rows per time step."""


MIN_TIMED_S = 0.05
"""A fast op is run more than ``repeats`` times, until its timed runs add up to this many seconds
(at most 200 runs): the median of many short runs is steadier on a busy machine."""


def _median_ms(fn, repeats: int, warm_up: bool = True) -> float:
    """Median wall time of ``fn()`` in ms over at least ``repeats`` runs (more for a fast op:
    :data:`MIN_TIMED_S`), after one untimed warm-up run (``warm_up=False``: the caller has just run it)."""
    if warm_up:
        fn()
    times = []
    while len(times) < repeats or (sum(times) < MIN_TIMED_S and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


class _Checks:
    """Collects check results; ``failed`` lists the names of those that did not pass."""

    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, name: str, ok: bool) -> str:
        if not ok:
            self.failed.append(name)
        return "yes" if ok else "NO"


def _packing(torch, qk, n: int, k: int, repeats: int, check: _Checks) -> None:
    w = torch.randn(n, k)
    print(f"\n1. Packing: a {n} x {k} float32 weight ({w.numel() * 4:,} bytes), quantized per output channel "
          f"(Eq. 5) and packed into bit planes")
    print(f"{'W':>3} {'bytes':>12} {'vs fp32':>8} {'pack ms':>8}  exact round trip")
    for w_bits in qk.bits.WEIGHT_BITS:
        q, scale = qk.reference.quantize_weight(w, w_bits)
        ms = _median_ms(lambda: qk.PackedWeight.from_int(q, w_bits, scale), repeats)
        pw = qk.PackedWeight.from_int(q, w_bits, scale)
        ok = check(f"packing W={w_bits}: round trip", bool(torch.equal(pw.int_codes(), q)))
        print(f"{w_bits:>3} {pw.nbytes:>12,} {pw.dense_nbytes / pw.nbytes:>7.1f}x {ms:>8.2f}  {ok}")


def _gemm(torch, qk, n: int, k: int, m: int, repeats: int, check: _Checks) -> None:
    from .testing import mismatches

    print(f"\n2. Bit-serial GEMM: spikes [T, {m}, {k}] (S-bit levels) x a W-bit weight [{n}, {k}] -> [T, {m}, {n}] "
          f"int32, against float32 torch.matmul of the same shape (median of >= {repeats} runs, warm-up excluded)")
    print(f"{'W/S/T':>6} {'BB':>3} {'bit-serial ms':>14} {'fp32 matmul ms':>15} {'speed vs fp32':>14}  "
          f"exact (mismatches)")
    for w_bits, s_bits, t_steps in GEMM_SPLITS:
        lo, hi = (-1, 1) if w_bits == 1 else (-(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1)
        q = torch.randint(lo, hi + 1, (n, k), dtype=torch.int8)
        if w_bits == 1:
            q[q == 0] = 1  # a 1-bit weight is -1 or +1
        levels = torch.randint(0, 1 << s_bits, (t_steps, m, k), dtype=torch.uint8)
        pw = qk.PackedWeight.from_int(q, w_bits)  # packed once, as a layer holds it
        y = qk.bitserial_matmul(levels, pw, s_bits=s_bits)
        expected = torch.matmul(levels.to(torch.float64), q.to(torch.float64).T)  # exact: |values| << 2^53
        wrong = mismatches(y.to(torch.float64), expected)
        ok = check(f"GEMM {w_bits}/{s_bits}/{t_steps}: exact", y.dtype == torch.int32 and wrong == 0)
        x32, w32 = levels.reshape(t_steps * m, k).to(torch.float32), q.to(torch.float32).T.contiguous()
        ms_bs = _median_ms(lambda: qk.bitserial_matmul(levels, pw, s_bits=s_bits), repeats)
        ms_fp = _median_ms(lambda: torch.matmul(x32, w32), repeats)
        print(f"{w_bits}/{s_bits}/{t_steps:<2} {w_bits * s_bits * t_steps:>3} {ms_bs:>14.2f} {ms_fp:>15.2f} "
              f"{ms_fp / ms_bs:>13.2f}x  {ok} ({wrong})")
    print("   cost grows with the Bit Budget W*S*T; float32 matmul's with T only (it ignores W and S)")


def _lif(torch, qk, n: int, m: int, repeats: int, check: _Checks) -> None:
    t_steps, s_bits = 8, 2
    x = torch.randn(t_steps, m, n) * 1.5
    print(f"\n3. Multi-level LIF: currents [T={t_steps}, {m}, {n}], S={s_bits} (levels 0..{(1 << s_bits) - 1}), "
          f"hard reset; the fused op against the reference's per-step loop (forward, no autograd)")
    with torch.no_grad():  # the calls of the check are the warm-up runs
        s, v = qk.multilevel_lif(x, s_bits=s_bits)
        s_ref, v_ref = qk.reference.multilevel_lif(x, s_bits)
        ok = check("LIF: equal to the reference", bool(torch.equal(s, s_ref) and torch.equal(v, v_ref)))
        ms_op = _median_ms(lambda: qk.multilevel_lif(x, s_bits=s_bits), repeats, warm_up=False)
        ms_ref = _median_ms(lambda: qk.reference.multilevel_lif(x, s_bits), repeats, warm_up=False)
    rate = float((s > 0).float().mean())
    print(f"   fused {ms_op:.2f} ms, reference {ms_ref:.2f} ms ({ms_ref / ms_op:.1f}x); firing rate {rate:.3f}; "
          f"spikes and membranes equal bit for bit: {ok}")


def _converted_model(torch, check: _Checks) -> None:
    from .models import convert_for_inference, create_model, model_nbytes

    w_bits, s_bits, t_steps, size, batch = 4, 2, 2, 8, 32
    model = create_model("spiking_cnn_tiny", w_bits=w_bits, s_bits=s_bits, t_steps=t_steps)
    x = torch.randn(batch, model.in_chans, size, size) * 2
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None  # running statistics = this batch's, so that the neurons fire
    with torch.no_grad():
        model.train()(x)
        model.eval()
        converted = convert_for_inference(model, x[:1])
        y_float, y_conv = model(x), converted(x)
    err = float((y_conv - y_float).abs().max())
    ok = check("converted model: logits within rtol 1e-4, atol 1e-5",
               bool(torch.allclose(y_conv, y_float, rtol=1e-4, atol=1e-5)))
    same = float((y_conv.argmax(1) == y_float.argmax(1)).float().mean())
    print(f"\n4. A converted model: qsnn_spiking_cnn_tiny at W/S/T {w_bits}/{s_bits}/{t_steps} on {batch} random "
          f"{size}x{size} images (batch norm calibrated on them), through models.convert_for_inference")
    print(f"   {model_nbytes(model):,} bytes as trained (float32) -> {model_nbytes(converted):,} bytes converted "
          f"(BN folded, {w_bits}-bit packed weights; spike-input convs on the bit-serial GEMM)")
    print(f"   logits: max |difference| {err:.2e}, within rtol 1e-4 / atol 1e-5: {ok}; same class for "
          f"{same:.0%} of the images")


NEXT_STEPS = (
    ("qsnn train", "train the tiny CNN on the embedded digits (W/S/T 4/2/4, seconds on a CPU)"),
    ("qsnn budget --model spikformer_4_384 --wst 4/2/1", "Bit Budget, SOPs, S-ACE, NS-ACE of a model, per layer"),
    ("qsnn budget --paper-table2", "the paper's Table 2 beside our figures"),
    ("qsnn sweep --budget 8", "train every W/S/T split of one Bit Budget: table and plots"),
    ("pytest benchmarks/ --benchmark-only", "the kernels against their peers, as ratios, on this machine"),
    ("qsnn models, qsnn info", "the registered models; what was built and which CPU path runs"),
)
"""The "where to go next" lines: (command, what it does)."""


def run_demo(*, quick: bool = False, n: int | None = None, k: int | None = None, m: int | None = None,
             repeats: int | None = None) -> int:
    """Print the tour (module docstring) and return 0 if every check passed, else 1 (the failed
    checks named on stderr). Sizes default to ``SIZES[quick]``: ``n`` x ``k`` the weight of the
    packing and GEMM sections, ``m`` the spike rows per step, ``repeats`` the timed runs."""
    import torch

    import qsnn_kernels as qk

    from .info import cpu_name

    sizes = dict(SIZES[quick])
    sizes.update({key: v for key, v in dict(n=n, k=k, m=m, repeats=repeats).items() if v is not None})
    n, k, m, repeats = sizes["n"], sizes["k"], sizes["m"], sizes["repeats"]
    torch.manual_seed(0)
    check = _Checks()
    print(f"qsnn_kernels {qk.__version__} on {cpu_name()}, {torch.get_num_threads()} torch threads, "
          f"CPU GEMM path {qk.cpu_simd()}")
    _packing(torch, qk, n, k, repeats, check)
    _gemm(torch, qk, n, k, m, repeats, check)
    _lif(torch, qk, max(1, k // 4), m, repeats, check)
    _converted_model(torch, check)
    print("\n5. Where to go next:")
    width = max(len(c) for c, _ in NEXT_STEPS)
    for command, what in NEXT_STEPS:
        print(f"   {command:<{width}}  {what}")
    if check.failed:
        print(f"qsnn demo: {len(check.failed)} check(s) failed: {'; '.join(check.failed)}", file=sys.stderr)
        return 1
    print("\nall checks passed")
    return 0
