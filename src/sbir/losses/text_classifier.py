"""Classification against frozen CLIP text embeddings of the class names (CLIP prompt learning).

With ``t_c`` the L2-normalised text embedding of "a photo of a {class c}" (frozen
text tower), ``s`` CLIP's logit scale (``exp(logit_scale)``, 100 for OpenAI's
weights) and ``f`` an image embedding (sketch or photo, prompted encoder)::

    logits_c = s · cos(f, t_c) = s · (f / |f|) · t_c
    loss     = mean_i CE(logits(f_i), y_i) = mean_i [ -logits_{y_i}(f_i) + log Σ_c exp(logits_c(f_i)) ]

The class embeddings are a buffer set by the task (:meth:`set_class_embeddings`) from the
training classes' names; nothing here is trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.errors import ConfigError


class TextClassifierLoss(nn.Module):
    """Cross-entropy of ``scale · cos(f, t_c)`` over the classes' text embeddings ``t``.

    ``forward(features, labels) -> scalar``; ``predict(features) -> class index``.
    """

    def __init__(self, num_classes: int, embed_dim: int):
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"the text classifier needs at least 2 classes, got {num_classes}")
        self.register_buffer("class_embeddings", torch.zeros(num_classes, embed_dim))
        self.register_buffer("scale", torch.tensor(0.0))

    def set_class_embeddings(self, text_embeddings: torch.Tensor, scale: float) -> None:
        """``text_embeddings``: (C, D) (normalised here); ``scale``: CLIP's ``exp(logit_scale)``."""
        if tuple(text_embeddings.shape) != tuple(self.class_embeddings.shape):
            raise ValueError(
                f"text embeddings of shape {tuple(text_embeddings.shape)}; "
                f"expected {tuple(self.class_embeddings.shape)}"
            )
        with torch.no_grad():
            self.class_embeddings.copy_(F.normalize(text_embeddings.float(), dim=-1))
            self.scale.fill_(float(scale))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        if float(self.scale) <= 0:
            raise RuntimeError("TextClassifierLoss: call set_class_embeddings before using it")
        return self.scale * F.normalize(features.float(), dim=-1) @ self.class_embeddings.t()

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(features), labels)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features).argmax(dim=1)


__all__ = ["TextClassifierLoss"]
