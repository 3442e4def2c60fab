"""Projection heads: the closed-form ridge head (model.head=ridge) and its map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbir.models.heads import (
    CentredMap,
    CrossFitMaps,
    DomainCentredMaps,
    ProjectionHead,
    ridge_map,
    ridge_map_low_rank,
)


def _wt(a, b, lam):
    """W^T from ridge_map's factors: I + left @ right."""
    left, right = ridge_map(a, b, lam)
    return torch.eye(a.shape[1]) + left @ right


def test_ridge_map_against_hand_computed_values():
    # a^T a = I, a^T b = swap: W^T = (I + I)^-1 (swap + I) = 0.5 * ones
    a = torch.eye(2)
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert torch.allclose(_wt(a, b, 1.0), torch.full((2, 2), 0.5))
    # One dimension: W = (a b + lam) / (a^2 + lam) = (2 * 1 + 1) / (4 + 1)
    assert _wt(torch.tensor([[2.0]]), torch.tensor([[1.0]]), 1.0).item() == pytest.approx(0.6)
    # Unshrunk in the limit: a W^T = b when lam -> 0 and a is invertible.
    a = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 3.0], [4.0, -1.0]])
    assert torch.allclose(a @ _wt(a, b, 1e-9), b, atol=1e-5)
    # The factors equal the primal solution (a^T a + lam I)^-1 (a^T b + lam I) with more dimensions than pairs.
    a, b = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    primal = torch.linalg.solve(
        a.T @ a + 0.5 * torch.eye(9, dtype=a.dtype), a.T @ b + 0.5 * torch.eye(9, dtype=a.dtype)
    )
    left, right = ridge_map(a, b, 0.5)
    assert left.shape == (9, 4) and right.shape == (4, 9)
    assert torch.allclose(torch.eye(9, dtype=a.dtype) + left @ right, primal, atol=1e-10)


