"""Loading the model that belongs to an index, and embedding sketch queries with it.

An index records the model that embedded its photos (``model.json``). Queries
must be embedded by the same weights with the same preprocessing (image size,
flip TTA), so :class:`QueryEncoder` is always built from that record; an
explicit ``--model`` override is accepted only when its model id is the same.

A checkpoint with a trained token re-ranker (``model.rerank``) re-scores the
top ``model.rerank_top_k`` hits of a query pairwise (:meth:`QueryEncoder.rerank`):
the candidates' photo tokens are recomputed from the gallery images, so indexes
need no extra storage and any index built with that checkpoint supports it.

The record also names the runtime (:mod:`sbir.engine.runtime`: torch, onnx,
onnx-int8, openvino, ...) and its graphs' id: queries are embedded on that
runtime, and a different runtime (``--runtime``) or a re-exported graph is
refused, since an int8 or re-calibrated encoder does not embed like the index's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sbir.config import to_dict
from sbir.engine.embed import embed_pil, outputs_normalized
from sbir.engine.inference import default_model_spec, load_model, spec_path
from sbir.engine.rerank import get_reranker
from sbir.engine.runtime import Encoder, TorchEncoder, load_encoder, open_export_encoder
from sbir.engine.tasks import resolve_distance
from sbir.index.store import Hit, Index, ModelInfo, ModelMismatchError


def load_for_index(spec: str | None, device: str = "cpu"):
    """``load_model`` plus the record stored in an index: returns (model, cfg, model_id, absolute path or None)."""
    spec_s = default_model_spec() if spec is None else str(spec)
    model, cfg, model_id = load_model(spec_s, device=device)
    return model, cfg, model_id, spec_path(spec_s)


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


def load_encoder_for_index(
    spec: str | None,
    runtime: str = "auto",
    device: str = "cpu",
    image_size: int | None = None,
    preloaded: tuple | None = None,
    export_dir: str | os.PathLike | None = None,
):
    """:func:`sbir.engine.runtime.load_encoder` plus the weights' absolute path:
    returns (encoder, cfg, model_id, absolute path or None, note)."""
    spec_s = default_model_spec() if spec is None else str(spec)
    use_pre = preloaded if runtime in ("auto", "torch") else None
    enc, cfg, model_id, note = load_encoder(
        spec_s, runtime, device=device, export_dir=export_dir, image_size=image_size, preloaded=use_pre
    )
    return enc, cfg, model_id, spec_path(spec_s), note


def runtime_fields(encoder: Encoder) -> dict[str, Any]:
    """What an index records about the encoder that embedded its photos."""
    export_dir = getattr(encoder, "export_dir", None)
    return {
        "runtime": encoder.runtime,
        "encoder_id": encoder.encoder_id,
        "export_dir": str(Path(export_dir).resolve()) if export_dir is not None else None,
    }


def model_info(
    spec: str,
    path: str | None,
    cfg: Any,
    model_id: str,
    dim: int,
    image_size: int | None = None,
    model=None,
    runtime: dict[str, Any] | None = None,
    jpeg_draft: bool = False,
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
        **(runtime or {"runtime": "torch", "encoder_id": f"torch:{model_id}"}),
        jpeg_draft=bool(jpeg_draft),
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


def load_index_encoder(
    record: ModelInfo, override: str | None = None, device: str = "cpu", runtime: str | None = None
) -> tuple[Encoder, Any, str]:
    """The encoder an index's photos were embedded with: same weights (model id), same runtime, same graphs.

    ``runtime`` (``--runtime``) other than the recorded one, a re-exported graph (other encoder id) or
    other weights are refused with :class:`ModelMismatchError` naming the fix.
    """
    built = record.runtime or "torch"
    if runtime not in (None, built) and not (runtime == "auto"):
        raise ModelMismatchError(
            f"the index was built with runtime {built!r} ({record.encoder_id or 'torch:' + record.model_id}); "
            f"--runtime {runtime} embeds differently, so its queries would not match the photos. Omit --runtime "
            f"(the index's {built} is used), or rebuild the index with --runtime {runtime} --overwrite."
        )
    if built == "torch":
        model, cfg, model_id = load_index_model(record, override=override, device=device)
        return TorchEncoder(model, model_id, record.image_size, device=device), cfg, model_id
    spec = override if override is not None else record.load_spec
    if override is None and record.export_dir:
        enc = open_export_encoder(record.export_dir, built)
        from sbir.config import config_from_dict
        from sbir.engine.tasks import check_config

        cfg = check_config(config_from_dict(enc.manifest["config"]))
        model_id = enc.model_id
    else:
        enc, cfg, model_id, _ = load_encoder(spec, built, device=device)
    if model_id != record.model_id:
        raise ModelMismatchError(
            f"the {built} export at {getattr(enc, 'export_dir', spec)} is of model {model_id!r}, but the index was "
            f"built with {record.model_id!r}; pass the original model with --model, or rebuild the index "
            "with 'sbir index build --overwrite'."
        )
    if record.encoder_id and enc.encoder_id != record.encoder_id:
        raise ModelMismatchError(
            f"the {built} graphs in {getattr(enc, 'export_dir', spec)} ({enc.encoder_id}) are not the ones that built "
            f"the index ({record.encoder_id}): the model was exported again since. Rebuild the index with "
            "'sbir index build --overwrite', or search with the export the index was built with."
        )
    return enc, cfg, model_id


class QueryEncoder:
    """Embeds sketches for one index with the index's model, runtime and preprocessing. Thread-safe.

    ``model`` is a torch model or a runtime's model view (:meth:`sbir.engine.runtime.Encoder.as_model`).
    """

    def __init__(
        self,
        model,
        model_id: str,
        image_size: int,
        flip_tta: bool,
        normalize: bool = False,
        runtime: str = "torch",
        encoder_id: str = "",
    ):
        self.model = model
        self.model_id = model_id
        self.image_size = int(image_size)
        self.flip_tta = bool(flip_tta)
        self.normalize = bool(normalize)
        self.runtime = runtime
        self.encoder_id = encoder_id or f"torch:{model_id}"
        self._lock = threading.Lock()

    @classmethod
    def for_index(
        cls, index: Index, override: str | None = None, device: str = "cpu", runtime: str | None = None
    ) -> QueryEncoder:
        """The index's own encoder; ``runtime`` other than the index's is refused (see :func:`load_index_encoder`)."""
        enc, _cfg, model_id = load_index_encoder(index.model, override=override, device=device, runtime=runtime)
        rec = index.model
        return cls(enc.as_model(), model_id, rec.image_size, rec.flip_tta, rec.normalize, enc.runtime, enc.encoder_id)

    @classmethod
    def for_record(cls, model, model_id: str, record: ModelInfo) -> QueryEncoder:
        """An encoder for an already loaded torch model, with the preprocessing an index recorded."""
        if (record.runtime or "torch") != "torch":
            raise ModelMismatchError(
                f"the index was built with runtime {record.runtime!r}; a torch model cannot query it "
                "(use QueryEncoder.for_index)"
            )
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
