"""The Milvus store (``--store PATH.db``) against Milvus Lite: the real Milvus engine, embedded, no mock.

One Milvus Lite file per module (starting it takes a second or two); every test uses its own collection.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sbir.index import Index, IndexStoreError, build_index, update_index
from sbir.index.milvus_store import DEFAULT_COLLECTION, StoreError, StoreSpec, client_for, close_clients, parse_store

from .index_helpers import IMAGE_SIZE, make_photo, write_gallery

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


@pytest.fixture(scope="module")
def lite_db(tmp_path_factory) -> Path:
    """A Milvus Lite file shared by the module's tests; closed (unlocked) at the end."""
    path = tmp_path_factory.mktemp("milvus") / "store.db"
    yield path
    close_clients()


def _store(db: Path, collection: str) -> str:
    return f"{db}?collection={collection}"


def _build(gallery: Path, out: Path, pretrained, store: str | None = None, **kw):
    kw.setdefault("hubness", "none")
    return build_index(
        gallery,
        "pretrained",
        out,
        image_size=IMAGE_SIZE,
        progress=False,
        num_workers=0,
        preloaded=pretrained,
        store=store,
        **kw,
    )


def _queries(index: Index, n: int = 4) -> np.ndarray:
    """Query vectors near some gallery photos and a random one (normalised, like the model's)."""
    rng = np.random.default_rng(0)
    q = np.asarray(index.vectors[:n], np.float32) + 0.05 * rng.standard_normal((n, index.dim)).astype(np.float32)
    q = np.vstack([q, rng.standard_normal((1, index.dim)).astype(np.float32)])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _rows(db: Path, collection: str) -> int:
    spec = StoreSpec(str(db), collection)
    client = client_for(spec)
    rows = client.query(collection, filter='sha256 != "sbir:meta"', output_fields=["count(*)"])
    return int(rows[0]["count(*)"])


def test_parse_store():
    assert parse_store(None) is None and parse_store("faiss") is None
    s = parse_store("milvus://milvus.example:19530/photos?shards=4&replicas=2")
    assert (s.uri, s.collection, s.shards, s.replicas, s.lite) == ("http://milvus.example:19530", "photos", 4, 2, False)
    assert s.text() == "milvus://milvus.example:19530/photos?shards=4&replicas=2"
    lite = parse_store("rel/dir/x.db")
    assert lite.lite and Path(lite.uri).is_absolute() and lite.collection == DEFAULT_COLLECTION
    assert parse_store("x.db?collection=shoes").collection == "shoes"
    for bad in (
        "milvus://host/photos",  # no port
        "milvus://host:19530",  # no collection
        "milvus://host:19530/bad-name",
        "milvus://host:19530/c?shards=0",
        "milvus://host:19530/c?colour=red",
        "postgres://host/x",
        "photos.sqlite",
    ):
        with pytest.raises(StoreError, match="--store"):
            parse_store(bad)


