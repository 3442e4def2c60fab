"""REST API of ``sbir serve`` with FastAPI's test client and the real pretrained model."""

from __future__ import annotations

import io
import os
import threading

import pytest
from PIL import Image

from sbir.data.strokes import rasterize_strokes
from sbir.index import ModelMismatchError, QueryEncoder

from .shapes import CLEAREST, SHAPES, photo, strokes, write_gallery


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_shape_gallery_is_retrievable(base_service):
    """Every outline sketch finds its own shape first (what the browser test relies on)."""
    imgs = [rasterize_strokes(strokes(n), size=256, stroke_width=3) for n in SHAPES]
    futures = [base_service.submit(img, 3) for img in imgs]
    for name, fut in zip(SHAPES, futures, strict=False):
        assert fut.result(timeout=60).hits[0].path == f"{name}.png", name


def test_search_with_strokes_json(client):
    for name in CLEAREST:
        r = client.post("/api/search", json={"strokes": strokes(name), "k": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["k"] == 4 and len(body["results"]) == 4
        top = body["results"][0]
        assert top["path"] == f"{name}.png" and top["rank"] == 1
        assert top["image_url"] == f"/api/images/{top['id']}" and top["thumbnail_url"] == f"/api/thumbnails/{top['id']}"
        scores = [x["score"] for x in body["results"]]
        assert scores == sorted(scores, reverse=True) and -1 <= scores[-1] <= scores[0] <= 1
        assert body["model_id"] == "pretrained:efficientnet_lite0"
        t = body["timings_ms"]
        assert set(t) == {"decode", "queue", "embed", "search", "rerank", "total"}
        assert t["total"] >= t["embed"] > 0 and t["search"] >= 0
        assert t["rerank"] == 0.0  # the pretrained model has no token re-ranker: nothing is re-scored
    # Canvas mode (position kept) and a custom stroke width are accepted too.
    r = client.post(
        "/api/search",
        json={"strokes": strokes("moon"), "canvas": {"width": 400, "height": 400}, "stroke_width": 4},
    )
    assert r.status_code == 200 and len(r.json()["results"]) == 10


def test_search_with_uploaded_image_multipart_and_raw(client):
    sketch = rasterize_strokes(strokes("heart"), size=256, stroke_width=3)
    r = client.post("/api/search", files={"file": ("sketch.png", png_bytes(sketch), "image/png")}, data={"k": "2"})
    assert r.status_code == 200, r.text
    assert [x["path"] for x in r.json()["results"]][:1] == ["heart.png"] and r.json()["k"] == 2
    # a gallery photo as the query finds itself with score 1 (shared encoder)
    r = client.post("/api/search?k=1", content=png_bytes(photo("star")), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    (hit,) = r.json()["results"]
    assert hit["path"] == "star.png" and hit["score"] == pytest.approx(1.0, abs=1e-4)
    # a JPEG with an alpha-less RGBA-less mode (L) is normalised by the loader
    buf = io.BytesIO()
    sketch.convert("L").save(buf, format="JPEG")
    r = client.post("/api/search", files={"file": ("s.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200 and len(r.json()["results"]) == 10


def test_upload_limit_gives_413(make_client):
    client = make_client(max_upload_bytes=20_000)
    big = os.urandom(30_000)
    r = client.post("/api/search", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield b"x" * 5_000

    r = client.post("/api/search", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413
    small = png_bytes(rasterize_strokes(strokes("moon"), size=128))
    assert len(small) < 20_000
    assert client.post("/api/search", files={"file": ("s.png", small, "image/png")}).status_code == 200


def test_default_upload_limit_is_10_mb(client):
    r = client.post("/api/search", content=b"\0" * (10 * 1024 * 1024 + 1), headers={"content-type": "image/png"})
    assert r.status_code == 413


def bomb_png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (w, h), 1).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"files": {"file": ("x.png", b"this is not an image", "image/png")}}, "not an image file"),
        ({"files": {"file": ("x.png", b"", "image/png")}}, "empty"),
        ({"files": {"file": ("x.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10", "image/png")}}, "x.png"),
        ({"files": {"other": ("x.png", b"1", "image/png")}}, "field named 'file'"),
        ({"data": {"k": "3"}, "files": {"nofile": ("a", b"", "text/plain")}}, "field named 'file'"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "not valid JSON"),
        ({"json": [1, 2]}, "must be an object"),
        ({"json": {"k": 3}}, 'missing field "strokes"'),
        ({"json": {"strokes": "abc"}}, "must be a list"),
        ({"json": {"strokes": []}}, "no strokes"),
        ({"json": {"strokes": [[[1, 2, 3], [1, 2]]]}}, "3 x values but 2 y values"),
        ({"json": {"strokes": [[[1, "a"], [1, 2]]]}}, "x[1] = 'a' is not a number"),
        ({"json": {"strokes": [[[1, 2], [1, None]]]}}, "y[1]"),
        ({"json": {"strokes": [[[1, 2]]]}}, "2 lists"),
        ({"json": {"strokes": [[1, 2], [3, 4]]}}, "stroke 0"),
        ({"json": {"strokes": [[[1, 2], [1, 2]]], "k": 0}}, "k must be between 1 and 100"),
        ({"json": {"strokes": [[[1, 2], [1, 2]]], "k": 101}}, "k must be between"),
        ({"json": {"strokes": [[[1, 2], [1, 2]]], "k": "ten"}}, "k must be an integer"),
        ({"json": {"strokes": [[[1, 2], [1, 2]]], "k": 2.5}}, "k must be an integer"),
        ({"json": {"strokes": [[[1, 2], [1, 2]]], "canvas": {"width": -1, "height": 5}}}, "canvas.width"),
        ({"json": {"strokes": [[[1, 2], [1, 2]]], "canvas": [400, 400]}}, '"canvas" must be an object'),
        ({"json": {"strokes": [[[1, 2], [1, 2]]], "stroke_width": 500}}, "stroke_width"),
        ({"json": {"strokes": [[[1, 2], [1, 2]]], "colour": "red"}}, "unknown field(s) colour"),
    ],
)
def test_bad_input_gets_400_with_a_message(client, kwargs, words):
    r = client.post("/api/search", **kwargs)
    assert r.status_code == 400, r.text
    assert words in r.json()["detail"]


def test_too_many_points_and_bombs_get_400(make_client):
    client = make_client(max_points=1000)
    many = [[list(range(600)), list(range(600))], [list(range(600)), list(range(600))]]
    r = client.post("/api/search", json={"strokes": many})
    assert r.status_code == 400 and "more than 1000 points" in r.json()["detail"]
    data = bomb_png(5000, 5000)  # 25 Mpx, a few KB compressed
    assert len(data) < 100_000
    r = client.post("/api/search", files={"file": ("bomb.png", data, "image/png")})
    assert r.status_code == 400 and "decompression bomb" in r.json()["detail"]
    r = client.post("/api/search", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]


def test_images_and_thumbnails(client, shape_index):
    gallery, _ = shape_index
    svc = client.app.state.service
    for i, e in enumerate(svc.index.entries):
        r = client.get(f"/api/images/{i}")
        assert r.status_code == 200 and r.content == (gallery / e.path).read_bytes()
        assert r.headers["content-type"] == "image/png"
    r = client.get("/api/thumbnails/3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 256
    assert client.get("/api/thumbnails/3").content == r.content  # from the cache


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/10",
        "/api/images/-1",
        "/api/images/abc",
        "/api/images/1.0",
        "/api/images/ 1",
        "/api/images/..%2f..%2fetc%2fpasswd",
        "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/images/%2fetc%2fpasswd",
        "/api/images/%252e%252e%252fsecret.txt",
        "/api/thumbnails/..%2fsecret.txt",
        "/api/thumbnails/99999999999999999999999",
        "/api/images/0/../../secret.txt",
        "/static/..%2f..%2fapp.py",
        "/static/%2e%2e/%2e%2e/app.py",
        "/static/../app.py",
        "/api/images/....//....//secret.txt",
    ],
)
def test_no_request_reads_outside_the_gallery(client, shape_index, url):
    gallery, _ = shape_index
    secret = gallery.parent / "secret.txt"
    secret.write_text("TOP SECRET")
    r = client.get(url)
    assert r.status_code in (404, 400, 405), (url, r.status_code)
    assert b"TOP SECRET" not in r.content and b"import" not in r.content
    assert b"root:" not in r.content


def test_symlinks_leaving_the_gallery_are_refused(tmp_path, pretrained):
    """A gallery file replaced by a link to outside (or inside a linked folder) is never served."""
    from fastapi.testclient import TestClient

    from sbir.index import Index, build_index
    from sbir.serve import SearchService, create_app

    gallery = tmp_path / "g"
    gallery.mkdir()
    for name in ("circle", "star", "moon"):
        photo(name, 64).save(gallery / f"{name}.png")
    (gallery / "sub").mkdir()
    photo("hbar", 64).save(gallery / "sub" / "hbar.png")
    build_index(
        gallery, "pretrained", tmp_path / "idx", image_size=64, progress=False, num_workers=0, preloaded=pretrained
    )
    index = Index.open(tmp_path / "idx")
    svc = SearchService(index, QueryEncoder(pretrained[0], pretrained[2], 64, False))
    client = TestClient(create_app(svc))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"TOP SECRET")
    (outside / "hbar.png").write_bytes(b"TOP SECRET")
    ids = {e.path: i for i, e in enumerate(index.entries)}
    assert client.get(f"/api/images/{ids['star.png']}").status_code == 200
    (gallery / "star.png").unlink()
    os.symlink(outside / "secret.png", gallery / "star.png")
    (gallery / "sub" / "hbar.png").unlink()
    (gallery / "sub").rmdir()
    os.symlink(outside, gallery / "sub")
    for path in ("star.png", "sub/hbar.png"):
        for kind in ("images", "thumbnails"):
            r = client.get(f"/api/{kind}/{ids[path]}")
            assert r.status_code == 404, (path, kind)
            assert b"TOP SECRET" not in r.content and str(tmp_path) not in r.text
    # a deleted file is a 404 too, a link inside the gallery is fine
    (gallery / "moon.png").unlink()
    assert client.get(f"/api/images/{ids['moon.png']}").status_code == 404
    os.symlink(gallery / "circle.png", gallery / "moon.png")
    assert client.get(f"/api/images/{ids['moon.png']}").status_code == 200
    svc.close()


def test_page_static_docs_and_health(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    needles = ('<canvas id="sketch"', 'id="brush"', 'id="undo"', 'id="clear"', 'id="upload"', 'id="results"')
    for needle in (*needles, "/static/app.js"):
        assert needle in html
    assert "http://" not in html and "https://" not in html  # no CDN: works offline
    assert "script-src 'self'" in r.headers["content-security-policy"]
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "pointerdown" in js.text and "/api/search" in js.text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/healthz").json() == {
        "status": "ok",
        "images": 10,
        "model_id": "pretrained:efficientnet_lite0",
        "generation": "gen-000001",
        "api_key_required": False,
    }
    info = client.get("/api/info").json()
    assert info["images"] == 10 and info["max_k"] == 100 and info["kind"] == "none"
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    for path in ("/api/images/{image_id}", "/api/thumbnails/{image_id}", "/healthz"):
        assert path in spec["paths"]


def test_concurrent_queries_are_micro_batched(make_client):
    client = make_client(max_batch=8)
    svc = client.app.state.service
    names = list(SHAPES)
    results: dict[int, dict] = {}

    def one(i: int) -> None:
        r = client.post("/api/search", json={"strokes": strokes(names[i % len(names)]), "k": 1})
        results[i] = r.json()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 12
    for i, body in results.items():
        assert body["results"][0]["path"] == f"{names[i % len(names)]}.png"
    assert svc.batched_queries == 12
    assert svc.batches < 12  # some queries shared a forward pass
    assert max(b["batch_size"] for b in results.values()) > 1


def test_service_refuses_an_encoder_of_another_model(base_service):
    from sbir.serve import SearchService

    other = QueryEncoder(base_service.encoder.model, "efficientnet_lite0:feedfeedfeedfeed", 224, False)
    with pytest.raises(ModelMismatchError, match="different models"):
        SearchService(base_service.index, other)


def test_overload_gets_503_not_an_unbounded_queue(base_service):
    import time

    from fastapi.testclient import TestClient

    from sbir.serve import SearchService, ServeSettings, create_app
    from sbir.serve.service import Busy

    svc = SearchService(base_service.index, base_service.encoder, ServeSettings(max_queue=2, max_batch=1))
    img = rasterize_strokes(strokes("moon"), size=64)
    with base_service.encoder._lock:  # the model is busy: queued queries cannot be served yet
        futures = [svc.submit(img, 1)]
        deadline = time.time() + 30
        while svc._queue.qsize() and time.time() < deadline:  # the worker takes it and waits for the model
            time.sleep(0.01)
        futures += [svc.submit(img, 1), svc.submit(img, 1)]
        with pytest.raises(Busy, match="retry"):
            svc.submit(img, 1)
        r = TestClient(create_app(svc)).post("/api/search", json={"strokes": strokes("moon")})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "retry" in r.json()["detail"]
    for f in futures:
        assert f.result(timeout=60).hits[0].path == "moon.png"
    svc.close()


# ---------------------------------------------------------------- settings, limits, docs, generations


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"default_k": 0}, "default_k"),
        ({"max_k": 0}, "max_k"),
        ({"max_k": 5, "default_k": 10}, "default_k"),
        ({"max_upload_bytes": -1}, "max_upload_bytes"),
        ({"max_points": 0}, "max_points"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"thumb_size": -256}, "thumb_size"),
        ({"thumb_cache": -1}, "thumb_cache"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_batch": 2.5}, "max_batch"),
        ({"max_k": True}, "max_k"),
    ],
)
def test_serve_settings_validate_themselves(kwargs, field):
    from sbir.errors import ConfigError
    from sbir.serve import ServeSettings

    with pytest.raises(ConfigError, match=f"ServeSettings.{field} "):
        ServeSettings(**kwargs)


