"""Embed many images with a model: batched, parallel decoding, progress bar.

Used by evaluation, the index and the API, so preprocessing is identical
everywhere (the one image loader, the one eval transform).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sbir.data.records import ImageRef
from sbir.data.transforms import eval_transform
from sbir.errors import ImageLoadError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _RefDataset(Dataset):
    def __init__(self, refs: Sequence[ImageRef], transform, skip_errors: bool):
        self.refs = refs
        self.transform = transform
        self.skip_errors = skip_errors

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        try:
            img = self.refs[i].load()
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


@torch.no_grad()
def embed_tensor(model, x: torch.Tensor, domain: str, flip_tta: bool = False) -> torch.Tensor:
    """Embed a preprocessed batch; with ``flip_tta`` average with the mirrored image and renormalise."""
    z = model.embed(x, domain)
    if flip_tta:
        z = torch.nn.functional.normalize(z + model.embed(torch.flip(x, dims=[3]), domain), dim=-1)
    return z


@torch.no_grad()
def embed_images(
    model,
    refs: Sequence[ImageRef],
    domain: str,
    image_size: int,
    batch_size: int = 64,
    flip_tta: bool = False,
    num_workers: int = 0,
    device: Optional[torch.device] = None,
    progress: bool = True,
    skip_errors: bool = False,
    desc: Optional[str] = None,
) -> EmbedResult:
    """Embed ``refs`` as ``domain`` images. With ``skip_errors`` unreadable files are reported, not fatal."""
    device = device or next(model.parameters()).device
    model.eval()
    tf = eval_transform(image_size, model.mean, model.std)
    loader = DataLoader(
        _RefDataset(refs, tf, skip_errors),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    out: list[np.ndarray] = []
    indices: list[int] = []
    errors: list[tuple[int, str]] = []
    bar = tqdm(total=len(refs), desc=desc or f"embed {domain}s", unit="img", disable=not progress, file=sys.stderr, leave=False)
    for idx, x, errs in loader:
        errors.extend(errs)
        if x is not None:
            z = embed_tensor(model, x.to(device), domain, flip_tta)
            out.append(z.float().cpu().numpy())
            indices.extend(idx)
        bar.update(len(idx) + len(errs))
    bar.close()
    dim = getattr(model, "embed_dim", None) or (out[0].shape[1] if out else 0)
    emb = np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)
    return EmbedResult(emb, indices, errors)


def embed_pil(model, images: Sequence[Image.Image], domain: str, image_size: int, flip_tta: bool = False) -> np.ndarray:
    """Embed already-decoded images (e.g. an API upload)."""
    device = next(model.parameters()).device
    tf = eval_transform(image_size, model.mean, model.std)
    x = torch.stack([tf(img) for img in images]).to(device)
    model.eval()
    return embed_tensor(model, x, domain, flip_tta).float().cpu().numpy()
