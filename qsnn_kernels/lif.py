"""Multi-level LIF neuron (Eqs. 6-7), fused over all T steps: ops ``qsnn::lif_forward``,
``qsnn::lif_backward`` and ``qsnn::lif_int``, the functions :func:`multilevel_lif` and
:func:`multilevel_lif_int`, and the module :class:`MultiLevelLIF`.

Semantics: DESIGN.md "Multi-level LIF"; oracle: :func:`qsnn_kernels.reference.multilevel_lif`
and :func:`qsnn_kernels.reference.multilevel_lif_int`. Names and defaults (backends, resets,
surrogates and their alphas): :mod:`qsnn_kernels.choices`.

Kernels: csrc/lif_cpu.cpp (the ops' CPU kernels: C++, vectorized, OpenMP through
``at::parallel_for``) and qsnn_kernels/triton/lif.py (the ops' CUDA kernels: the Triton launchers
of :data:`TRITON_KERNELS`). ``backend="triton"`` on CPU tensors (``TRITON_INTERPRET=1``, for tests)
calls the same ops with those same launchers as their CPU kernels, for the op call and for its
backward (:func:`qsnn_kernels.triton_on_cpu.triton_kernels_on_cpu`): one schema, fake, autograd
formula and launcher on both devices. Each kernel walks all T steps in one pass per neuron,
forward in time and backward in reverse time.

Saved state: the forward keeps ``h_t``, the membrane before reset, for the backward: one element
of x's dtype per neuron per step (4 bytes in float32, 2 in float16/bfloat16); the spike level,
the reset indicator and the surrogate derivatives are all recomputed from it.

Op contract (``[T, N]`` contiguous; the functional API flattens ``[T, ...]`` to it)::

    lif_forward(x, v_init?, s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha, detach_reset,
                save_h=True, emit_v_last=True)
        -> (spikes [T, N] x.dtype = level * v_th, v_last [N] state dtype, h [T, N] x.dtype)
        (h is [0, N] and never written when save_h is False: inference, no autograd graph;
        v_last is [0] and never written when emit_v_last is False: a caller that drops it;
        x may also be one dense frame broadcast over T, stride 0, read in place:
        :func:`broadcast_over_time`)
    lif_backward(grad_spikes?, grad_v_last?, h, s_bits, v_th, decay, v_reset, hard_reset,
                 surrogate, alpha, detach_reset, emit_grad_v_init=True)
        -> (grad_x [T, N] h.dtype, grad_v_init [N] state dtype, [0] without emit_grad_v_init)
        (grad_spikes None: the spikes received no gradient, no zero tensor is read;
        grad_v_last None: v_T received no gradient, so, as in the reference's autograd, the last
        step's membrane path contributes nothing, not 0 * dv/dh, which is NaN for a NaN membrane)
    lif_int(x int32, v_init? int32, s_bits, theta, leak_shift, v_reset, hard_reset)
        -> (levels uint8 [T, N], v_last int32 [N])

``surrogate`` is a name of :data:`qsnn_kernels.choices.SURROGATES` (each kernel maps it to its
code; an unknown name is a ValueError), ``alpha`` its resolved positive parameter. ``surrogate``,
``alpha`` and ``detach_reset`` are in the forward schema only so that the registered autograd
formula can see them; the forward kernels ignore them. The state dtype (v_init, v_last, grad_v_init)
is float64 for float64 input (CPU only) and float32 otherwise.

Outputs of the C++ kernels of 1 MiB or more come from a small pool of warm host buffers
(csrc/host_pool.h; ``QSNN_HOST_POOL_MB``, default 512, 0 disables); such tensors cannot be
resized in place.

Autograd: one formula (BPTT on the saved h, :func:`_lif_grads`), differentiable once, reached
two ways that share their setup and formula: the ops' registered autograd, for callers of
``torch.ops.qsnn.lif_forward``, and :class:`_LifFunction`, through which :func:`multilevel_lif`
calls the op in every mode. The second exists because torch.func transforms (grad, vjp, jacrev,
vmap of grad) refuse an autograd Function without a separate ``setup_context``, which
torch.library's generated one lacks. A backward under ``create_graph=True``, or a torch.func
transform nested in another that differentiates (``grad(grad(f))``, ``hessian``), raises
:data:`DOUBLE_BACKWARD_ERROR` rather than return a gradient whose own derivative would silently
be lost; the reference backend is differentiable twice.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math

import torch

from . import _extension, reference
from ._extension import BackendUnavailable
from .bits import SPIKE_BITS, check_bits
from .choices import DEFAULT_ALPHA, RESETS, SURROGATES, check_backend, check_choice
from .triton_on_cpu import require_interpreter, triton_kernels_on_cpu

__all__ = ["multilevel_lif", "multilevel_lif_int", "MultiLevelLIF"]

CPU_FLOAT_DTYPES = (torch.float32, torch.float64)
GPU_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _triton_lif():
    """qsnn_kernels.triton.lif, or BackendUnavailable if it (or triton) cannot be imported."""
    try:
        from .triton import lif as module
    except ImportError as exc:
        raise BackendUnavailable(f"the Triton LIF kernels are not available ({exc}); install triton") from exc
    return module


# --------------------------------------------------------------------------- op registration

torch.library.define(
    "qsnn::lif_forward",
    "(Tensor x, Tensor? v_init, int s_bits, float v_th, float decay, float v_reset, bool hard_reset, "
    "str surrogate, float alpha, bool detach_reset, bool save_h=True, bool emit_v_last=True) "
    "-> (Tensor, Tensor, Tensor)",
)
torch.library.define(
    "qsnn::lif_backward",
    "(Tensor? grad_spikes, Tensor? grad_v_last, Tensor h, int s_bits, float v_th, float decay, float v_reset, "
    "bool hard_reset, str surrogate, float alpha, bool detach_reset, bool emit_grad_v_init=True) -> (Tensor, Tensor)",
)
torch.library.define(
    "qsnn::lif_int",
    "(Tensor x, Tensor? v_init, int s_bits, int theta, int leak_shift, int v_reset, bool hard_reset) "
    "-> (Tensor, Tensor)",
)


@torch.library.register_fake("qsnn::lif_forward")
def _lif_forward_fake(x, v_init, s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha, detach_reset,
                      save_h=True, emit_v_last=True):
    torch._check(x.dim() == 2 and x.shape[0] >= 1, lambda: "lif_forward: x must be [T, N] with T >= 1")
    torch._check(x.dtype.is_floating_point, lambda: f"lif_forward: float x expected, got {x.dtype}")
    state = _state_dtype(x.dtype)
    if v_init is not None:
        torch._check(v_init.shape == x.shape[1:], lambda: "lif_forward: v_init must be [N]")
        torch._check(v_init.dtype == state, lambda: f"lif_forward: v_init must be {state}")
    h = x.new_empty(x.shape) if save_h else x.new_empty((0, x.shape[1]))
    v_last = x.new_empty(x.shape[1:] if emit_v_last else (0,), dtype=state)
    return x.new_empty(x.shape), v_last, h


@torch.library.register_fake("qsnn::lif_backward")
def _lif_backward_fake(grad_spikes, grad_v_last, h, s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha,
                       detach_reset, emit_grad_v_init=True):
    torch._check(h.dim() == 2, lambda: "lif_backward: h must be [T, N]")
    if grad_spikes is not None:
        torch._check(grad_spikes.shape == h.shape, lambda: "lif_backward: grad_spikes must have h's shape")
    if grad_v_last is not None:
        torch._check(grad_v_last.shape == h.shape[1:], lambda: "lif_backward: grad_v_last must be [N]")
    state = _state_dtype(h.dtype)
    return h.new_empty(h.shape), h.new_empty(h.shape[1:] if emit_grad_v_init else (0,), dtype=state)


@torch.library.register_fake("qsnn::lif_int")
def _lif_int_fake(x, v_init, s_bits, theta, leak_shift, v_reset, hard_reset):
    torch._check(x.dim() == 2 and x.shape[0] >= 1, lambda: "lif_int: x must be [T, N] with T >= 1")
    torch._check(x.dtype == torch.int32, lambda: f"lif_int: x must be int32, got {x.dtype}")
    return x.new_empty(x.shape, dtype=torch.uint8), x.new_empty(x.shape[1:], dtype=torch.int32)


def _lif_forward_triton(x, v_init, s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha, detach_reset,
                        save_h=True, emit_v_last=True):
    return _triton_lif().lif_forward_triton(x, v_init, s_bits, v_th, decay, v_reset, hard_reset, save_h, emit_v_last)


def _lif_backward_triton(grad_spikes, grad_v_last, h, s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha,
                         detach_reset, emit_grad_v_init=True):
    return _triton_lif().lif_backward_triton(grad_spikes, grad_v_last, h, s_bits, v_th, decay, v_reset, hard_reset,
                                             surrogate, alpha, detach_reset, emit_grad_v_init)


def _lif_int_triton(x, v_init, s_bits, theta, leak_shift, v_reset, hard_reset):
    return _triton_lif().lif_int_triton(x, v_init, s_bits, theta, leak_shift, v_reset, hard_reset)


TRITON_KERNELS = {"lif_forward": _lif_forward_triton, "lif_backward": _lif_backward_triton,
                  "lif_int": _lif_int_triton}
"""The ops' Triton kernels: their CUDA kernels, and their CPU kernels within :func:`_kernels_of`."""

