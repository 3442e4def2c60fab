"""Mid-level grid features (model.feature_level, model.pool_grid): pruning, pooling layout, checkpoints."""

from __future__ import annotations

import pytest
import torch

from sbir.config import ModelConfig, TrainConfig
from sbir.engine.checkpoint import save_weights
from sbir.engine.inference import load_model
from sbir.errors import ConfigError
from sbir.models import create_backbone
from sbir.models.fgsbir import SBIRModel
from sbir.models.grid_features import ConcatFeatures, GridFeatures


def _lite0() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("efficientnet_lite0", pretrained=False)


def test_cut_after_block_4_prunes_later_layers_and_gives_the_stride_16_map():
    grid = GridFeatures(_lite0(), level=3, grid=4)
    keys = list(grid.state_dict())
    assert not any(k.startswith(("backbone.model.conv_head", "backbone.model.blocks.5")) for k in keys)
    assert len(grid.model.blocks) == 5  # blocks 0..4 kept, 5 and 6 dropped
    with torch.no_grad():
        feats = grid.forward_features(torch.randn(2, 3, 128, 128))
        emb = grid(torch.randn(2, 3, 128, 128))
    assert feats.shape == (2, 112, 8, 8)  # block 4 of EfficientNet-Lite0: 112 channels at stride 16
    assert grid.num_features == 112 * 16 and emb.shape == (2, 112 * 16)


def test_grid_pooling_keeps_where_a_feature_is():
    grid = GridFeatures(_lite0(), level=3, grid=2)
    feats = torch.zeros(1, 112, 8, 8)
    feats[0, 5, :4, 4:] = 2.0  # channel 5, top-right quadrant
    feats[0, 7, 4:, :4] = 1.0  # channel 7, bottom-left quadrant, half of it
    feats[0, 7, 4:, 2:4] = 0.0
    out = grid.forward_head(feats).view(2, 2, 112)  # cells row-major, a cell's channels together
    expected = torch.zeros(2, 2, 112)
    expected[0, 1, 5] = 2.0  # hand-computed cell means: 16 of 16 positions at 2.0
    expected[1, 0, 7] = 0.5  # 8 of 16 positions at 1.0
    assert torch.allclose(out, expected)
    # A mirrored map moves the feature to the mirrored cell; global pooling (grid 1) could not tell.
    mirrored = grid.forward_head(feats.flip(-1)).view(2, 2, 112)
    assert mirrored[0, 0, 5] == 2.0 and mirrored[0, 1, 5] == 0.0
    glob = GridFeatures(_lite0(), level=3, grid=1)
    assert torch.allclose(glob.forward_head(feats), glob.forward_head(feats.flip(-1)))


def test_level_out_of_range_is_one_config_error():
    with pytest.raises(ConfigError, match=r"model.feature_level must be in 0..4 .*got 5"):
        GridFeatures(_lite0(), level=5, grid=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pool_grid": 4}, "model.pool_grid needs model.feature_level"),
        ({"feature_level": -1}, "model.feature_level must be >= 0"),
        ({"feature_level": 3, "pool_grid": 0}, "model.pool_grid must be >= 1"),
    ],
)
def test_config_rejects_bad_grid_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs).validate()


def test_fine_grained_model_with_grid_features_round_trips_a_checkpoint(tmp_path):
    cfg = TrainConfig(
        task="finegrained",
        model=ModelConfig(pretrained=False, shared_encoder=True, feature_level=3, pool_grid=4, embed_dim=32),
    )
    cfg.data.image_size = 64
    torch.manual_seed(0)
    model = SBIRModel(cfg.model).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        before = model.embed(x, "sketch")
    assert before.shape == (3, 32)
    assert torch.allclose(before.norm(dim=1), torch.ones(3), atol=1e-5)
    save_weights(model, tmp_path / "m.safetensors", cfg)
    loaded, loaded_cfg, _ = load_model(tmp_path / "m.safetensors")
    assert loaded_cfg.model.feature_level == 3 and loaded_cfg.model.pool_grid == 4
    with torch.no_grad():
        after = loaded.eval().embed(x, "sketch")
    assert torch.allclose(before, after, atol=1e-5)


def test_freezing_counts_the_stages_that_remain():
    model = SBIRModel(ModelConfig(pretrained=False, shared_encoder=True, feature_level=3, pool_grid=4, freeze_stages=4))
    stages = model.sketch_encoder.stages()
    assert len(stages) == 6  # stem + blocks 0..4
    assert not any(p.requires_grad for s in stages[:4] for p in s.parameters())
    assert all(p.requires_grad for s in stages[4:] for p in s.parameters())


def test_equal_cells_match_adaptive_pooling_and_uneven_maps_still_pool():
    grid = GridFeatures(_lite0(), level=3, grid=4)
    feats = torch.randn(2, 112, 8, 8)
    ref = torch.nn.functional.adaptive_avg_pool2d(feats, 4).permute(0, 2, 3, 1).flatten(1)
    assert torch.allclose(grid.forward_head(feats), ref, atol=1e-6)
    assert grid.forward_head(torch.randn(2, 112, 7, 9)).shape == (2, 112 * 16)  # 112 px input: 7 x 7 maps


