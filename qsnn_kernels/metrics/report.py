"""What ``qsnn budget`` prints: a model's per-layer cost table, and the paper's Table 2 beside ours.

Models come from the registry (:func:`qsnn_kernels.models.create_model`, imported lazily); the
numbers from :func:`qsnn_kernels.metrics.profile`; the paper's from :mod:`.paper`. Plain text.
"""

from __future__ import annotations

import re

import torch

from ..bits import SPIKE_BITS
from . import formulas, paper
from .profiler import Conventions, Profile, profile, recount

_WST = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_wst(text: str) -> tuple[int, int, int]:
    """``"W/S/T"`` -> (w_bits, s_bits, t_steps); ValueError if malformed or out of the allowed range.

    W in 1, 2, 4, 8 or 16/32 (full precision); S in 1, 2, 4, 8; T an integer >= 1.
    """
    from ..models.layers import ALLOWED_W_BITS

    m = _WST.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"--wst must be W/S/T with three integers (e.g. 4/2/1), got {text!r}")
    w, s, t = (int(g) for g in m.groups())
    if w not in ALLOWED_W_BITS:
        raise ValueError(f"--wst {text}: weight bits W must be one of {ALLOWED_W_BITS}, got {w}")
    if s not in SPIKE_BITS:
        raise ValueError(f"--wst {text}: spike bits S must be one of {SPIKE_BITS}, got {s}")
    if t < 1:
        raise ValueError(f"--wst {text}: time steps T must be >= 1, got {t}")
    return w, s, t


STEM_INPUT_SIZES = {"imagenet": 224, "cifar": 32}
"""The image side of the data set a SEW-ResNet ``stem`` is made for (the model states no size)."""


def model_input_size(model) -> int | None:
    """The image side the model states (``img_size``, its timm config's input size, or its stem's
    data set: :data:`STEM_INPUT_SIZES`), or None."""
    size = getattr(model, "img_size", None)
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = (cfg.get("input_size") or (None,))[-1]
    if size is None:
        size = STEM_INPUT_SIZES.get(getattr(model, "stem", None))
    if isinstance(size, (tuple, list)):
        size = size[-1]
    return size


USUAL_INPUT_SIZES = "8 for the embedded digits, 32 for CIFAR, 48 for the paper's event data, 224 for ImageNet"
"""What ``--input-size`` usually is, for the message to a model that states no input size."""


def _read_checkpoint(path: str, name: str, wst: tuple[int, int, int]) -> tuple[dict, dict]:
    """(state dict, model arguments) of the checkpoint file ``path``: a state dict (or
    ``{"state_dict": ...}``) saved with torch.save, or a ``qsnn train`` checkpoint (last.pt,
    best.pt: its checksum verified, its ``model`` weights, and the model arguments it was trained
    with: ``model_kwargs``, ``num_classes``, ``in_chans``). Read with ``weights_only=True``
    (tensors and plain values only: no code in the file runs). ValueError when the file is
    missing, unreadable, corrupted, holds other objects, or is a training checkpoint of another
    model or W/S/T."""
    from ..train.checkpoint import is_training_checkpoint, read_checkpoint

    try:
        state = read_checkpoint(path, "--checkpoint")
    except FileNotFoundError:
        raise ValueError(f"cannot read checkpoint {path!r}: no such file") from None
    kwargs = {}
    if is_training_checkpoint(state):
        full = _full_name(name)
        if state.get("model_name") != full:
            raise ValueError(f"checkpoint {path!r} was trained for model {state.get('model_name')!r}, not {full!r}")
        trained = tuple(state.get("wst") or ())
        if trained != tuple(wst):
            raise ValueError(f"checkpoint {path!r} was trained at W/S/T {'/'.join(map(str, trained))}, not "
                             f"{'/'.join(map(str, wst))}: give that --wst")
        kwargs = dict((state.get("config") or {}).get("model_kwargs") or {})
        kwargs.update({k: state[k] for k in ("num_classes", "in_chans") if state.get(k) is not None})
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path!r} holds a {type(state).__name__}, not a state dict")
    return state, kwargs


