"""``sbir serve``: FastAPI search API and the drawing page (static files in ``static/``)."""

import importlib

# Imported on first use (PEP 562), so that `sbir --help` does not load torch, FAISS and FastAPI.
_EXPORTS = {
    "app_from_index_dir": "app",
    "create_app": "app",
    "SearchService": "service",
    "ServeSettings": "service",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"sbir.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'sbir.serve' has no attribute {name!r}")


__all__ = ["SearchService", "ServeSettings", "app_from_index_dir", "create_app"]
