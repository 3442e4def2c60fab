"""The prompted CLIP model (sbir.models.clip_prompt) on a tiny random open_clip model."""

from __future__ import annotations

import sys

import pytest
import torch

from sbir.engine.checkpoint import read_weights, save_weights
from sbir.engine.inference import load_model
from sbir.engine.tasks import build_criterion, build_model, get_task, list_methods
from sbir.errors import CheckpointError, ConfigError
from tests.clip_fixtures import open_clip, tiny_clip, tiny_clip_cfg  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def cfg(tiny_clip):  # noqa: F811
    return tiny_clip_cfg(tiny_clip)


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_registry_resolves_the_method():
    spec = get_task("zeroshot", "clip-prompt")
    assert spec.model == "clip-prompt" and spec.split_policy == "unseen" and spec.loss_kind == "clip"
    assert get_task("zeroshot").model == "category"  # the default method is untouched
    assert "clip-prompt" in list_methods("zeroshot") and "clip-prompt" in list_methods("finegrained-zeroshot")
    with pytest.raises(ConfigError, match="no method 'nope'"):
        get_task("zeroshot", "nope")
    with pytest.raises(ConfigError, match="registered for task.*zeroshot"):
        get_task("finegrained", "clip-prompt")
    with pytest.raises(ConfigError, match="needs a method"):
        get_task("finegrained-zeroshot")


def test_shipped_config_names_the_method():
    from pathlib import Path

    from sbir.config import load_config
    from sbir.engine.tasks import task_spec

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "zeroshot_clip.yaml")
    assert task_spec(cfg).model == "clip-prompt" and cfg.model.clip_model == "ViT-B-32" and cfg.data.image_size == 224


def test_prompted_tokens_follow_clip(cfg):
    model = build_model(cfg).eval()
    v = model.clip.visual
    x = _images()
    # With no prompt tokens the path is exactly CLIP's own image tower.
    model.prompts_for = lambda domain: torch.zeros(0, v.conv1.out_channels)
    assert torch.allclose(model.encode_image(x, "sketch"), v(x), atol=1e-5)
    del model.prompts_for
    tokens = model.image_tokens(x, "sketch")
    n_patches = (32 // 8) ** 2
    assert tokens.shape == (4, 1 + 3 + n_patches, v.conv1.out_channels)
    assert torch.equal(tokens[:, 1:4], model.sketch_prompt.expand(4, -1, -1))
    zs, zp = model.embed(x, "sketch"), model.embed(x, "photo")
    assert zs.shape == (4, 32) and torch.allclose(zs.norm(dim=1), torch.ones(4))
    assert not torch.allclose(zs, zp)  # separate prompts per domain
    with pytest.raises(ConfigError, match="data.image_size=32"):
        model.embed(torch.zeros(1, 3, 64, 64), "sketch")


def test_one_step_trains_only_the_prompts(cfg):
    model = build_model(cfg)
    crit = build_criterion(cfg, 2, model.embed_dim)
    crit.set_class_embeddings(model.class_embeddings(["cat", "dog"]), model.logit_scale())
    frozen = {k: v.clone() for k, v in model.clip.state_dict().items()}
    prompts = [model.sketch_prompt.detach().clone(), model.photo_prompt.detach().clone()]
    groups = model.param_groups(lr=3e-4, backbone_lr_mult=0.1, weight_decay=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("prompts", 1e-4)]
    assert sum(p.numel() for g in groups for p in g["params"]) == 2 * 3 * 64
    opt = torch.optim.AdamW(groups)
    model.train()
    x, y = _images(4), torch.tensor([0, 0, 1, 1])
    zs, zp = model.embed(x, "sketch"), model.embed(_images(4, 1), "photo")
    loss, _ = crit({"sketch": zs, "photo": zp, "negative": zp.roll(2, 0), "labels": y})
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = model.clip.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # bit-identical towers
    assert not torch.equal(prompts[0], model.sketch_prompt) and not torch.equal(prompts[1], model.photo_prompt)
    assert all(not p.requires_grad for p in model.clip.parameters())


def test_unfrozen_layernorms_train_at_clip_lr(tiny_clip):  # noqa: F811
    model = build_model(tiny_clip_cfg(tiny_clip, clip_train_norms=True))
    groups = {g["name"]: g for g in model.param_groups(3e-4, 0.1, 1e-4)}
    assert groups["prompts"]["lr"] == 1e-4 and groups["clip"]["lr"] == 1e-6
    norms = {id(p) for m in model.clip.visual.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    assert {id(p) for p in groups["clip"]["params"]} == norms
    assert all(not p.requires_grad for p in model.clip.transformer.parameters())  # text tower frozen


def test_text_classifier_uses_the_class_names(cfg):
    model = build_model(cfg)
    names = ["alarm_clock", "cat"]
    assert model.class_prompts(names) == ["a photo of a alarm clock", "a photo of a cat"]
    tok = open_clip.get_tokenizer(model.clip_name)
    tokens = model.tokenize(model.class_prompts(names))
    cat_id = tok(["cat"])[0][1].item()  # [SOT, cat, EOT, ...]
    assert cat_id in tokens[1].tolist() and cat_id not in tokens[0].tolist()
    expected = model.clip.encode_text(tok(["a photo of a alarm clock", "a photo of a cat"]))
    emb = model.class_embeddings(names)
    assert torch.allclose(emb, torch.nn.functional.normalize(expected, dim=-1), atol=1e-6)
    assert not torch.allclose(emb[0], emb[1])


@pytest.mark.parametrize("train_norms", [False, True])
def test_checkpoint_holds_only_trained_parts_and_reloads_exactly(tiny_clip, tmp_path, train_norms):  # noqa: F811
    cfg = tiny_clip_cfg(tiny_clip, clip_train_norms=train_norms)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.sketch_prompt.add_(1.0)
        if train_norms:
            model.clip.visual.ln_post.weight.mul_(1.5)
    save_weights(model, tmp_path / "best.safetensors", cfg)
    tensors, _ = read_weights(tmp_path / "best.safetensors")
    expected = {"sketch_prompt", "photo_prompt"}
    if train_norms:
        expected |= {k for k in tensors if k.startswith("clip.visual.") and ("ln_" in k or ".ln_" in k)}
        assert "clip.visual.ln_post.weight" in tensors and "clip.visual.conv1.weight" not in tensors
    assert set(tensors) == expected
    reloaded, rcfg, model_id = load_model(tmp_path)
    assert rcfg.method == "clip-prompt" and model_id.startswith("clip-prompt:")
    x = _images()
    for domain in ("sketch", "photo"):
        assert torch.equal(model.embed(x, domain), reloaded.embed(x, domain))


def test_bad_clip_inputs_are_sbir_errors(tiny_clip, tmp_path, monkeypatch):  # noqa: F811
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(tiny_clip_cfg(tiny_clip, weights_path=str(tmp_path / "missing.pt")))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="model.weights_path"):
        build_model(tiny_clip_cfg(tiny_clip, weights_path=str(bad)))
    with pytest.raises(ConfigError, match="not an open_clip model"):
        build_model(tiny_clip_cfg(tiny_clip, clip_model="ViT-Nope"))
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ConfigError, match="pip install open_clip_torch"):
        build_model(tiny_clip_cfg(tiny_clip))
