"""Loading the model that belongs to an index, and embedding sketch queries with it.

An index records the model that embedded its photos (``model.json``). Queries
must be embedded by the same weights with the same preprocessing (image size,
flip TTA), so :class:`QueryEncoder` is always built from that record; an
explicit ``--model`` override is accepted only when its model id is the same.

A checkpoint with a trained token re-ranker (``model.rerank``) re-scores the
top ``model.rerank_top_k`` hits of a query pairwise (:meth:`QueryEncoder.rerank`):
the candidates' photo tokens are recomputed from the gallery images, so indexes
need no extra storage and any index built with that checkpoint supports it.
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
from sbir.engine.rerank import get_reranker
from sbir.engine.tasks import resolve_distance
from sbir.index.store import Hit, Index, ModelInfo, ModelMismatchError


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

    # ------------------------------------------------------------------ re-ranking

    @property
    def rerank_k(self) -> int:
        """How many top hits :meth:`rerank` re-scores (0: the model has no re-ranker)."""
        if get_reranker(self.model) is None:
            return 0
        return int(getattr(self.model, "rerank_top_k", 10))

    def rerank(self, image: Image.Image, hits: Sequence[Hit], index: Index) -> list[Hit]:
        """Re-order the first :attr:`rerank_k` of ``hits`` (one query's, best first) with the re-ranker.

        The re-scored hits get the re-ranker's score (a logit, higher = better) and new ranks; hits below
        them are returned unchanged. Without a re-ranker ``hits`` come back as they are. Search with
        ``k >= rerank_k`` to re-rank the full top-K. Gallery images that are gone raise
        :class:`~sbir.index.store.IndexStoreError` (run ``sbir index update``).
        """
        import torch

        from sbir.data.image_io import load_image
        from sbir.data.transforms import eval_transform
        from sbir.models.rerank import rerank_order

        hits = list(hits)
        k = min(self.rerank_k, len(hits))
        if k < 2:
            return hits
        head, tail = hits[:k], hits[k:]
        model = self.model
        device = next(model.parameters()).device
        tf = eval_transform(self.image_size, model.mean, model.std)
        photos = torch.stack([tf(load_image(index.resolve(h.id))) for h in head]).to(device)
        sketch = tf(image).unsqueeze(0).to(device)
        with self._lock, torch.no_grad():
            model.eval()
            s_tok = model.tokens(sketch, "sketch")
            p_tok = model.tokens(photos, "photo")
            scores = model.reranker.score_candidates(s_tok, p_tok).float().cpu()
        order = rerank_order(list(range(k)), scores)
        reranked = [Hit(head[i].id, head[i].path, float(scores[i]), r + 1) for r, i in enumerate(order)]
        return reranked + tail
