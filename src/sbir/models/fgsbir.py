"""Fine-grained SBIR model: sketch and photo encoders with projection heads (EffNet/ARNet).

By default the sketch and photo branches are separate networks (ARNet's double
siamese design); ``shared_encoder=True`` ties the backbone while keeping one
projection head per domain. ``embed(x, domain)`` returns L2-normalised
embeddings, so cosine similarity is a dot product.

With ``model.rerank`` the model also holds ``reranker``
(:class:`sbir.models.rerank.TokenReranker`), which scores (sketch, photo) pairs
from the encoders' token sequences (``embed_with_tokens``); it is saved and
restored with the rest of the weights.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import ModelConfig
from sbir.models.content_crop import ContentCrop
from sbir.models.factory import register_model
from sbir.models.grid_features import ConcatFeatures, GridFeatures
from sbir.models.heads import ProjectionHead
from sbir.models.registry import create_backbone
from sbir.models.rerank import TokenReranker

DOMAINS = ("sketch", "photo")


class SBIRModel(nn.Module):
    def __init__(self, cfg: ModelConfig, pretrained: bool | None = None):
        super().__init__()
        self.cfg = cfg
        use_pretrained = cfg.pretrained if pretrained is None else pretrained
        sketch_backbone = create_backbone(
            cfg.backbone, pretrained=use_pretrained, weights_path=cfg.weights_path, **cfg.backbone_kwargs
        )
        if cfg.feature_level is not None:
            sketch_backbone = GridFeatures(sketch_backbone, cfg.feature_level, cfg.pool_grid)
        if cfg.extra_backbones:
            extras = [
                GridFeatures(
                    create_backbone(name, pretrained=use_pretrained, **cfg.backbone_kwargs),
                    cfg.feature_level,
                    cfg.pool_grid,
                )
                for name in cfg.extra_backbones
            ]
            sketch_backbone = ConcatFeatures([sketch_backbone, *extras])
        self.sketch_encoder = sketch_backbone
        # A deep copy keeps both branches initialised from the same weights without loading twice.
        self.photo_encoder = sketch_backbone if cfg.shared_encoder else copy.deepcopy(sketch_backbone)
        nf = sketch_backbone.num_features
        self.sketch_head = ProjectionHead(nf, cfg.embed_dim, cfg.head, cfg.dropout)
        # Both heads start as the same random projection, so before training sketches and photos
        # land in one space (as good as the ImageNet features), not in two unrelated ones.
        self.photo_head = copy.deepcopy(self.sketch_head)
        self.mean = tuple(sketch_backbone.mean)
        self.std = tuple(sketch_backbone.std)
        # model.content_crop: every path into the encoders (features, embed, tokens) crops first.
        self.content_crop = (
            nn.Identity() if cfg.content_crop is None else ContentCrop(cfg.content_crop, self.mean, self.std)
        )
        self.embed_dim = cfg.embed_dim
        self.reranker: TokenReranker | None = None
        self.rerank_top_k = int(cfg.rerank_top_k)
        if cfg.rerank:
            td = int(getattr(sketch_backbone, "token_dim", nf))
            self.reranker = TokenReranker(td, td, dim=cfg.rerank_dim, heads=cfg.rerank_heads)
        if cfg.freeze_stages > 0:
            self.freeze_stages(cfg.freeze_stages)

    def freeze_stages(self, n: int) -> None:
        for enc in {id(self.sketch_encoder): self.sketch_encoder, id(self.photo_encoder): self.photo_encoder}.values():
            stages = enc.stages() if hasattr(enc, "stages") else []
            for stage in stages[:n]:
                for p in stage.parameters():
                    p.requires_grad_(False)

    def encoder(self, domain: str) -> nn.Module:
        if domain == "sketch":
            return self.sketch_encoder
        if domain == "photo":
            return self.photo_encoder
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")

    def features(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Pooled backbone features of ``domain``'s encoder, before the head (as the category model's)."""
        return self.encoder(domain)(self.content_crop(x))

    def backbone_encoders(self) -> dict[str, nn.Module]:
        """The backbones ``model.init_from`` loads, by state-dict prefix (one shared module when tied)."""
        return {"sketch_encoder": self.sketch_encoder, "photo_encoder": self.photo_encoder}

    def head(self, domain: str) -> nn.Module:
        return self.sketch_head if domain == "sketch" else self.photo_head

    def embed(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.head(domain)(self.features(x, domain))

    def embed_with_tokens(self, x: torch.Tensor, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding (B, embed_dim), tokens (B, N, D))`` from one forward pass of ``domain``'s encoder."""
        pooled, tokens = self.encoder(domain).forward_with_tokens(self.content_crop(x))
        return self.head(domain)(pooled), tokens

    def tokens(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.encoder(domain).tokens(self.content_crop(x))

    @torch.no_grad()
    def hubness_statistics(self) -> np.ndarray | None:
        """``(N, embed)`` float32 embeddings of the training sketches, as ``embed`` gives them, when the
        sketch head is a fitted ridge head (:meth:`sbir.models.heads.CentredMap.fitted_outputs`), else None.
        They are the statistics set of ``eval.hubness`` and of an index built from the model, so a run
        corrects hubness the same way without its training images (another machine, an exported pack)."""
        proj = getattr(self.sketch_head, "proj", None)
        outputs = proj.fitted_outputs() if hasattr(proj, "fitted_outputs") else None
        if outputs is None:
            return None
        return F.normalize(outputs.float(), dim=-1).cpu().numpy()

    def embed_sketch(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x, "sketch")

    def embed_photo(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x, "photo")

    def param_groups(self, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
        """Backbone parameters at ``lr * backbone_lr_mult``, heads at ``lr``."""
        seen: set[int] = set()
        backbone, heads = [], []
        for module, bucket in (
            (self.sketch_encoder, backbone),
            (self.photo_encoder, backbone),
            (self.sketch_head, heads),
            (self.photo_head, heads),
            (self.reranker if self.reranker is not None else nn.Identity(), heads),
        ):
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    bucket.append(p)
        return [
            {"params": backbone, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay, "name": "backbone"},
            {"params": heads, "lr": lr, "weight_decay": weight_decay, "name": "heads"},
        ]


@register_model("fgsbir")
def build_model(cfg: ModelConfig, pretrained: bool | None = None) -> SBIRModel:
    # channels_last makes the depthwise convolutions of EfficientNet several times faster on CPU.
    return SBIRModel(cfg, pretrained=pretrained).to(memory_format=torch.channels_last)
