"""Projection heads: the closed-form ridge head (model.head=ridge) and its map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbir.models.heads import CentredMap, ProjectionHead, ridge_map


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