for _name, _kernel in TRITON_KERNELS.items():
    torch.library.register_kernel(f"qsnn::{_name}", "cuda", _kernel)


def _kernels_of(triton_on_cpu: bool):
    """The scope of one op call: the ops' Triton kernels are their CPU kernels within it if
    ``triton_on_cpu``, the registered kernels are used as they are otherwise. The forward and the
    backward (which runs later) each open their own scope, so none outlives an op call; the
    registration is process-wide, so while one is open, CPU calls of these ops from other threads
    reach the Triton kernels too (a test-only mode: ``TRITON_INTERPRET=1``)."""
    return triton_kernels_on_cpu(TRITON_KERNELS) if triton_on_cpu else contextlib.nullcontext()


# --------------------------------------------------------------------------- autograd: one formula

DOUBLE_BACKWARD_ERROR = (
    "multilevel_lif: double backward is not supported: the surrogate-gradient backward (qsnn::lif_backward) "
    "is not itself differentiable; compute the first gradient without create_graph=True, or use "
    "backend='reference' for higher-order gradients"
)

_TransformType = torch._C._functorch.TransformType


def _outer_differentiation(grad) -> bool:
    """Whether a torch.func transform that differentiates (grad, jvp) encloses the one running this
    backward: it would differentiate the backward formula, which has no derivative (its result
    would silently be 0). The innermost Grad level is this backward's own when ``grad`` is wrapped by it."""
    stack = torch._C._functorch.get_interpreter_stack() or []
    kinds = [ci.key() for ci in stack]
    differentiating = sum(k in (_TransformType.Grad, _TransformType.Jvp) for k in kinds)
    own = bool(kinds) and kinds[-1] == _TransformType.Grad and grad is not None and \
        torch._C._functorch.is_functorch_wrapped_tensor(grad)
    return differentiating - own > 0


