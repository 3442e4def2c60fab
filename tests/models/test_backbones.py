"""Backbone registry and the offline EfficientNet-Lite0 ImageNet weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbir.config import ModelConfig
from sbir.errors import CheckpointError, ConfigError
from sbir.models import create_backbone
from sbir.models.efficientnet_lite import convert_efficientnet_pytorch_state_dict
from sbir.models.fgsbir import SBIRModel

# ImageNet classes 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat).
CAT_CLASSES = set(range(281, 286))


def test_pretrained_lite0_classifies_a_real_cat_photo():
    from skimage import data as skdata

    backbone = create_backbone("efficientnet_lite0", pretrained=True).eval()
    img = torch.tensor(skdata.chelsea()).permute(2, 0, 1).float() / 255.0
    img = torch.nn.functional.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True)
    mean = torch.tensor(backbone.mean)[:, None, None]
    std = torch.tensor(backbone.std)[:, None, None]
    with torch.no_grad():
        probs = backbone.model((img - mean) / std).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, f"top class {top} is not a cat"
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.8


def test_random_init_does_not_classify_the_cat():
    # Guards the test above: without the mapped weights the prediction is not a confident cat.
    from skimage import data as skdata

    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", pretrained=False).eval()
    img = torch.tensor(skdata.chelsea()).permute(2, 0, 1).float()[None] / 255.0
    img = torch.nn.functional.interpolate(img, size=(224, 224), mode="bilinear")
    with torch.no_grad():
        probs = backbone.model(img).softmax(-1)[0]
    assert float(probs[list(CAT_CLASSES)].sum()) < 0.5


def test_weight_mapping_rejects_shape_mismatch():
    tgt = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    src = {"_a.weight": torch.ones(2, 3), "_b.weight": torch.ones(5)}
    with pytest.raises(CheckpointError, match="does not fit"):
        convert_efficientnet_pytorch_state_dict(src, tgt)
    ok = convert_efficientnet_pytorch_state_dict({"_a.weight": torch.ones(2, 3), "_b.weight": torch.ones(4)}, tgt)
    assert set(ok) == {"a.weight", "b.weight"}


def test_any_timm_model_and_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    b = create_backbone("resnet18", pretrained=False)
    assert b.num_features == 512
    x = torch.randn(2, 3, 64, 64)
    assert b(x).shape == (2, 512)
    assert b.forward_features(x).ndim == 4
    # Round trip through a local weights file (how users without network load pretrained timm weights).
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in b.model.state_dict().items()}, str(path))
    b2 = create_backbone("resnet18", weights_path=path)
    with torch.no_grad():
        np.testing.assert_allclose(b.eval()(x).numpy(), b2.eval()(x).numpy(), atol=1e-5)
    bad = tmp_path / "bad.safetensors"
    save_file({"nope": torch.zeros(1)}, str(bad))
    with pytest.raises(CheckpointError, match="does not match"):
        create_backbone("resnet18", weights_path=bad)


def test_efficientnet_lite_from_a_local_weights_file(tmp_path):
    """A timm EfficientNet-Lite state dict, ImageNet classifier included or not, loads as model.weights_path."""
    from safetensors.torch import save_file

    b = create_backbone("efficientnet_lite0", pretrained=False)
    sd = {k: v.contiguous() for k, v in b.model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    for name, tensors in (("full", sd), ("headless", {k: v for k, v in sd.items() if not k.startswith("classifier.")})):
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        b2 = create_backbone("efficientnet_lite0", pretrained=False, weights_path=path)
        with torch.no_grad():
            np.testing.assert_allclose(b.eval()(x).numpy(), b2.eval()(x).numpy(), atol=1e-5)
    incomplete = tmp_path / "incomplete.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("conv_stem.")}, str(incomplete))
    with pytest.raises(CheckpointError, match="1 missing keys"):
        create_backbone("efficientnet_lite0", pretrained=False, weights_path=incomplete)


def test_unknown_backbone_is_config_error():
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_backbone("not_a_model_xyz")


@pytest.mark.parametrize("shared", [False, True])
def test_sbir_model_separate_or_shared_encoders(shared):
    cfg = ModelConfig(backbone="resnet18", pretrained=False, shared_encoder=shared, embed_dim=32)
    m = SBIRModel(cfg).eval()
    assert (m.sketch_encoder is m.photo_encoder) == shared
    x = torch.randn(3, 3, 64, 64)
    zs, zp = m.embed(x, "sketch"), m.embed(x, "photo")
    assert zs.shape == (3, 32)
    torch.testing.assert_close(zs.norm(dim=1), torch.ones(3))
    # Separate heads that start identical: same embedding before training, diverging after.
    torch.testing.assert_close(zs, zp)
    assert m.sketch_head.proj.weight is not m.photo_head.proj.weight
    with pytest.raises(ValueError, match="domain"):
        m.embed(x, "drawing")


def test_freeze_stages_freezes_the_first_blocks():
    cfg = ModelConfig(backbone="efficientnet_lite0", pretrained=False, freeze_stages=2, embed_dim=16)
    m = SBIRModel(cfg)
    stem = m.sketch_encoder.model.conv_stem.weight
    first_block = next(m.sketch_encoder.model.blocks[0].parameters())
    later = next(m.sketch_encoder.model.blocks[3].parameters())
    assert not stem.requires_grad and not first_block.requires_grad and later.requires_grad
