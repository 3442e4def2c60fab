"""Persistent FAISS index of photo embeddings: build, update, search.

See :mod:`sbir.index.store` for the folder layout and atomic writes,
:mod:`sbir.index.builder` for (incremental) indexing and
:mod:`sbir.index.faiss_ops` for exact and approximate search.
"""

from sbir.index.builder import SyncReport, build_index, scan_gallery, update_index
from sbir.index.faiss_ops import APPROX_CHOICES, AUTO_THRESHOLD
from sbir.index.model import QueryEncoder, load_index_model
from sbir.index.store import Entry, Hit, Index, IndexStoreError, ModelInfo, ModelMismatchError

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
