"""Typed configs: YAML, dotted overrides, validation messages, round trip."""

from __future__ import annotations

import pytest

from sbir.config import TrainConfig, apply_overrides, config_from_dict, load_config, save_config, to_dict
from sbir.errors import ConfigError


def test_defaults_validate_and_round_trip(tmp_path):
    cfg = TrainConfig().validate()
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.01\n  epochs: 3\nmodel:\n  embed_dim: 128\n")
    cfg = load_config(path, ["optim.lr=5e-4", "model.shared_encoder=true", "data.format=none"])
    assert cfg.optim.lr == 5e-4 and cfg.optim.epochs == 3 and cfg.model.embed_dim == 128
    assert cfg.model.shared_encoder is True and cfg.data.format is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.batch_size=1", "optim.batch_size must be >= 2"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("loss.name=foo", "loss.name must be one of"),
        ("optim.epochs=abc", "optim.epochs' expects int"),
        ("nope.key=1", "unknown config key 'nope.key'"),
        ("optim.nope=1", "unknown config key 'optim.nope'"),
        ("task=segmentation", "task must be one of"),
        ("lr", "must look like key.sub=value"),
        # YAML reads true / yes / no as booleans: never silently 1.0, 1 or "False"
        ("model.content_crop=true", "model.content_crop' expects float, got the boolean True"),
        ("optim.epochs=yes", "optim.epochs' expects int, got the boolean True"),
        ("model.backbone=no", "model.backbone' expects str, got the boolean False .quote it"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_unknown_yaml_keys_are_listed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_config_from_dict_rejects_partial_garbage():
    with pytest.raises(ConfigError):
        config_from_dict({"model": "resnet"})
    cfg = TrainConfig()
    apply_overrides(cfg, ["eval.flip_tta=yes"])
    assert cfg.eval.flip_tta is True


def test_yaml_booleans_are_refused_for_numbers_and_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  ridge_lambda: true\n")
    with pytest.raises(ConfigError, match="model.ridge_lambda' expects float, got the boolean True"):
        load_config(path)
    path.write_text("model:\n  backbone: 'no'\n  ridge_lambda: 1\n")  # quoted: the word, an int for a float
    cfg = load_config(path)
    assert cfg.model.backbone == "no" and cfg.model.ridge_lambda == 1.0
