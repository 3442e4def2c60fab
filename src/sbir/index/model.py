"""Loading the model that belongs to an index, and embedding sketch queries with it.

An index records the model that embedded its photos (``model.json``). Queries
must be embedded by the same weights with the same preprocessing (image size,
flip TTA), so :class:`QueryEncoder` is always built from that record; an
explicit ``--model`` override is accepted only when its model id is the same.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sbir.config import to_dict
from sbir.engine.embed import embed_pil, outputs_normalized
from sbir.engine.inference import is_pretrained_spec, load_model
from sbir.engine.tasks import resolve_distance
from sbir.index.store import Index, ModelInfo, ModelMismatchError


def load_for_index(spec: str | None, device: str = "cpu"):
    """``load_model`` plus the record stored in an index: returns (model, cfg, model_id, absolute path or None)."""
    spec_s = "pretrained" if spec is None else str(spec)
    model, cfg, model_id = load_model(spec_s, device=device)
    path = None if is_pretrained_spec(spec_s) else str(Path(spec_s).expanduser().resolve())
    return model, cfg, model_id, path


def metric_for(model, cfg: Any) -> tuple[str, bool]:
    """(metric, normalize) for a model, ranking as ``sbir eval`` ranks with the run's test distance.

    Models with L2-normalised outputs use inner product (cosine). A model with raw
    outputs (``model.normalize is False``, e.g. a MEMS category model) keeps them and
    uses euclidean distance when the run tests with euclidean distance
    (``eval.distance``, ``auto`` resolved by the loss: MEMS is euclidean); with
    cosine or angular distance its outputs are normalised and compared by inner product.
    """
    if outputs_normalized(model):
        return "ip", False
    if resolve_distance(cfg) == "euclidean":
        return "l2", False
    return "ip", True


def model_info(
    spec: str, path: str | None, cfg: Any, model_id: str, dim: int, image_size: int | None = None, model=None
) -> ModelInfo:
    size = int(image_size or cfg.data.image_size)
    metric, normalize = metric_for(model, cfg) if model is not None else ("ip", False)
    return ModelInfo(
        model_id=model_id,
        spec=str(spec),
        path=path,
        config=to_dict(cfg),
        dim=int(dim),
        image_size=size,
        flip_tta=bool(cfg.eval.flip_tta),
        metric=metric,
        normalize=normalize,
    )


def postprocess(vectors: np.ndarray, record: ModelInfo) -> np.ndarray:
    """Apply the index's normalisation rule to embeddings (photos or queries)."""
    v = np.asarray(vectors, dtype=np.float32)
    if record.normalize and len(v):
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v


def load_index_model(record: ModelInfo, override: str | None = None, device: str = "cpu"):
    """Load the model an index was built with (or ``override``); refuse a model with another id."""
    spec = override if override is not None else record.load_spec
    model, cfg, model_id, _ = load_for_index(spec, device=device)
    if model_id != record.model_id:
        if override is not None:
            raise ModelMismatchError(
                f"--model {override} has id {model_id!r} but the index was built with {record.model_id!r} "
                f"({record.spec}); its embeddings would not be comparable. Omit --model to use the index's "
                "own model, or rebuild the index with 'sbir index build ... --model " + str(override) + " --overwrite'."
            )
        raise ModelMismatchError(
            f"the model at {spec} now has id {model_id!r}, but the index was built with {record.model_id!r}: "
            "the weights changed since the index was built. Pass the original checkpoint with --model, or "
            "rebuild the index with 'sbir index build --overwrite'."
        )
    return model, cfg, model_id


class QueryEncoder:
    """Embeds sketches for one index with the index's model and preprocessing. Thread-safe."""

    def __init__(self, model, model_id: str, image_size: int, flip_tta: bool, normalize: bool = False):
        self.model = model
        self.model_id = model_id
        self.image_size = int(image_size)
        self.flip_tta = bool(flip_tta)
        self.normalize = bool(normalize)
        self._lock = threading.Lock()

    @classmethod
    def for_index(cls, index: Index, override: str | None = None, device: str = "cpu") -> QueryEncoder:
        model, _cfg, model_id = load_index_model(index.model, override=override, device=device)
        return cls.for_record(model, model_id, index.model)

    @classmethod
    def for_record(cls, model, model_id: str, record: ModelInfo) -> QueryEncoder:
        """An encoder for an already loaded model, with the preprocessing an index recorded."""
        return cls(model, model_id, record.image_size, record.flip_tta, record.normalize)

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32 sketch embeddings, post-processed like the index's photos."""
        with self._lock:  # one forward at a time; torch already uses all cores
            z = embed_pil(self.model, list(images), "sketch", self.image_size, self.flip_tta)
        if self.normalize and len(z):
            z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return z.astype(np.float32)