def _load_state(model, state: dict, path: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path!r} does not fit the model: {str(exc).splitlines()[0]}") from None


def _build(name: str, w_bits: int, s_bits: int, t_steps: int, input_size, num_classes, batch: int, seed: int,
           checkpoint: str | None = None):
    """(model, seeded randn input [batch, in_chans, H, H]) for registered model ``name``; the model's
    initial weights come from ``seed`` too (the global RNG is left as it was)."""
    from ..models import create_model

    state, kwargs = (None, {}) if checkpoint is None else _read_checkpoint(checkpoint, name, (w_bits, s_bits, t_steps))
    kwargs.update(w_bits=w_bits, s_bits=s_bits, t_steps=t_steps)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name, **kwargs)
    if state is not None:
        _load_state(model, state, checkpoint)
    size = input_size if input_size is not None else model_input_size(model)
    if size is None:
        raise ValueError(f"model {_full_name(name)!r} states no input size: pass --input-size, the side of the "
                         f"images it will see ({USUAL_INPUT_SIZES})")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"input_size must be an int >= 1, got {size!r}")
    gen = torch.Generator().manual_seed(seed)
    return model, torch.randn(batch, getattr(model, "in_chans", 3), size, size, generator=gen)


def _full_name(name: str) -> str:
    return name if name.startswith("qsnn_") else "qsnn_" + name


def budget(name: str, w_bits: int, s_bits: int, t_steps: int, *, input_size: int | None = None,
           num_classes: int | None = None, batch: int = 1, seed: int = 0, checkpoint: str | None = None,
           **conventions) -> Profile:
    """Build registered model ``name`` at W/S/T and profile it on a seeded ``randn [batch, 3, H, H]``.

    ``seed`` seeds both the model's initial weights and the input, so the same call gives the same
    figures (firing rates and NS-ACE depend on both); the caller's global RNG is left unchanged.

    ``checkpoint``: a state dict saved with ``torch.save``, or a ``qsnn train`` checkpoint (last.pt,
    best.pt: its model weights, built with the arguments it was trained with), to load first
    (trained weights give meaningful firing rates and NS-ACE; freshly built ones mostly do not
    fire). Read with ``weights_only=True``: no code in the file runs.

    ``input_size`` defaults to the model's own (``model.img_size``, its timm config, or a SEW-ResNet
    stem's data set: 224 or 32); a model with none needs it given. Conventions: keyword arguments of :func:`profile`.
    ValueError for an unknown model (close names listed), bad bits, a missing or wrong input size.
    """
    model, x = _build(name, w_bits, s_bits, t_steps, input_size, num_classes, batch, seed, checkpoint)
    return profile(model, x, model_name=_full_name(name), **conventions)


# --------------------------------------------------------------------------- text


def _num(v, digits: int = 3) -> str:
    """Engineering-style short number: 1.23G, 45.6M, 789k, or the value."""
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.{digits}g}{unit}"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def describe_conventions(c: Conventions) -> list[str]:
    """One line per convention, in words."""
    enc = ("excluded from SOPs/S-ACE/NS-ACE (reported apart; the paper's)" if c.encoding == "exclude"
           else f"included with S_in = {c.real_input_bits} bits")
    att = ("counted, MACs between s_bits- and b_bits-wide operands, BB = T*S_in*b_bits"
           if c.attention == "include" else "not counted")
    rate = ("first operand's nonzero fraction" if c.attention_rate == "a"
            else "fraction of MACs with both operands nonzero")
    width = ("the layer's declared input width s_bits (a product's first operand too)" if c.spike_width == "layer"
             else "the model's S for every spike input")
    return [
        f"real-valued-input layers (encoding, s_bits=None): {enc}",
        f"S_in of a spike input: {width}",
        f"spike matrix products (attention): {att}; NS-ACE rate: {rate}",
        f"SOPs = MACs*T*{'S_in' if c.sops_spike_bits else '1'} (a multi-level spike counts "
        f"{'S_in binary ops' if c.sops_spike_bits else 'as one op'}); S-ACE = MACs*T*S_in*W (Eq. 8); "
        f"NS-ACE = fr*MACs*T*S_in*W (Eq. 9)",
        f"full-precision weights count as {formulas.FULL_PRECISION_COUNTED_BITS} bits; "
        f"params (16-bit-eq.) = count*W/16",
    ]


