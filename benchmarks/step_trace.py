"""The trace of one training step without a GPU: every op the step dispatches, its bytes, FLOPs,
category (fused kernel, GEMM, glue) and an estimated H200 time, for our model and for
spikingjelly's model-zoo network of the same size. Run from the repository root::

    python benchmarks/step_trace.py --model spikformer_8_512 --img 224 --t-steps 4 --batch 64 \
        --w-bits 4 --s-bits 1 --peer spikingjelly --json trace.json
    python benchmarks/step_trace.py --model sew_resnet34 --img 224 --t-steps 4 --batch 64 --peer spikingjelly

What is traced (the code as it is, run on tensors without data):

* The model is built on the CPU, then moved to the ``meta`` device: tensors with shapes, dtypes
  and strides but no storage. A CUDA device cannot be faked here: FakeTensorMode makes tensors that
  claim "cuda", but the autograd engine asks the CUDA driver for a context when the backward
  starts (``hasPrimaryContext``) and fails without one. Meta tensors take the library's non-CPU
  paths, the CUDA paths: the LIF ops get bf16 inputs, as on a GPU. Two guards that reject a device
  without kernels (``_extension.require``, ``quantize._require_op``) are told that "meta" stands
  for "cuda" during the trace; nothing else of the library is changed.
* The step is what ``qsnn train`` runs on CUDA: the forward under bf16 autocast, ``logits.float()``,
  cross entropy, backward. Autocast does not act on meta tensors, so :class:`CudaAutocast`
  emulates CUDA's autocast policy at the function level (GEMM-like calls cast their float inputs
  to bf16, the float32 list to float32; casts recorded as autocast records them) and
  ``torch.is_autocast_enabled`` reports it.
* :class:`Recorder` (a TorchDispatchMode) sees every aten and ``qsnn::`` op below autograd, the
  backward's included. A ``qsnn::`` op whose CUDA kernel is a composition of torch ops (a Python
  function registered for "cuda" without "triton" in its name, e.g. ``qsnn::spike_levels``, or
  the batch-norm + LIF composite before its Triton kernels) is traced through that function, so
  its parts are counted as they run on CUDA; one whose CUDA kernel is a Triton launcher is one
  fused launch. Which one it is comes from the registrations (watched from this module's import
  on, :func:`cuda_kernel`), so the trace follows the tree it runs in.
* Bytes of an op: the bytes of its tensor inputs plus outputs, each tensor counted by the
  elements it spans (a stride-0 dimension counts once: a frame broadcast over T is read once;
  ``[0, N]`` outputs, never written, count nothing). For the LIF and batch-norm + LIF ops this is
  their kernels' traffic, which follows the op's arguments (dtypes, strides, ``save_h``,
  ``emit_v_last``, ``grad_spikes`` None ...): :func:`lif_bytes` says it per argument.
* Launches: one per op, except a convolution's backward (one per gradient it computes); views,
  ``empty`` and ``detach`` launch nothing. Batch norm's forward (training) and backward read their
  input (and grad) twice (:data:`_EXTRA_READS`, an assumption about the CUDA kernels).
* FLOPs: torch.utils.flop_counter's formulas for GEMMs and convolutions (forward and backward);
  one per output element for glue; :data:`FUSED_FLOPS_PER_ELEMENT_STEP` for the fused neuron ops
  (nominal: they are memory bound).
* Saved-activation memory: the storages of the tensors that autograd's saved-tensor hooks packed
  in the forward and that the graph still holds when the forward ends (a detached branch's are
  gone), parameters and buffers left out, each storage once.

What is modelled, not traced:

* The time: per op ``max(bytes / COPY_BANDWIDTH, flops / MATRIX_RATE)`` for GEMMs,
  ``bytes / COPY_BANDWIDTH`` for the rest, plus ``LAUNCH_SECONDS`` per launch (see the constants).
  Kernel efficiency below the ceilings, cache reuse between ops, overlap of CPU launch overhead
  with GPU work are not modelled: an estimate near a lower bound, to compare builds, not a timing.
* The optimizer: torch's fused AdamW as one category (28 bytes per float32 parameter: read
  param, grad, exp_avg, exp_avg_sq, write three of them; launches per multi_tensor_apply chunking).
* The peer's neurons: spikingjelly's LIF as its Triton backend would run it, one fused launch
  per neuron layer for all T steps forward (read x, write spikes, save h) and one backward (read
  grad_spikes and h, write grad_x), all in the input's dtype (:class:`ModelledNeuron`). The rest of
  the peer (its convolutions, batch norms, attention, casts) is traced like ours.
* Not modelled: the peer under ``torch.compile`` (which ops Inductor would fuse).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import types
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry

HERE = os.path.dirname(os.path.abspath(__file__))

COPY_BANDWIDTH = 4.3e12
"""Bytes per second, read plus written: an H200's device-to-device copy through PyTorch
(/work/.library/device/KINDS.md, nvidia-h200, measured 2026-10-28 and 2026-11-04: about 4.3 TB/s)."""
MATRIX_RATE = 788e12
"""FLOP per second: an 8192^3 bf16 matrix product on random data on an H200 (KINDS.md, 2026-10-28;
769-798 on 2026-11-04)."""
INT8_MATRIX_RATE = 2 * MATRIX_RATE
"""Integer operations per second of an int8 product: twice the bf16 rate, the ratio of the dense int8
and bf16 figures of the H100/H200 datasheet (an assumption, not a measurement: benchmarks/gpu_check.py
times our int8 kernels and torch._int_mm on the device)."""
INT8_OPS = ("qsnn::int8_linear", "qsnn::int8_conv2d")
"""The int8 spike-input ops (``--int8 on``): GEMMs at :data:`INT8_MATRIX_RATE`, bytes by :func:`int8_traffic`."""
LEVELS_GEMM_OPS = ("qsnn::spike_linear_weight_grad",)
"""GEMMs of a float operand and one-byte levels (the int8 linear's weight gradient: ``grad [M, N]``,
``levels [M, K]``): 2 M N K FLOPs at :data:`MATRIX_RATE`, the bytes of their tensors (the float32
partial sums of its row splits, a few MB, are not counted)."""
LAUNCH_SECONDS = 5e-6
"""Per launch: an assumption (eager PyTorch's dispatch plus a kernel launch, a few microseconds),
not a measurement of this machine; ``--launch-us`` changes it."""
FUSED_FLOPS_PER_ELEMENT_STEP = {"forward": 6, "backward": 12}
"""Nominal float operations per neuron-step of a fused neuron kernel (charge, fire, reset; the
surrogate's derivative and BPTT): reported, not used for the time (the kernels are memory bound)."""
FUSED_NAMESPACES = ("qsnn", "steptrace")
NEURON_PARTS = ("qsnn::batch_norm_statistics",)
"""Ops without neuron-steps of their own whose bytes belong to a neuron layer's (the statistics
pass of the fused batch norm + LIF): counted in the neuron ops' bytes per element-step."""
ADAMW_BYTES_PER_PARAM = 28
_MTA_TENSORS, _MTA_ELEMENTS = 110, 320 * 65536  # multi_tensor_apply: tensors and elements per launch

# --------------------------------------------------------------------------- the ops' CUDA kernels

_CUDA_KERNELS: dict[str, object] = {}
"""qualname -> the Python function registered as the op's CUDA kernel (seen at registration)."""


def _note_cuda_kernel(op, device_types, func) -> None:
    types_ = (device_types,) if isinstance(device_types, str) else tuple(device_types or ())
    if "cuda" in types_ and func is not None:
        name = op if isinstance(op, str) else getattr(op, "_name", None) or str(op)
        _CUDA_KERNELS[name.split(".")[0]] = func


def _watch_registrations() -> None:
    """Wrap ``torch.library.register_kernel`` so that the CUDA kernels registered from now on are
    known (before qsnn_kernels is imported, the CLI's case); :func:`_known_cuda_kernels` covers an
    earlier import."""
    original = torch.library.register_kernel
    if getattr(original, "_step_trace", False):
        return

    def register_kernel(op, device_types, func=None, /, *args, **kwargs):
        if func is None:
            decorate = original(op, device_types, None, *args, **kwargs)

            def inner(f):
                _note_cuda_kernel(op, device_types, f)
                return decorate(f)

            return inner
        _note_cuda_kernel(op, device_types, func)
        return original(op, device_types, func, *args, **kwargs)

    register_kernel._step_trace = True
    torch.library.register_kernel = register_kernel


_watch_registrations()


def _known_cuda_kernels() -> dict:
    """The CUDA kernels of the ops registered before the watch, found in the modules that register
    them: their ``TRITON_KERNELS`` tables (launchers), then for op ``qsnn::name`` a module function
    ``_name_triton``/``_<part>_triton`` or, failing that, the composite ``_name_cuda``/
    ``_<part>_composite``/``_name_torch``."""
    # import_module: the package's attribute ``batch_norm_lif`` is the function, not the module
    lif, batch_norm_lif, quantize, max_pool, spike_attention = (
        importlib.import_module(f"qsnn_kernels.{m}")
        for m in ("lif", "batch_norm_lif", "quantize", "max_pool", "spike_attention"))
    known = {}
    for module in (lif, batch_norm_lif, quantize, max_pool, spike_attention):
        known.update({f"qsnn::{k}": v for k, v in getattr(module, "TRITON_KERNELS", {}).items()})
    for op, module, part in (("batch_norm_lif_forward", batch_norm_lif, "forward"),
                             ("batch_norm_lif_backward", batch_norm_lif, "backward"),
                             ("batch_norm_statistics", batch_norm_lif, "statistics"),
                             ("quantize_weight", quantize, "quantize_weight"),
                             ("dequantized_weight", quantize, "dequantized_weight"),
                             ("spike_levels", quantize, "spike_levels")):
        for attr in (f"_{op}_triton", f"_{part}_triton", f"_{op}_cuda", f"_{part}_composite", f"_{op}_torch"):
            if f"qsnn::{op}" not in known and hasattr(module, attr):
                known[f"qsnn::{op}"] = getattr(module, attr)
    return known


def cuda_kernel(qualname: str):
    """The Python CUDA kernel of ``qualname`` (None if unknown)."""
    if qualname in _CUDA_KERNELS:
        return _CUDA_KERNELS[qualname]
    return _known_cuda_kernels().get(qualname)


def is_launcher(kernel) -> bool:
    """Whether a CUDA kernel is a Triton launcher (one fused launch) rather than a torch-op composite."""
    name = f"{getattr(kernel, '__module__', '')}.{getattr(kernel, '__name__', '')}".lower()
    return "triton" in name


# --------------------------------------------------------------------------- bytes

def tensor_bytes(t) -> int:
    """Bytes a kernel touches reading or writing all of ``t``: the elements it spans, a stride-0
    dimension once (a broadcast read in place), nothing for an empty tensor or None."""
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        return 0
    spanned = math.prod(n for n, s in zip(t.shape, t.stride()) if s != 0)
    return spanned * t.element_size()


def lif_bytes(op: str, args, outputs) -> tuple[int, int]:
    """(bytes read, bytes written) of a fused LIF op's kernel, from its arguments:

    * ``lif_forward(x, v_init, ..., save_h, emit_v_last)``: reads x (once per frame when broadcast
      over T) and v_init if given; writes spikes, h when ``save_h``, v_last when ``emit_v_last``.
    * ``lif_backward(grad_spikes, grad_v_last, h, ..., emit_grad_v_init)``: reads grad_spikes and
      grad_v_last when given, and h; writes grad_x and grad_v_init when ``emit_grad_v_init``.

    The written sizes are the outputs' (their dtypes are the kernels'); an output the op leaves
    unwritten is ``[0, ...]`` and counts nothing."""
    if op == "qsnn::lif_forward":
        read = [args[0], args[1]]
    elif op == "qsnn::lif_backward":
        read = [args[0], args[1], args[2]]
    else:
        raise ValueError(f"lif_bytes: not a LIF op: {op}")
    return sum(map(tensor_bytes, read)), sum(map(tensor_bytes, outputs))


def int8_traffic(op: str, args: dict, outputs) -> tuple[int, int, int, int]:
    """(bytes read, bytes written, integer operations, launches) of an int8 op's CUDA kernel
    (models/int8.py): the weight's codes from one quantization launch (reads the float32 weight,
    writes int8 codes and float32 scales); the input levels handed in by the neuron
    (``levels_in``), or one conversion pass over x (reads x, writes the levels); then the GEMM or
    implicit-GEMM convolution: reads the levels (once: no im2col), the codes, scales and bias,
    writes the output. Operations: 2 per MAC (``out.numel() * K``). ``args``: the op's arguments
    by schema name."""
    if op not in INT8_OPS:
        raise ValueError(f"int8_traffic: not an int8 op: {op}")
    x, weight, levels_in, bias = args["x"], args["weight"], args.get("levels_in"), args.get("bias")
    out = outputs[0]
    codes, scales = weight.numel(), weight.shape[0] * 4
    read, written, launches = tensor_bytes(weight), codes + scales, 2
    if levels_in is None:  # the conversion pass
        read, written, launches = read + tensor_bytes(x), written + x.numel(), launches + 1
    read += x.numel() + codes + scales + tensor_bytes(bias)
    written += tensor_bytes(out)
    return read, written, 2 * out.numel() * (weight.numel() // weight.shape[0]), launches


def lif_element_steps(op: str, args) -> int:
    """T * N of a fused neuron op (its x, h or grad_spikes ``[T, N]``)."""
    if op in ("qsnn::lif_forward", "steptrace::neuron_forward"):
        return args[0].numel()
    if op == "qsnn::lif_backward":
        return args[2].numel()
    if op == "steptrace::neuron_backward":
        return args[1].numel()
    if op.startswith("qsnn::batch_norm_lif_"):
        return args[0 if op.endswith("forward") else 1].numel()
    return 0


# --------------------------------------------------------------------------- the recorder

_EXTRA_READS = {"aten::native_batch_norm": (0,), "aten::_native_batch_norm_legit": (0,),
                "aten::_native_batch_norm_legit_functional": (0,), "aten::native_batch_norm_backward": (0, 1)}
"""Ops whose CUDA kernels read these tensor arguments twice (a statistics or reduction pass, then
the elementwise pass): batch norm forward in training and its backward (an assumption about the
kernels, applied to ours and the peer alike)."""
_NO_LAUNCH = {"aten::detach", "aten::alias", "aten::empty", "aten::empty_strided", "aten::new_empty",
              "aten::new_empty_strided", "aten::lift_fresh", "aten::_local_scalar_dense", "aten::set_",
              "aten::_unsafe_view", "aten::resize_", "aten::empty_like"}


class Trace:
    """The ops of a step (``ops``: one dict per launch-carrying op), the phase being traced, and
    the saved-activation storages."""

    def __init__(self):
        self.ops: list[dict] = []
        self.phase = "forward"
        self.saved: dict[int, int] = {}
        self.saved_by_module: dict[str, int] = {}
        self.modules: list[tuple[str, str]] = []  # the forward's module stack (path, class), innermost last


class Recorder(TorchDispatchMode):
    """Records every op dispatched below autograd into ``trace`` (``within``: the composite being
    expanded, "" at top level)."""

    def __init__(self, trace: Trace, within: str = ""):
        super().__init__()
        self.trace, self.within = trace, within

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        namespace = name.split("::")[0]
        if namespace == "qsnn":
            kernel = cuda_kernel(name)
            if kernel is not None and not is_launcher(kernel):  # a torch-op composite on CUDA
                with Recorder(self.trace, within=name):
                    return kernel(*args, **kwargs)
        out = func(*args, **kwargs)
        if name in _NO_LAUNCH or func.is_view:
            return out
        self._record(func, name, namespace, args, kwargs, out)
        return out

    def _record(self, func, name, namespace, args, kwargs, out):
        ins, _ = tree_flatten((args, kwargs))
        outs, _ = tree_flatten(out)
        flops, launches, int8 = 0, 1, name in INT8_OPS
        if int8:
            category = "gemm"
            named = dict(zip((a.name for a in func._schema.arguments), args)) | kwargs
            read, written, flops, launches = int8_traffic(name, named, outs)
            steps = 0
        elif name in LEVELS_GEMM_OPS:
            category, steps = "gemm", 0
            read, written = sum(map(tensor_bytes, ins)), sum(map(tensor_bytes, outs))
            flops = 2 * args[0].numel() * args[1].shape[1]
        elif namespace in FUSED_NAMESPACES:
            category = "fused"
            if name in ("qsnn::lif_forward", "qsnn::lif_backward"):
                read, written = lif_bytes(name, args, outs)
            else:
                read, written = sum(map(tensor_bytes, ins)), sum(map(tensor_bytes, outs))
            steps = lif_element_steps(name, args)
            flops = steps * FUSED_FLOPS_PER_ELEMENT_STEP[self.trace.phase]
        else:
            read, written = sum(map(tensor_bytes, ins)), sum(map(tensor_bytes, outs))
            read += sum(tensor_bytes(args[i]) for i in _EXTRA_READS.get(name, ()))
            steps = 0
            counter = flop_registry.get(func._overloadpacket)
            if counter is not None:
                category = "gemm"
                flops = int(counter(*args, **kwargs, out_val=out))
            else:
                category = "glue"
                flops = sum(t.numel() for t in outs if isinstance(t, torch.Tensor))
            if read + written == 0 and flops == 0:
                return
        # a convolution's backward is one kernel per gradient it computes (data, weight, bias)
        if name == "aten::convolution_backward":
            launches = sum(isinstance(t, torch.Tensor) for t in outs)
        path, module = self.trace.modules[-1] if self.trace.modules and self.trace.phase == "forward" else ("", "")
        self.trace.ops.append(dict(phase=self.trace.phase, op=name, category=category, within=self.within,
                                   launches=launches, module=module, module_path=path, bytes_read=read,
                                   bytes_written=written, flops=flops, int8=int8, element_steps=steps,
                                   dtype=next((str(t.dtype) for t in ins if isinstance(t, torch.Tensor)), "")))


# --------------------------------------------------------------------------- CUDA autocast, emulated

_LOWER = {torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d, torch.conv_transpose2d,
          torch.conv_transpose3d, torch.convolution, F.linear, torch.matmul, torch.Tensor.matmul,
          torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm,
          torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm, torch.einsum, torch.mv,
          F.scaled_dot_product_attention, torch.prelu}
_FP32 = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.Tensor.softmax, torch.Tensor.log_softmax,
         F.layer_norm, F.group_norm, torch.layer_norm, torch.group_norm, F.cross_entropy, F.nll_loss, F.mse_loss,
         F.binary_cross_entropy_with_logits, F.kl_div, F.l1_loss, F.smooth_l1_loss, torch.exp, torch.log,
         torch.rsqrt, torch.pow, torch.Tensor.pow, torch.cumsum, torch.logsumexp}


class CudaAutocast(TorchFunctionMode):
    """CUDA's bf16 autocast policy on tensors it does not act on (meta): GEMM-like calls get bf16
    float inputs, the float32 list float32; the casts are ordinary differentiable ``.to`` calls,
    as autocast's own are. The lists are the GEMM and float32 entries of ATen's CUDA autocast."""

    def __init__(self, dtype=torch.bfloat16):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LOWER:
            target = self.dtype
        elif func in _FP32:
            target = torch.float32
        else:
            return func(*args, **kwargs)

        def cast(t):
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != target:
                return t.to(target)
            return t

        return func(*tree_map(cast, args), **tree_map(cast, kwargs))


@contextlib.contextmanager
def meta_stands_for_cuda(autocast: bool):
    """The library's device guards accept "meta" as "cuda", and ``torch.is_autocast_enabled``
    reports the emulated autocast, for the duration."""
    _extension, quantize, int8 = (importlib.import_module(f"qsnn_kernels.{m}")
                                  for m in ("_extension", "quantize", "models.int8"))

    require, require_op, enabled = _extension.require, quantize._require_op, torch.is_autocast_enabled
    problem = int8._problem

    def require_meta(device_type, *a, **k):
        return None if device_type == "meta" else require(device_type, *a, **k)

    def require_op_meta(device, op):
        return None if device.type == "meta" else require_op(device, op)

    def problem_meta(x, weight, *a, **k):  # the int8 ops' domain: meta judged as cuda (metadata only)
        if x.device.type == weight.device.type == "meta":
            cuda = torch.device("cuda")
            x = types.SimpleNamespace(device=cuda, dtype=x.dtype)
            weight = types.SimpleNamespace(device=cuda, dtype=weight.dtype, shape=weight.shape, numel=weight.numel)
        return problem(x, weight, *a, **k)

    def is_autocast_enabled(device_type=None):
        if device_type in (None, "cuda", "meta"):
            return autocast
        return enabled(device_type)

    _extension.require, quantize._require_op, torch.is_autocast_enabled, int8._problem = \
        require_meta, require_op_meta, is_autocast_enabled, problem_meta
    try:
        yield
    finally:
        _extension.require, quantize._require_op, torch.is_autocast_enabled, int8._problem = \
            require, require_op, enabled, problem


# --------------------------------------------------------------------------- the peer's neurons, modelled

torch.library.define("steptrace::neuron_forward", "(Tensor x) -> (Tensor, Tensor)")
torch.library.define("steptrace::neuron_backward", "(Tensor grad_spikes, Tensor h) -> Tensor")


@torch.library.register_fake("steptrace::neuron_forward")
def _neuron_forward_fake(x):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.register_fake("steptrace::neuron_backward")
def _neuron_backward_fake(grad_spikes, h):
    return torch.empty_like(h)


class ModelledNeuron(torch.autograd.Function):
    """A multi-step neuron as one fused kernel over all T (forward: x -> spikes, h saved; backward:
    grad_spikes, h -> grad_x), each tensor ``[T, N]`` in x's dtype."""

    @staticmethod
    def forward(ctx, x):
        spikes, h = torch.ops.steptrace.neuron_forward(x)
        ctx.save_for_backward(h)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        (h,) = ctx.saved_tensors
        return torch.ops.steptrace.neuron_backward(grad_spikes.contiguous(), h)


def _modelled_forward(self, x):
    rows = x.reshape(x.shape[0], -1).contiguous()
    return ModelledNeuron.apply(rows).view(x.shape)


def model_spikingjelly_neurons(model: torch.nn.Module) -> int:
    """Replace every spikingjelly neuron's forward by :class:`ModelledNeuron`; returns how many."""
    from spikingjelly.activation_based.neuron import BaseNode

    count = 0
    for m in model.modules():
        if isinstance(m, BaseNode):
            m.forward = types.MethodType(_modelled_forward, m)
            count += 1
    return count


# --------------------------------------------------------------------------- models

def build(model: str, impl: str, w_bits: int, s_bits: int, t_steps: int, img: int, classes: int):
    """The network (on the CPU) of ``impl`` "qsnn" or "spikingjelly" (the model zoo's)."""
    torch.manual_seed(0)
    if impl == "qsnn":
        from qsnn_kernels.models import create_model

        kw = dict(img_size=img) if model.startswith("spikformer") else {}
        return create_model(f"qsnn_{model}", w_bits=w_bits, s_bits=s_bits, t_steps=t_steps, num_classes=classes,
                            **kw)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    if model.startswith("spikformer"):
        import test_bench_models_spikformer as sf
        from spikingjelly.activation_based import surrogate
        from spikingjelly.activation_based.model.spikformer import Spikformer

        depth, dim = (int(v) for v in model.split("_")[1:3])
        net = Spikformer(T=t_steps, img_size_h=img, img_size_w=img, patch_size=16, num_classes=classes,
                         embed_dims=dim, num_heads=dim // 64, depths=depth, decay_input=False,
                         surrogate_function=surrogate.ATan())
        return sf._ZooModel(net)
    if model.startswith("sew_resnet"):
        import test_bench_models_sew as sew
        from spikingjelly.activation_based import functional
        from spikingjelly.activation_based.model import sew_resnet as zoo

        net = getattr(zoo, model)(num_classes=classes, cnf="ADD", spiking_neuron=sew._sj_neuron(1))
        functional.set_step_mode(net, "m")
        return sew._ZooModel(net, t_steps)
    raise ValueError(f"no spikingjelly build for {model!r}")


# --------------------------------------------------------------------------- one step

class _Saved:
    """A tensor autograd saved, with the innermost module that saved it."""

    __slots__ = ("tensor", "module", "__weakref__")

    def __init__(self, tensor, module: str):
        self.tensor, self.module = tensor, module


def trace_step(model: torch.nn.Module, batch: int, img: int, classes: int, autocast: bool = True,
               optimizer: bool = True) -> dict:
    """Trace one training step of ``model`` (moved to meta) on a ``[batch, 3, img, img]`` batch:
    forward (under the emulated bf16 autocast when ``autocast``), cross entropy on the float
    logits, backward; the fused AdamW step modelled when ``optimizer``. Returns the trace as a dict
    (``ops``, ``saved_bytes``, ``params``)."""
    model = model.to("meta").train()
    params = [p for p in model.parameters() if p.requires_grad]
    param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
    param_storages |= {b.untyped_storage()._cdata for b in model.buffers()}
    trace = Trace()

    held = weakref.WeakSet()  # what the graph holds: a dead branch's saved tensors leave with it

    def pack(t):
        box = _Saved(t, trace.modules[-1][1] if trace.modules else "")
        held.add(box)
        return box

    x = torch.empty(batch, 3, img, img, device="meta")
    target = torch.zeros(batch, dtype=torch.long, device="meta")
    paths = {id(m): name for name, m in model.named_modules()}
    hooks = (torch.nn.modules.module.register_module_forward_pre_hook(
                 lambda m, a: trace.modules.append((paths.get(id(m), "?"), type(m).__name__))),
             torch.nn.modules.module.register_module_forward_hook(lambda m, a, o: trace.modules.pop() and None))
    with meta_stands_for_cuda(autocast), Recorder(trace), _removing(hooks):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda box: box.tensor):
            with CudaAutocast() if autocast else contextlib.nullcontext():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), target)
        for box in list(held):  # each storage once (alive together, so their addresses differ)
            key = box.tensor.untyped_storage()._cdata
            if key not in param_storages and key not in trace.saved:
                trace.saved[key] = box.tensor.untyped_storage().nbytes()
                trace.saved_by_module[box.module] = trace.saved_by_module.get(box.module, 0) + trace.saved[key]
        held = None
        trace.phase = "backward"
        loss.backward()
    trace.phase = "optimizer"
    if optimizer:
        numel = sum(p.numel() for p in params)
        launches = max(math.ceil(len(params) / _MTA_TENSORS), math.ceil(numel / _MTA_ELEMENTS))
        per = ADAMW_BYTES_PER_PARAM * numel // launches
        for _ in range(launches):
            trace.ops.append(dict(phase="optimizer", op="aten::_fused_adamw_ (modelled)", category="optimizer",
                                  within="", launches=1, module="", module_path="", bytes_read=per * 4 // 7,
                                  bytes_written=per - per * 4 // 7,
                                  flops=numel // launches * 12, element_steps=0))
    return dict(ops=trace.ops, saved_bytes=sum(trace.saved.values()), saved_by_module=trace.saved_by_module,
                params=sum(p.numel() for p in params))


@contextlib.contextmanager
def _removing(handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def op_seconds(op: dict, bandwidth: float, matrix_rate: float, launch_s: float,
               int8_rate: float = INT8_MATRIX_RATE) -> float:
    """The modelled time of one op (module docstring); an int8 op's operations at ``int8_rate``."""
    memory = (op["bytes_read"] + op["bytes_written"]) / bandwidth
    rate = int8_rate if op.get("int8") else matrix_rate
    compute = op["flops"] / rate if op["category"] == "gemm" else 0.0
    return max(memory, compute) + launch_s * op.get("launches", 1)


def summarize(result: dict, bandwidth=COPY_BANDWIDTH, matrix_rate=MATRIX_RATE, launch_s=LAUNCH_SECONDS,
              int8_rate=INT8_MATRIX_RATE) -> dict:
    """Per category and in total: launches, bytes, FLOPs, estimated ms; the saved activations;
    the neuron ops' bytes per neuron-step, forward and backward (the bytes of the LIF, batch norm +
    LIF and modelled neuron ops, with :data:`NEURON_PARTS`, over their T * N)."""
    cats: dict[str, dict] = {}
    for op in result["ops"]:
        op["est_us"] = op_seconds(op, bandwidth, matrix_rate, launch_s, int8_rate) * 1e6
        for key in (op["category"], "total"):
            c = cats.setdefault(key, dict(launches=0, bytes=0, flops=0, est_ms=0.0))
            c["launches"] += op["launches"]
            c["bytes"] += op["bytes_read"] + op["bytes_written"]
            c["flops"] += op["flops"]
            c["est_ms"] += op["est_us"] / 1e3
    neuron = {}
    for phase in ("forward", "backward"):
        ops = [o for o in result["ops"] if o["phase"] == phase and (o["element_steps"] or o["op"] in NEURON_PARTS)]
        steps = sum(o["element_steps"] for o in ops)
        neuron[phase] = sum(o["bytes_read"] + o["bytes_written"] for o in ops) / steps if steps else None
        neuron[f"{phase}_launches"] = sum(o["launches"] for o in ops)
    by_op: dict[str, dict] = {}
    for op in result["ops"]:
        key = f"{op['phase']}:{op['op']}" + (f" [in {op['within']}]" if op["within"] else "")
        b = by_op.setdefault(key, dict(category=op["category"], launches=0, bytes=0, flops=0, est_ms=0.0))
        b["launches"] += op["launches"]
        b["bytes"] += op["bytes_read"] + op["bytes_written"]
        b["flops"] += op["flops"]
        b["est_ms"] += op["est_us"] / 1e3
    by_module: dict[str, dict] = {}
    for op in result["ops"]:
        if op["phase"] == "forward":
            b = by_module.setdefault(f"{op['module']}:{op['category']}", dict(launches=0, bytes=0, est_ms=0.0))
            b["launches"] += op["launches"]
            b["bytes"] += op["bytes_read"] + op["bytes_written"]
            b["est_ms"] += op["est_us"] / 1e3
    return dict(categories=cats, by_forward_module=by_module, saved_activation_bytes=result["saved_bytes"],
                saved_by_module=result.get("saved_by_module", {}),
                params=result["params"],
                neuron_bytes_per_element_step=neuron, by_op=by_op,
                constants=dict(copy_bandwidth_Bps=bandwidth, matrix_rate_flops=matrix_rate,
                               int8_matrix_rate_ops=int8_rate, launch_seconds=launch_s))


# --------------------------------------------------------------------------- output

def _table(title: str, columns: list[str], rows: list[list]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"\n{title}")
        widths = [max(len(str(r[i])) for r in [columns, *rows]) for i in range(len(columns))]
        for r in [columns, *rows]:
            print("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
        return
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*map(str, r))
    Console(width=160).print(table)


def _gb(b: float) -> str:
    return f"{b / 1e9:.2f}"


def print_report(label: str, summary: dict, top: int = 12) -> None:
    rows = []
    for cat in ("fused", "gemm", "glue", "optimizer", "total"):
        c = summary["categories"].get(cat)
        if c:
            rows.append([cat, c["launches"], _gb(c["bytes"]), f"{c['flops'] / 1e12:.2f}", f"{c['est_ms']:.2f}"])
    n = summary["neuron_bytes_per_element_step"]
    per = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    title = (f"{label}: saved activations {_gb(summary['saved_activation_bytes'])} GB; neuron ops B/element-step: "
             f"forward {per(n['forward'])} ({n['forward_launches']} launches), backward {per(n['backward'])} "
             f"({n['backward_launches']} launches)")
    _table(title, ["category", "launches", "GB", "TFLOP", "est. ms"], rows)
    heavy = sorted(summary["by_op"].items(), key=lambda kv: -kv[1]["est_ms"])[:top]
    _table(f"{label}: the {top} costliest ops", ["phase:op", "category", "launches", "GB", "TFLOP", "est. ms"],
           [[k, v["category"], v["launches"], _gb(v["bytes"]), f"{v['flops'] / 1e12:.3f}", f"{v['est_ms']:.2f}"]
            for k, v in heavy])
    saved = sorted(summary["saved_by_module"].items(), key=lambda kv: -kv[1])[:top // 2]
    _table(f"{label}: saved activations by innermost module", ["module", "GB"],
           [[k or "(top level)", _gb(v)] for k, v in saved])
    glue = sorted(((k, v) for k, v in summary["by_forward_module"].items() if k.endswith(":glue")),
                  key=lambda kv: -kv[1]["est_ms"])[:top // 2]
    _table(f"{label}: forward glue by innermost module", ["module", "launches", "GB", "est. ms"],
           [[k.rsplit(":", 1)[0] or "(top level)", v["launches"], _gb(v["bytes"]), f"{v['est_ms']:.2f}"]
            for k, v in glue])


def compare(ours: dict, peer: dict) -> dict:
    """Ratios of the estimates: the peer's time / ours, our saved activations / the peer's."""
    o, p = ours["categories"]["total"], peer["categories"]["total"]
    return dict(est_speedup=p["est_ms"] / o["est_ms"],
                saved_activation_ratio=ours["saved_activation_bytes"] / peer["saved_activation_bytes"],
                launch_ratio=o["launches"] / p["launches"], byte_ratio=o["bytes"] / p["bytes"])


def run(args, build_fn=None) -> dict:
    """Trace ours (and ``args.peer``), print the tables, write ``args.json``; returns the summaries.
    ``build_fn`` replaces :func:`build` (same arguments), for tests."""
    build_fn = build_fn or build
    out = dict(model=args.model, img=args.img, t_steps=args.t_steps, batch=args.batch, w_bits=args.w_bits,
               s_bits=args.s_bits, int8=args.int8, amp="bf16" if not args.no_autocast else "none",
               device_model="meta for cuda",
               torch=torch.__version__, builds={})
    launch_s = args.launch_us * 1e-6
    impls = ["qsnn"] + ([args.peer] if args.peer else [])
    for impl in impls:
        net = build_fn(args.model, "qsnn" if impl == "qsnn" else "spikingjelly", args.w_bits, args.s_bits,
                    args.t_steps, args.img, args.classes)
        modelled = model_spikingjelly_neurons(net) if impl != "qsnn" else 0
        if impl == "qsnn" and args.int8 == "on":
            from qsnn_kernels.models.layers import set_int8

            set_int8(net, True)
        result = trace_step(net, args.batch, args.img, args.classes, autocast=not args.no_autocast,
                            optimizer=not args.no_optimizer)
        summary = summarize(result, launch_s=launch_s)
        summary["modelled_neurons"] = modelled
        label = f"{impl} {args.model} {args.img}px T={args.t_steps} batch {args.batch}" + (
            f" W/S/T {args.w_bits}/{args.s_bits}/{args.t_steps} int8 {args.int8}" if impl == "qsnn"
            else " (neurons modelled)")
        print_report(label, summary)
        if args.ops:
            summary["ops"] = result["ops"]
        out["builds"][impl] = summary
    if args.peer:
        out["ours_vs_peer"] = compare(out["builds"]["qsnn"], out["builds"][args.peer])
        print("\nours vs peer (estimates):", json.dumps({k: round(v, 3) for k, v in out["ours_vs_peer"].items()}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="spikformer_8_512", help="spikformer_<depth>_<dim> or sew_resnet<n>")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--t-steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--w-bits", type=int, default=4)
    p.add_argument("--s-bits", type=int, default=1)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--peer", choices=["spikingjelly"], default=None)
    p.add_argument("--int8", choices=["off", "on"], default="off",
                   help="our spike-input layers on the int8 ops (qsnn train --int8 on), modelled at INT8_MATRIX_RATE")
    p.add_argument("--launch-us", type=float, default=LAUNCH_SECONDS * 1e6, help="per-launch overhead, microseconds")
    p.add_argument("--no-autocast", action="store_true", help="float32 forward (no bf16 autocast)")
    p.add_argument("--no-optimizer", action="store_true", help="leave out the modelled AdamW step")
    p.add_argument("--ops", action="store_true", help="put every op in the JSON")
    p.add_argument("--json", default=None, help="write the summaries here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
