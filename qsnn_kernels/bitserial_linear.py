"""The float form of the bit-serial GEMM for layers: ``bitserial_linear`` (op ``qsnn::bitserial_linear``).

Forward: the exact integer result of :func:`qsnn_kernels.bitserial.bitserial_matmul` times the
weight scale ``alpha[n]`` and the spike scale (DESIGN.md: "the float result is alpha_n * Y").
Backward (straight-through, dense float matmuls, as if the levels and the quantized weight
were floats): ``dL/dx_p = c_p * x_scale * dL/dy_p @ (alpha * q)``, ``dL/dW_q = x_scale *
sum_p c_p dL/dy_p^T @ x_p`` passed unchanged to a float master weight, and
``dL/dalpha_n = sum_k dL/dW_q[n, k] * q[n, k]``; ``c_p`` is 1 ("none", "time") or 2^p ("bitplane").

The op computes with the ops registered for the tensors' device (``qsnn::pack_bits``,
``qsnn::bitserial_matmul_packed``, ``qsnn::unpack_bits`` in the backward); the backend is not an
argument of the op but the kernels it dispatches to: "triton" on CPU tensors (TRITON_INTERPRET=1)
and "reference" (reference.py's packer and popcount GEMM) register their kernels for the call
(:mod:`qsnn_kernels.triton_on_cpu`); the backward's exact unpacking is the device's compiled one
for every backend. Nothing falls back: a backend that cannot run raises BackendUnavailable before
any work.
"""

from __future__ import annotations

import contextlib
import numbers

import torch

from . import _extension, reference
from .bits import INTEGER_DTYPES, SPIKE_BITS, WEIGHT_BITS, check_bits, check_codes
from ._extension import BackendUnavailable
from .bitserial import _check_problem, _spike_bits, _triton_kernel, _triton_on_cpu
from .choices import REDUCTIONS, check_backend, check_choice
from .deprecation import NOT_GIVEN
from .packed_weight import PackedWeight
from .packing import pack_levels
from .quantize import spike_levels
from .triton_on_cpu import kernels_registered

__all__ = ["bitserial_linear"]

# --------------------------------------------------------------------------- op registration


def _out_dtype(x: torch.Tensor, w_scale: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype if x.is_floating_point() else torch.float32, w_scale.dtype)


def _levels(x: torch.Tensor, s_bits: int) -> torch.Tensor:
    """Spike levels as uint8: float levels through :func:`qsnn_kernels.quantize.spike_levels` (scale 1),
    integer ones after :func:`qsnn_kernels.bits.check_codes`; ValueError for anything else."""
    if x.is_floating_point():
        return spike_levels(x, 1.0, s_bits)
    check_codes(x, s_bits, False, "bitserial_linear: spikes")
    return x.detach().to(torch.uint8)


def _dequantized(w_planes: torch.Tensor, w_scale: torch.Tensor, k: int, dtype: torch.dtype):
    """(q as dtype [N, K], alpha * q) from the packed planes (the unpacker of their device)."""
    q = torch.ops.qsnn.unpack_bits(w_planes, k, True).to(dtype)
    return q, q * w_scale.to(dtype)[:, None]


@torch.library.custom_op("qsnn::bitserial_linear", mutates_args=())
def _bitserial_linear_op(
    x: torch.Tensor,
    w_planes: torch.Tensor,
    w_scale: torch.Tensor,
    weight: torch.Tensor | None,
    k: int,
    s_bits: int,
    x_scale: float,
    reduce: str,
) -> torch.Tensor:
    x_planes = pack_levels(_levels(x, s_bits), s_bits)
    y = torch.ops.qsnn.bitserial_matmul_packed(x_planes, w_planes, k, s_bits, reduce)
    dtype = _out_dtype(x, w_scale)
    return y.to(dtype) * (w_scale.to(dtype) * x_scale)


@_bitserial_linear_op.register_fake
def _(x, w_planes, w_scale, weight, k, s_bits, x_scale, reduce):
    torch._check(x.dim() == 3 and x.shape[2] == k, lambda: "bitserial_linear: spikes must be [T, M, K]")
    torch._check(w_planes.dim() == 3 and w_scale.shape == (w_planes.shape[1],), lambda: "bitserial_linear: bad weight")
    m, n = x.shape[1], w_planes.shape[1]
    shape = (x.shape[0], m, n) if reduce == "none" else (m, n)
    return x.new_empty(shape, dtype=_out_dtype(x, w_scale))


