"""Projection heads mapping pooled backbone features to an L2-normalised embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def ridge_map(a: torch.Tensor, b: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear map ``W`` nearest the identity that takes the rows of ``a`` to those of ``b``, as factors.

    Ridge regression shrunk towards the identity rather than towards zero, so that with few pairs the map
    stays close to "compare the features as they are":

        W = argmin_W ||a W^T - b||^2 + lam ||W - I||^2
        =>  W^T = (a^T a + lam I)^(-1) (a^T b + lam I) = I + a^T (a a^T + lam I)^(-1) (b - a)

    The second form (Woodbury's identity) solves an N x N system instead of a D x D one, and its correction is
    of rank <= N: returns ``(left, right) = (a^T, (a a^T + lam I)^(-1) (b - a))``, shapes ``(D, N)`` and
    ``(N, D)``, with ``W^T = I + left @ right`` (2 N D numbers to store instead of D^2; D is 1,792 to 5,504
    for the fine-grained grids, N a few hundred pairs).

    ``a``, ``b``: ``(N, D)`` paired rows (a sketch's features, its photo's); ``lam > 0``. Solved in float64.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ridge_map needs two (N, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not lam > 0:
        raise ValueError(f"ridge_map needs lam > 0, got {lam}")
    a64, b64 = a.double(), b.double()
    eye = torch.eye(a.shape[0], dtype=torch.float64, device=a.device)
    right = torch.linalg.solve(a64 @ a64.T + lam * eye, b64 - a64)
    return a64.T.to(a.dtype).contiguous(), right.to(a.dtype).contiguous()


def ridge_map_low_rank(
    a: torch.Tensor, b: torch.Tensor, lam: float, rank: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ridge_map`'s map solved in the primal, for many more pairs than dimensions, as rank-``rank`` factors.

    The same ``W^T = (a^T a + lam I)^(-1) (a^T b + lam I) = I + C`` with ``C = (a^T a + lam I)^(-1) a^T (b - a)``
    (a D x D system; the Woodbury form would store 2 N D numbers, and N is thousands of sketches for a
    category-level head). ``C = U S V^T`` is kept to its ``rank`` largest singular values (Eckart-Young: the
    nearest rank-``rank`` matrix), ``(left, right) = (U_r S_r, V_r^T)``, shapes ``(D, r)`` and ``(r, D)``;
    ``rank`` None keeps all D. Unlike :func:`ridge_map`, ``left`` is not the training inputs, so a head fitted
    this way holds no training embeddings (:meth:`CentredMap.fitted_outputs` is for ridge_map's factors).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"ridge_map_low_rank needs two (N, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not lam > 0:
        raise ValueError(f"ridge_map_low_rank needs lam > 0, got {lam}")
    if rank is not None and not 1 <= rank:
        raise ValueError(f"ridge_map_low_rank needs rank >= 1 (or None), got {rank}")
    a64, b64 = a.double(), b.double()
    eye = torch.eye(a.shape[1], dtype=torch.float64, device=a.device)
    c = torch.linalg.solve(a64.T @ a64 + lam * eye, a64.T @ (b64 - a64))
    u, sv, vh = torch.linalg.svd(c)
    r = len(sv) if rank is None else min(rank, len(sv))
    return (u[:, :r] * sv[:r]).to(a.dtype).contiguous(), vh[:r].to(a.dtype).contiguous()


def class_centre_ridge(
    sketches: torch.Tensor, sketch_labels, photos: torch.Tensor, photo_labels, lam: float, rank: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The category-level ridge head's fit: ``(sketch_mean, left, right, photo_mean)`` from raw features.

    Each domain is centred on its own mean and normalised (``a`` the sketches, ``p`` the photos); a sketch's
    target is its class's centre ``normalise(mean of p over the class's photos)``, and the sketch map is
    :func:`ridge_map_low_rank` from ``a`` to those targets. Every sketch label must have photos.
    """
    s64, p64 = sketches.double(), photos.double()
    s_mean, p_mean = s64.mean(0), p64.mean(0)
    a = F.normalize(s64 - s_mean, dim=-1)
    p = F.normalize(p64 - p_mean, dim=-1)
    classes = sorted(set(photo_labels))
    row = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(sketch_labels) - set(row))
    if missing:
        raise ValueError(f"class_centre_ridge: sketch classes without photos: {', '.join(map(str, missing[:5]))}")
    owner = torch.tensor([row[c] for c in photo_labels])
    centres = torch.zeros(len(classes), p.shape[1], dtype=p.dtype).index_add_(0, owner, p)
    b = F.normalize(centres, dim=-1)[torch.tensor([row[c] for c in sketch_labels])]
    left, right = ridge_map_low_rank(a, b, lam, rank)
    return s_mean, left, right, p_mean


