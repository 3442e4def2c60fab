"""Load pickles from the internet without running their code.

``pickle.load`` calls any importable function a pickle names (``os.system``,
``subprocess.Popen``, ...), so a downloaded pickle is a program. Research
datasets such as QMUL-Chair-V2's ``ChairV2_Coordinate`` are distributed as
pickles of plain containers holding numpy arrays; :func:`restricted_load`
reads exactly that and nothing else. Its unpickler resolves only:

* numpy array reconstruction: ``numpy.core.multiarray._reconstruct`` /
  ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``,
  ``numpy.core.multiarray.scalar`` (numpy scalars) and ``numpy.core.numeric._frombuffer``
  (protocol-5 arrays), under both the numpy 1 (``numpy.core``) and numpy 2
  (``numpy._core``) module names;
* ``_codecs.encode`` (how protocol-2 pickles store ``bytes``) and the builtin
  containers ``set`` / ``frozenset`` / ``bytearray`` / ``complex`` / ``slice`` / ``range``.

Dicts, lists, tuples, strings, numbers, booleans and None need no global. Any
other global raises :class:`~sbir.errors.DataError` naming the file and the
refused ``module.name`` *before* anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

from sbir.errors import DataError


def _numpy_object(kind: str) -> Any:
    import numpy as np

    try:
        core = np._core  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        core = np.core
    if kind == "_reconstruct":
        return core.multiarray._reconstruct
    if kind == "scalar":
        return core.multiarray.scalar
    if kind == "_frombuffer":
        return core.numeric._frombuffer
    if kind == "ndarray":
        return np.ndarray
    if kind == "dtype":
        return np.dtype
    raise KeyError(kind)  # pragma: no cover


def _allowed() -> dict[tuple[str, str], Any]:
    import codecs

    out: dict[tuple[str, str], Any] = {}
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = lambda: _numpy_object("_reconstruct")
        out[(f"{core}.multiarray", "scalar")] = lambda: _numpy_object("scalar")
        out[(f"{core}.numeric", "_frombuffer")] = lambda: _numpy_object("_frombuffer")
    out[("numpy", "ndarray")] = lambda: _numpy_object("ndarray")
    out[("numpy", "dtype")] = lambda: _numpy_object("dtype")
    out[("_codecs", "encode")] = lambda: codecs.encode
    for name, obj in (
        ("set", set),
        ("frozenset", frozenset),
        ("bytearray", bytearray),
        ("complex", complex),
        ("slice", slice),
        ("range", range),
    ):
        out[("builtins", name)] = lambda o=obj: o
        out[("__builtin__", name)] = lambda o=obj: o  # protocol-2 pickles written by Python 2
    return out


ALLOWED_GLOBALS = tuple(sorted(f"{m}.{n}" for m, n in _allowed()))


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that admits only numpy arrays and plain containers (see the module docstring)."""

    def __init__(self, file: BinaryIO, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays pickled by Python 2
        self.source = source
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        factory = self._allowed.get((module, name))
        if factory is None:
            raise DataError(
                f"{self.source}: refused to load the pickled global {module}.{name}. This file may only "
                "contain numpy arrays and plain containers (dict, list, tuple, str, numbers); anything else "
                "could run code when loaded. If it is the genuine dataset file, re-export it with numpy "
                "arrays only (e.g. np.savez); otherwise do not use it."
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: refused a persistent id in the pickle ({pid!r}); only plain data is accepted.")


def restricted_load(path_or_file: str | os.PathLike | BinaryIO) -> Any:
    """Unpickle a file of numpy arrays and plain containers; DataError for anything else or a broken file."""
    if isinstance(path_or_file, (str, os.PathLike)):
        p = Path(path_or_file)
        source = str(p)
        if not p.is_file():
            raise DataError(f"pickle file {p} does not exist (or is not a file). Check the path.")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read pickle file {p}: {exc}") from exc
        fh: BinaryIO = io.BytesIO(data)
    else:
        fh = path_or_file
        source = str(getattr(path_or_file, "name", "<pickle stream>"))
    try:
        return RestrictedUnpickler(fh, source=source).load()
    except DataError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ImportError,
        IndexError,
        TypeError,
        ValueError,
        KeyError,
        MemoryError,
    ) as exc:
        raise DataError(
            f"{source} is not a readable pickle of numpy arrays ({type(exc).__name__}: {exc}). Re-download or "
            "re-export the file."
        ) from exc


__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "restricted_load"]