def format_profile(p: Profile) -> str:
    """The per-layer table, the totals and the conventions as plain text."""
    rows = []
    for r in p.layers:
        rows.append([r.name, r.kind, _num(r.macs), r.w_bits, "real" if r.s_bits is None else r.s_bits, r.t_steps,
                     f"{r.firing_rate:.4f}", _num(r.sops), _num(r.s_ace), _num(r.ns_ace),
                     "" if r.counted else "excluded"])
    head = ["layer", "kind", "MACs/step", "W", "S_in", "T", "fr", "SOPs", "S-ACE", "NS-ACE", ""]
    t = p.totals
    bb = "-" if t["bit_budget"] is None else t["bit_budget"]
    real = ", ".join(f"{n} (W={w})" for n, w in t["real_input_layers"].items()) or "none"
    lines = [
        f"{p.model}  W/S/T = {p.w_bits}/{p.s_bits}/{p.t_steps}  input {list(p.input_shape)}  (per sample)",
        _table(head, rows),
        "",
        f"Bit Budget T*W*S: {bb}",
        f"MACs per step: {_num(t['macs'])} (counted {_num(t['counted_macs'])}; real-valued input "
        f"{_num(t['real_input_macs'])}: {real})",
        f"SOPs: {_num(t['sops'])}   S-ACE: {_num(t['s_ace'])}   NS-ACE: {_num(t['ns_ace'])}",
        f"params: {t['params_count']:,} = {_num(t['params_16bit_m'] and t['params_16bit_m'] * 1e6)} "
        f"16-bit-eq. (count*W/16; per tensor {_num(t['params_16bit_m_per_tensor'] * 1e6)}), "
        f"packed {t['params_packed_nbytes']:,} bytes",
        "conventions:",
    ] + ["  " + s for s in describe_conventions(p.conventions)]
    lines.append("  firing rates: measured on one seeded random input, with the weights given (--checkpoint) or "
                 "freshly initialized ones (then few neurons fire and NS-ACE means little)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the paper's Table 2


def _conventions_dict(c: Conventions) -> dict:
    return {k: getattr(c, k) for k in Conventions.__dataclass_fields__}


ALTERNATIVES = (("the encoding layer included (16-bit input)", {"encoding": "include"}),
                ("attention products excluded", {"attention": "exclude"}),
                ("S_in = the model's S for every spike input", {"spike_width": "model"}))
"""Other readings whose S-ACE / BB the Table 2 notes show beside the one used (for reading the
paper's figures; the rows always use the conventions asked for)."""


def table2(rows=None, **conventions) -> dict:
    """The paper's Table 2 (Spikformer-4-384, CIFAR 32x32, 10 classes) beside our measurement.

    ``rows``: W/S/T strings selecting rows (default: all). One profiled forward pass per row, with
    the conventions given (keyword arguments of :func:`profile`). Returns plain data: ``rows``
    (paper's and our params in 16-bit-equivalent millions and S-ACE in G, the ratio ours / paper,
    and S-ACE per unit of Bit Budget), ``params_count``, ``alternatives_s_ace_per_bb_g`` (ours
    under the :data:`ALTERNATIVES` readings, at W/S/T = 1/1/1) and ``notes``.
    ValueError for a W/S/T that is not a row of the table.
    """
    known = {r.wst: r for r in paper.TABLE2}
    if rows is None:
        chosen = list(paper.TABLE2)
    else:
        bad = [w for w in rows if w not in known]
        if bad or not rows:
            raise ValueError(f"Table 2 has no row {', '.join(bad) or '(none given)'}; its rows: {', '.join(known)}")
        chosen = [known[w] for w in rows]
    used = Conventions(**conventions)
    size, classes = paper.TABLE2_INPUT_SIZE, paper.TABLE2_NUM_CLASSES
    out_rows, count, at_111 = [], None, None
    for row in chosen:
        p = budget(paper.TABLE2_MODEL, row.w_bits, row.s_bits, row.t_steps, input_size=size, num_classes=classes,
                   **conventions)
        if row.wst == "1/1/1":
            at_111 = p
        count = p.totals["params_count"]
        ours_params, ours_sace = p.totals["params_16bit_m"], p.totals["s_ace"] / 1e9
        out_rows.append({
            "wst": row.wst, "bit_budget": row.bit_budget,
            "paper_params_m": row.params_m, "ours_params_m": ours_params, "params_ratio": ours_params / row.params_m,
            "paper_s_ace_g": row.s_ace_g, "ours_s_ace_g": ours_sace, "s_ace_ratio": ours_sace / row.s_ace_g,
            "paper_s_ace_per_bb_g": paper.s_ace_per_bit_budget(row), "ours_s_ace_per_bb_g": ours_sace / row.bit_budget,
        })
    if at_111 is None:
        at_111 = budget(paper.TABLE2_MODEL, 1, 1, 1, input_size=size, num_classes=classes, **conventions)
    alternatives = {}
    for label, change in ALTERNATIVES:
        alt = {**_conventions_dict(used), **change}
        if alt != _conventions_dict(used):
            alternatives[label] = recount(at_111, **alt).totals["s_ace"] / 1e9
    result = {"model": _full_name(paper.TABLE2_MODEL), "input_size": size, "num_classes": classes,
              "citation": paper.CITATION, "conventions": _conventions_dict(used), "params_count": count,
              "rows": out_rows, "alternatives_s_ace_per_bb_g": alternatives}
    result["notes"] = _table2_notes(result)
    return result


def _span(values) -> str:
    lo, hi = f"{min(values):.3f}", f"{max(values):.3f}"
    return lo if lo == hi else f"{lo}-{hi}"


def _spread(values) -> float:
    return max(values) / min(values) - 1 if min(values) > 0 else float("inf")


def _bb_range(rows) -> str:
    v = [paper.s_ace_per_bit_budget(r) for r in rows]
    return f"{min(v):.3f} G" if max(v) - min(v) < 0.0005 else f"{min(v):.3f}-{max(v):.3f} G"


def _table2_notes(result: dict) -> list[str]:
    """What the comparison shows, computed from the table and our rows (no number typed in)."""
    rows = {r["wst"]: r for r in result["rows"]}
    count_m = result["params_count"] / 1e6
    base = max(paper.TABLE2, key=lambda r: r.w_bits)
    notes = [
        f"Params: our Spikformer-4-384 has {count_m:.2f} M parameters (the original reports "
        f"{paper.SPIKFORMER_4_384_PARAMS_M} M); the table's base, {paper.implied_base_params_m(base):.2f} M at "
        f"W={base.w_bits}, is Spikformer-4-256's size ({paper.SPIKFORMER_4_256_PARAMS_M} M), so the params ratio "
        f"is about {count_m / paper.implied_base_params_m(base):.2f} on every row that follows count*W/16.",
    ]
    for r in paper.params_outliers():
        notes.append(f"Params: row {r.wst} lists {r.params_m} M, but count*W/16 with the table's own base gives "
                     f"{paper.implied_base_params_m(base) * r.w_bits / 16:.2f} M at W={r.w_bits} "
                     f"(it equals the W=2 figure): inconsistent within the table.")
    groups = paper.s_ace_groups()
    ours_bb = [r["ours_s_ace_per_bb_g"] for r in result["rows"]]
    desc = "; ".join(f"{v:.3f} G for {', '.join(g.wst for g in rs)} (T in {sorted({g.t_steps for g in rs})})"
                     for v, rs in groups)
    why = ("under the conventions used: a layer's S_in is its declared input width, and residual streams of summed "
           "spikes and Q K^T scores are wider than S, by amounts that depend on S"
           if result["conventions"]["spike_width"] == "layer" else "under the conventions used")
    notes.append(f"S-ACE / BB: if every MAC costs BB = T*W*S, S-ACE / BB is the network's MAC count, one number for "
                 f"every row. The paper's takes {len(groups)} values: {desc}. Ours is {_span(ours_bb)} G "
                 f"(spread {_spread(ours_bb):.1%}) {why}.")
    nominal = result["alternatives_s_ace_per_bb_g"].get(ALTERNATIVES[2][0])
    if result["conventions"]["spike_width"] == "model":
        nominal = sum(ours_bb) / len(ours_bb)
    if len(groups) > 1:
        present = [(v, [g for g in rs if g.wst in rows]) for v, rs in groups]
        ratios = "; ".join(f"{_span([rows[g.wst]['s_ace_ratio'] for g in rs])} on the {v:.3f} G rows"
                           for v, rs in present if rs)
        notes.append(f"S-ACE: the ratio ours / paper is therefore not one number: {ratios}. The paper's rows "
                     f"cannot all come from one MAC count at one convention.")
        if nominal is not None:
            per_group = ", ".join(f"{nominal / v:.2f} against its {v:.3f} G rows" for v, _ in groups)
            notes.append(f"S-ACE: with S_in = S for every spike input (BB = T*W*S per MAC), our count is "
                         f"{nominal:.3f} G per unit of BB: {per_group}.")
        scaled = [r for r in paper.TABLE2
                  if abs(r.s_ace_g - base.s_ace_g * r.w_bits / base.w_bits) <= 0.01 * r.s_ace_g]
        if len(scaled) > 1:
            table5 = (", also Spikformer-4-384's entry in the paper's Table 5"
                      if base.s_ace_g == paper.TABLE5_SPIKFORMER_4_384_S_ACE_G else "")
            notes.append(f"S-ACE: rows {', '.join(r.wst for r in scaled)} equal the W={base.w_bits} figure "
                         f"({base.s_ace_g} G{table5}) times "
                         f"W/{base.w_bits} (within 1%): those rows look like that baseline rescaled by W rather "
                         f"than measured; the other rows fit {_bb_range([r for r in paper.TABLE2 if r not in scaled])} "
                         f"per unit of BB, a different MAC count.")
    for label, v in result["alternatives_s_ace_per_bb_g"].items():
        notes.append(f"For reading only (not used above): with {label}, our S-ACE / BB is {v:.3f} G (at 1/1/1).")
    return notes


def format_table2(result: dict) -> str:
    """Table 2 beside ours, as plain text, with the conventions and the notes."""
    head = ["W/S/T", "BB", "Params paper", "ours", "ratio", "S-ACE paper (G)", "ours (G)", "ratio",
            "S-ACE/BB paper", "ours"]
    rows = [[r["wst"], r["bit_budget"], f"{r['paper_params_m']:.2f}", f"{r['ours_params_m']:.2f}",
             f"{r['params_ratio']:.2f}", f"{r['paper_s_ace_g']:.2f}", f"{r['ours_s_ace_g']:.2f}",
             f"{r['s_ace_ratio']:.3f}", f"{r['paper_s_ace_per_bb_g']:.3f}", f"{r['ours_s_ace_per_bb_g']:.3f}"]
            for r in result["rows"]]
    conv = Conventions(**result["conventions"])
    lines = [f"{result['citation']}: {result['model']}, CIFAR {result['input_size']}x{result['input_size']}, "
             f"{result['num_classes']} classes. Params in 16-bit-equivalent M (count*W/16), S-ACE per sample in G; "
             f"ratio = ours / paper.", _table(head, rows), "", "conventions:"]
    lines += ["  " + s for s in describe_conventions(conv)]
    lines += ["notes:"] + ["  - " + s for s in result["notes"]]
    return "\n".join(lines)
