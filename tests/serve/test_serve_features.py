"""More like this, batch search, the raster preview, the API key, CORS and the runtime in /api/info."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from sbir.data.query import RASTER_SIZE, SketchQuery

from .shapes import CLEAREST, SHAPES, strokes


@pytest.fixture
def app_client(base_service):
    """A TestClient for the shared service with create_app options (api_key, cors_origins)."""
    from fastapi.testclient import TestClient

    from sbir.serve import create_app

    made = []

    def make(**options):
        c = TestClient(create_app(base_service, **options))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_similar_uses_the_stored_photo_vector_and_excludes_itself(client, base_service):
    idx = base_service.index
    star = next(e for e, x in enumerate(idx.entries) if x.path == "star.png")
    r = client.get(f"/api/search/similar/{star}?k=4")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query_id"] == star and body["query_path"] == "star.png" and body["k"] == 4
    ids = [x["id"] for x in body["results"]]
    assert star not in ids and len(ids) == 4 and [x["rank"] for x in body["results"]] == [1, 2, 3, 4]
    # the same ranking as brute-force cosine over the stored vectors
    v = np.asarray(idx.vectors, np.float32)
    scores = v @ v[star]
    expected = [int(i) for i in np.argsort(-scores) if i != star][:4]
    assert ids == expected
    assert body["results"][0]["score"] == pytest.approx(float(scores[expected[0]]), abs=1e-4)
    # every photo but itself with k = all
    n = len(idx)
    assert len(client.get(f"/api/search/similar/{star}?k={n}").json()["results"]) == n - 1


@pytest.mark.parametrize("bad, code", [("abc", 404), ("99999", 404), ("-1", 404), ("0?k=0", 400)])
def test_similar_bad_input(client, bad, code):
    r = client.get(f"/api/search/similar/{bad}")
    assert r.status_code == code and r.json()["detail"]


def test_batch_returns_one_result_list_per_query_in_order(client):
    names = list(CLEAREST)
    payload = [{"strokes": strokes(n), "k": 2 + i} for i, n in enumerate(names)]
    r = client.post("/api/search/batch", json=payload)
    assert r.status_code == 200, r.text
    searches = r.json()["searches"]
    assert len(searches) == len(names)
    for i, (name, s) in enumerate(zip(names, searches, strict=True)):
        assert s["k"] == 2 + i and len(s["results"]) == 2 + i
        assert s["results"][0]["path"] == f"{name}.png"
    # the same as single searches
    single = client.post("/api/search", json=payload[0]).json()["results"]
    assert [x["id"] for x in single] == [x["id"] for x in searches[0]["results"]]


@pytest.mark.parametrize(
    "body, words",
    [
        (b"{}", "non-empty JSON list"),
        (b"[]", "non-empty JSON list"),
        (b"[1, 2]", "strokes query object"),
        (b'[{"strokes": []}]', "query 0"),
        (json.dumps([{"strokes": strokes("moon")}, {"strokes": "x"}]).encode(), "query 1"),
        (json.dumps([{"strokes": strokes("moon")}] * 65).encode(), "limit is 64"),
        (b"[" * 50 + b"]" * 50, "nested"),
        (b"[{", "not valid JSON"),
        (json.dumps([{"strokes": strokes("moon"), "k": 0}]).encode(), "k"),
    ],
)
def test_batch_bad_input_is_one_400_line(client, body, words):
    r = client.post("/api/search/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert words in detail and "\n" not in detail


def test_raster_is_what_the_model_sees(client):
    body = {"strokes": strokes("heart"), "stroke_width": 4}
    r = client.post("/api/raster", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (RASTER_SIZE, RASTER_SIZE)
    expected = SketchQuery.parse(body).to_image(RASTER_SIZE)
    assert np.array_equal(np.asarray(img.convert("RGB")), np.asarray(expected.convert("RGB")))
    # fitted to the frame: the ink spans most of the raster; in canvas mode it keeps its place
    ink = np.argwhere(np.asarray(img.convert("L")) < 128)
    assert ink[:, 0].max() - ink[:, 0].min() > RASTER_SIZE * 0.7
    body["canvas"] = {"width": 2000, "height": 2000}
    small = Image.open(io.BytesIO(client.post("/api/raster", json=body).content)).convert("L")
    ink2 = np.argwhere(np.asarray(small) < 128)
    assert ink2[:, 0].max() - ink2[:, 0].min() < RASTER_SIZE * 0.3
    r = client.post("/api/raster", json={"strokes": "nope"})
    assert r.status_code == 400 and r.json()["detail"]


def test_info_states_runtime_and_threads(client):
    info = client.get("/api/info").json()
    assert info["runtime"] == "torch" and info["threads"] >= 1 and info["encoder_id"].startswith("torch:")
    assert info["max_queue_ms"] == 1000 and info["max_batch_queries"] == 64
    assert client.get("/healthz").json()["api_key_required"] is False


def test_api_key_guards_the_api_but_not_the_page(app_client):
    client = app_client(api_key="s3cret")
    body = {"strokes": strokes("moon"), "k": 2}
    for method, url, kw in [
        ("post", "/api/search", {"json": body}),
        ("post", "/api/search/batch", {"json": [body]}),
        ("post", "/api/raster", {"json": body}),
        ("get", "/api/info", {}),
        ("get", "/api/thumbnails/0", {}),
        ("get", "/api/images/0", {}),
        ("get", "/api/search/similar/0", {}),
    ]:
        r = getattr(client, method)(url, **kw)
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"], url
        r = getattr(client, method)(url, headers={"X-API-Key": "wrong"}, **kw)
        assert r.status_code == 401, url
        r = getattr(client, method)(url, headers={"X-API-Key": "s3cret"}, **kw)
        assert r.status_code == 200, (url, r.text)
    for url in ("/", "/static/app.js", "/static/examples.json", "/healthz", "/docs", "/openapi.json", "/metrics"):
        assert client.get(url).status_code == 200, url
    assert client.get("/healthz").json()["api_key_required"] is True


def test_empty_api_key_is_refused(base_service):
    from sbir.serve import create_app
    from sbir.serve.service import BadRequest

    with pytest.raises(BadRequest, match="empty"):
        create_app(base_service, api_key=" ")


def test_cors_origins(app_client):
    client = app_client(cors_origins=["https://a.example"], api_key="k")
    pre = client.options(
        "/api/search",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://a.example"
    assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
    r = client.get("/api/info", headers={"Origin": "https://a.example", "X-API-Key": "k"})
    assert r.headers["access-control-allow-origin"] == "https://a.example"
    r = client.get("/api/info", headers={"Origin": "https://evil.example", "X-API-Key": "k"})
    assert "access-control-allow-origin" not in r.headers
    # without --cors-origin no CORS headers at all
    plain = app_client()
    r = plain.get("/api/info", headers={"Origin": "https://a.example"})
    assert "access-control-allow-origin" not in r.headers


def test_openapi_documents_the_new_endpoints(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert "/api/search/similar/{image_id}" in paths and "/api/search/batch" in paths and "/api/raster" in paths
    batch = paths["/api/search/batch"]["post"]
    schema = batch["requestBody"]["content"]["application/json"]["schema"]
    assert schema["type"] == "array" and "strokes" in schema["items"]["properties"]
    assert "503" in batch["responses"] and "401" in batch["responses"]
    assert len(SHAPES) >= 3
