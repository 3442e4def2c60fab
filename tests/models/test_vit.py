"""ViT backbones: any timm VisionTransformer, stage split, patch tokens, local weights (safetensors, pth, npz)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sbir.config import ModelConfig
from sbir.errors import CheckpointError
from sbir.models import create_backbone
from sbir.models.fgsbir import SBIRModel
from sbir.models.vit import ViTBackbone

TINY = dict(depth=2, img_size=32)  # vit_tiny_patch16_224 with 2 blocks: 192-d, 3 heads


def _tiny(depth: int = 2, **kw):
    torch.manual_seed(depth)
    return create_backbone("vit_tiny_patch16_224", pretrained=False, depth=depth, img_size=32, **kw).eval()


def test_any_timm_vit_name_is_a_vit_backbone():
    for name in ("vit_tiny_patch16_224", "deit_tiny_patch16_224"):
        b = create_backbone(name, pretrained=False, depth=1)
        assert isinstance(b, ViTBackbone) and b.num_features == 192 and b.patch_size == 16
    # A CNN is not claimed by the ViT family.
    assert not isinstance(create_backbone("resnet18", pretrained=False), ViTBackbone)


def test_stages_are_embedding_then_blocks_and_freeze_as_such():
    b = _tiny(depth=3)
    stages = b.stages()
    assert len(stages) == 4
    first = {id(p) for p in stages[0].parameters()}
    for p in (b.model.cls_token, b.model.pos_embed, b.model.patch_embed.proj.weight):
        assert id(p) in first
    assert {id(p) for p in stages[2].parameters()} == {id(p) for p in b.model.blocks[1].parameters()}
    # The stage wrapper must not add keys to the backbone's state dict.
    assert not any(k.startswith("extra") for k in b.state_dict())

    model = SBIRModel(
        ModelConfig(
            backbone="vit_tiny_patch16_224",
            pretrained=False,
            freeze_stages=2,
            backbone_kwargs=dict(depth=3, img_size=32),
        )
    )
    enc = model.sketch_encoder.model
    assert not enc.patch_embed.proj.weight.requires_grad and not enc.cls_token.requires_grad
    assert not enc.pos_embed.requires_grad
    assert not any(p.requires_grad for p in enc.blocks[0].parameters())
    assert all(p.requires_grad for p in enc.blocks[1].parameters())
    assert enc.norm.weight.requires_grad


def test_tokens_are_the_patch_tokens_beside_the_pooled_feature():
    b = _tiny()
    x = torch.randn(2, 3, 64, 48)  # dynamic image size: 4 x 3 patches
    with torch.no_grad():
        pooled, tokens = b.forward_with_tokens(x)
        feats = b.forward_features(x)
        assert tokens.shape == (2, 12, 192)
        assert torch.equal(tokens, feats[:, 1:])  # CLS dropped
        assert torch.allclose(pooled, b(x)) and torch.allclose(pooled, feats[:, 0])  # CLS pooling
        assert torch.equal(b.tokens(x), tokens)
    assert b.grid_size(x) == (4, 3)


def test_attention_maps_match_timm_attention():
    b = _tiny()
    x = torch.randn(1, 3, 32, 32)
    maps = b.attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (1, 3, 5, 5)
    assert torch.allclose(maps[0].sum(-1), torch.ones(1, 3, 5))
    # Block 0's output recomputed from these probabilities equals timm's (fused) attention output.
    blk = b.model.blocks[0]
    with torch.no_grad():
        inp = blk.norm1(b.model._pos_embed(b.model.patch_embed(x)))
        v = blk.attn.qkv(inp).reshape(1, 5, 3, 3, 64).permute(2, 0, 3, 1, 4)[2]
        mine = blk.attn.proj((maps[0] @ v).transpose(1, 2).reshape(1, 5, 192))
        assert torch.allclose(mine, blk.attn(inp), atol=1e-5)


def test_cnn_tokens_are_the_last_feature_map_positions():
    b = create_backbone("efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        pooled, tokens = b.forward_with_tokens(x)
        fmap = b.forward_features(x)
    assert fmap.shape == (2, 1280, 4, 4) and tokens.shape == (2, 16, 1280)
    assert torch.equal(tokens[:, 5], fmap[:, :, 1, 1])  # row-major positions
    assert torch.allclose(pooled, tokens.mean(1), atol=1e-5)  # average pooling of those positions


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_loads_and_mismatches_are_named(tmp_path, suffix):
    def write(state, name):
        path = tmp_path / (name + suffix)
        state = {k: v.contiguous() for k, v in state.items()}
        save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
        return path

    src = _tiny(depth=2)
    good = write(src.model.state_dict(), "good")
    loaded = create_backbone("vit_tiny_patch16_224", pretrained=True, weights_path=good, **TINY)
    for k, v in src.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k

    deeper = write(_tiny(depth=3).model.state_dict(), "deeper")  # block 2 is unexpected
    with pytest.raises(CheckpointError, match=r"0 missing keys .* 12 unexpected \(e\.g\. \['blocks\.2\."):
        create_backbone("vit_tiny_patch16_224", weights_path=deeper, **TINY)
    shallow = write(_tiny(depth=1).model.state_dict(), "shallow")  # block 1 is missing
    with pytest.raises(CheckpointError, match=r"12 missing keys \(e\.g\. \['blocks\.1\."):
        create_backbone("vit_tiny_patch16_224", weights_path=shallow, **TINY)


def _to_augreg_npz(vit, path):
    """Write a timm ViT in the AugReg / big_vision ``.npz`` layout that timm's ``_load_weights`` reads."""
    sd = {k: v.detach().numpy() for k, v in vit.state_dict().items()}
    d = vit.embed_dim
    h = vit.blocks[0].attn.num_heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    for i in range(len(vit.blocks)):
        p, mha = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        qkv_w, qkv_b = np.split(sd[f"blocks.{i}.attn.qkv.weight"], 3), np.split(sd[f"blocks.{i}.attn.qkv.bias"], 3)
        for n, wt, bs in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
            w[mha + n + "/kernel"] = wt.T.reshape(d, h, d // h)
            w[mha + n + "/bias"] = bs.reshape(h, d // h)
        w[mha + "out/kernel"] = sd[f"blocks.{i}.attn.proj.weight"].reshape(d, h, d // h).transpose(1, 2, 0)
        w[mha + "out/bias"] = sd[f"blocks.{i}.attn.proj.bias"]
        for ln, t in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            w[p + ln + "/scale"], w[p + ln + "/bias"] = sd[f"blocks.{i}.{t}.weight"], sd[f"blocks.{i}.{t}.bias"]
        for r in range(2):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = sd[f"blocks.{i}.mlp.fc{r + 1}.weight"].T
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = sd[f"blocks.{i}.mlp.fc{r + 1}.bias"]
    w["head/kernel"] = np.zeros((d, 10), np.float32)  # a classifier is not "unexpected": sbir drops it
    w["head/bias"] = np.zeros(10, np.float32)
    np.savez(path, **w)
    return path


def test_npz_weights_load_and_mismatches_are_named(tmp_path):
    src = _tiny(depth=2)
    path = _to_augreg_npz(src.model, tmp_path / "augreg.npz")
    loaded = create_backbone("vit_tiny_patch16_224", weights_path=path, **TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), src(x), atol=1e-5)

    with pytest.raises(CheckpointError, match=r"missing key 'Transformer/encoderblock_2/"):
        create_backbone("vit_tiny_patch16_224", weights_path=path, depth=3, img_size=32)
    with pytest.raises(CheckpointError, match=r"unexpected keys .*encoderblock_1/"):
        create_backbone("vit_tiny_patch16_224", weights_path=path, depth=1, img_size=32)


def test_bad_new_options_are_one_line_errors(tmp_path, capsys):
    from sbir.cli import main
    from sbir.config import load_config
    from sbir.errors import ConfigError

    with pytest.raises(ConfigError, match="optim.name must be 'adamw' or 'adam'"):
        load_config(None, ["optim.name=sgd"])
    with pytest.raises(ConfigError, match="model.backbone_kwargs must be a mapping"):
        load_config(None, ["model.backbone_kwargs=12"])
    with pytest.raises(ConfigError, match="model.rerank is for fine-grained runs"):
        load_config(None, ["task=category", "model.rerank=true"])
    with pytest.raises(ConfigError, match="divisible by model.rerank_heads"):
        load_config(None, ["model.rerank_dim=30", "model.rerank_heads=4"])
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a run folder" in err[0]