def test_ridge_map_shrinks_to_the_identity_and_checks_its_input():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(_wt(a, b, 1e9), torch.eye(3), atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        ridge_map(a, b[:, :2], 1.0)
    with pytest.raises(ValueError, match="lam > 0"):
        ridge_map(a, b, 0.0)


def test_unfitted_ridge_head_is_the_identity_head_and_a_fitted_one_centres_then_maps():
    x = torch.randn(4, 6)
    head = ProjectionHead(6, embed_dim=99, kind="ridge")
    assert torch.allclose(head(x), ProjectionHead(6, kind="identity")(x))
    mean, left, right = torch.randn(6), torch.randn(6, 2), torch.randn(2, 6)
    head.proj.set_map(mean, left, right)
    z = F.normalize(x - mean, dim=-1)
    expected = F.normalize(z @ (torch.eye(6) + left @ right), dim=-1)
    assert torch.allclose(head(x), expected, atol=1e-6)
    # Fitted values are buffers: saved with the weights, never handed to an optimizer.
    assert set(head.state_dict()) == {"proj.mean", "proj.left", "proj.right"} and not list(head.parameters())
    # A fresh head loads the fitted rank-2 state (its own factors are rank 0 until then).
    fresh = ProjectionHead(6, kind="ridge")
    fresh.load_state_dict(head.state_dict())
    assert torch.allclose(fresh(x), expected, atol=1e-6)
    # A state saved with the earlier full (D, D) map loads as the same map.
    w = torch.eye(6) + (left @ right).T
    legacy = ProjectionHead(6, kind="ridge")
    legacy.load_state_dict({"proj.mean": mean, "proj.weight": w})
    assert torch.allclose(legacy(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="CentredMap"):
        head.proj.set_map(mean, left, right[:, :3])
    # The left factor holds the fitted inputs: the map's outputs for them, before the final normalisation.
    assert torch.allclose(head.proj.fitted_outputs(), left.T @ (torch.eye(6) + left @ right), atol=1e-6)
    assert ProjectionHead(6, kind="ridge").proj.fitted_outputs() is None


def test_centred_map_output_width_is_its_input_width():
    assert CentredMap(7)(torch.randn(3, 7)).shape == (3, 7)


# ---------------------------------------------------------------- ridge_map_low_rank (primal, truncated)


def _correction(a, b, lam, rank=None):
    left, right = ridge_map_low_rank(a, b, lam, rank)
    return left @ right


def test_ridge_map_low_rank_against_hand_computed_values():
    # One dimension: C = (a^2 + lam)^-1 a (b - a) = 2 * (1 - 2) / (4 + 1); W = 1 + C = 0.6 as for ridge_map.
    left, right = ridge_map_low_rank(torch.tensor([[2.0]]), torch.tensor([[1.0]]), 1.0)
    assert left.shape == (1, 1) and right.shape == (1, 1)
    assert (left @ right).item() == pytest.approx(-0.4)
    # a = I, b = swap, lam = 1: C = (2 I)^-1 (swap - I) = [[-0.5, 0.5], [0.5, -0.5]], of rank 1 (singular value 1
    # along (1, -1) / sqrt 2): rank 1 keeps all of it, and the factors are U_1 S_1 and V_1^T.
    a, b = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    want = torch.tensor([[-0.5, 0.5], [0.5, -0.5]])
    assert torch.allclose(_correction(a, b, 1.0), want, atol=1e-6)
    left, right = ridge_map_low_rank(a, b, 1.0, rank=1)
    assert left.shape == (2, 1) and right.shape == (1, 2)
    assert torch.allclose(left @ right, want, atol=1e-6)
    assert left.norm().item() == pytest.approx(1.0) and right.norm().item() == pytest.approx(1.0)
    assert torch.allclose(right.abs(), torch.full((1, 2), 0.5**0.5), atol=1e-6)


@pytest.mark.parametrize(("n", "d"), [(40, 6), (4, 9)])  # more pairs than dimensions, and fewer
def test_ridge_map_low_rank_at_full_rank_is_ridge_maps_map(n, d):
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    left, right = ridge_map_low_rank(a, b, 0.7)
    assert left.shape == (d, d) and right.shape == (d, d) and left.dtype == torch.float64
    w_left, w_right = ridge_map(a, b, 0.7)
    eye = torch.eye(d, dtype=torch.float64)
    assert torch.allclose(eye + left @ right, eye + w_left @ w_right, atol=1e-8)
    # ... which is the primal ridge solution shrunk towards the identity.
    primal = torch.linalg.solve(a.T @ a + 0.7 * eye, a.T @ b + 0.7 * eye)
    assert torch.allclose(eye + left @ right, primal, atol=1e-8)
    # float32 in, float32 out.
    l32, r32 = ridge_map_low_rank(a.float(), b.float(), 0.7)
    assert l32.dtype == r32.dtype == torch.float32
    assert torch.allclose(l32 @ r32, (left @ right).float(), atol=1e-4)


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_ridge_map_low_rank_truncation_is_the_best_rank_r_correction(rank):
    g = torch.Generator().manual_seed(rank)
    n, d = 30, 8
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    full = _correction(a, b, 0.3)
    sv_full = torch.linalg.svdvals(full)
    assert (sv_full[1:] < sv_full[:-1]).all() and sv_full[-1] > 1e-6  # distinct, non-zero: truncation matters
    left, right = ridge_map_low_rank(a, b, 0.3, rank=rank)
    assert left.shape == (d, rank) and right.shape == (rank, d)
    trunc = left @ right
    # Its singular values are the top `rank` of the full correction (the rest are zero) ...
    sv = torch.linalg.svdvals(trunc)
    assert torch.allclose(sv[:rank], sv_full[:rank], atol=1e-8)
    assert sv[rank:].abs().max() < 1e-8
    # ... and its Frobenius error is that of the dropped singular values (Eckart-Young).
    err = torch.linalg.matrix_norm(full - trunc)
    assert err.item() == pytest.approx(sv_full[rank:].pow(2).sum().sqrt().item(), rel=1e-8)
    # right holds orthonormal directions, left their images scaled by the singular values.
    assert torch.allclose(right @ right.T, torch.eye(rank, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(left.norm(dim=0), sv_full[:rank], atol=1e-8)


def test_ridge_map_low_rank_checks_its_input():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="one shape"):
        ridge_map_low_rank(a, b[:, :2], 1.0)
    with pytest.raises(ValueError, match="one shape"):
        ridge_map_low_rank(a[0], b[0], 1.0)
    for lam in (0.0, -1.0):
        with pytest.raises(ValueError, match="lam > 0"):
            ridge_map_low_rank(a, b, lam)
    for rank in (0, -2):
        with pytest.raises(ValueError, match="rank >= 1"):
            ridge_map_low_rank(a, b, 1.0, rank)
    # A huge lam shrinks the map to the identity: no correction left.
    assert _correction(a, b, 1e9).abs().max() < 1e-6


# ---------------------------------------------------------------- DomainCentredMaps


def _fitted_domain_maps(dim: int = 6) -> DomainCentredMaps:
    g = torch.Generator().manual_seed(0)
    maps = DomainCentredMaps(dim)
    maps.sketch.set_map(
        torch.randn(dim, generator=g), torch.randn(dim, 2, generator=g), torch.randn(2, dim, generator=g)
    )
    maps.photo.set_map(torch.randn(dim, generator=g), torch.zeros(dim, 0), torch.zeros(0, dim))
    return maps


def test_domain_centred_maps_unfitted_are_the_identity_head():
    x = torch.randn(5, 6)
    maps = DomainCentredMaps(6)
    for domain in ("sketch", "photo", torch.tensor([0, 1, 1, 0, 1])):
        assert torch.allclose(maps(x, domain), F.normalize(x, dim=-1), atol=1e-6)
    assert set(maps.state_dict()) == {f"{d}.{n}" for d in ("sketch", "photo") for n in ("mean", "left", "right")}
    assert not list(maps.parameters())


def test_domain_centred_maps_use_each_domains_map_and_pick_per_row_in_a_mixed_batch():
    maps = _fitted_domain_maps()
    x = torch.randn(6, 6)
    s, p = maps(x, "sketch"), maps(x, "photo")
    assert torch.allclose(s, maps.sketch(x)) and torch.allclose(p, maps.photo(x))
    z = F.normalize(x - maps.sketch.mean, dim=-1)
    assert torch.allclose(s, z + (z @ maps.sketch.left) @ maps.sketch.right, atol=1e-6)
    assert torch.allclose(p, F.normalize(x - maps.photo.mean, dim=-1), atol=1e-6)
    assert not torch.allclose(s, p, atol=1e-2)  # the two sides really differ, so the row test below can fail
    ids = torch.tensor([0, 1, 1, 0, 0, 1])
    mixed = maps(x, ids)
    for i, d in enumerate(ids.tolist()):
        assert torch.allclose(mixed[i], (p if d == 1 else s)[i], atol=1e-6), i
    assert torch.allclose(maps(x, torch.zeros(6, dtype=torch.long)), s)
    assert torch.allclose(maps(x, torch.ones(6, dtype=torch.long)), p)
    with pytest.raises(ValueError, match="domain must be 'sketch' or 'photo'"):
        maps(x, "edge")


def test_domain_centred_maps_load_a_fitted_state():
    maps = _fitted_domain_maps()
    fresh = DomainCentredMaps(6)
    fresh.load_state_dict(maps.state_dict())  # rank 0 factors resized to the saved rank 2
    x, ids = torch.randn(4, 6), torch.tensor([1, 0, 1, 0])
    assert fresh.sketch.left.shape == (6, 2) and fresh.photo.left.shape == (6, 0)
    assert torch.allclose(fresh(x, ids), maps(x, ids))


def test_crossfit_maps_send_each_pair_through_the_map_fitted_on_the_other_half():
    torch.manual_seed(0)
    sketches, photos = torch.randn(7, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    owner = torch.tensor([0, 0, 1, 2, 3, 3, 1])  # each sketch's photo
    half = torch.tensor([0, 1, 1, 0])  # photos 0 and 3 in half 0, photos 1 and 2 in half 1
    maps = CrossFitMaps.fit(sketches, photos, owner, half, 0.5)

    # By hand: both domains centred on their means over all pairs and normalised; each half's map in the
    # primal form W^T = (a^T a + lam I)^-1 (a^T b + lam I) over that half's pairs only.
    a = F.normalize(sketches - sketches.mean(0), dim=-1)
    b = F.normalize(photos - photos.mean(0), dim=-1)
    eye = torch.eye(5, dtype=torch.float64)

    def primal(rows):
        x, y = a[rows], b[owner[rows]]
        return torch.linalg.solve(x.T @ x + 0.5 * eye, x.T @ y + 0.5 * eye)

    w_half0, w_half1 = primal(half[owner] == 0), primal(half[owner] == 1)
    assert not torch.allclose(w_half0, w_half1)
    expected = torch.stack(
        [F.normalize(a[i] @ (w_half1 if half[owner[i]] == 0 else w_half0), dim=0) for i in range(len(a))]
    )
    assert torch.allclose(maps.sketches(sketches.float(), owner), expected.float(), atol=1e-5)
    assert torch.allclose(maps.photos(photos.float()), b.float(), atol=1e-6)

    # A sketch's map depends on its photo's half only: the same features under a photo of the other half move.
    moved = maps.sketches(sketches[:1].float(), torch.tensor([1]))
    assert torch.allclose(moved[0], F.normalize(a[0] @ w_half0, dim=0).float(), atol=1e-5)
    # Gradients reach the features (the loss trains the encoder through the fixed maps).
    feats = sketches.float().requires_grad_()
    maps.sketches(feats, owner).sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_crossfit_maps_need_pairs_in_both_halves():
    sketches, photos = torch.randn(3, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match="half 1 of the training photos has no sketch"):
        CrossFitMaps.fit(sketches, photos, torch.tensor([0, 0, 1]), torch.tensor([0, 0]), 1.0)
