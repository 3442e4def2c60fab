"""``sbir serve``: FastAPI search API and the drawing page (static files in ``static/``)."""

from sbir.serve.app import app_from_index_dir, create_app
from sbir.serve.service import SearchService, ServeSettings

__all__ = ["SearchService", "ServeSettings", "app_from_index_dir", "create_app"]