def _setup_context(ctx, inputs, output):
    x, w_planes, w_scale, weight, k, s_bits, x_scale, reduce = inputs
    ctx.save_for_backward(x, w_planes, w_scale)
    ctx.args = (k, x_scale, reduce)
    ctx.weight_shape = None if weight is None else weight.shape


def _backward(ctx, grad):
    x, w_planes, w_scale = ctx.saved_tensors
    k, x_scale, reduce = ctx.args
    need_x, _, need_scale, need_weight = ctx.needs_input_grad[:4]
    dtype = grad.dtype
    g = grad * x_scale
    steps = x.shape[0]
    if reduce == "time":
        g = g.unsqueeze(0).expand(steps, *g.shape)
    elif reduce == "bitplane":
        coef = torch.pow(2.0, torch.arange(steps, device=g.device, dtype=dtype))
        g = g.unsqueeze(0) * coef[:, None, None]
    q, wq = _dequantized(w_planes, w_scale, k, dtype)
    grad_x = grad_scale = grad_weight = None
    if need_x:
        grad_x = torch.matmul(g, wq).to(x.dtype)
    if need_scale or need_weight:
        xf = x.to(dtype)
        grad_wq = torch.matmul(g.reshape(-1, g.shape[-1]).t(), xf.reshape(-1, xf.shape[-1]))  # [N, K]
        if need_scale:
            grad_scale = (grad_wq * q).sum(1).to(w_scale.dtype)
        if need_weight:
            grad_weight = grad_wq.reshape(ctx.weight_shape)
    return grad_x, None, grad_scale, grad_weight, None, None, None, None


_bitserial_linear_op.register_autograd(_backward, setup_context=_setup_context)

# --------------------------------------------------------------------------- functional API


def _require(backend: str, device: torch.device) -> None:
    """BackendUnavailable unless ``backend`` runs on ``device``: the compiled packer and unpacker
    (every backend) and the Triton kernel (backend="triton", or "auto" on CUDA).

    Dynamo cannot trace the extension's lazy import; under torch.compile the op's eager
    implementation makes the same check when it runs.
    """
    if torch.compiler.is_compiling():
        return
    _extension.require(device.type)
    if backend == "triton" or (backend == "auto" and device.type == "cuda"):
        _triton_kernel(device)


def _reference_kernels(device_type: str):
    """The scope in which the ops the layer op calls compute with reference.py (backend="reference")."""
    return kernels_registered({
        "pack_bits": reference.pack_bits,
        "bitserial_matmul_packed": lambda x, w, k, s_bits, reduce: reference.bitserial_matmul_popcount(
            x, w, s_bits, reduce),
    }, device_type)


def _kernels_of(backend: str, device: torch.device):
    """The scope in which the registered ops run ``backend``'s kernels (none for the device's own)."""
    if backend == "reference":
        return _reference_kernels(device.type)
    if backend == "triton" and device.type == "cpu":
        return _triton_on_cpu()
    return contextlib.nullcontext()


