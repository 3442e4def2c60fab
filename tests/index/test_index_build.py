"""Index build, update, search and model checks with the real pretrained model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from sbir.data.image_io import load_image
from sbir.engine.embed import embed_pil
from sbir.errors import DataError, SbirError
from sbir.index import (
    Index,
    IndexStoreError,
    ModelMismatchError,
    QueryEncoder,
    build_index,
    scan_gallery,
    update_index,
)
from sbir.index.faiss_ops import ApproxError
from sbir.index.store import write_lock

from .index_helpers import IMAGE_SIZE, make_photo, write_gallery


def build(gallery, out, pretrained, **kw):
    kw.setdefault("image_size", IMAGE_SIZE)
    return build_index(gallery, "pretrained", out, progress=False, num_workers=0, preloaded=pretrained, **kw)


def update(index_dir, pretrained, **kw):
    return update_index(index_dir, progress=False, num_workers=0, preloaded=pretrained, **kw)


def reference_vectors(index: Index, pretrained) -> np.ndarray:
    model = pretrained[0]
    imgs = [load_image(index.gallery / e.path) for e in index.entries]
    return embed_pil(model, imgs, "photo", index.model.image_size)


def test_build_writes_manifest_vectors_and_model_record(tmp_path, gallery, pretrained):
    (gallery / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (gallery / "notes.txt").write_text("not an image")
    (gallery / ".hidden.png").write_bytes(b"")
    secret = tmp_path / "secret.png"
    make_photo(99).save(secret)
    os.symlink(secret, gallery / "b" / "outside.png")
    os.symlink(tmp_path, gallery / "linkdir")
    report = build(gallery, tmp_path / "idx", pretrained)

    assert report.written and report.generation == "gen-000001"
    assert report.images == 6 and report.embedded == 6
    skipped = dict(report.skipped)
    assert "a/broken.png" in skipped and "cannot read image" in skipped["a/broken.png"]
    assert "outside the gallery" in skipped["b/outside.png"]
    assert "linkdir/" in skipped

    index = Index.open(tmp_path / "idx")
    assert len(index) == 6 and index.dim == 1280 and index.kind == "none"
    assert [e.path for e in index.entries] == sorted(e.path for e in index.entries)
    for e in index.entries:
        p = gallery / e.path
        assert e.size == p.stat().st_size and e.mtime_ns == p.stat().st_mtime_ns
        assert e.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert index.model.model_id == pretrained[2] and index.model.spec == "pretrained" and index.model.path is None
    assert index.model.image_size == IMAGE_SIZE and index.model.config["model"]["backbone"] == "efficientnet_lite0"
    gdir = tmp_path / "idx" / "gen-000001"
    assert sorted(p.name for p in gdir.iterdir()) == ["index.faiss", "manifest.json", "model.json", "vectors.npy"]
    # The stored vectors are the embeddings of exactly those files.
    np.testing.assert_allclose(np.asarray(index.vectors), reference_vectors(index, pretrained), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)


def test_search_finds_each_photo_first(tmp_path, gallery, pretrained):
    build(gallery, tmp_path / "idx", pretrained)
    index = Index.open(tmp_path / "idx")
    enc = QueryEncoder.for_record(pretrained[0], pretrained[2], index.model)
    imgs = [load_image(index.gallery / e.path) for e in index.entries]
    q = enc.encode(imgs)  # the pretrained model shares its encoder, so a photo is its own best sketch
    for i, hits in enumerate(index.search_many(q, k=3, model_id=enc.model_id)):
        assert hits[0].id == i and hits[0].path == index.entries[i].path and hits[0].rank == 1
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].score >= hits[1].score >= hits[2].score
    hits = index.search(q[0], k=50, model_id=enc.model_id)
    assert len(hits) == len(index)  # k larger than the gallery
    with pytest.raises(ModelMismatchError, match="different models"):
        index.search(q[0], k=3, model_id="efficientnet_lite0:0123456789abcdef")
    with pytest.raises(ModelMismatchError, match="1280-d"):
        index.search(np.ones(16, np.float32), k=3, model_id=enc.model_id)


def test_update_embeds_only_new_or_changed_and_matches_a_fresh_build(tmp_path, gallery, pretrained):
    idx = tmp_path / "idx"
    build(gallery, idx, pretrained)
    before = Index.open(idx)
    rels = [e.path for e in before.entries]
    # delete one, change one's content, touch one (same content), rename one, add two new
    (gallery / rels[0]).unlink()
    make_photo(500).save(gallery / rels[1])
    st = (gallery / rels[2]).stat()
    os.utime(gallery / rels[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    (gallery / rels[3]).rename(gallery / ("renamed" + Path(rels[3]).suffix))
    write_gallery(gallery, n=2, start=100)

    report = update(idx, pretrained)
    assert report.written and report.generation == "gen-000002"
    # 2 new photos + renamed file are "added"; the renamed one and the touched one reuse their vectors
    assert (report.added, report.changed, report.removed) == (3, 2, 2)
    assert report.embedded == 3  # the changed photo and the two new ones
    assert report.reused == 2 and report.unchanged == 2

    after = Index.open(idx)
    fresh_dir = tmp_path / "fresh"
    build(gallery, fresh_dir, pretrained)
    fresh = Index.open(fresh_dir)
    assert after.entries == fresh.entries
    np.testing.assert_allclose(np.asarray(after.vectors), np.asarray(fresh.vectors), atol=1e-5)
    # The previous generation is kept for readers still loading it, older ones and temp files are not.
    assert sorted(p.name for p in idx.iterdir() if p.name.startswith("gen-")) == ["gen-000001", "gen-000002"]

    again = update(idx, pretrained)
    assert not again.written and again.embedded == 0 and again.unchanged == len(after)
    assert Index.open(idx).generation == "gen-000002"


def test_build_refuses_bad_inputs(tmp_path, gallery, pretrained):
    with pytest.raises(DataError, match="does not exist"):
        build(tmp_path / "missing", tmp_path / "i0", pretrained)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build(tmp_path / "empty", tmp_path / "i1", pretrained)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 images"):
        build(tmp_path / "bad", tmp_path / "i2", pretrained)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("user data")
    with pytest.raises(IndexStoreError, match="not empty"):
        build(gallery, busy, pretrained)
    assert (busy / "keep.txt").read_text() == "user data"
    build(gallery, tmp_path / "idx", pretrained)
    with pytest.raises(IndexStoreError, match="sbir index update"):
        build(gallery, tmp_path / "idx", pretrained)
    rep = build(gallery, tmp_path / "idx", pretrained, overwrite=True)
    assert rep.generation == "gen-000002"
    with pytest.raises(ApproxError, match="at least 10000 vectors"):
        build(gallery, tmp_path / "pq", pretrained, approx="ivfpq")
    with pytest.raises(ApproxError, match="--approx must be one of"):
        build(gallery, tmp_path / "x", pretrained, approx="fast")


def test_index_inside_gallery_is_not_indexed(gallery, pretrained):
    rep = build(gallery, gallery / "my-index", pretrained)
    assert rep.images == 6
    rep2 = update(gallery / "my-index", pretrained)
    assert not rep2.written


def test_approximate_kinds_and_auto_threshold(tmp_path, gallery, pretrained):
    rep = build(gallery, tmp_path / "h", pretrained, approx="hnsw")
    hnsw = Index.open(tmp_path / "h")
    assert rep.kind == hnsw.kind == "hnsw" and hnsw.searcher.params["M"] == 32
    assert Index.open(tmp_path / "h", ef_search=7).searcher.index.hnsw.efSearch == 7
    rep = build(gallery, tmp_path / "a", pretrained, approx="auto", approx_threshold=5)
    assert rep.kind == "hnsw"
    rep = build(gallery, tmp_path / "b", pretrained, approx="auto", approx_threshold=7)
    assert rep.kind == "none"
    write_gallery(gallery, n=1, start=50)  # 7 images now: auto switches at the next update
    rep = update(tmp_path / "b", pretrained)
    assert rep.kind == "hnsw"
    assert Index.open(tmp_path / "b").kind == "hnsw"
    rep = update(tmp_path / "b", pretrained, approx="none")
    assert rep.written and Index.open(tmp_path / "b").kind == "none"
    # exact and HNSW agree on a tiny gallery
    exact = Index.open(tmp_path / "a")
    q = np.asarray(exact.vectors[:3])
    ex = Index.open(tmp_path / "b").search_many(q, 3, model_id=exact.model_id)
    ap = hnsw.search_many(q, 3, model_id=exact.model_id)
    assert [h.path for h in ex[0]][:1] == [h.path for h in ap[0]][:1]


def test_other_checkpoint_is_refused(tmp_path, gallery, pretrained):
    """A real sbir checkpoint (random projection head) has another model id than the pretrained index."""
    from sbir.config import ModelConfig, TrainConfig
    from sbir.engine.checkpoint import save_weights
    from sbir.engine.inference import load_model
    from sbir.index.model import load_index_model
    from sbir.models.fgsbir import build_model

    cfg = TrainConfig(
        model=ModelConfig(
            backbone="test_efficientnet", pretrained=False, shared_encoder=True, head="linear", embed_dim=32
        )
    )
    ckpt = tmp_path / "run" / "best.safetensors"
    ckpt.parent.mkdir()
    save_weights(build_model(cfg.model), ckpt, cfg)

    build(gallery, tmp_path / "idx", pretrained)
    index = Index.open(tmp_path / "idx")
    with pytest.raises(ModelMismatchError, match="--model") as ei:
        QueryEncoder.for_index(index, override=str(tmp_path / "run"))
    assert "pretrained:efficientnet_lite0" in str(ei.value)
    with pytest.raises(ModelMismatchError):
        update(tmp_path / "idx", load_model(ckpt))

    # An index built with the checkpoint records its absolute path and reloads it by itself.
    other = load_model(str(tmp_path / "run"))
    rep = build_index(
        gallery,
        str(tmp_path / "run"),
        tmp_path / "idx2",
        image_size=IMAGE_SIZE,
        progress=False,
        num_workers=0,
        preloaded=other,
    )
    idx2 = Index.open(tmp_path / "idx2")
    assert idx2.dim == 32 and idx2.model.path == str((tmp_path / "run").resolve()) and rep.model_id == other[2]
    model, _, mid = load_index_model(idx2.model)
    assert mid == other[2]
    # The weights change (training went on): the index refuses them.
    save_weights(build_model(cfg.model), ckpt, cfg)
    with pytest.raises(ModelMismatchError, match="weights changed"):
        load_index_model(idx2.model)


def test_open_refuses_missing_corrupt_or_unsafe_indexes(tmp_path, gallery, pretrained):
    with pytest.raises(IndexStoreError, match="does not exist"):
        Index.open(tmp_path / "nope")
    with pytest.raises(IndexStoreError, match="not an sbir index"):
        Index.open(gallery)
    build(gallery, tmp_path / "idx", pretrained)
    idx = tmp_path / "idx"
    manifest = idx / "gen-000001" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["entries"][0]["path"] = "../../etc/passwd"
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexStoreError, match="unsafe path"):
        Index.open(idx)
    data["entries"][0]["path"] = "/etc/passwd"
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexStoreError, match="unsafe path"):
        Index.open(idx)
    (idx / "CURRENT").write_text("{broken")
    with pytest.raises(IndexStoreError, match="corrupt"):
        Index.open(idx)
    (idx / "CURRENT").write_text(json.dumps({"generation": "../x"}))
    with pytest.raises(IndexStoreError, match="invalid generation"):
        Index.open(idx)


def test_resolve_refuses_paths_that_leave_the_gallery(tmp_path, gallery, pretrained):
    build(gallery, tmp_path / "idx", pretrained)
    index = Index.open(tmp_path / "idx")
    assert index.resolve(0) == (gallery / index.entries[0].path).resolve()
    secret = tmp_path / "secret.png"
    make_photo(7).save(secret)
    victim = gallery / index.entries[1].path
    victim.unlink()
    os.symlink(secret, victim)  # replaced by a link to outside after indexing
    with pytest.raises(IndexStoreError, match="outside the gallery"):
        index.resolve(1)
    for bad in (-1, len(index), "1"):
        with pytest.raises(IndexStoreError, match="no image with id"):
            index.resolve(bad)


def test_a_second_writer_is_refused(tmp_path, gallery, pretrained):
    build(gallery, tmp_path / "idx", pretrained)
    with write_lock(tmp_path / "idx"):
        with pytest.raises(IndexStoreError, match="another sbir process"):
            update(tmp_path / "idx", pretrained)


def test_scan_gallery_is_recursive_and_sorted(gallery):
    files, skipped = scan_gallery(gallery)
    assert [f.path for f in files] == sorted(f.path for f in files)
    assert {Path(f.path).suffix for f in files} == {".png", ".jpg", ".webp", ".bmp"}
    assert all("/" in f.path for f in files) and not skipped


def test_errors_are_sbir_errors():
    assert issubclass(IndexStoreError, SbirError) and issubclass(ApproxError, SbirError)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_models_with_raw_embeddings_use_their_distance(tmp_path, gallery, distance):
    """A category model without output normalisation (MEMS-style) is indexed with its test distance."""
    from sbir.config import TrainConfig
    from sbir.engine.checkpoint import save_weights
    from sbir.engine.inference import load_model
    from sbir.engine.tasks import build_model

    cfg = TrainConfig(task="category")
    cfg.model.backbone, cfg.model.pretrained, cfg.model.embed_dim = "test_efficientnet", False, 16
    cfg.eval.distance = distance
    model = build_model(cfg)
    assert model.normalize is False
    ckpt = tmp_path / "cat.safetensors"
    save_weights(model, ckpt, cfg)
    loaded = load_model(ckpt)
    build_index(
        gallery, str(ckpt), tmp_path / "idx", image_size=IMAGE_SIZE, progress=False, num_workers=0, preloaded=loaded
    )
    index = Index.open(tmp_path / "idx")
    raw = embed_pil(loaded[0], [load_image(index.gallery / e.path) for e in index.entries], "photo", IMAGE_SIZE)
    enc = QueryEncoder.for_index(index)
    q = enc.encode([make_photo(77)])[0]
    q_raw = embed_pil(loaded[0], [make_photo(77)], "sketch", IMAGE_SIZE)[0]
    hits = index.search(q, k=len(index), model_id=enc.model_id)
    if distance == "euclidean":
        assert index.info()["metric"] == "euclidean" and not index.model.normalize
        np.testing.assert_allclose(np.asarray(index.vectors), raw, rtol=1e-4, atol=1e-5)  # kept raw
        d = np.linalg.norm(raw - q_raw, axis=1)
        assert [h.id for h in hits] == list(np.argsort(d, kind="stable"))
        np.testing.assert_allclose([h.score for h in hits], -np.sort(d), rtol=1e-4, atol=1e-4)
    else:
        assert index.info()["metric"] == "cosine" and index.model.normalize
        unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        np.testing.assert_allclose(np.asarray(index.vectors), unit, atol=1e-5)
        cos = unit @ (q_raw / np.linalg.norm(q_raw))
        assert [h.id for h in hits] == list(np.argsort(-cos, kind="stable"))
