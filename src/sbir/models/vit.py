"""Vision Transformer backbones: every timm ``VisionTransformer`` (ViT, DeiT, AugReg, ...).

Any timm ViT name is a backbone (``vit_base_patch16_224``, ``vit_small_patch16_224``,
``deit_tiny_patch16_224``, ...): :func:`sbir.models.registry.create_backbone`
creates the timm model and :func:`wrap_vit` claims it by its class. On top of the
common backbone interface a :class:`ViTBackbone` has

* ``stages()``: ``[patch embedding (+ CLS / register tokens and position embedding), block 0, block 1, ...]``,
  so ``model.freeze_stages=N`` freezes the embedding and the first N-1 blocks,
* ``tokens(x)``: the patch tokens ``(B, N, D)`` after the final norm (prefix tokens dropped),
* ``attention_maps(x)``: every block's attention probabilities ``(B, heads, T, T)`` over all
  ``T`` tokens (prefix tokens first), for the mean attention distance of ``sbir report``,
* ``grid_size(x)``, ``patch_size``, ``num_prefix_tokens``: the 2-D patch grid.

ViTs are built with ``dynamic_img_size=True`` unless ``model.backbone_kwargs`` says
otherwise, so any ``data.image_size`` that is a multiple of the patch size works (the
position embedding is interpolated).

Weights come from the hub (``model.pretrained=true`` with a network) or offline from
``model.weights_path``: a ``.safetensors`` or ``.pth`` state dict in timm's key names,
or a big_vision / AugReg ``.npz`` (read by timm's ``_load_weights``). Either way keys
the model lacks or the file lacks are a :class:`~sbir.errors.CheckpointError` naming them.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from sbir.errors import CheckpointError
from sbir.models.registry import TimmBackbone, load_weights_file, register_backbone_wrapper

# timm modules whose models are VisionTransformer (sub)classes.
_VIT_MODULES = ("vision_transformer", "deit")
# npz keys that belong to the classifier (dropped: sbir backbones have no classifier).
_NPZ_HEAD_KEYS = ("head/", "pre_logits/")


@lru_cache(maxsize=1)
def _vit_names() -> frozenset[str]:
    import timm

    names: set[str] = set()
    for module in _VIT_MODULES:
        names.update(timm.list_models(module=module))
    return frozenset(names)


def _vit_kwarg_defaults(name: str, kwargs: dict) -> dict:
    if name.split(".")[0] in _vit_names():
        kwargs.setdefault("dynamic_img_size", True)
    return kwargs


class _EmbedStage(nn.Module):
    """The first stage of a ViT for freezing: patch embedding, prefix tokens, position embedding.

    Built on demand by :meth:`ViTBackbone.stages` and never registered as a child, so the
    parameters it lists are not duplicated in the backbone's state dict.
    """

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.extra = nn.ParameterList(
            [
                p
                for p in (getattr(vit, n, None) for n in ("cls_token", "reg_token", "dist_token", "pos_embed"))
                if isinstance(p, nn.Parameter)
            ]
        )


class ViTBackbone(TimmBackbone):
    """A timm VisionTransformer as an sbir backbone (see the module docstring)."""

    @property
    def num_prefix_tokens(self) -> int:
        return int(getattr(self.model, "num_prefix_tokens", 1))

    @property
    def patch_size(self) -> int:
        ps = self.model.patch_embed.patch_size
        return int(ps[0] if isinstance(ps, (tuple, list)) else ps)

    def grid_size(self, x: torch.Tensor) -> tuple[int, int]:
        """Rows and columns of the patch grid for input ``x`` (B, C, H, W)."""
        return int(x.shape[-2]) // self.patch_size, int(x.shape[-1]) // self.patch_size

    @property
    def token_dim(self) -> int:
        return int(self.model.embed_dim)

    def stages(self) -> list[nn.Module]:
        return [_EmbedStage(self.model), *list(self.model.blocks)]

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, ``(B, heads, T, T)`` each (T includes the prefix tokens).

        Recomputed from each block's attention input with its own ``qkv``, norms and scale, so fused
        (flash) attention kernels need not expose their weights.
        """
        inputs: list[torch.Tensor] = []
        hooks = [
            blk.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
            for blk in self.model.blocks
        ]
        try:
            self.model.forward_features(x)
        finally:
            for h in hooks:
                h.remove()
        maps = []
        for blk, inp in zip(self.model.blocks, inputs, strict=True):
            attn = blk.attn
            b, t, _ = inp.shape
            qkv = attn.qkv(inp).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
            maps.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        return maps


class _TrackedNpz:
    """An open npz archive that records which keys were read (to find unexpected ones)."""

    def __init__(self, npz):
        self._npz = npz
        self.files = npz.files
        self.read: set[str] = set()

    def __getitem__(self, key: str):
        self.read.add(key)
        return self._npz[key]

    def __contains__(self, key: str) -> bool:
        return key in self._npz.files

    def close(self) -> None:
        self._npz.close()


def load_npz_weights(model: nn.Module, path: str | Path) -> None:
    """Load a big_vision / AugReg ``.npz`` into a timm ViT with timm's loader, checking the keys.

    A key the model needs and the file lacks, or a parameter key of the file the model does not use
    (e.g. a deeper or wider network's block), is a :class:`CheckpointError`.
    """
    from timm.models import vision_transformer as vt

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist")
    tracked: list[_TrackedNpz] = []
    original = vt._load_npz_checkpoint

    def tracking_loader(*args, **kwargs):
        w = _TrackedNpz(original(*args, **kwargs))
        tracked.append(w)
        return w

    @contextlib.contextmanager
    def patched():
        vt._load_npz_checkpoint = tracking_loader
        try:
            yield
        finally:
            vt._load_npz_checkpoint = original

    try:
        with patched():
            vt._load_weights(model, str(p))
    except KeyError as exc:
        raise CheckpointError(
            f"weights file {p} does not match backbone: missing key {exc.args[0]!r} (a smaller or different "
            "network's checkpoint?)"
        ) from exc
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"weights file {p} does not fit this ViT: {exc}") from exc
    if not tracked:  # pragma: no cover - timm always opens the archive through the loader
        raise CheckpointError(f"weights file {p} was not read")
    w = tracked[0]
    prefixes = ("opt/target/", "params/img/", "params/")
    prefix = next((pre for pre in prefixes if any(f.startswith(pre + "embedding/") for f in w.files)), "")
    unexpected = sorted(
        f
        for f in w.files
        if f.startswith(prefix) and f not in w.read and not f[len(prefix) :].startswith(_NPZ_HEAD_KEYS)
    )
    w.close()
    if unexpected:
        raise CheckpointError(
            f"weights file {p} does not match backbone: {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}); is it a checkpoint of another ViT size or depth?"
        )


def wrap_vit(model: nn.Module, name: str, weights_path: str | Path | None) -> ViTBackbone | None:
    """Claim a timm ``VisionTransformer``; load ``weights_path`` (safetensors, pth or npz) when given."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        return None
    backbone = ViTBackbone(model, name)
    if weights_path is not None:
        if Path(weights_path).suffix.lower() == ".npz":
            load_npz_weights(model, weights_path)
        else:
            load_weights_file(model, weights_path)
    return backbone


register_backbone_wrapper(wrap_vit, _vit_kwarg_defaults)

__all__ = ["ViTBackbone", "load_npz_weights", "wrap_vit"]