class CrossFitMaps:
    """The fine-grained ridge head's training-time form (``model.ridge_crossfit``): two maps, each fitted on
    one half of the training pairs, every pair embedded through the map fitted on the *other* half.

    A map fitted on all pairs takes each training sketch to its own photo already (training Acc@1 100), so a
    loss through it has almost no gradient. Cross-fitting gives each training sketch the map it would meet as
    a new query. With ``half[p]`` the half of training photo ``p`` and ``(left_h, right_h)`` the
    :func:`ridge_map` factors fitted on half ``h``'s pairs (each domain centred on its mean over all the
    training pairs, then normalised, as :class:`CentredMap` does)::

        sketch x of photo p:  z = normalize(x - sketch_mean),  normalize(z + (z @ left_h) @ right_h),  h = 1 - half[p]
        photo y:              normalize(y - photo_mean)

    ``fit(sketch_feats, photo_feats, owner, half, lam)``: raw features ``(S, D)`` and ``(P, D)``, ``owner``
    ``(S,)`` each sketch's photo row, ``half`` ``(P,)`` of 0 / 1. Both halves need pairs.
    """

    def __init__(self, sketch_mean, photo_mean, half, maps):
        self.sketch_mean, self.photo_mean, self.half, self.maps = sketch_mean, photo_mean, half, maps

    @classmethod
    def fit(cls, sketch_feats, photo_feats, owner, half, lam: float) -> CrossFitMaps:
        s_mean, p_mean = sketch_feats.mean(0), photo_feats.mean(0)
        a = F.normalize(sketch_feats - s_mean, dim=-1)
        b = F.normalize(photo_feats - p_mean, dim=-1)[owner]
        maps = []
        for h in (0, 1):
            rows = half[owner] == h
            if not rows.any():
                raise ValueError(f"CrossFitMaps: half {h} of the training photos has no sketch to fit a map on")
            left, right = ridge_map(a[rows], b[rows], lam)
            maps.append((left.float(), right.float()))
        return cls(s_mean.float(), p_mean.float(), half.clone(), maps)

    def sketches(self, feats: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of sketches ``feats`` ``(B, D)`` of training photos ``groups`` ``(B,)``."""
        z = F.normalize(feats - self.sketch_mean.to(feats), dim=-1)
        other = (1 - self.half.to(groups.device)[groups]).bool()[:, None]  # True: half 1's map (fitted without it)
        mapped = [z + (z @ left.to(z)) @ right.to(z) for left, right in self.maps]
        return F.normalize(torch.where(other, mapped[1], mapped[0]), dim=-1)

    def photos(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(feats - self.photo_mean.to(feats), dim=-1)


class CentredMap(nn.Module):
    """``x -> z + (z @ left) @ right`` with ``z = normalize(x - mean)``: one domain's centring and linear map
    ``W^T = I + left @ right``, fitted in closed form.

    ``mean``, ``left`` and ``right`` are buffers, not parameters: the fine-grained task fits them on the
    training split (``model.head=ridge``; :meth:`sbir.engine.finegrained.FineGrainedTask.fit_closed_form`,
    :func:`ridge_map`). Subtracting each domain's own mean removes what all sketches (or all edge maps) share,
    which otherwise dominates the cosine between a sketch and a photo. Until fitted (``mean`` 0, rank 0) it is
    the identity head. The rank is the number of training pairs, so loading a fitted state resizes the
    factors to the saved ones.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("left", torch.zeros(dim, 0))
        self.register_buffer("right", torch.zeros(0, dim))

    def set_map(self, mean: torch.Tensor, left: torch.Tensor | None = None, right: torch.Tensor | None = None) -> None:
        """Store a fitted centring and map (``left`` ``(D, R)``, ``right`` ``(R, D)``; ``R = 0`` or both None:
        centring only, no map)."""
        dim = len(self.mean)
        if left is None and right is None:
            left, right = mean.new_zeros(dim, 0), mean.new_zeros(0, dim)
        if mean.shape != (dim,) or left.ndim != 2 or left.shape[0] != dim or right.shape != (left.shape[1], dim):
            raise ValueError(
                f"CentredMap({dim}) needs mean ({dim},), left ({dim}, R) and right (R, {dim}); got "
                f"{tuple(mean.shape)}, {tuple(left.shape)}, {tuple(right.shape)}"
            )
        like = self.mean
        self.mean = mean.to(like).clone()
        self.left = left.to(like).contiguous().clone()
        self.right = right.to(like).contiguous().clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old = state_dict.pop(prefix + "weight", None)
        if old is not None and prefix + "left" not in state_dict:  # a run saved with the full (D, D) map
            eye = torch.eye(len(old), dtype=old.dtype)
            state_dict[prefix + "left"], state_dict[prefix + "right"] = eye, old.T - eye
        # The factors' rank is the fitted run's number of training pairs: take the saved shapes.
        for name in ("left", "right"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.ndim == 2 and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, dtype=self.mean.dtype, device=self.mean.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def fitted_outputs(self) -> torch.Tensor | None:
        """``(N, D)`` what this map makes of its own N training inputs, or None before a map is fitted.

        :func:`ridge_map`'s ``left`` factor is the centred, normalised training inputs themselves
        (``a^T``), so the fitted head knows its training sketches' features without the images: the
        fine-grained model's hubness statistics set (``SBIRModel.hubness_statistics``)."""
        if self.left.shape[1] == 0:
            return None
        z = self.left.T
        return z + (z @ self.left) @ self.right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(x - self.mean, dim=-1)
        if self.left.shape[1] == 0:  # unfitted or centring only: no matmul with an empty factor (ONNX)
            return z
        return z + (z @ self.left) @ self.right


class DomainCentredMaps(nn.Module):
    """The ridge head of a shared encoder (category-level ``model.head=ridge``): a :class:`CentredMap` per domain.

    ``forward(feats, domain)``, ``domain`` ``"sketch"`` / ``"photo"`` or a ``(B,)`` tensor of ids (0 = sketch,
    1 = photo) for a mixed batch. The category task fits the sketch map (``ridge_map_low_rank``) and centres
    photos (:meth:`sbir.engine.category.CategoryTask.fit_closed_form`); unfitted, both are the identity.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.sketch = CentredMap(dim)
        self.photo = CentredMap(dim)

    def forward(self, feats: torch.Tensor, domain) -> torch.Tensor:
        if isinstance(domain, str):
            if domain not in ("sketch", "photo"):
                raise ValueError(f"domain must be 'sketch' or 'photo', got {domain!r}")
            return (self.sketch if domain == "sketch" else self.photo)(feats)
        is_photo = torch.as_tensor(domain, device=feats.device).reshape(-1, 1) == 1
        return torch.where(is_photo, self.photo(feats), self.sketch(feats))


class ProjectionHead(nn.Module):
    """``identity``: no projection; ``linear``: one Linear; ``mlp``: Linear-BN-ReLU-Linear (SimCLR style);
    ``ridge``: a :class:`CentredMap`, fitted in closed form rather than trained (fine-grained only).

    The output is L2-normalised.
    """

    def __init__(self, in_features: int, embed_dim: int = 512, kind: str = "linear", dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if kind == "identity":  # off-the-shelf features, e.g. the ImageNet baseline
            self.proj = nn.Identity()
        elif kind == "linear":
            self.proj = nn.Linear(in_features, embed_dim)
        elif kind == "ridge":  # the features' own width, like identity
            self.proj = CentredMap(in_features)
        elif kind == "mlp":
            hidden = max(embed_dim, in_features)
            self.proj = nn.Sequential(
                nn.Linear(in_features, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, embed_dim),
            )
        else:
            raise ValueError(f"unknown head kind {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.dropout(x)), dim=-1)