def test_bad_store_is_a_one_line_usage_error(tmp_path, gallery, cli, capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["index", "build", str(gallery), "--model", "pretrained", "--out", str(tmp_path / "i"), "--store", "x:y"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--store" in err[-1] and "milvus://HOST:PORT/COLLECTION" in err[-1]
    assert not (tmp_path / "i").exists()


@pytest.mark.parametrize("hubness", ["none", "csls"])
def test_milvus_build_ranks_like_faiss(tmp_path, gallery, pretrained, lite_db, hubness):
    """Same top-10 paths and scores as the FAISS build of the same gallery (csls: the extra -r_g column too)."""
    write_gallery(gallery, n=8, start=20)
    shutil.copy(gallery / "a" / "sub0" / "p000.png", gallery / "copy_of_p000.png")  # one content, two paths
    kw = {"hubness": hubness, "sketch_stats": gallery / "a"} if hubness != "none" else {}
    _build(gallery, tmp_path / "faiss.idx", pretrained, **kw)
    rep = _build(gallery, tmp_path / "milvus.idx", pretrained, _store(lite_db, f"rank_{hubness}"), **kw)
    assert rep.images == 15 and rep.hubness == hubness
    f, m = Index.open(tmp_path / "faiss.idx"), Index.open(tmp_path / "milvus.idx")
    assert not (tmp_path / "milvus.idx" / m.generation / "index.faiss").exists()
    assert m.info()["store"] == _store(lite_db, f"rank_{hubness}") and f.info()["store"] == "faiss"
    assert _rows(lite_db, f"rank_{hubness}") == 14  # the copy shares its content's row
    q = _queries(f)
    for hf, hm in zip(
        f.search_many(q, 10, model_id=f.model_id), m.search_many(q, 10, model_id=m.model_id), strict=True
    ):
        assert len(hm) == 10
        assert [h.score for h in hm] == pytest.approx([h.score for h in hf], abs=1e-5)
        # equal scores (the copy and its original) may come in either order
        assert sorted((round(h.score, 4), h.path) for h in hm) == sorted((round(h.score, 4), h.path) for h in hf)
    both = {h.path for h in m.search(np.asarray(m.vectors[0]), 2, model_id=m.model_id)}
    assert both == {"a/sub0/p000.png", "copy_of_p000.png"}
    # k larger than the gallery: every photo once, then padding is dropped
    assert len(m.search(q[0], 50, model_id=m.model_id)) == 15


def test_update_adds_and_deletes_rows(tmp_path, gallery, pretrained, lite_db):
    coll = "update"
    idx = tmp_path / "idx"
    _build(gallery, idx, pretrained, _store(lite_db, coll))
    first = Index.open(idx)
    gone = "a/sub0/p000.png"
    gone_vec = np.asarray(first.vectors[[e.path for e in first.entries].index(gone)])
    (gallery / gone).unlink()
    write_gallery(gallery, n=2, start=60)
    make_photo(99).save(gallery / "b" / "sub1" / "p001.jpg")  # changed content under the same path
    rep = update_index(idx, preloaded=pretrained, progress=False, num_workers=0)
    assert (rep.added, rep.removed, rep.changed, rep.images) == (2, 1, 1, 7)
    assert _rows(lite_db, coll) == 7  # the deleted and the replaced contents' rows are gone
    new = Index.open(idx)
    assert new.generation != first.generation and new.info()["store"] == _store(lite_db, coll)
    for h in new.search(gone_vec, 7, model_id=new.model_id):
        assert h.path != gone
    added = [e.path for e in new.entries if "p06" in e.path]
    for rel in added:
        top = new.search(np.asarray(new.vectors[[e.path for e in new.entries].index(rel)]), 1, model_id=new.model_id)
        assert top[0].path == rel and top[0].score == pytest.approx(1.0, abs=1e-4)
    # a reader still on the old generation only returns photos its manifest knows (and none deleted since)
    old_paths = {e.path for e in first.entries}
    hits = first.search(gone_vec, 10, model_id=first.model_id)
    assert hits and all(h.path in old_paths and h.path != gone for h in hits)
    # nothing changed: no new generation, rows untouched
    assert not update_index(idx, preloaded=pretrained, progress=False, num_workers=0).written
    assert _rows(lite_db, coll) == 7
    # another index kind rebuilds the collection's vector index (HNSW), same rows, same top hit
    rep = update_index(idx, approx="hnsw", preloaded=pretrained, progress=False, num_workers=0)
    assert rep.written and rep.kind == "hnsw" and _rows(lite_db, coll) == 7
    hnsw = Index.open(idx, ef_search=32)
    assert hnsw.kind == "hnsw" and hnsw.searcher.params["ef_search"] == 32
    spec = StoreSpec(str(lite_db), coll)
    # Milvus Lite 2.x (the C++ engine in local mode) has only FLAT; a server and Lite 3 build HNSW
    assert client_for(spec).describe_index(coll, "vector")["index_type"] in ("HNSW", "FLAT")
    assert hnsw.search(np.asarray(hnsw.vectors[0]), 1, model_id=hnsw.model_id)[0].path == hnsw.entries[0].path


def test_collection_of_another_model_is_refused(tmp_path, gallery, pretrained, lite_db, tiny_checkpoint):
    store = _store(lite_db, "owned")
    _build(gallery, tmp_path / "a.idx", pretrained, store)
    # a second index may not silently take over (or mix vectors into) an existing collection
    with pytest.raises(IndexStoreError, match="already exists.*--overwrite"):
        _build(gallery, tmp_path / "b.idx", pretrained, store)
    # --overwrite with another model replaces the collection: the first index is then refused on open
    build_index(
        gallery, tiny_checkpoint, tmp_path / "b.idx", progress=False, num_workers=0, store=store, overwrite=True
    )
    with pytest.raises(IndexStoreError, match="holds vectors of model 'test_efficientnet") as exc:
        Index.open(tmp_path / "a.idx")
    assert "\n" not in str(exc.value)
    with pytest.raises(IndexStoreError, match="holds vectors of model"):
        update_index(tmp_path / "a.idx", preloaded=pretrained, progress=False, num_workers=0)
    assert len(Index.open(tmp_path / "b.idx")) == 6


def test_search_cli_and_service_against_milvus(tmp_path, gallery, pretrained, lite_db, cli, capsys, monkeypatch):
    from fastapi.testclient import TestClient

    from sbir.index import QueryEncoder
    from sbir.index import model as index_model
    from sbir.serve import SearchService, create_app

    monkeypatch.setattr(index_model, "load_model", lambda *a, **k: pretrained)  # loaded once per session
    idx = tmp_path / "idx"
    store = _store(lite_db, "cli")
    argv = ["index", "build", str(gallery), "--model", "pretrained", "--out", str(idx), "--store", store]
    assert cli([*argv, "--image-size", str(IMAGE_SIZE), "--hubness", "none", "--no-progress", "--workers", "0"]) == 0
    assert "built" in capsys.readouterr().out
    assert cli(["index", "info", str(idx), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["store"] == store

    query = gallery / "b" / "sub1" / "p001.jpg"
    assert cli(["search", str(idx), str(query), "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["results"][0]["path"] == "b/sub1/p001.jpg" and len(res["results"]) == 3

    index = Index.open(idx)
    svc = SearchService(index, QueryEncoder.for_record(pretrained[0], pretrained[2], index.model))
    try:
        client = TestClient(create_app(svc))
        with open(query, "rb") as fh:
            r = client.post("/api/search", files={"file": ("q.jpg", fh.read(), "image/jpeg")}, data={"k": "3"})
        assert r.status_code == 200, r.text
        assert [x["path"] for x in r.json()["results"]] == [x["path"] for x in res["results"]]
        first_id = r.json()["results"][0]["id"]
        sim = client.get(f"/api/search/similar/{first_id}?k=2").json()["results"]
        assert len(sim) == 2 and all(x["id"] != first_id for x in sim)
        # an update published while serving is picked up; the new photo is found
        write_gallery(gallery, n=1, start=70)
        assert cli(["index", "update", str(idx), "--no-progress", "--workers", "0"]) == 0
        assert svc.refresh() and len(svc.index) == 7
        new = next(e.path for e in svc.index.entries if "p070" in e.path)
        with open(gallery / new, "rb") as fh:
            r = client.post("/api/search", files={"file": ("q.png", fh.read(), "image/png")}, data={"k": "1"})
        assert r.json()["results"][0]["path"] == new
    finally:
        svc.close()


def test_update_killed_after_writing_rows_converges(tmp_path, gallery, tiny_checkpoint):
    """SIGKILL an update after its rows are in Milvus but before the pointer swap: the old generation stays
    current and correct, and the next update converges to the rows of the gallery."""
    import os
    import signal
    import subprocess
    import sys

    from sbir.index.store import KILL_ENV

    from .test_index_atomic import RUNNER

    db = tmp_path / "kill.db"
    idx = tmp_path / "idx"
    build_index(gallery, tiny_checkpoint, idx, progress=False, num_workers=0, store=str(db))
    old = Index.open(idx)
    (gallery / old.entries[0].path).unlink()
    write_gallery(gallery, n=2, start=80)
    close_clients()  # Milvus Lite: one process per file; the update runs in another one
    env = {**os.environ, KILL_ENV: "before-pointer"}
    argv = [sys.executable, "-c", RUNNER, "index", "update", str(idx), "--no-progress", "--workers", "0"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    after = Index.open(idx)
    assert after.generation == old.generation and len(after) == 6
    hits = after.search(np.asarray(after.vectors[1]), 6, model_id=after.model_id)
    known = {e.path for e in old.entries}
    assert hits and all(h.path in known and h.path != old.entries[0].path for h in hits)
    rep = update_index(idx, preloaded=None, progress=False, num_workers=0)
    assert rep.written and rep.images == 7
    new = Index.open(idx)
    assert _rows(db, DEFAULT_COLLECTION) == len({e.sha256 for e in new.entries}) == 7
    for i in range(len(new)):
        top = new.search(np.asarray(new.vectors[i]), 1, model_id=new.model_id)[0]
        assert top.path == new.entries[i].path
