"""Persistent FAISS index of photo embeddings: build, update, search.

See :mod:`sbir.index.store` for the folder layout and atomic writes,
:mod:`sbir.index.builder` for (incremental) indexing and
:mod:`sbir.index.faiss_ops` for exact and approximate search.
"""

import importlib

# Imported on first use (PEP 562), so that `sbir --help` does not load torch and FAISS.
_EXPORTS = {
    "SyncReport": "builder",
    "build_index": "builder",
    "scan_gallery": "builder",
    "update_index": "builder",
    "APPROX_CHOICES": "faiss_ops",
    "AUTO_THRESHOLD": "faiss_ops",
    "QueryEncoder": "model",
    "load_index_model": "model",
    "Entry": "store",
    "Hit": "store",
    "Index": "store",
    "IndexStoreError": "store",
    "ModelInfo": "store",
    "ModelMismatchError": "store",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"sbir.index.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sbir.index' has no attribute {name!r}")


__all__ = [
    "APPROX_CHOICES",
    "AUTO_THRESHOLD",
    "Entry",
    "Hit",
    "Index",
    "IndexStoreError",
    "ModelInfo",
    "ModelMismatchError",
    "QueryEncoder",
    "SyncReport",
    "build_index",
    "load_index_model",
    "scan_gallery",
    "update_index",
]
