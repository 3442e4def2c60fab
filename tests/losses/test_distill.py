"""Knowledge preservation (sbir.losses.distill) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from sbir.losses.distill import KnowledgePreservationLoss


def test_value_matches_hand_computation():
    # Teacher logits (0, ln 3) give p = (1/4, 3/4); uniform student logits give q = (1/2, 1/2):
    # KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2). The second row agrees with its teacher (KL 0); batch mean of 2.
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    student = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)], [1.0, -2.0]])
    assert float(KnowledgePreservationLoss(temperature=1.0)(student, teacher)) == pytest.approx(kl / 2, rel=1e-6)
    # At T = 2 the same distributions come from doubled teacher logits, and the loss is scaled by T^2 = 4.
    loss_t2 = KnowledgePreservationLoss(temperature=2.0)(student[:1], 2 * teacher[:1])
    assert float(loss_t2) == pytest.approx(4 * kl, rel=1e-6)


def test_gradient_moves_the_student_towards_the_teacher_only():
    teacher = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    student = torch.zeros(5, 7, requires_grad=True)
    loss_fn = KnowledgePreservationLoss()
    loss_fn(student, teacher.requires_grad_()).backward()
    assert teacher.grad is None  # the teacher is a fixed target
    with torch.no_grad():
        stepped = student - 5.0 * student.grad
        assert float(loss_fn(stepped, teacher)) < float(loss_fn(student, teacher))
    # A student that already agrees (up to a constant per row, which softmax ignores) has zero loss and gradient.
    agreeing = (teacher.detach() + 3.0).requires_grad_()
    loss = loss_fn(agreeing, teacher)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert float(agreeing.grad.abs().max()) < 1e-6


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        KnowledgePreservationLoss(temperature=0.0)
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        KnowledgePreservationLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
