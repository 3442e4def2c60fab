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
