"""Embed many images with a model: batched, parallel decoding, progress bar.

Used by evaluation, the index and the API, so preprocessing is identical
everywhere (the one image loader, the one eval transform).

Flip test-time augmentation comes in two forms:

* ``flip_tta=True`` averages the embeddings of the image and its mirror (one
  vector per image, for indexes and fine-grained evaluation). Models whose
  embeddings are L2-normalised get the average renormalised; models with
  un-normalised outputs (``model.normalize is False``, e.g. a MEMS category
  model tested with euclidean distance) get the plain mean, so the scale the
  loss trained stays intact.
* ``return_flipped=True`` keeps the two apart: ``EmbedResult.embeddings`` are
  the plain images' embeddings and ``EmbedResult.flipped`` the mirrors', for
  the DASE-MEMS minimum distance over the four (query, gallery) flip pairings
  (``sketch_flip`` / ``photo_flip`` of :func:`sbir.metrics.category_report`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sbir.data.image_io import load_image
from sbir.data.records import FileRef, ImageRef
from sbir.data.transforms import eval_transform, multiview_transform
from sbir.engine import distributed
from sbir.errors import ImageLoadError

_PLURAL = {"sketch": "sketches", "photo": "photos"}  # progress-bar labels


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_device(model) -> torch.device:
    """The device a model (or a runtime adapter with a ``device`` attribute) computes on."""
    dev = getattr(model, "device", None)
    if dev is not None:
        return torch.device(dev)
    return next(model.parameters()).device


class PooledFeatures(torch.nn.Module):
    """A model's pooled backbone features of a domain (``model.features(x, domain)``, no head), L2-normalised
    unless ``normalize=False``: what a closed-form head is fitted on, and the pretrained-distance reference."""

    def __init__(self, model: torch.nn.Module, normalize: bool = True):
        super().__init__()
        self.model = model
        self.normalize = normalize  # also read by outputs_normalized
        self.mean, self.std = model.mean, model.std

    def embed(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        z = self.model.features(x, domain)
        return torch.nn.functional.normalize(z, dim=-1) if self.normalize else z


class _RefDataset(Dataset):
    def __init__(self, refs: Sequence[ImageRef], transform, skip_errors: bool, draft: int | None = None):
        self.refs = refs
        self.transform = transform
        self.skip_errors = skip_errors
        self.draft = draft

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        ref = self.refs[i]
        try:
            img = load_image(ref.path, draft=self.draft) if self.draft and isinstance(ref, FileRef) else ref.load()
        except ImageLoadError as exc:
            if not self.skip_errors:
                raise
            return i, None, str(exc)
        return i, self.transform(img), None


def _collate(batch):
    idx = [b[0] for b in batch if b[1] is not None]
    imgs = [b[1] for b in batch if b[1] is not None]
    errors = [(b[0], b[2]) for b in batch if b[1] is None]
    return idx, (torch.stack(imgs) if imgs else None), errors


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # (n_ok, D) float32, rows in the order of ``indices``
    indices: list[int]  # positions in the input that were embedded
    errors: list[tuple[int, str]] = field(default_factory=list)  # (position, message) of skipped inputs
    # With ``return_flipped``: (n_ok, D) embeddings of the horizontally mirrored images, same rows.
    flipped: np.ndarray | None = None
    # With ``return_tokens``: (n_ok, N, D) float32 token sequences of the plain images (re-ranker input).
    tokens: torch.Tensor | None = None


def outputs_normalized(model) -> bool:
    """Whether ``model.embed`` returns L2-normalised vectors (True unless ``model.normalize`` is False)."""
    flag = getattr(model, "normalize", True)
    return flag if isinstance(flag, bool) else True


@torch.no_grad()
def embed_tensor(model, x: torch.Tensor, domain: str, flip_tta: bool = False) -> torch.Tensor:
    """Embed a preprocessed batch; with ``flip_tta`` average with the mirrored image.

    The average is renormalised for models with L2-normalised outputs and left
    as the plain mean otherwise (see :func:`outputs_normalized`).
    """
    z = model.embed(x, domain)
    return _with_flip(model, x, domain, z) if flip_tta else z


def _with_flip(model, x: torch.Tensor, domain: str, z: torch.Tensor) -> torch.Tensor:
    """``z`` (the embeddings of ``x``) combined with the embeddings of the mirrored ``x``."""
    zf = model.embed(torch.flip(x, dims=[3]), domain)
    if outputs_normalized(model):
        return torch.nn.functional.normalize(z + zf, dim=-1)
    return 0.5 * (z + zf)


@torch.no_grad()
def embed_images(
    model,
    refs: Sequence[ImageRef],
    domain: str,
    image_size: int,
    batch_size: int = 64,
    flip_tta: bool = False,
    num_workers: int = 0,
    device: torch.device | None = None,
    progress: bool = True,
    skip_errors: bool = False,
    desc: str | None = None,
    return_flipped: bool = False,
    multiview_scale: float | None = None,
    return_tokens: bool = False,
    jpeg_draft: bool = False,
) -> EmbedResult:
    """Embed ``refs`` as ``domain`` images. With ``skip_errors`` unreadable files are reported, not fatal.

    ``model`` is a torch model or a runtime adapter (:meth:`sbir.engine.runtime.Encoder.as_model`).
    ``jpeg_draft`` decodes JPEG files at a reduced scale no smaller than ``image_size``
    (:func:`sbir.data.image_io.load_image`'s ``draft``).

    ``return_flipped`` also embeds every mirrored image and returns it separately
    in ``EmbedResult.flipped`` (``embeddings`` are then the plain images'); it
    cannot be combined with ``flip_tta`` (averaging). ``multiview_scale`` embeds the
    10 views of :func:`sbir.data.transforms.multiview_transform` instead:
    ``embeddings`` is then ``(N, 10, D)``.    ``return_tokens`` also keeps each image's token
    sequence (``model.embed_with_tokens``; the same forward pass) in ``EmbedResult.tokens``.

    Inside :func:`sbir.engine.distributed.sharded_evaluation` under torchrun, each rank embeds only
    its contiguous slice of ``refs`` and the slices are gathered: every rank returns the full result,
    in the order one process would, at ``1/W`` of the embedding work. Every rank must then call this
    with the same ``refs`` and options (it is a collective).
    """
    if return_flipped and flip_tta:
        raise ValueError("embed_images: choose flip_tta (average) or return_flipped (separate), not both")
    if multiview_scale is not None and (flip_tta or return_flipped):
        raise ValueError("embed_images: multi-view embedding already holds the mirrored views; no flip TTA with it")
    device = device or model_device(model)
    model.eval()
    shard = distributed.eval_shard(len(refs))
    offset = 0
    if shard is not None:
        offset, hi = shard
        refs = [refs[i] for i in range(offset, hi)]
        progress = progress and distributed.is_main()  # one bar (rank 0's slice), not W interleaved ones
    if multiview_scale is not None:
        tf = multiview_transform(image_size, model.mean, model.std, multiview_scale)
    else:
        tf = eval_transform(image_size, model.mean, model.std)
    loader = DataLoader(
        _RefDataset(refs, tf, skip_errors, draft=image_size if jpeg_draft else None),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    # Rows are written into arrays allocated once (at the first batch, when the width is known),
    # so a large set never holds a list of blocks and their concatenation at the same time.
    emb: np.ndarray | None = None
    emb_flip: np.ndarray | None = None
    n_ok = 0
    indices: list[int] = []
    errors: list[tuple[int, str]] = []
    token_blocks: list[torch.Tensor] = []
    label = desc or f"embed {_PLURAL.get(domain, domain + 's')}"
    bar = tqdm(total=len(refs), desc=label, unit="img", disable=not progress, file=sys.stderr, leave=False)
    for idx, x, errs in loader:
        if x is not None:
            x = x.to(device)
            if x.dim() == 5:  # (B, views, C, H, W)
                b, v = x.shape[:2]
                z = embed_tensor(model, x.flatten(0, 1), domain).float().cpu().numpy().reshape(b, v, -1)
            elif return_tokens:
                z_t, tok = model.embed_with_tokens(x, domain)
                token_blocks.append(tok.float().cpu())
                z_t = _with_flip(model, x, domain, z_t) if flip_tta else z_t
                z = z_t.float().cpu().numpy()
            else:
                z = embed_tensor(model, x, domain, flip_tta).float().cpu().numpy()
            if emb is None:
                emb = np.empty((len(refs), *z.shape[1:]), np.float32)
                if return_flipped:
                    emb_flip = np.empty_like(emb)
            emb[n_ok : n_ok + len(z)] = z
            if return_flipped:
                zf = model.embed(torch.flip(x, dims=[3]), domain)
                emb_flip[n_ok : n_ok + len(z)] = zf.float().cpu().numpy()
            n_ok += len(z)
            indices.extend(i + offset for i in idx)
        errors.extend((i + offset, msg) for i, msg in errs)
        bar.update(len(idx) + len(errs))
    bar.close()
    if emb is None:
        dim = getattr(model, "embed_dim", None) or 0
        emb = np.zeros((0, dim), np.float32)
        emb_flip = emb.copy() if return_flipped else None
    elif n_ok < len(emb):  # some inputs were skipped
        emb = emb[:n_ok].copy()
        emb_flip = emb_flip[:n_ok].copy() if emb_flip is not None else None
    tokens = torch.cat(token_blocks) if token_blocks else None
    result = EmbedResult(emb, indices, errors, emb_flip, tokens)
    return _gather_shards(result) if shard is not None else result


def _gather_shards(local: EmbedResult) -> EmbedResult:
    """Every rank's :class:`EmbedResult` of its slice, concatenated in rank order (= the input order).

    Gathered as pickled numpy arrays (``all_gather_object``): works on gloo and nccl alike and
    needs no padding for uneven or empty slices. An empty slice (fewer images than ranks, or all
    skipped) may have another width (``embed_dim`` unknown), so empty parts are left out.
    """
    parts: list[EmbedResult] = distributed.all_gather_object(local)
    full = [p for p in parts if len(p.indices)]
    if not full:
        return EmbedResult(local.embeddings, [], [e for p in parts for e in p.errors], local.flipped, None)
    flipped = [p.flipped for p in full if p.flipped is not None]
    tokens = [p.tokens for p in full if p.tokens is not None]
    return EmbedResult(
        embeddings=np.concatenate([p.embeddings for p in full]),
        indices=[i for p in full for i in p.indices],
        errors=[e for p in parts for e in p.errors],
        flipped=np.concatenate(flipped) if flipped else None,
        tokens=torch.cat(tokens) if tokens else None,
    )


def embed_pil(model, images: Sequence[Image.Image], domain: str, image_size: int, flip_tta: bool = False) -> np.ndarray:
    """Embed already-decoded images (e.g. an API upload)."""
    device = model_device(model)
    tf = eval_transform(image_size, model.mean, model.std)
    x = torch.stack([tf(img) for img in images]).to(device)
    model.eval()
    return embed_tensor(model, x, domain, flip_tta).float().cpu().numpy()