def _differentiated_again(ctx, grad) -> bool:
    """Whether this backward is itself being differentiated: under a torch.func transform, an
    enclosing differentiating transform; otherwise a ``create_graph=True`` backward (grad mode on)
    for an input that needs a gradient. Either would silently lose the second-order term."""
    if torch._C._are_functorch_transforms_active():
        return _outer_differentiation(grad)
    return torch.is_grad_enabled() and any(ctx.needs_input_grad[:2])


def _lif_setup_context(ctx, inputs, output, triton_on_cpu: bool = False):
    x, v_init, *args = inputs
    h = output[2]
    ctx.save_for_backward(h)
    ctx.args = tuple(args[:8])  # the backward's parameters (s_bits .. detach_reset)
    ctx.emit_v_last = args[9]
    ctx.triton_on_cpu = triton_on_cpu  # the backward runs on the forward's kernels
    ctx.mark_non_differentiable(h)  # internal saved state, not a result
    ctx.set_materialize_grads(False)  # an unused output costs no zero-filled gradient


def _lif_grads(ctx, grad_spikes, grad_v_last) -> tuple:
    """(grad_x, grad_v_init or None) from the saved h: the backward formula, not differentiable itself."""
    if _differentiated_again(ctx, grad_spikes if grad_spikes is not None else grad_v_last):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)
    (h,) = ctx.saved_tensors
    if not ctx.emit_v_last:
        grad_v_last = None  # v_last was [0], never computed
    if grad_spikes is None and grad_v_last is None:
        return None, None
    emit_grad_v_init = ctx.needs_input_grad[1]
    with _kernels_of(ctx.triton_on_cpu):
        grad_x, grad_v_init = torch.ops.qsnn.lif_backward(grad_spikes, grad_v_last, h, *ctx.args, emit_grad_v_init)
    return grad_x, grad_v_init if emit_grad_v_init else None


