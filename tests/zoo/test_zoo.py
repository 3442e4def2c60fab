"""The models shipped inside the package: ``--model general``, the default of ``sbir index build``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from sbir import zoo
from sbir.cli import main
from sbir.engine.inference import PRETRAINED_TENSORS_KEY, default_model_spec, load_model, resolve_weights
from sbir.errors import CheckpointError
from sbir.index.store import Index
from tests.conftest import REPO_ROOT


def test_the_general_model_ships_inside_the_package():
    path = zoo.shipped_path("general")
    assert path.is_file(), "src/sbir/zoo/general.safetensors is missing"
    # The limit is 10 MB (a wheel stays small); the repository's is 5 MB per tracked file.
    assert path.stat().st_size < 5_000_000
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = fh.metadata()
        cfg = json.loads(meta["config"])
    assert tensors and all(t.dtype == torch.float16 for t in tensors.values())
    # Only the fitted head is in the file; both backbones come from the pinned ImageNet packages, whose
    # tensors it lists with their digest (load_model checks it).
    assert set(tensors) == {f"head.{d}.{t}" for d in ("sketch", "photo") for t in ("mean", "left", "right")}
    pretrained = json.loads(meta[PRETRAINED_TENSORS_KEY])["names"]
    assert any(k.startswith("backbone.members.0.") for k in pretrained)
    assert any(k.startswith("backbone.members.1.") for k in pretrained)
    # Trained zero-shot: the classes its card measures it on were never trained on.
    assert cfg["task"] == "zeroshot" and cfg["data"]["unseen"] == "sketchy_unseen21"
    model, loaded_cfg, model_id = load_model("general")
    assert default_model_spec() == "general" and model_id.startswith(f"{loaded_cfg.model.backbone}:")
    size = loaded_cfg.data.image_size
    z = model.embed(torch.rand(2, 3, size, size), "sketch")
    assert z.shape == (2, model.embed_dim) and torch.isfinite(z).all()
    # The card's recipe: Lite0 + Lite1 features with a fitted ridge head (sketch map of rank
    # model.ridge_rank, photos centred only).
    assert loaded_cfg.model.extra_backbones == ["efficientnet_lite1"] and model.embed_dim == 1280 + 1280
    assert loaded_cfg.model.head == "ridge" and model.head.sketch.left.shape[1] == loaded_cfg.model.ridge_rank
    assert model.head.sketch.left.abs().sum() > 0 and model.head.photo.left.shape[1] == 0
    card = (zoo.ZOO_DIR / "README.md").read_text()
    for needle in ("sketchy_mini", "quickdraw_mini", "qmul_v1", "chairv2_strokes", "Licence", "mAP@all", "P@10"):
        assert needle in card, needle
    assert '"zoo/*.safetensors"' in (REPO_ROOT / "pyproject.toml").read_text()  # shipped in the wheel


def test_a_missing_shipped_model_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(zoo.SHIPPED, "general", "not-installed.safetensors")
    assert default_model_spec() == "pretrained"  # index build falls back to the ImageNet features
    with pytest.raises(CheckpointError, match="not in this installation") as err:
        resolve_weights("general")
    assert "\n" not in str(err.value)


def test_a_folder_called_general_is_reached_as_a_path(tmp_path, monkeypatch):
    (tmp_path / "general").mkdir()
    (tmp_path / "general" / "best.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_weights("general") == zoo.shipped_path("general")
    assert resolve_weights("./general") == Path("general/best.safetensors")


def _drawing(path: Path, shape: str) -> None:
    img = Image.new("RGB", (96, 96), "white")
    d = ImageDraw.Draw(img)
    (d.ellipse if shape == "circle" else d.rectangle)((20, 20, 76, 76), outline="black", width=4)
    img.save(path)


def test_index_build_without_model_uses_the_general_model(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "my photos"
    photos.mkdir()
    for i, shape in enumerate(("circle", "square", "circle")):
        _drawing(photos / f"{i}.png", shape)
    _drawing(tmp_path / "query.png", "square")
    monkeypatch.chdir(tmp_path)
    assert main(["index", "build", str(photos), "--workers", "0", "--no-progress"]) == 0
    info = Index.open(tmp_path / "my photos-index").info()  # --out defaults to ./<folder>-index
    _, _, model_id = load_model("general")
    assert info["model_spec"] == "general" and info["model_path"] is None and info["model_id"] == model_id
    assert info["images"] == 3
    capsys.readouterr()
    assert main(["search", "my photos-index", str(tmp_path / "query.png"), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits["results"]) == 3