def test_other_tasks_refuse_grid_settings():
    from sbir.engine.tasks import check_config

    cfg = TrainConfig(task="category", model=ModelConfig(feature_level=3, pool_grid=4))
    with pytest.raises(ConfigError, match="model.feature_level is for fine-grained runs; remove it for task category"):
        check_config(cfg)
    check_config(TrainConfig(task="finegrained", model=ModelConfig(feature_level=3, pool_grid=4)))


def _concat_model(**kw) -> SBIRModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        pretrained=False,
        shared_encoder=True,
        feature_level=3,
        pool_grid=2,
        head="identity",
        extra_backbones=["efficientnet_lite1"],
        **kw,
    )
    cfg.validate()
    return SBIRModel(cfg).eval()


def test_extra_backbones_concatenate_each_backbones_grid_in_order(tmp_path):
    model = _concat_model()
    enc = model.encoder("sketch")
    assert isinstance(enc, ConcatFeatures) and enc.name == "efficientnet_lite0+efficientnet_lite1"
    lite0, lite1 = enc.members
    assert (lite0.channels, lite1.channels) == (112, 112)  # block 4 of Lite0 and of Lite1
    assert enc.num_features == (112 + 112) * 4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
        assert torch.equal(out, torch.cat([lite0(x), lite1(x)], dim=1))
        emb = model.embed(x, "photo")
    assert emb.shape == (2, 896)
    # Saved and loaded as one model: the config rebuilds both backbones.
    cfg = TrainConfig(task="finegrained", model=model.cfg)
    cfg.data.image_size = 64
    save_weights(model, tmp_path / "m.safetensors", cfg)
    loaded, loaded_cfg, _ = load_model(tmp_path / "m.safetensors")
    assert loaded_cfg.model.extra_backbones == ["efficientnet_lite1"]
    with torch.no_grad():
        assert torch.allclose(loaded.eval().embed(x, "photo"), emb, atol=1e-5)


def test_extra_backbones_freeze_the_first_stages_of_every_backbone():
    model = _concat_model(freeze_stages=3)
    stages = model.sketch_encoder.stages()
    assert len(stages) == 6 and all(len(group) == 2 for group in stages)  # stem + blocks 0..4 of each
    assert not any(p.requires_grad for s in stages[:3] for p in s.parameters())
    assert all(p.requires_grad for s in stages[3:] for p in s.parameters())


def test_extra_backbones_must_share_the_input_normalisation():
    a = GridFeatures(_lite0(), level=3, grid=2)
    b = GridFeatures(create_backbone("efficientnet_lite1", pretrained=False), level=3, grid=2)
    b.mean = (0.485, 0.456, 0.406)
    with pytest.raises(ConfigError, match="efficientnet_lite1 normalises its input with mean"):
        ConcatFeatures([a, b])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"extra_backbones": ["efficientnet_lite1"], "feature_level": 3, "rerank": True},
            "cannot be combined with model.rerank",
        ),
        (
            {"extra_backbones": ["efficientnet_lite1"], "feature_level": 3, "weights_path": "w.pth"},
            "cannot be combined with model.rerank or model.weights_path",
        ),
        ({"extra_backbones": ["efficientnet_lite0"], "feature_level": 3}, "repeats a backbone"),
    ],
)
def test_config_rejects_bad_extra_backbones(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs).validate()


def test_fine_grained_extra_backbones_need_a_feature_level():
    from sbir.engine.tasks import check_config

    model = ModelConfig(extra_backbones=["efficientnet_lite1"])
    model.validate()  # the model section alone is fine: a category run pools the backbones globally
    with pytest.raises(ConfigError, match="set model.feature_level"):
        check_config(TrainConfig(task="finegrained", model=model))
    check_config(
        TrainConfig(task="finegrained", model=ModelConfig(extra_backbones=["efficientnet_lite1"], feature_level=3))
    )


@pytest.mark.parametrize(
    ("task", "method"), [("pretrain", None), ("category", "clip-prompt"), ("zeroshot", "clip-prompt")]
)
def test_other_tasks_refuse_extra_backbones(task, method):
    from sbir.engine.tasks import check_config

    cfg = TrainConfig(task=task, method=method, model=ModelConfig(extra_backbones=["efficientnet_lite1"], dase=False))
    with pytest.raises(ConfigError, match="is for fine-grained and category runs"):
        check_config(cfg)


@pytest.mark.parametrize("task", ["category", "zeroshot"])
def test_category_extra_backbones_refuse_dase_and_distillation(task):
    from sbir.config import LossConfig
    from sbir.engine.tasks import check_config

    extra = ["efficientnet_lite1"]
    with pytest.raises(ConfigError, match="cannot take DASE blocks"):
        check_config(TrainConfig(task=task, model=ModelConfig(extra_backbones=extra)))  # model.dase defaults to true
    with pytest.raises(ConfigError, match="cannot take DASE blocks"):
        check_config(
            TrainConfig(
                task=task,
                model=ModelConfig(extra_backbones=extra, dase=False, pretrained=True),
                loss=LossConfig(weight_distill=1.0),
            )
        )
    check_config(TrainConfig(task=task, model=ModelConfig(extra_backbones=extra, dase=False)))
    # A category run has no grid: model.feature_level stays a fine-grained setting.
    with pytest.raises(ConfigError, match="model.feature_level is for fine-grained runs"):
        check_config(TrainConfig(task=task, model=ModelConfig(extra_backbones=extra, dase=False, feature_level=3)))
