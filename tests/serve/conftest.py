"""Fixtures for the service tests: an index of the shape gallery built with the real pretrained model."""

from __future__ import annotations

from pathlib import Path

import pytest

from .shapes import write_gallery


@pytest.fixture(scope="session")
def pretrained():
    from sbir.engine.inference import load_model

    return load_model("pretrained")


@pytest.fixture(scope="session")
def shape_index(tmp_path_factory, pretrained) -> Path:
    """(gallery folder, index folder) of the shape gallery; the model's default input size (224)."""
    from sbir.index import build_index

    root = tmp_path_factory.mktemp("shapes")
    gallery = root / "photos"
    write_gallery(gallery)
    index_dir = root / "index"
    # cosine scores (no hubness correction): the tests check cosine properties (a photo finds itself at 1.0)
    build_index(gallery, "pretrained", index_dir, progress=False, num_workers=0, preloaded=pretrained, hubness="none")
    return gallery, index_dir


@pytest.fixture(scope="session")
def base_service(shape_index, pretrained):
    from sbir.index import Index, QueryEncoder
    from sbir.serve import SearchService

    index = Index.open(shape_index[1])
    enc = QueryEncoder.for_record(pretrained[0], pretrained[2], index.model)
    svc = SearchService(index, enc)
    yield svc
    svc.close()


@pytest.fixture
def make_client(base_service):
    """A TestClient for the shape index with custom ServeSettings (sharing the loaded index and model)."""
    from fastapi.testclient import TestClient

    from sbir.serve import SearchService, ServeSettings, create_app

    made = []

    def make(**settings):
        svc = base_service
        if settings:
            svc = SearchService(base_service.index, base_service.encoder, ServeSettings(**settings))
        client = TestClient(create_app(svc))
        made.append((client, svc))
        return client

    yield make
    for client, svc in made:
        client.close()
        if svc is not base_service:
            svc.close()


@pytest.fixture
def client(make_client):
    return make_client()
