"""Knowledge preservation by distillation (after SAKE: Liu, Xie, Wang and Yuille, "Semantic-Aware
Knowledge Preservation for Zero-Shot Sketch-Based Image Retrieval", ICCV 2019).

Fine-tuning an ImageNet backbone on a few seen classes makes it forget what told
the unseen ones apart. The frozen ImageNet model (the teacher) keeps scoring every
training image over its 1000 classes, and the network being trained (the student),
through its own copy of the ImageNet classifier, is asked to keep agreeing with it.
With teacher logits ``t_i`` and student logits ``s_i`` of image ``i`` and temperature ``T``::

    p_i  = softmax(t_i / T),   q_i = softmax(s_i / T)
    loss = T^2 * mean_i KL(p_i || q_i) = T^2 * mean_i sum_c p_ic (log p_ic - log q_ic)

``T^2`` keeps the gradient's size independent of ``T`` (Hinton, Vinyals and Dean, 2015).
SAKE also blends the teacher's scores with word-vector similarities between class
names; this is the plain term, applied to sketches and photos alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KnowledgePreservationLoss(nn.Module):
    """``forward(student_logits, teacher_logits) -> scalar``, both ``(B, C)`` over the same C classes."""

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
            raise ValueError(
                f"student and teacher logits must both be (B, C); got {tuple(student_logits.shape)} and "
                f"{tuple(teacher_logits.shape)}"
            )
        t = self.temperature
        log_q = F.log_softmax(student_logits / t, dim=1)
        log_p = F.log_softmax(teacher_logits.detach() / t, dim=1)
        kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
        return kl * t * t


__all__ = ["KnowledgePreservationLoss"]