def _lif_backward(ctx, grad_spikes, grad_v_last, grad_h):
    return *_lif_grads(ctx, grad_spikes, grad_v_last), *(None,) * 10


torch.library.register_autograd("qsnn::lif_forward", _lif_backward, setup_context=_lif_setup_context)


class _LifFunction(torch.autograd.Function):
    """``qsnn::lif_forward`` with the op's own setup and backward formula, as an autograd Function
    with a separate ``setup_context`` (which torch.func transforms require), called on the
    kernels that ``triton_on_cpu`` selects (see :func:`_kernels_of`) in the forward and the backward."""

    @staticmethod
    def forward(x, v_init, s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha, detach_reset, save_h,
                emit_v_last, triton_on_cpu):
        with _kernels_of(triton_on_cpu):
            return torch.ops.qsnn.lif_forward(x, v_init, s_bits, v_th, decay, v_reset, hard_reset, surrogate, alpha,
                                              detach_reset, save_h, emit_v_last)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _lif_setup_context(ctx, inputs, output, triton_on_cpu=inputs[-1])

    generate_vmap_rule = True  # vmap(grad(...)), jacrev: the ops' batching fallback

    @staticmethod
    def backward(ctx, grad_spikes, grad_v_last, grad_h):
        return *_lif_grads(ctx, grad_spikes, grad_v_last), *(None,) * 11


# apply() binds its arguments to inspect.signature(forward) on every call (a Function with a
# setup_context); a precomputed signature spares rebuilding it each time
_LifFunction.forward.__signature__ = inspect.signature(_LifFunction.forward)