def test_serve_settings_defaults_share_the_query_limits():
    from sbir.data.query import MAX_POINTS
    from sbir.serve import ServeSettings

    s = ServeSettings(max_k=50, default_k=5, thumb_cache=0)
    assert s.max_points == MAX_POINTS and s.query_limits.max_k == 50 and s.query_limits.max_points == MAX_POINTS


def test_deeply_nested_json_gets_400_not_500(client):
    body = b"[" * 100_000 + b"]" * 100_000
    r = client.post("/api/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested 100000 levels deep" in r.json()["detail"]
    json_type = {"content-type": "application/json"}
    r = client.post("/api/search", content=b'{"strokes": ' + b"[" * 50 + b"]" * 50 + b"}", headers=json_type)
    assert r.status_code == 400 and "nested" in r.json()["detail"]
    r = client.post("/api/search", content=b'{"strokes": [[[0, NaN], [0, 1]]]}', headers=json_type)
    assert r.status_code == 400 and "non-finite" in r.json()["detail"]


def test_openapi_documents_the_sketch_query_model(client):
    spec = client.get("/openapi.json").json()
    schema = spec["paths"]["/api/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"strokes", "k", "canvas", "stroke_width"}
    assert "$ref" not in str(schema)  # inlined: OpenAPI has no #/$defs
    assert schema["properties"]["stroke_width"]["maximum"] == 32


@pytest.mark.parametrize(
    "url, asset", [("/docs", "/static/swagger-ui-bundle.js"), ("/redoc", "/static/redoc.standalone.js")]
)
def test_docs_load_their_assets_from_the_server_not_a_cdn(client, url, asset):
    r = client.get(url)
    assert r.status_code == 200 and asset in r.text
    assert "http://" not in r.text and "https://" not in r.text, "the docs page must not need the network"
    js = client.get(asset)
    assert js.status_code == 200 and len(js.content) > 100_000
    if url == "/docs":
        assert client.get("/static/swagger-ui.css").status_code == 200


def test_aborted_upload_is_not_logged_as_an_error(base_service, caplog):
    """A client that disconnects mid-upload: no ERROR log, no traceback (starlette's ClientDisconnect)."""
    import asyncio
    import logging

    from sbir.serve import create_app

    app = create_app(base_service)
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": b"\x89PNG\r\n", "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/search",
        "raw_path": b"/api/search",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"image/png"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    with caplog.at_level(logging.DEBUG):
        asyncio.run(app(scope, receive, send))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert sent and sent[0]["status"] != 500


def test_a_running_service_picks_up_a_new_generation(tmp_path, pretrained):
    """``sbir index update`` under a running service: the next request sees the new generation; the one
    being served is never deleted by the update's pruning."""
    from fastapi.testclient import TestClient

    from sbir.index import Index, QueryEncoder, build_index, update_index
    from sbir.serve import SearchService, create_app

    gallery = tmp_path / "photos"
    write_gallery(gallery)
    idx = tmp_path / "idx"
    build_index(gallery, "pretrained", idx, progress=False, num_workers=0, preloaded=pretrained)
    index = Index.open(idx)
    svc = SearchService(index, QueryEncoder.for_record(pretrained[0], pretrained[2], index.model))
    with TestClient(create_app(svc)) as client:
        assert client.get("/healthz").json()["generation"] == "gen-000001"
        photo("heart").save(gallery / "heart2.png")
        update_index(idx, progress=False, num_workers=0, preloaded=pretrained)
        health = client.get("/healthz").json()
        assert health["generation"] == "gen-000002" and health["images"] == 11
        assert client.get("/api/info").json()["generation"] == "gen-000002"
        r = client.post("/api/search", json={"strokes": strokes("heart"), "k": 11})
        assert r.status_code == 200 and {x["path"] for x in r.json()["results"]} >= {"heart.png", "heart2.png"}
        ids = {x["path"]: x["id"] for x in r.json()["results"]}
        assert client.get(f"/api/thumbnails/{ids['heart2.png']}").status_code == 200

        # two updates while no request comes: gen-000002 is still served, so it is kept
        (gallery / "heart2.png").unlink()
        update_index(idx, progress=False, num_workers=0, preloaded=pretrained)
        photo("moon").save(gallery / "moon2.png")
        update_index(idx, progress=False, num_workers=0, preloaded=pretrained)
        assert (idx / "gen-000002").is_dir() and (idx / "gen-000004").is_dir()
        assert not (idx / "gen-000001").exists()
        assert svc._index.generation == "gen-000002"
        health = client.get("/healthz").json()
        assert health["generation"] == "gen-000004" and health["images"] == 11
        # released: the next update prunes it
        (gallery / "moon2.png").unlink()
        update_index(idx, progress=False, num_workers=0, preloaded=pretrained)
        assert not (idx / "gen-000002").exists()
        assert client.get("/healthz").json()["generation"] == "gen-000005"
    svc.close()
