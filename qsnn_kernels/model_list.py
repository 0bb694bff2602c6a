"""What ``qsnn models`` prints: each registered model with a description, its parameter count, its
defaults and the row of the paper it reproduces."""

from __future__ import annotations

import re

from .extras import require

__all__ = ["describe_models", "format_models", "paper_row"]


def paper_row(name: str, wst: str) -> str:
    """Which figures of Shen et al. (CVPR 2024) registered model ``name`` at W/S/T ``wst`` reproduces,
    in words: for the model of the paper's Table 2, the row of that W/S/T (read from
    :mod:`qsnn_kernels.metrics.paper`)."""
    from .metrics import paper

    if name == "qsnn_" + paper.TABLE2_MODEL:
        row = next((r for r in paper.TABLE2 if r.wst == wst), None)
        at = f"row {wst} (CIFAR10 {row.cifar10}%, CIFAR100 {row.cifar100}%)" if row else f"W/S/T {wst}"
        return f"Table 2 {at}; every other row with --wst (`qsnn budget --paper-table2`)"
    if name.startswith(("qsnn_spikformer", "qsnn_sew_resnet")):
        return "an architecture of the paper's experiments (SEW-ResNet, Spikformer); no row of its tables"
    return "not in the paper: the small model of the embedded digits (`qsnn train`)"


def describe_models() -> list[dict]:
    """One dict per registered model, in name order: ``name``, ``description`` (its entry point's
    docstring's first line, and its data when its timm config names them), ``params`` (the count at
    its default number of classes), ``num_classes``, ``input`` (channels x side x side), ``wst``
    (its default W/S/T) and ``paper`` (:func:`paper_row`). Each model is built on the meta device:
    no memory, no initialization, so the list takes well under a second after the imports."""
    import torch

    timm = require("timm", "qsnn models")

    from .metrics.report import model_input_size
    from .models import create_model, list_models

    rows = []
    for name in list_models():
        with torch.device("meta"):
            model = create_model(name)
        doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", timm.models.model_entrypoint(name).__doc__ or "").strip().splitlines()
        description = doc[0] if doc else ""
        data = (getattr(model, "pretrained_cfg", None) or {}).get("description")
        size, chans = model_input_size(model), model.in_chans
        wst = f"{model.w_bits}/{model.s_bits}/{model.t_steps}"
        rows.append({
            "name": name,
            "description": f"{description} Data: {data}." if data else description,
            "params": sum(p.numel() for p in model.parameters()),
            "num_classes": model.num_classes,
            "input": f"{chans} x {size} x {size}" if size else f"{chans} channel{'s' if chans > 1 else ''}, any size",
            "wst": wst,
            "paper": paper_row(name, wst),
        })
    return rows


def format_models(rows: list[dict]) -> str:
    """:func:`describe_models`' rows as text: a line per model, then its description and paper row."""
    lines = []
    for r in rows:
        lines += [f"{r['name']}  ({r['params']:,} parameters at {r['num_classes']} classes; input {r['input']}; "
                  f"defaults W/S/T {r['wst']})", f"    {r['description']}", f"    paper: {r['paper']}"]
    return "\n".join(lines)