# --------------------------------------------------------------------------- validation


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_int(value, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _check_float_params(s_bits, v_th, decay, v_reset, reset, surrogate, alpha) -> float:
    """Validate the float-mode parameters; returns alpha with its default resolved."""
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    if _check_real(v_th, "v_th") <= 0:
        raise ValueError(f"v_th must be > 0, got {v_th!r}")
    if not 0 < _check_real(decay, "decay") <= 1:
        raise ValueError(f"decay must be in (0, 1] (decay = 1/tau; 1 is an IF neuron), got {decay!r}")
    _check_real(v_reset, "v_reset")
    check_choice(reset, RESETS, "reset")
    check_choice(surrogate, tuple(SURROGATES), "surrogate")
    if alpha is None:
        return float(DEFAULT_ALPHA[surrogate])
    if _check_real(alpha, "alpha") <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    return float(alpha)


def _check_input(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{name}: x must be [T, ...] with T >= 1 time steps, got shape {tuple(x.shape)}")


def _check_v_init(v_init, x, is_float: bool, name: str):
    if v_init is None:
        return None
    if not isinstance(v_init, torch.Tensor):
        raise TypeError(f"{name}: v_init must be a tensor or None, got {type(v_init).__name__}")
    if is_float and not v_init.dtype.is_floating_point:
        raise TypeError(f"{name}: v_init must be a float tensor, got {v_init.dtype}")
    if not is_float and v_init.dtype != torch.int32:
        raise TypeError(f"{name}: v_init must be int32, got {v_init.dtype}")
    if v_init.shape != x.shape[1:]:
        raise ValueError(f"{name}: v_init must have shape x.shape[1:] = {tuple(x.shape[1:])}, "
                         f"got {tuple(v_init.shape)}")
    if v_init.device != x.device:
        raise ValueError(f"{name}: v_init is on {v_init.device}, x on {x.device}")
    return v_init


def _triton_on_cpu(backend: str, device: torch.device, name: str) -> bool:
    """Whether the op call needs the Triton kernels as the CPU kernels (``backend="triton"`` on a
    CPU tensor, checked by :func:`_eagerly`); raises BackendUnavailable if ``backend`` has no
    kernel for ``device``."""
    compiling = torch.compiler.is_compiling()  # then checked when the graph runs: a load would break it
    if device.type == "cuda":  # the ops' CUDA kernels are the Triton launchers, for "auto" and "triton"
        if not compiling:
            _triton_lif()
        return False
    if backend == "auto":
        if not compiling:
            _extension.require(device.type)
        return False
    if device.type != "cpu":
        raise BackendUnavailable(f"{name}: backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 on the CPU")
    return True


def _eagerly(name: str, call, *args):
    """``call(*args)`` for the Triton kernels on CPU tensors, after BackendUnavailable unless they can
    run here; outside any torch.compile graph (a graph break, an error under ``fullgraph=True``)."""
    return _eager_call_outside_graphs()(name, call, *args)


@functools.cache
def _eager_call_outside_graphs():
    # built on first use: torch.compiler.disable imports torch._dynamo (and triton), which
    # importing qsnn_kernels must not
    def eager_call(name: str, call, *args):
        require_interpreter(name)
        _triton_lif()
        return call(*args)

    return torch.compiler.disable(eager_call, reason="Triton's interpreter runs kernels on CPU tensors eagerly; "
                                                     "it cannot be traced")


def _lif_int_triton_on_cpu(*args):
    with _kernels_of(True):
        return torch.ops.qsnn.lif_int(*args)


def _check_int_range(x: torch.Tensor, v_init, v_reset: int, s_bits, theta, leak_shift, reset) -> None:
    """OverflowError, before any kernel runs, if some h_t leaves int32.

    ``|h_t| <= max(|v_init|, |v_reset|) + T max|x|`` per neuron (a right shift and either reset
    never grow |v|); only when this cheap bound exceeds int32 does the exact recurrence (the
    reference) run to decide.
    """
    if x.numel() == 0:
        return
    lo, hi = (int(m) for m in x.aminmax())
    start = abs(v_reset)
    if v_init is not None and v_init.numel():
        v_lo, v_hi = (int(m) for m in v_init.aminmax())
        start = max(start, -v_lo, v_hi)
    if start + x.shape[0] * max(-lo, hi) <= INT32_MAX:
        return
    reference.multilevel_lif_int(x, s_bits, theta, leak_shift, v_reset, reset, v_init)  # raises OverflowError


def _levels(spikes: torch.Tensor, v_th: float) -> torch.Tensor:
    """The integer levels s_t of spike values s_t * v_th (exact: s <= 255); NaN spikes give 0."""
    return torch.nan_to_num(torch.round(spikes.detach() / v_th), nan=0.0).to(torch.uint8)


# --------------------------------------------------------------------------- functional API


def multilevel_lif(x: torch.Tensor, *, s_bits: int = 1, v_th: float = 1.0, decay: float = 0.5, v_reset: float = 0.0,
                   reset: str = "hard", surrogate: str = "atan", alpha: float | None = None,
                   detach_reset: bool = False, v_init: torch.Tensor | None = None, return_levels: bool = False,
                   backend: str = "auto"):
    """Multi-level LIF over input currents ``x = [T, ...]`` (float mode, differentiable).

    For t = 1..T, with L = 2^s_bits - 1 and ``v_0 = v_init`` (zeros if None)::

        h_t = decay * v_{t-1} + x_t
        s_t = clamp(floor(h_t / v_th), 0, L)
        v_t = v_reset if s_t > 0 else h_t        (reset="hard")
        v_t = h_t - s_t * v_th                   (reset="soft")

    Returns ``(spikes, v_T)``: spike values ``s_t * v_th`` (x's shape and dtype) and the final
    membrane potential (``x.shape[1:]``; float64 for float64 x, float32 otherwise); with
    ``return_levels=True`` also the levels ``s_t`` as uint8.

    * ``x``: float32 (CPU and GPU), float64 (CPU), float16/bfloat16 (GPU); any trailing shape,
      any strides: a tensor stored densely in another dim order with time outermost (channels-last
      ``[T, B, C, H, W]``) runs in place and the outputs keep its layout; others are copied.
    * Forward: spikes and v_T equal the reference bit for bit (same float operations).
    * Backward (BPTT, surrogate gradients of :data:`qsnn_kernels.reference.SURROGATES`, with
      ``alpha`` None meaning the surrogate's default, :data:`qsnn_kernels.choices.DEFAULT_ALPHA`):
      d level/d h ~ (1/v_th) sum_{l=1..L} g'(h/v_th - l) with ``rect`` g'(z) = alpha 1[|z| < 1/(2 alpha)],
      ``atan`` g'(z) = (alpha/2)/(1 + (pi alpha z/2)^2), ``sigmoid`` g'(z) = alpha sig(alpha z)(1 - sig(alpha z)).
      The hard reset v = h(1 - r) + v_reset r, r = 1[h >= v_th], takes the l = 1 term as dr/dh;
      ``detach_reset`` cuts the gradient through r (hard) or through s in h - s v_th (soft).
    * NaN: a neuron whose input is NaN emits NaN spike values (level 0 if requested) and keeps
      a NaN membrane from that step on; its gradient is NaN except where the reference's is not
      (e.g. ``rect`` with soft reset, or the last step when v_T is unused); other neurons are
      unaffected. +inf under hard reset makes v = inf * 0 = NaN, as in the reference. The same on
      every backend.
    * ``backend``: "auto" (the op's kernel for x's device: C++ on CPU, Triton on CUDA), "triton"
      (CUDA, or CPU under TRITON_INTERPRET=1 through the same op; there a graph break under
      torch.compile, as the interpreter cannot be traced), "reference". No fallback between them.
    * Autograd: differentiable once (torch.autograd and torch.func.grad/vjp/jacrev); a backward
      with ``create_graph=True`` or nested differentiating transforms raise RuntimeError
      (``backend="reference"`` is differentiable twice).

    Raises ValueError (s_bits outside {1, 2, 4, 8}, v_th <= 0, decay outside (0, 1], T = 0,
    unknown reset/surrogate/backend, v_init of the wrong shape or device), TypeError (an integer
    x or v_init, float16/bfloat16 on CPU, float64 with backend="triton"), BackendUnavailable (no
    kernel for the device).
    """
    spikes, v_last, levels = _multilevel_lif(
        x, s_bits=s_bits, v_th=v_th, decay=decay, v_reset=v_reset, reset=reset, surrogate=surrogate, alpha=alpha,
        detach_reset=detach_reset, v_init=v_init, return_levels=return_levels, backend=backend, emit_v_last=True)
    return (spikes, v_last, levels) if return_levels else (spikes, v_last)


def _multilevel_lif(x, *, s_bits, v_th, decay, v_reset, reset, surrogate, alpha, detach_reset, v_init, return_levels,
                    backend, emit_v_last):
    """:func:`multilevel_lif`'s work: ``(spikes, v_T or None, levels or None)``; ``emit_v_last=False``
    (a caller that drops v_T) leaves v_T uncomputed, as the ops allow."""
    name = "multilevel_lif"
    check_backend(backend, name)
    _check_input(x, name)
    alpha = _check_float_params(s_bits, v_th, decay, v_reset, reset, surrogate, alpha)
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: float input currents expected, got {x.dtype} (integer inputs: multilevel_lif_int)")
    allowed = CPU_FLOAT_DTYPES if x.device.type == "cpu" else GPU_FLOAT_DTYPES
    if x.dtype not in allowed:
        raise TypeError(f"{name}: {x.dtype} is not supported on {x.device.type} "
                        f"(supported: {', '.join(map(str, allowed))})")
    if backend == "triton" and x.dtype == torch.float64:
        raise TypeError(f"{name}: the Triton kernels compute in float32; float64 needs backend='auto' on CPU")
    v_init = _check_v_init(v_init, x, True, name)
    if backend == "reference":
        spikes, v_last = reference.multilevel_lif(x, s_bits, v_th, decay, v_reset, reset, surrogate, alpha,
                                                  detach_reset, v_init)
        return spikes, v_last, _levels(spikes, v_th) if return_levels else None
    triton_on_cpu = _triton_on_cpu(backend, x.device, name)
    x, undo = _time_major_dense(x)
    steps, shape = x.shape[0], x.shape
    x2 = _rows(x)
    v2 = None if v_init is None else undo.state_in(v_init).reshape(-1).to(_state_dtype(x.dtype)).contiguous()
    # without a backward to come, h (one element per neuron per step) is not written at all
    save_h = torch._C._are_functorch_transforms_active() or (
        torch.is_grad_enabled() and (x.requires_grad or (v_init is not None and v_init.requires_grad)))
    args = (x2, v2, s_bits, float(v_th), float(decay), float(v_reset), reset == "hard", surrogate, alpha,
            bool(detach_reset), save_h, emit_v_last, triton_on_cpu)
    if triton_on_cpu:
        spikes, v_last, _ = _eagerly(name, _LifFunction.apply, *args)
    else:
        spikes, v_last, _ = _LifFunction.apply(*args)
    spikes = undo.out(spikes.view(shape))
    v_last = undo.state_out(v_last.view(shape[1:])) if emit_v_last else None
    return spikes, v_last, _levels(spikes, v_th) if return_levels else None


class _Permutation:
    """Dims 1.. of a ``[T, ...]`` tensor put in memory order (``perm``), and back."""

    def __init__(self, perm: tuple[int, ...]):
        self.inverse = tuple(perm.index(d) for d in range(len(perm)))
        self.state = tuple(d - 1 for d in perm[1:])
        self.state_inverse = tuple(self.state.index(d) for d in range(len(self.state)))

    def out(self, t):
        return t.permute(self.inverse)

    def state_in(self, t):
        return t.permute(self.state)

    def state_out(self, t):
        return t.permute(self.state_inverse)


def broadcast_over_time(x: torch.Tensor) -> bool:
    """Whether ``x [T, N]`` is one dense frame repeated over T by a stride-0 time dimension
    (``frame.expand(T, N)``, a direct-encoding input), which the LIF kernels read in place."""
    return x.dim() == 2 and x.shape[0] > 1 and x.stride(0) == 0 and (x.shape[1] <= 1 or x.stride(1) == 1)


def _dense_frames(x: torch.Tensor) -> bool:
    """Whether ``x [T, ...]`` is contiguous, or one contiguous frame broadcast over T (stride 0)."""
    return x.is_contiguous() or (x.dim() > 1 and x.stride(0) == 0 and x[0].is_contiguous())


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x [T, ...]`` as the ops' ``[T, N]``: a view when its frames are dense (a frame broadcast
    over T stays a stride-0 view, :func:`broadcast_over_time`), a contiguous copy otherwise."""
    rows = x.reshape(x.shape[0], -1)
    return rows if rows.is_contiguous() or broadcast_over_time(rows) else rows.contiguous()


def _time_major_dense(x: torch.Tensor):
    """``(x viewed with dims 1.. in memory order, how to undo it)``: a tensor stored densely in another
    dim order with time outermost (a channels-last ``[T, B, C, H, W]``, as convolutions produce on
    the CPU), or one such frame broadcast over T, then has dense frames (:func:`_dense_frames`), and
    the neurons run on it without a copy; outputs get x's layout."""
    order = sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    perm = (0, *order)
    if x.is_contiguous() or not _dense_frames(x.permute(perm)):
        perm = tuple(range(x.dim()))
    undo = _Permutation(perm)
    return x.permute(perm), undo


def multilevel_lif_int(x: torch.Tensor, *, s_bits: int, theta: int, leak_shift: int = 0, v_reset: int = 0,
                       reset: str = "hard", v_init: torch.Tensor | None = None, backend: str = "auto"):
    """Integer multi-level LIF, the hardware contract (bit-exact with the reference and hls/).

    ``x``: int32 ``[T, ...]``. For t = 1..T, with L = 2^s_bits - 1::

        h_t = (v_{t-1} >> leak_shift) + x_t          (arithmetic shift; decay = 2^-leak_shift)
        s_t = clamp(floor_div(h_t, theta), 0, L)     (floor, also for negative h_t)
        v_t = v_reset if s_t > 0 else h_t  (hard);   h_t - s_t * theta  (soft)

    Returns ``(levels uint8 [T, ...], v_T int32 x.shape[1:])``. ``v_init``: int32 ``x.shape[1:]``
    or None (zeros). Raises TypeError (x or v_init not int32), ValueError (s_bits, theta outside
    [1, 2^31), leak_shift outside [0, 31], v_reset outside int32, T = 0, reset, v_init shape),
    OverflowError if some h_t leaves int32 (checked before any kernel runs, on every backend),
    BackendUnavailable.
    """
    name = "multilevel_lif_int"
    check_backend(backend, name)
    _check_input(x, name)
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    _check_int(theta, "theta", 1, INT32_MAX)
    _check_int(leak_shift, "leak_shift", 0, 31)
    _check_int(v_reset, "v_reset", INT32_MIN, INT32_MAX)
    check_choice(reset, RESETS, "reset", name)
    if x.dtype != torch.int32:
        hint = " (float input currents: multilevel_lif)" if x.dtype.is_floating_point else ""
        raise TypeError(f"{name}: x must be int32, got {x.dtype}{hint}")
    v_init = _check_v_init(v_init, x, False, name)
    if backend == "reference":
        return reference.multilevel_lif_int(x, s_bits, theta, leak_shift, v_reset, reset, v_init)
    triton_on_cpu = _triton_on_cpu(backend, x.device, name)
    _check_int_range(x, v_init, v_reset, s_bits, theta, leak_shift, reset)
    steps, shape = x.shape[0], x.shape
    args = (x.reshape(steps, -1).contiguous(), None if v_init is None else v_init.reshape(-1).contiguous(),
            s_bits, theta, leak_shift, v_reset, reset == "hard")
    if triton_on_cpu:
        levels, v_last = _eagerly(name, _lif_int_triton_on_cpu, *args)
    else:
        levels, v_last = torch.ops.qsnn.lif_int(*args)
    return levels.view(shape), v_last.view(shape[1:])


# --------------------------------------------------------------------------- module


class MultiLevelLIF(torch.nn.Module):
    """Multi-step multi-level LIF layer: ``[T, B, ...]`` input currents -> spike values, same shape.

    Stateless by default: every call starts from v = 0 (or from ``v_init``-free rest), so no reset
    between batches is ever needed. With ``stateful=True`` the final membrane potential of one
    call (detached) is the initial one of the next, for streaming a long sequence in pieces;
    :meth:`reset` clears it. Arguments as in :func:`multilevel_lif`; they are checked here.
    """

    def __init__(self, s_bits: int = 1, v_th: float = 1.0, decay: float = 0.5, v_reset: float = 0.0,
                 reset: str = "hard", surrogate: str = "atan", alpha: float | None = None,
                 detach_reset: bool = False, stateful: bool = False, backend: str = "auto"):
        super().__init__()
        check_backend(backend, "MultiLevelLIF")
        self.alpha = _check_float_params(s_bits, v_th, decay, v_reset, reset, surrogate, alpha)
        self.s_bits, self.v_th, self.decay, self.v_reset = s_bits, float(v_th), float(decay), float(v_reset)
        self.reset_mode, self.surrogate, self.detach_reset = reset, surrogate, bool(detach_reset)
        self.stateful, self.backend = bool(stateful), backend
        self.v: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the carried membrane potential (``stateful=True``); a no-op otherwise."""
        self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes, v, _ = _multilevel_lif(
            x, s_bits=self.s_bits, v_th=self.v_th, decay=self.decay, v_reset=self.v_reset, reset=self.reset_mode,
            surrogate=self.surrogate, alpha=self.alpha, detach_reset=self.detach_reset,
            v_init=self.v if self.stateful else None, return_levels=False, backend=self.backend,
            emit_v_last=self.stateful)
        if self.stateful:
            self.v = v.detach()
        return spikes

    def extra_repr(self) -> str:
        return (f"s_bits={self.s_bits}, v_th={self.v_th}, decay={self.decay}, v_reset={self.v_reset}, "
                f"reset={self.reset_mode!r}, surrogate={self.surrogate!r}, alpha={self.alpha}, "
                f"detach_reset={self.detach_reset}, stateful={self.stateful}, backend={self.backend!r}")
