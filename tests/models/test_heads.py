"""Projection heads: the closed-form ridge head (model.head=ridge) and its map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sbir.models.heads import CentredMap, ProjectionHead, ridge_map


def test_ridge_map_against_hand_computed_values():
    # a^T a = I, a^T b = swap: W^T = (I + I)^-1 (swap + I) = 0.5 * ones
    a = torch.eye(2)
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert torch.allclose(ridge_map(a, b, 1.0), torch.full((2, 2), 0.5))
    # One dimension: W = (a b + lam) / (a^2 + lam) = (2 * 1 + 1) / (4 + 1)
    assert ridge_map(torch.tensor([[2.0]]), torch.tensor([[1.0]]), 1.0).item() == pytest.approx(0.6)
    # Unshrunk in the limit: a W^T = b when lam -> 0 and a is invertible.
    a = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 3.0], [4.0, -1.0]])
    assert torch.allclose(a @ ridge_map(a, b, 1e-9).T, b, atol=1e-5)


def test_ridge_map_shrinks_to_the_identity_and_checks_its_input():
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.allclose(ridge_map(a, b, 1e9), torch.eye(3), atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        ridge_map(a, b[:, :2], 1.0)
    with pytest.raises(ValueError, match="lam > 0"):
        ridge_map(a, b, 0.0)


def test_unfitted_ridge_head_is_the_identity_head_and_a_fitted_one_centres_then_maps():
    x = torch.randn(4, 6)
    head = ProjectionHead(6, embed_dim=99, kind="ridge")
    assert torch.allclose(head(x), ProjectionHead(6, kind="identity")(x))
    mean, w = torch.randn(6), torch.randn(6, 6)
    head.proj.mean.copy_(mean)
    head.proj.weight.copy_(w)
    expected = F.normalize(F.normalize(x - mean, dim=-1) @ w.T, dim=-1)
    assert torch.allclose(head(x), expected, atol=1e-6)
    # Fitted values are buffers: saved with the weights, never handed to an optimizer.
    assert set(head.state_dict()) == {"proj.mean", "proj.weight"} and not list(head.parameters())


def test_centred_map_output_width_is_its_input_width():
    assert CentredMap(7)(torch.randn(3, 7)).shape == (3, 7)
