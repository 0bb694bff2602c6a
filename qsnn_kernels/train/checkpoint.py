"""Checkpoints of a training run: written atomically (a temporary file in the same folder, then
``os.replace``), so that a run killed while saving leaves the previous good checkpoint in place;
loaded with a check that they belong to the model being trained."""

from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

__all__ = ["save_atomic", "load_checkpoint", "rng_state", "set_rng_state"]


def save_atomic(obj, path: str) -> None:
    """``torch.save(obj)`` to a temporary file next to ``path``, then rename it over ``path``
    (atomic on POSIX): readers see the old file or the complete new one, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, model_name: str, wst: tuple[int, int, int]) -> dict:
    """The checkpoint dict at ``path``. FileNotFoundError when there is none; ValueError when it is
    not a qsnn training checkpoint or was written for another model or another W/S/T."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"--resume: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "model" not in ckpt:
        raise ValueError(f"--resume: {path} is not a qsnn training checkpoint")
    if ckpt["model_name"] != model_name:
        raise ValueError(f"--resume: {path} holds a checkpoint of model {ckpt['model_name']!r}, "
                         f"not of {model_name!r}; use the same --model or start a new run folder")
    if tuple(ckpt.get("wst", ())) != tuple(wst):
        raise ValueError(f"--resume: {path} was trained at W/S/T {'/'.join(map(str, ckpt.get('wst', ())))}, "
                         f"not {'/'.join(map(str, wst))}")
    return ckpt


def rng_state() -> dict:
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
