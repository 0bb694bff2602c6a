"""A restricted unpickler for CIFAR's pickled batches: data in, no code run.

``pickle.load`` on a file calls whatever callables the file names (``os.system``, ``builtins.open``,
...), so a data folder could run code. :func:`load_restricted` reads a pickle whose globals may only
be those that CIFAR batches (and faithful re-pickled copies) reference; every other global is refused
before anything is called, with :class:`UnsafePickleError` naming it.

What a CIFAR batch holds: a dict of str (Python 2 ``str``, decoded as latin-1) or bytes keys, lists
of ints, str/bytes names and one uint8 numpy array. The only globals it needs:

* ``numpy.core.multiarray._reconstruct`` (as numpy < 2 and Python 2 wrote it) or
  ``numpy._core.multiarray._reconstruct`` (numpy >= 2), ``numpy.ndarray``, ``numpy.dtype``: the
  array, for pickle protocols 0-4;
* ``numpy.core.numeric._frombuffer`` / ``numpy._core.numeric._frombuffer``: the array, protocol 5;
* ``_codecs.encode``: how Python 3 writes ``bytes`` in protocols 0-2; admitted only as a latin-1
  encoder (any other codec is refused when called).

Each maps to the object numpy itself uses to rebuild arrays, resolved here (not imported by the
name the file gives), so no other module is imported while reading. A dtype holding Python objects
is refused where it is built (``numpy.dtype``), so no array of objects can be made.
"""

from __future__ import annotations

import pickle

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The file names a global outside the allowed set (or an object array); nothing was called."""


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    # Python 3 pickles bytes b as _codecs.encode(b.decode('latin1'), 'latin1') below protocol 3
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode admitted only as a latin-1 encoder, got encoding {encoding!r}")
    return text.encode("latin1", errors)


def _array_reconstruct():
    return np.ndarray.__reduce__(np.zeros(1, dtype=np.uint8))[0]


def _checked_dtype(*args, **kwargs):
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise UnsafePickleError(f"numpy arrays of dtype {dt} (Python objects) are not admitted")
    return dt


def _frombuffer(buf, dtype, shape, order):
    return np.frombuffer(buf, dtype=_checked_dtype(dtype)).reshape(shape, order=order)


def _allowed() -> dict:
    reconstruct = _array_reconstruct()
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _checked_dtype,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("_codecs", "encode"): _latin1_encode,
    }


ALLOWED_GLOBALS = tuple(sorted(f"{m}.{n}" for m, n in _allowed()))
"""The globals a restricted pickle may name (module.name)."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`ALLOWED_GLOBALS`.

    ``find_class`` is consulted for every global (GLOBAL, STACK_GLOBAL and the extension-registry
    opcodes); persistent ids are refused by the base class. Builtin containers and scalars (dict,
    list, tuple, str, bytes, int, float, bool, None) need no global and load as usual."""

    def __init__(self, file, **kwargs):
        super().__init__(file, **kwargs)
        self._table = _allowed()

    def find_class(self, module, name):
        obj = self._table.get((module, name))
        if obj is None:
            raise UnsafePickleError(f"global {module}.{name} is not admitted (a data file may only hold "
                                    f"dicts, lists, str, bytes, ints and numpy arrays)")
        return obj


def load_restricted(path, *, encoding: str = "latin1"):
    """Unpickle the file at ``path`` with :class:`RestrictedUnpickler`.

    ``encoding="latin1"`` decodes Python 2 ``str`` objects (CIFAR's keys and array bytes) as
    torchvision does. Errors: :class:`UnsafePickleError` for a refused global, other
    ``pickle.UnpicklingError``/``EOFError``/``ValueError``... for a malformed file (callers turn
    them into a CorruptFileError naming the file)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, encoding=encoding).load()

