"""Category-level / zero-shot SBIR model: one shared, domain-aware encoder (SBIR-DASE-MEMS).

Sketches and photos go through the *same* backbone and projection head; the
DASE blocks (:mod:`sbir.models.dase`) receive the domain of every sample and let
the shared network behave differently for each. The classifier (MEMS class
centres or CosFace weights) lives in the loss module, not here.

``normalize`` decides the output space: MEMS is a euclidean-distance loss and
uses the raw projection (``normalize=False``, test with euclidean distance);
CosFace works on the unit sphere (``normalize=True``, cosine/angular distance).
The interface matches :class:`sbir.models.fgsbir.SBIRModel`: ``embed(x, domain)``,
``embed_sketch``, ``embed_photo``, ``mean``, ``std``, ``embed_dim``,
``param_groups``. ``domain`` is ``"sketch"``/``"photo"`` or a (B,) tensor of
ids (0 = sketch, 1 = photo) for a mixed batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import ModelConfig
from sbir.models.dase import DomainAwareSE, DomainLike, dase_modules, domain_context, insert_dase
from sbir.models.factory import register_model
from sbir.models.grid_features import ConcatFeatures
from sbir.models.heads import DomainCentredMaps, ProjectionHead
from sbir.models.registry import create_backbone


class CategorySBIRModel(nn.Module):
    """Shared backbone (+ DASE) -> projection head -> optional L2 normalisation.

    Args:
        cfg: model config (``backbone``, ``pretrained``, ``weights_path``,
            ``embed_dim``, ``head``, ``dropout``, ``freeze_stages``;
            ``shared_encoder`` is ignored: the encoder is always shared).
        num_classes: number of training classes (recorded for checkpoints; the
            classifier itself belongs to the loss).
        dase: insert domain-aware SE blocks (see :func:`sbir.models.dase.insert_dase`).
        pretrained: overrides ``cfg.pretrained`` when not None.
        normalize: L2-normalise embeddings (CosFace / cosine) or not (MEMS / euclidean).
        dase_where: DASE placement, ``"auto"``, ``"se"`` or ``"stages"``.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_classes: int,
        dase: bool = True,
        pretrained: bool | None = None,
        normalize: bool = False,
        dase_where: str = "auto",
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"category-level training needs at least 2 classes, got {num_classes}")
        self.cfg = cfg
        self.num_classes = int(num_classes)
        self.normalize = bool(normalize)
        use_pretrained = cfg.pretrained if pretrained is None else pretrained
        self.backbone = create_backbone(
            cfg.backbone, pretrained=use_pretrained, weights_path=cfg.weights_path, **cfg.backbone_kwargs
        )
        if cfg.extra_backbones:  # an ensemble in one embedding: the backbones' pooled features, concatenated
            extras = [
                create_backbone(name, pretrained=use_pretrained, **cfg.backbone_kwargs) for name in cfg.extra_backbones
            ]
            self.backbone = ConcatFeatures([self.backbone, *extras])
        self.dase_blocks = insert_dase(self.backbone, where=dase_where) if dase else []
        nf = self.backbone.num_features
        if cfg.head == "ridge":  # fitted in closed form by the task; cosine, like the fine-grained ridge head
            self.head = DomainCentredMaps(nf)
            self.normalize = True
        else:
            self.head = ProjectionHead(nf, cfg.embed_dim, cfg.head, cfg.dropout)
        self.embed_dim = nf if cfg.head in ("identity", "ridge") else cfg.embed_dim
        self.mean = tuple(self.backbone.mean)
        self.std = tuple(self.backbone.std)
        if cfg.freeze_stages > 0:
            self.freeze_stages(cfg.freeze_stages)

    # ------------------------------------------------------------ parameters

    def _new_dase_params(self) -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        for m in dase_modules(self.backbone):
            out.extend(m.new_parameters())
        return out

    def freeze_stages(self, n: int) -> None:
        """Freeze the pretrained weights of the first ``n`` stages; new DASE parameters stay trainable."""
        stages = self.backbone.stages() if hasattr(self.backbone, "stages") else []
        for stage in stages[:n]:
            for p in stage.parameters():
                p.requires_grad_(False)
        for p in self._new_dase_params():
            p.requires_grad_(True)

    def param_groups(self, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
        """Pretrained backbone weights at ``lr * backbone_lr_mult``; new DASE weights and the head at ``lr``.

        Empty groups are left out.
        """
        new_ids = {id(p) for p in self._new_dase_params()}
        backbone, new, heads = [], [], []
        seen: set[int] = set()
        for p in self.backbone.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (new if id(p) in new_ids else backbone).append(p)
        for p in self.head.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                heads.append(p)
        groups = [
            {"params": backbone, "lr": lr * backbone_lr_mult, "weight_decay": weight_decay, "name": "backbone"},
            {"params": new, "lr": lr, "weight_decay": weight_decay, "name": "dase"},
            {"params": heads, "lr": lr, "weight_decay": weight_decay, "name": "heads"},
        ]
        return [g for g in groups if g["params"]]

    def backbone_encoders(self) -> dict[str, nn.Module]:
        """The backbone ``model.init_from`` loads, by state-dict prefix (DASE parameters included)."""
        return {"backbone": self.backbone}

    # ------------------------------------------------------------ forward

    def project(self, feats: torch.Tensor, domain: DomainLike) -> torch.Tensor:
        """Pooled backbone features -> embedding (normalised when ``self.normalize``). Only the ridge head
        (one centred map per domain) reads ``domain``; the others are shared."""
        if isinstance(self.head, DomainCentredMaps):
            z = self.head(feats, domain)
        else:
            z = self.head.proj(self.head.dropout(feats))
        return F.normalize(z, dim=-1) if self.normalize else z

    def features(self, x: torch.Tensor, domain: DomainLike) -> torch.Tensor:
        """Pooled backbone features, the DASE blocks told each sample's domain."""
        if not self.dase_blocks:
            return self.backbone(x)
        with domain_context(self.backbone, domain, batch_size=x.shape[0]):
            return self.backbone(x)

    def imagenet_logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features -> the backbone's own ImageNet classifier's logits (loss.weight_distill)."""
        return self.backbone.classify(feats)

    def embed(self, x: torch.Tensor, domain: DomainLike) -> torch.Tensor:
        return self.project(self.features(x, domain), domain)

    def embed_sketch(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x, "sketch")

    def embed_photo(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x, "photo")

    def forward(self, x: torch.Tensor, domain: DomainLike) -> torch.Tensor:
        return self.embed(x, domain)


@register_model("category")
def build_category_model(
    cfg: ModelConfig, pretrained: bool | None = None, num_classes: int | None = None, normalize: bool = False
) -> CategorySBIRModel:
    """The shared domain-aware model; ``normalize``: L2-normalised embeddings (CosFace) or raw ones (MEMS).

    ``num_classes`` is only recorded (the classifier lives in the loss); unset until training counts them.
    """
    model = CategorySBIRModel(
        cfg, num_classes or 2, dase=cfg.dase, pretrained=pretrained, normalize=normalize, dase_where=cfg.dase_where
    )
    # channels_last makes EfficientNet's depthwise convolutions several times faster on CPU.
    return model.to(memory_format=torch.channels_last)


__all__ = ["CategorySBIRModel", "DomainAwareSE", "build_category_model"]