def _quantize_pack(weight: torch.Tensor, w_bits: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 per output channel (reference.quantize_weight), then pack: (planes, scale). Traceable."""
    q, scale = reference.quantize_weight(weight, w_bits)
    q = q.reshape(q.shape[0], -1)
    if backend == "reference":
        return reference.pack_bits(q, w_bits, True), scale
    return torch.ops.qsnn.pack_bits(q, w_bits, True), scale


def bitserial_linear(
    spikes: torch.Tensor,
    w,
    *,
    s_bits: int | None = None,
    x_scale: float = 1.0,
    w_bits: int | None = None,
    reduce: str = "none",
    weight: torch.Tensor | None = None,
    backend: str = "auto",
    x_bits=NOT_GIVEN,
) -> torch.Tensor:
    """``alpha[n] * x_scale * bitserial_matmul(spikes, q)``: the layer form, with autograd.

    * ``spikes``: levels ``[P, M, K]``: a float tensor of whole numbers in ``[0, 2^s_bits)``
      (gradients flow to it straight-through, as if the levels were floats), or integer/bool.
    * ``s_bits``: the spike width in {1, 2, 4, 8} (default 1); ``x_bits`` is its deprecated former
      name (FutureWarning; passing both is a TypeError).
    * ``w``: a :class:`PackedWeight` (codes q, per-channel scale alpha); or a float weight
      ``[N, ...]`` with ``w_bits``: it is quantized per call (Eq. 5, reference.quantize_weight),
      packed, and receives the straight-through gradient (training through fake-quant).
    * ``weight``: with a PackedWeight, an optional float tensor of ``w.shape`` (e.g. the master
      weight it was quantized from) that receives the straight-through weight gradient.
    * ``x_scale``: the spike scale (v_th), a Python number.
    * ``reduce``, ``backend``: as in :func:`qsnn_kernels.bitserial.bitserial_matmul`; the backward
      unpacks the weight with the device's compiled unpacker. Under torch.compile only the device's
      own kernels ("auto", "triton" on CUDA).

    Returns float32 (float64 if the spikes are float64) ``[P, M, N]`` or ``[M, N]``, equal to the
    exact integer result times ``alpha[n] * x_scale`` (one rounding). Raises TypeError/ValueError
    before any kernel runs on bad types, shapes, bit widths, reduce, backend, devices, an int32
    overflow risk, or spikes that are not integer levels in range; BackendUnavailable if the
    backend cannot run on the tensors' device. Works under
    ``torch.compile(fullgraph=True)``; passes ``torch.library.opcheck``.
    """
    s_bits = _spike_bits("bitserial_linear", s_bits, x_bits)
    check_backend(backend, "bitserial_linear")
    check_choice(reduce, REDUCTIONS, "reduce", "bitserial_linear")
    check_bits(s_bits, SPIKE_BITS, "s_bits")
    if isinstance(x_scale, bool) or not isinstance(x_scale, numbers.Real):
        raise TypeError(f"bitserial_linear: x_scale must be a Python number, got {type(x_scale).__name__}")
    if not isinstance(spikes, torch.Tensor):
        raise TypeError(f"bitserial_linear: spikes must be a tensor, got {type(spikes).__name__}")
    if spikes.dtype == torch.bool:
        spikes = spikes.to(torch.uint8)
    if not spikes.is_floating_point() and spikes.dtype not in INTEGER_DTYPES:
        raise TypeError(f"bitserial_linear: spikes must be float or integer levels, got {spikes.dtype}")
    if spikes.dim() != 3 or spikes.shape[0] == 0 or spikes.shape[2] == 0:
        raise ValueError(f"bitserial_linear: spikes must be [T, M, K] with T, K >= 1, got shape {tuple(spikes.shape)}")
    if isinstance(w, PackedWeight):
        if w_bits is not None and w_bits != w.w_bits:
            raise ValueError(f"bitserial_linear: w_bits={w_bits!r} disagrees with the PackedWeight's w_bits={w.w_bits}")
        w_bits, k_w, device = w.w_bits, w.in_features, w.device
        if weight is not None:
            if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
                raise TypeError("bitserial_linear: weight must be a float tensor")
            if weight.shape != w.shape or weight.device != device:
                raise ValueError(
                    f"bitserial_linear: weight {tuple(weight.shape)} on {weight.device} must match the PackedWeight "
                    f"{tuple(w.shape)} on {device}"
                )
    elif isinstance(w, torch.Tensor):
        if not w.is_floating_point():
            raise TypeError(f"bitserial_linear: a tensor w must be a float weight (or pass a PackedWeight), got {w.dtype}")
        if weight is not None:
            raise ValueError("bitserial_linear: weight= is for a PackedWeight w; a float w gets its gradient itself")
        if w_bits is None:
            raise ValueError("bitserial_linear: w_bits is required with a float weight")
        check_bits(w_bits, WEIGHT_BITS, "w_bits")
        if w.dim() < 2 or w.shape[1:].numel() == 0:
            raise ValueError(f"bitserial_linear: w must be [N, K, ...] with K >= 1, got shape {tuple(w.shape)}")
        k_w, device = w.shape[1:].numel(), w.device
    else:
        raise TypeError(f"bitserial_linear: w must be a PackedWeight or a float tensor, got {type(w).__name__}")
    if spikes.device != device:
        raise ValueError(f"bitserial_linear: spikes are on {spikes.device} but the weight is on {device}")
    _check_problem(spikes.shape[2], k_w, s_bits, w_bits, spikes.shape[0], reduce, "bitserial_linear")
    _require(backend, device)
    if isinstance(w, PackedWeight):
        planes, scale = w.planes, w.scale
    else:
        planes, scale = _quantize_pack(w, w_bits, backend)
        weight = w
    if torch.compiler.is_compiling():
        if backend == "reference" or (backend == "triton" and device.type == "cpu"):
            raise BackendUnavailable(f"bitserial_linear: backend={backend!r} on {device.type} swaps the ops' kernels "
                                     "for the call, which torch.compile cannot trace; use it eagerly")
        return torch.ops.qsnn.bitserial_linear(spikes, planes, scale, weight, k_w, s_bits, float(x_scale), reduce)
    with _kernels_of(backend, device):
        return torch.ops.qsnn.bitserial_linear(spikes, planes, scale, weight, k_w, s_bits, float(x_scale), reduce)
