"""Patch shuffling for fine-grained zero-shot SBIR (Sketch_LVM).

A sketch ``s`` and its photo ``p`` are cut into an ``n x n`` grid of patches and the
patches rearranged by a permutation ``ψ`` (:func:`shuffle_patches`). Shuffled by the
same permutation they should still match; the photo shuffled by another permutation
``ψ'`` should not. With ``d = 1 - cos`` and ``f_s`` / ``f_p`` the prompted sketch /
photo encoders::

    loss = mean_i max(0, d(f_s(ψ_i(s_i)), f_p(ψ_i(p_i))) - d(f_s(ψ_i(s_i)), f_p(ψ'_i(p_i))) + margin)

(margin 0.2 by default), i.e. the cosine triplet of :mod:`sbir.losses.cosine_triplet` on
the embeddings of the shuffled images. It teaches instance-level structural
correspondence between a sketch and its photo.
"""

from __future__ import annotations

import torch
from torch import nn

from sbir.losses.cosine_triplet import CosineTripletLoss, check_margin


def shuffle_patches(x: torch.Tensor, grid: int, perm: torch.Tensor) -> torch.Tensor:
    """Rearrange the ``grid x grid`` patches of images ``x`` (B, C, H, W).

    ``perm``: (grid², ) for the whole batch or (B, grid²) per image; output patch ``k``
    (row-major) is input patch ``perm[k]``. H and W must be multiples of ``grid``.
    """
    b, c, h, w = x.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch grid {grid}")
    n = grid * grid
    perm = perm.to(x.device).long()
    if perm.dim() == 1:
        perm = perm.expand(b, n)
    if tuple(perm.shape) != (b, n) or not torch.equal(
        perm.sort(dim=1).values, torch.arange(n, device=x.device).expand(b, n)
    ):
        raise ValueError(f"perm must be a permutation of range({n}) (shape ({n},) or ({b}, {n}))")
    ph, pw = h // grid, w // grid
    patches = x.reshape(b, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, n, c, ph, pw)
    patches = torch.gather(patches, 1, perm.view(b, n, 1, 1, 1).expand(b, n, c, ph, pw))
    return patches.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def random_permutation_pair(
    n: int, batch: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two (batch, n) permutations, different in every row (n >= 2)."""
    if n < 2:
        raise ValueError("patch shuffling needs at least 2 patches")
    first = torch.stack([torch.randperm(n, generator=generator) for _ in range(batch)])
    second = torch.stack([torch.randperm(n, generator=generator) for _ in range(batch)])
    same = (first == second).all(dim=1)
    second[same] = first[same].roll(1, dims=1)  # a cyclic shift of a permutation is another one
    return first, second


class PatchShuffleLoss(nn.Module):
    """Cosine triplet on shuffled pairs (see the module docstring).

    ``forward(sketch_same, photo_same, photo_other) -> scalar``: embeddings of ``ψ(s)``,
    ``ψ(p)`` and ``ψ'(p)``, all (B, D).
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.triplet = CosineTripletLoss(check_margin(margin))

    def forward(self, sketch_same: torch.Tensor, photo_same: torch.Tensor, photo_other: torch.Tensor) -> torch.Tensor:
        return self.triplet(sketch_same, photo_same, photo_other)


__all__ = ["PatchShuffleLoss", "random_permutation_pair", "shuffle_patches"]
