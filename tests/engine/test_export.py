"""``sbir export --format onnx [--int8]``, the runtime layer and runtime choice in the index.

A 1-epoch fine-grained run and a 1-epoch category (DASE) run of timm's tiny ``test_efficientnet``
at 64 px are trained once per module through the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from sbir.cli import main  # noqa: E402
from sbir.engine.export import export_model, top10_agreement  # noqa: E402
from sbir.engine.inference import load_model  # noqa: E402
from sbir.engine.runtime import (  # noqa: E402
    RuntimeUnavailableError,
    TorchEncoder,
    load_encoder,
    open_export_encoder,
    pick_runtime,
    read_manifest,
)

TINY = [
    "--image-size", "64", "--batch-size", "8", "--workers", "0", "--no-progress", "--seed", "0", "--epochs", "1",
    "--backbone", "test_efficientnet", "--set", "model.pretrained=false", "model.embed_dim=32",
    "optim.warmup_epochs=0.5",
]  # fmt: skip


@pytest.fixture(scope="module")
def fg_run(tmp_path_factory, tiny_paired_dataset: Path) -> Path:
    run = tmp_path_factory.mktemp("fg") / "run"
    assert main(["train", "--data", str(tiny_paired_dataset), "--out", str(run), *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def fg_export(fg_run: Path) -> Path:
    """The run exported with int8 graphs under a gate they always pass (50 points)."""
    export_model(str(fg_run), int8=True, max_drop=50.0, speed_seconds=0.2, progress=False)
    return fg_run / "export"


@pytest.fixture(scope="module")
def cat_run(tmp_path_factory) -> Path:
    from tests.engine.test_category_e2e import SHAPES, make_category_dataset

    root = tmp_path_factory.mktemp("cat")
    make_category_dataset(root / "data", SHAPES[:4], n_photos=6, n_sketches=6)
    run = root / "run"
    args = ["train", "--task", "category", "--data", str(root / "data"), "--out", str(run), *TINY]
    assert main([*args, "optim.samples_per_class=2"]) == 0
    return run


def _batch(n: int = 6, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


# ---------------------------------------------------------------- export and parity


def test_export_matches_pytorch(fg_run: Path, fg_export: Path):
    m = read_manifest(fg_export)
    model, cfg, model_id = load_model(fg_run)
    assert m["model_id"] == model_id and m["opset"] == 17
    assert m["input"]["image_size"] == 64 and m["input"]["mean"] == pytest.approx(list(model.mean))
    assert m["output"]["l2_normalized"] is True and m["output"]["dim"] == 32
    # Separate heads per domain: two graphs.
    assert {m["graphs"]["fp32"][d]["file"] for d in ("sketch", "photo")} == {"sketch.onnx", "photo.onnx"}
    chk = m["checks"]["onnx"]
    assert chk["passed"] and chk["max_abs_diff"] <= chk["tolerance"] == 1e-4
    assert chk["top10_same"] == chk["top10_queries"] > 0

    # Independently: the ONNX Runtime encoder reproduces PyTorch on new input, both domains.
    torch_enc, onnx_enc = TorchEncoder(model, model_id, 64), open_export_encoder(fg_export, "onnx", threads=1)
    assert onnx_enc.threads == 1 and onnx_enc.describe()["threads"] == 1
    x = _batch()
    for d in ("sketch", "photo"):
        a, b = torch_enc.embed(x, d), onnx_enc.embed(x, d)
        assert a.shape == b.shape == (6, 32)
        assert np.abs(a - b).max() < 1e-4
    q, g = torch_enc.embed(x, "sketch"), torch_enc.embed(x, "photo")
    assert top10_agreement((q, g), (onnx_enc.embed(x, "sketch"), onnx_enc.embed(x, "photo")), "cosine") == 6
    # PIL images go through the manifest's preprocessing.
    from PIL import Image

    img = Image.new("RGB", (80, 50), (200, 30, 30))
    assert np.abs(torch_enc.embed([img], "photo") - onnx_enc.embed([img], "photo")).max() < 1e-4


def test_top10_agreement_detects_a_changed_ranking():
    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((5, 8)), rng.standard_normal((20, 8))
    assert top10_agreement((q, g), (q, g), "cosine") == 5
    g2 = g.copy()
    best = np.argsort(-(q[0] @ g.T))[0]
    g2[best] = -g2[best]  # query 0 loses its best match
    assert top10_agreement((q, g), (q, g2), "cosine") <= 4


def test_export_refused_when_outside_tolerance(fg_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(fg_run), "--out", str(out), "--atol", "1e-12", "--no-speed", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the ONNX export") and "max abs embedding difference" in err[-1]
    assert "nothing written" in err[-1] and not out.exists()
    assert not list(tmp_path.glob(".exp.tmp-*"))  # no temporary folder left


def test_int8_passes_gate_and_reports_metric_change(fg_run: Path, fg_export: Path):
    m = read_manifest(fg_export)
    q = m["checks"]["onnx-int8"]
    assert q["passed"] and not q["forced"] and q["metric"] == "acc@1" and q["max_drop"] == 50.0
    assert m["quantization"]["mode"] == "static" and m["quantization"]["calibration_images"] > 0
    assert (fg_export / "sketch.int8.onnx").is_file() and (fg_export / "photo.int8.onnx").is_file()
    # The reported Acc@1 is what the int8 graphs score on the validation split.
    from sbir.data.formats import load_dataset
    from sbir.data.splits import apply_split_record, load_split_record
    from sbir.engine.evaluate import evaluate_finegrained

    _, cfg, _ = load_model(fg_run)
    _, val = apply_split_record(load_dataset(cfg.data.path).split("train"), load_split_record(fg_run / "split.json"))
    int8 = open_export_encoder(fg_export, "onnx-int8")
    acc = evaluate_finegrained(int8.as_model(), cfg, val, flip_tta=cfg.eval.flip_tta, progress=False).metrics["acc@1"]
    assert q["metric_value"] == pytest.approx(acc, abs=1e-4)
    assert q["metric_change"] == pytest.approx(acc - q["metric_torch"], abs=1e-4)
    # int8 really is a different (quantised) graph: close to fp32 but not equal.
    fp32 = open_export_encoder(fg_export, "onnx")
    x = _batch()
    diff = np.abs(int8.embed(x, "photo") - fp32.embed(x, "photo")).max()
    assert 0 < diff < 0.5


def test_int8_refused_by_gate_then_forced(fg_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "exp"
    base = ["export", str(fg_run), "--out", str(out), "--int8", "--no-speed", "--no-progress", "--no-openvino"]
    # A gate no model can pass: Acc@1 would have to rise by 200 points.
    assert main([*base, "--max-drop", "-200"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: int8 model refused: acc@1 drops") and "--force" in err
    m = read_manifest(out)  # the fp32 export is written, the int8 graphs are not
    assert "int8" not in m["graphs"] and not list(out.glob("*.int8.onnx"))
    assert m["checks"]["onnx-int8"]["passed"] is False
    with pytest.raises(RuntimeUnavailableError, match="no int8 graphs"):
        open_export_encoder(out, "onnx-int8")

    assert main([*base, "--max-drop", "-200", "--force", "--json"]) == 0
    m = read_manifest(out)
    assert m["checks"]["onnx-int8"]["forced"] is True and (out / "sketch.int8.onnx").is_file()
    assert open_export_encoder(out, "onnx-int8").embed(_batch(2), "sketch").shape == (2, 32)


def test_category_dase_exports_one_graph_per_domain(cat_run: Path):
    report = export_model(str(cat_run), speed=False, progress=False, openvino=False)
    m = read_manifest(report.out_dir)
    g = m["graphs"]["fp32"]
    assert g["sketch"]["sha256"] != g["photo"]["sha256"]  # the domain is a constant of each graph
    assert m["output"]["l2_normalized"] is False  # MEMS: raw embeddings, euclidean test distance
    model, _, model_id = load_model(cat_run)
    from sbir.models.dase import dase_modules

    blocks = dase_modules(model)
    assert blocks
    # Make the domains differ clearly, then check that each graph carries its own domain.
    for blk in blocks:
        blk.domain_weight.data[:, 0] = 2.0
        blk.domain_weight.data[:, 1] = -2.0
    out2 = cat_run.parent / "export2"
    from sbir.engine.export import export_graph

    out2.mkdir()
    for d in ("sketch", "photo"):
        export_graph(model, d, 64, out2 / f"{d}.onnx")
    import onnxruntime as ort

    x = _batch(3)
    torch_enc = TorchEncoder(model, model_id, 64)
    for d in ("sketch", "photo"):
        sess = ort.InferenceSession(str(out2 / f"{d}.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"image": x})[0]
        assert np.abs(got - torch_enc.embed(x, d)).max() < 1e-4
    assert np.abs(torch_enc.embed(x, "sketch") - torch_enc.embed(x, "photo")).max() > 1e-3


def test_export_with_images_and_errors(fg_run: Path, tiny_paired_dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "exp"
    imgs = tiny_paired_dataset / "testB"
    args = ["export", str(fg_run), "--out", str(out), "--images", str(imgs), "--no-speed", "--no-progress"]
    assert main([*args, "--no-openvino"]) == 0
    m = read_manifest(out)
    assert m["check_data"].startswith("8 images under") and m["checks"]["onnx"]["top10_queries"] == 8
    capsys.readouterr()
    assert main(["export", "pretrained", "--no-progress"]) == 2
    assert "needs --out DIR" in capsys.readouterr().err
    assert main(["export", str(fg_run), "--out", str(tmp_path / "e2"), "--images", str(tmp_path / "nope")]) == 2
    assert "--images" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    assert main(["export", str(fg_run), "--out", str(tmp_path / "junk")]) == 2
    assert "holds no sbir export" in capsys.readouterr().err


# ---------------------------------------------------------------- runtime choice


def test_pick_runtime(fg_run: Path, fg_export: Path, tmp_path: Path):
    rt, edir, note = pick_runtime("auto", fg_run)
    speed = read_manifest(fg_export)["speed"]["images_per_s"]
    assert rt == max(speed, key=speed.get) and "fastest measured" in note
    assert pick_runtime("onnx", fg_run)[:2] == ("onnx", fg_export)
    assert pick_runtime("torch", fg_run)[0] == "torch"
    # No export: auto falls back to torch and says why; an explicit runtime is an error.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(fg_run / "best.safetensors", bare / "best.safetensors")
    rt, edir, note = pick_runtime("auto", bare)
    assert rt == "torch" and edir is None and "auto" in note and "sbir export" in note
    with pytest.raises(RuntimeUnavailableError, match="sbir export"):
        pick_runtime("onnx", bare)
    # A stale export (the weights changed since): auto -> torch, explicit -> error.
    shutil.copytree(fg_export, bare / "export")
    mf = bare / "export" / "manifest.json"
    m = json.loads(mf.read_text())
    m["model_id"] = "test_efficientnet:0000000000000000"
    mf.write_text(json.dumps(m))
    assert pick_runtime("auto", bare)[0] == "torch"
    with pytest.raises(RuntimeUnavailableError, match="another model, or retrained since the export"):
        pick_runtime("onnx-int8", bare)
    enc, cfg, model_id, _ = load_encoder(str(fg_run), "onnx")
    assert enc.runtime == "onnx" and model_id == load_model(fg_run)[2] and cfg.data.image_size == 64


# ---------------------------------------------------------------- the index records its runtime


def test_index_records_runtime_and_refuses_mismatch(fg_run, fg_export, tiny_paired_dataset, tmp_path, capsys):
    from sbir.index import Index, QueryEncoder
    from sbir.index.store import ModelMismatchError

    gallery = tiny_paired_dataset / "testB"
    sketch = sorted((tiny_paired_dataset / "testA").iterdir())[0]
    idx = tmp_path / "idx"
    common = ["--no-progress", "--workers", "0"]
    build = ["index", "build", str(gallery), "--model", str(fg_run), "--out", str(idx)]
    assert main([*build, "--runtime", "onnx", *common]) == 0
    assert "runtime: onnx (requested)" in capsys.readouterr().err
    index = Index.open(idx)
    m = read_manifest(fg_export)
    assert index.model.runtime == "onnx" and index.model.encoder_id.startswith("fp32:")
    assert index.info()["runtime"] == "onnx" and index.model.model_id == m["model_id"]
    # The photos' vectors are the ONNX graph's.
    enc = open_export_encoder(fg_export, "onnx")
    from sbir.data.image_io import load_image

    first = load_image(gallery / index.entries[0].path)
    assert np.abs(enc.embed([first], "photo")[0] - index.vectors[0]).max() < 1e-5

    # Search on the index's runtime works; another runtime is refused with one clear line.
    assert main(["search", str(idx), str(sketch), "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 3
    assert main(["search", str(idx), str(sketch), "--runtime", "torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "built with runtime 'onnx'" in err[0] and "--runtime torch" in err[0]
    assert main(["index", "update", str(idx), "--runtime", "onnx-int8", *common]) == 2
    assert "built with runtime 'onnx'" in capsys.readouterr().err
    assert main(["index", "update", str(idx), *common]) == 0
    with pytest.raises(ModelMismatchError):
        QueryEncoder.for_record(load_model(fg_run)[0], index.model.model_id, index.model)

    # Graphs exported again (another encoder id) are refused too.
    idx_export = Path(index.model.export_dir)
    mf = idx_export / "manifest.json"
    saved = mf.read_text()
    try:
        m2 = json.loads(saved)
        m2["graphs"]["fp32"]["photo"]["sha256"] = "0" * 64
        mf.write_text(json.dumps(m2))
        with pytest.raises(ModelMismatchError, match="exported again"):
            QueryEncoder.for_index(Index.open(idx))
    finally:
        mf.write_text(saved)
    assert QueryEncoder.for_index(Index.open(idx)).runtime == "onnx"


def test_index_auto_without_export_uses_torch(tiny_paired_dataset, fg_run, tmp_path, capsys):
    from sbir.index import Index

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(fg_run / "best.safetensors", bare / "best.safetensors")
    idx = tmp_path / "idx"
    gallery = tiny_paired_dataset / "testB"
    build = ["index", "build", str(gallery), "--model", str(bare), "--out", str(idx)]
    assert main([*build, "--no-progress", "--workers", "0", "--jpeg-draft"]) == 0
    assert "runtime: torch (auto:" in capsys.readouterr().err
    index = Index.open(idx)
    assert index.model.runtime == "torch" and index.model.encoder_id == f"torch:{index.model.model_id}"
    assert index.model.jpeg_draft is True


def test_index_build_takes_an_export_from_elsewhere(tiny_paired_dataset, fg_run, fg_export, tmp_path, capsys):
    """--export DIR: the graphs of a model without a default export folder (the shipped models, a bare
    checkpoint) are used and recorded; a folder that cannot serve is one line and exit 2, nothing written."""
    from sbir.index import Index

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(fg_run / "best.safetensors", bare / "best.safetensors")
    graphs = tmp_path / "graphs elsewhere"
    shutil.copytree(fg_export, graphs)
    gallery = tiny_paired_dataset / "testB"
    sketch = sorted((tiny_paired_dataset / "testA").iterdir())[0]
    common = ["--no-progress", "--workers", "0"]

    def build(out: Path, *extra: str) -> int:
        return main(["index", "build", str(gallery), "--model", str(bare), "--out", str(out), *common, *extra])

    idx = tmp_path / "idx"
    assert build(idx, "--export", str(graphs), "--runtime", "onnx") == 0
    index = Index.open(idx)
    assert index.model.runtime == "onnx" and Path(index.model.export_dir) == graphs.resolve()
    enc = open_export_encoder(graphs, "onnx")
    from sbir.data.image_io import load_image

    first = load_image(gallery / index.entries[0].path)
    assert np.abs(enc.embed([first], "photo")[0] - index.vectors[0]).max() < 1e-5
    capsys.readouterr()
    assert main(["search", str(idx), str(sketch), "-k", "2", "--json"]) == 0  # queries on the same graphs
    assert len(json.loads(capsys.readouterr().out)["results"]) == 2

    # Named by the user, an export must serve: no silent fall-back to torch, even under auto.
    other = tmp_path / "other model"
    shutil.copytree(fg_export, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "model_id": "test_efficientnet:0000000000000000"}))
    cases = [
        (["--export", str(graphs), "--runtime", "torch"], "is for the exported runtimes"),
        (["--export", str(tmp_path / "missing")], "is not a folder"),
        (["--export", str(tmp_path)], "holds no export"),
        (["--export", str(other)], "is of model 'test_efficientnet:0000000000000000'"),
    ]
    for extra, message in cases:
        out = tmp_path / "refused"
        assert build(out, *extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()
    # The hint for a shipped model names the option.
    assert "--export DIR" in pick_runtime("auto", "general")[2]


def test_grid_feature_model_exports_and_matches_pytorch(tmp_path: Path, tiny_paired_dataset: Path):
    # model.feature_level / model.pool_grid: the pruned trunk and the grid pooling trace into ONNX as they run.
    run = tmp_path / "grid"
    grid = ["model.feature_level=2", "model.pool_grid=2"]
    assert main(["train", "--data", str(tiny_paired_dataset), "--out", str(run), *TINY, *grid]) == 0
    export_model(str(run), progress=False, speed_seconds=0.2)
    model, _cfg, model_id = load_model(run)
    assert model.cfg.feature_level == 2 and model.sketch_encoder.grid == 2
    torch_enc, onnx_enc = TorchEncoder(model, model_id, 64), open_export_encoder(run / "export", "onnx", threads=1)
    x = _batch()
    for d in ("sketch", "photo"):
        assert np.abs(torch_enc.embed(x, d) - onnx_enc.embed(x, d)).max() < 1e-4


def test_an_exported_graph_crops_to_the_ink_like_the_model(tmp_path: Path):
    """model.content_crop is part of the graph: ONNX Runtime gets the same embedding as PyTorch for a drawing
    off to one side, also at another input size (the graph's height and width are dynamic)."""
    import onnxruntime as ort
    import torch

    from sbir.engine.export import export_graph
    from tests.models.test_content_crop import _drawings, _model

    model = _model(0.1)
    export_graph(model, "sketch", 64, tmp_path / "sketch.onnx")
    session = ort.InferenceSession(str(tmp_path / "sketch.onnx"), providers=["CPUExecutionProvider"])
    for size in (64, 80):
        x = _drawings(size)
        with torch.no_grad():
            want = model.embed(x, "sketch").numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_openvino_runs_the_cropping_graph_like_the_model(tmp_path: Path):
    """OpenVINO compiles the same ONNX graph (GridSample included) and gets the same embeddings."""
    ov = pytest.importorskip("openvino")
    import torch

    from sbir.engine.export import export_graph
    from tests.models.test_content_crop import _drawings, _model

    model = _model(0.1)
    export_graph(model, "photo", 64, tmp_path / "photo.onnx")
    graph = ov.Core().read_model(str(tmp_path / "photo.onnx"))
    graph.reshape({"image": [2, 3, 64, 64]})
    compiled = ov.Core().compile_model(graph, "CPU")
    x = _drawings(64)
    with torch.no_grad():
        want = model.embed(x, "photo").numpy()
    np.testing.assert_allclose(compiled([x.numpy()])[0], want, atol=1e-4)
