"""The sketch-domain pretraining model: one encoder and a linear classifier over sketch classes.

Sketch-a-Net-style pretraining (:mod:`sbir.engine.pretrain`) teaches a backbone
what sketches and photo edge maps look like by classifying them, before the
fine-grained stage starts from it (``model.init_from``). The encoder is built
exactly as the fine-grained model builds each of its branches
(:func:`sbir.models.registry.create_backbone` from the same ``ModelConfig``), so its
state dict loads into ``sketch_encoder`` and ``photo_encoder`` one to one. The
classifier is part of the model (its checkpoint is self-contained) and is left
behind by ``model.init_from``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import ModelConfig
from sbir.models.factory import register_model
from sbir.models.registry import create_backbone


class SketchClassifier(nn.Module):
    """``encoder`` (pooled backbone features) -> dropout -> ``classifier`` (Linear to ``num_classes``)."""

    def __init__(self, cfg: ModelConfig, num_classes: int, pretrained: bool | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"classification needs at least 2 classes, got {num_classes}")
        self.cfg = cfg
        self.num_classes = int(num_classes)
        use_pretrained = cfg.pretrained if pretrained is None else pretrained
        self.encoder = create_backbone(
            cfg.backbone, pretrained=use_pretrained, weights_path=cfg.weights_path, **cfg.backbone_kwargs
        )
        nf = self.encoder.num_features
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(nf, self.num_classes)
        self.embed_dim = nf
        self.mean = tuple(self.encoder.mean)
        self.std = tuple(self.encoder.std)
        if cfg.freeze_stages > 0:
            for stage in (self.encoder.stages() if hasattr(self.encoder, "stages") else [])[: cfg.freeze_stages]:
                for p in stage.parameters():
                    p.requires_grad_(False)

    def backbone_encoders(self) -> dict[str, nn.Module]:
        """The backbones ``model.init_from`` transfers, by state-dict prefix."""
        return {"encoder": self.encoder}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.encoder(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def embed(self, x: torch.Tensor, domain=None) -> torch.Tensor:
        """L2-normalised pooled features (one encoder for every domain)."""
        return F.normalize(self.encoder(x), dim=-1)

    def embed_sketch(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def embed_photo(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def param_groups(self, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
        """The encoder at ``lr * backbone_lr_mult``, the new classifier at ``lr``."""
        backbone = [p for p in self.encoder.parameters() if p.requires_grad]
        heads = [p for p in self.classifier.parameters() if p.requires_grad]
        return [
            {"params": backbone, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay, "name": "backbone"},
            {"params": heads, "lr": lr, "weight_decay": weight_decay, "name": "heads"},
        ]


@register_model("sketch_classifier")
def build_sketch_classifier(
    cfg: ModelConfig, pretrained: bool | None = None, num_classes: int | None = None
) -> SketchClassifier:
    """``num_classes`` comes from ``cfg.model.num_classes`` (set by the pretrain task when it counts them)."""
    model = SketchClassifier(cfg, num_classes or 2, pretrained=pretrained)
    # channels_last makes EfficientNet's depthwise convolutions several times faster on CPU.
    return model.to(memory_format=torch.channels_last)


__all__ = ["SketchClassifier", "build_sketch_classifier"]
