"""Milvus as the vector store of an index: ``--store milvus://HOST:PORT/COLLECTION`` or ``--store PATH.db``.

The index folder stays the source of truth (``CURRENT``, generations,
``manifest.json``, ``model.json``, ``vectors.npy``), so ``sbir search INDEX_DIR``,
``sbir serve INDEX_DIR`` and ``sbir index update INDEX_DIR`` work as with FAISS.
Only the search structure moves: a generation whose manifest has a ``store``
record has no ``index.faiss``; its vectors are rows of a Milvus collection and
searches go through Milvus ``search``.

*Rows.* One row per distinct photo content: primary key = the file's SHA-256
(what the manifest already records), ``vector`` (the vector FAISS would hold:
with a hubness correction the centred vector, for csls with the extra ``-r_g``
column) and ``path`` (one relative path with that content, for people browsing
the collection). Keying by content rather than by manifest position makes
writes idempotent: an update upserts the contents that are new in the
generation and deletes the ones that left it, so a re-run after a kill
converges to the same rows. Files with the same content share a row; a hit on
it is expanded to every manifest entry with that content, as FAISS would
return them side by side with the same score.

*Generations.* The collection is mutable, generations are not: a reader still
serving an older generation drops hits whose content is not in its manifest
(new photos) and can no longer find deleted ones (their files are gone anyway).
A hubness correction re-estimates its photo statistics on every update, which
changes every stored vector, so such an update upserts every row.

*Model.* A metadata row (key ``sbir:meta``) records the model id, the vector
dimension and the metric; opening or writing it with another model is refused with one
line (:class:`~sbir.index.store.IndexStoreError`).

*Milvus Lite* (``PATH.db``, the embedded Milvus from PyPI; 2.x runs the C++
Milvus engine, 3.x is a Python re-implementation, both work) is started by the
process that opens the file and locks it: one process at a time (``sbir serve``
and ``sbir index update`` of the same ``.db`` cannot run side by side; use a
Milvus server for that). Lite ignores shards and replicas; Lite 2.x builds only
FLAT indexes.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from sbir.errors import SbirError

SCHEME = "milvus://"
DEFAULT_COLLECTION = "sbir_photos"
TOKEN_ENV = "SBIR_MILVUS_TOKEN"  # "user:password" or an API key, for a Milvus server that requires one
PK_FIELD, VEC_FIELD, PATH_FIELD = "sha256", "vector", "path"
PATH_MAX = 4096
MAX_TOPK = 16384  # Milvus's limit on a search's limit
UPSERT_BATCH = 2000  # rows per request: 2000 x 512 float32 = 4 MB, well under gRPC's 64 MB
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
PROP_MODEL, PROP_DIM, PROP_METRIC, PROP_FORMAT = "sbir.model_id", "sbir.dim", "sbir.metric", "sbir.format"
META_PK = "sbir:meta"  # primary key of the row that records model id, dimension and metric (not a SHA-256)
FORMAT = "sbir-milvus-v1"
# FAISS kind -> Milvus index type (scores of FLAT and HNSW are exact inner products, as in FAISS)
MILVUS_INDEX = {"none": "FLAT", "hnsw": "HNSW", "ivfpq": "IVF_PQ"}


class StoreError(SbirError):
    """A ``--store`` value that cannot be used (bad URI, Milvus unreachable, pymilvus missing)."""


@dataclass(frozen=True)
class StoreSpec:
    """Where the vectors of an index live: a Milvus server (``uri`` http://...) or a Milvus Lite file."""

    uri: str  # "http://HOST:PORT" or the absolute path of a Milvus Lite .db file
    collection: str
    shards: int | None = None  # shards_num of a new collection (a server; Lite has one)
    replicas: int | None = None  # replica_number when loading the collection (a server with query nodes)

    @property
    def lite(self) -> bool:
        return not self.uri.startswith(("http://", "https://"))

    def text(self) -> str:
        """The ``--store`` value that names this store (printed by ``sbir index info``)."""
        if self.lite:
            return self.uri if self.collection == DEFAULT_COLLECTION else f"{self.uri}?collection={self.collection}"
        hostport = self.uri.split("://", 1)[1]
        q = "&".join(f"{k}={v}" for k, v in (("shards", self.shards), ("replicas", self.replicas)) if v)
        return f"{SCHEME}{hostport}/{self.collection}" + (f"?{q}" if q else "")

    def record(self) -> dict[str, Any]:
        """What the manifest stores (``manifest["store"]``)."""
        return {"kind": "milvus", **asdict(self)}

    @classmethod
    def from_record(cls, rec: Any) -> StoreSpec:
        from sbir.index.store import IndexStoreError

        try:
            if rec.get("kind") != "milvus":
                raise KeyError("kind")
            return cls(str(rec["uri"]), str(rec["collection"]), rec.get("shards"), rec.get("replicas"))
        except (AttributeError, KeyError, TypeError) as exc:
            raise IndexStoreError(
                f"the manifest's store record {rec!r} is invalid ({exc}); rebuild with 'sbir index build --overwrite'"
            ) from None


def _positive(name: str, values: list[str], text: str) -> int:
    try:
        v = int(values[-1])
    except ValueError:
        v = 0
    if v < 1:
        raise StoreError(f"--store {text}: {name} must be a positive integer, got {values[-1]!r}")
    return v


def parse_store(text: str | None) -> StoreSpec | None:
    """``--store`` value -> :class:`StoreSpec`; None for the default FAISS files (``None``, ``""``, ``faiss``).

    ``milvus://HOST:PORT/COLLECTION[?shards=N&replicas=N]`` names a Milvus server (reached at
    ``http://HOST:PORT``); a path ending in ``.db`` (optionally ``?collection=NAME``) a Milvus Lite file.
    """
    if text is None or text in ("", "faiss"):
        return None
    usage = (
        "use milvus://HOST:PORT/COLLECTION[?shards=N&replicas=N] for a Milvus server, "
        "a path ending in .db for a Milvus Lite file, or faiss (the default)"
    )
    if text.startswith(SCHEME):
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = None
        collection = parts.path.strip("/")
        if not parts.hostname or port is None or not collection:
            raise StoreError(f"--store {text} is not a Milvus URI; {usage}")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"shards", "replicas"})
        if unknown:
            raise StoreError(f"--store {text}: unknown option {unknown[0]!r} (known: shards, replicas)")
        shards = _positive("shards", query["shards"], text) if "shards" in query else None
        replicas = _positive("replicas", query["replicas"], text) if "replicas" in query else None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        spec = StoreSpec(f"http://{host}:{port}", collection, shards, replicas)
    else:
        path, _, query_text = text.partition("?")
        if not path.endswith(".db"):
            raise StoreError(f"--store {text} is neither a Milvus URI nor a Milvus Lite .db file; {usage}")
        query = parse_qs(query_text, keep_blank_values=True)
        unknown = sorted(set(query) - {"collection"})
        if unknown:
            raise StoreError(
                f"--store {text}: unknown option {unknown[0]!r} for a Milvus Lite file (known: collection)"
            )
        collection = query["collection"][-1] if "collection" in query else DEFAULT_COLLECTION
        spec = StoreSpec(str(Path(path).expanduser().resolve()), collection)
    if not _NAME_RE.match(spec.collection):
        raise StoreError(
            f"--store {text}: collection name {spec.collection!r} is not valid in Milvus "
            "(letters, digits and underscores, starting with a letter or underscore)"
        )
    return spec


def store_arg(text: str) -> str:
    """argparse ``type=`` for ``--store``: a bad value is a usage error (one line, exit 2) before any work."""
    import argparse

    try:
        parse_store(text)
    except StoreError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--store ")) from None
    return text


# ---------------------------------------------------------------- connections

_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(spec: StoreSpec):
    """One ``MilvusClient`` per URI and process (a Lite file can be opened once per process anyway)."""
    from sbir.index.store import IndexStoreError

    with _CLIENTS_LOCK:
        client = _CLIENTS.get(spec.uri)
        if client is not None:
            return client
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise StoreError(
                "the Milvus store needs pymilvus (and milvus-lite for a .db file): pip install 'sbir[milvus]'"
            ) from None
        if spec.lite:
            Path(spec.uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            client = MilvusClient(uri=spec.uri, token=os.environ.get(TOKEN_ENV, ""))
        except Exception as exc:  # noqa: BLE001 - pymilvus raises many types; one line for the user
            if spec.lite:
                raise IndexStoreError(
                    f"cannot open the Milvus Lite file {spec.uri} ({_short(exc)}); Milvus Lite allows one process "
                    "per file: stop the other sbir process using it, or put the index on a Milvus server"
                ) from None
            raise IndexStoreError(f"cannot connect to Milvus at {spec.uri} ({_short(exc)})") from None
        _CLIENTS[spec.uri] = client
        return client


def close_clients() -> None:
    """Close every cached client and stop this process's Milvus Lite servers, unlocking their files.

    (pymilvus keeps a Lite server running after its client closes; another process, e.g. an
    ``sbir index update`` started by a test, can open the file only once it is stopped.)
    """
    with _CLIENTS_LOCK:
        for uri, c in _CLIENTS.items():
            try:
                c.close()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass
            if not uri.startswith(("http://", "https://")):
                try:
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(uri)
                except (ImportError, AttributeError):  # another milvus-lite: its servers stop at exit
                    pass
        _CLIENTS.clear()


def _short(exc: BaseException) -> str:
    msg = getattr(exc, "message", None) or str(exc) or exc.__class__.__name__
    return " ".join(str(msg).split())[:300]


def _call(spec: StoreSpec, what: str, fn, *args, **kwargs):
    """Run a Milvus call; its failure becomes one IndexStoreError line naming the store."""
    from sbir.index.store import IndexStoreError

    try:
        return fn(*args, **kwargs)
    except SbirError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise IndexStoreError(f"Milvus store {spec.text()}: {what} failed ({_short(exc)})") from None


# ---------------------------------------------------------------- collection


def _props(client, spec: StoreSpec) -> dict[str, str]:
    """The collection's sbir record: the ``path`` field of its metadata row (empty if there is none).

    A row rather than collection properties: Milvus Lite 2.5 (the C++ engine) has no collection
    properties, and a row works on every Milvus. Its zero vector never becomes a hit: searches map
    rows through the manifest, which has no such key.
    """
    _load(client, spec)
    rows = _call(spec, "get", client.get, spec.collection, ids=[META_PK], output_fields=[PATH_FIELD])
    try:
        return {str(k): str(v) for k, v in json.loads(rows[0][PATH_FIELD]).items()}
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        return {}


def check_collection(client, spec: StoreSpec, model_id: str, dim: int, metric: str) -> None:
    """Refuse a collection written for another model, dimension or metric (one line)."""
    from sbir.index.store import IndexStoreError

    props = _props(client, spec)
    if props.get(PROP_FORMAT) != FORMAT:
        raise IndexStoreError(
            f"Milvus collection {spec.collection} at {spec.uri} was not written by sbir (no {META_PK!r} row); "
            "choose another collection"
        )
    if props.get(PROP_MODEL) != model_id:
        raise IndexStoreError(
            f"Milvus collection {spec.collection} at {spec.uri} holds vectors of model {props.get(PROP_MODEL)!r}, "
            f"not {model_id!r}; embeddings of different models are not comparable: rebuild with "
            "'sbir index build --overwrite' or use another collection"
        )
    if props.get(PROP_DIM) != str(dim) or props.get(PROP_METRIC) != metric:
        raise IndexStoreError(
            f"Milvus collection {spec.collection} at {spec.uri} holds {props.get(PROP_DIM)}-d "
            f"{props.get(PROP_METRIC)} vectors, the index needs {dim}-d {metric}; rebuild with "
            "'sbir index build --overwrite'"
        )


def _index_params(client, kind: str, params: dict[str, Any], metric: str):
    ip = client.prepare_index_params()
    mp: dict[str, Any] = {}
    if kind == "hnsw":
        mp = {"M": int(params["M"]), "efConstruction": int(params["ef_construction"])}
    elif kind == "ivfpq":
        mp = {"nlist": int(params["nlist"]), "m": int(params["m"]), "nbits": int(params["nbits"])}
    ip.add_index(VEC_FIELD, index_type=MILVUS_INDEX[kind], metric_type=metric.upper(), params=mp)
    return ip


def _create(client, spec: StoreSpec, model_id: str, dim: int, metric: str, kind: str, params: dict) -> None:
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(PK_FIELD, DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field(VEC_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(PATH_FIELD, DataType.VARCHAR, max_length=PATH_MAX)
    extra = {"num_shards": spec.shards} if spec.shards and not spec.lite else {}
    _call(
        spec,
        "create_collection",
        client.create_collection,
        spec.collection,
        schema=schema,
        consistency_level="Strong",  # a search sees every write before it (updates swap the pointer after)
        **extra,
    )
    _create_index(client, spec, kind, params, metric)
    _load(client, spec)
    meta = {PROP_FORMAT: FORMAT, PROP_MODEL: model_id, PROP_DIM: str(dim), PROP_METRIC: metric}
    row = {PK_FIELD: META_PK, VEC_FIELD: [0.0] * dim, PATH_FIELD: json.dumps(meta)}
    _call(spec, "insert", client.insert, spec.collection, [row])


def _ensure_kind(client, spec: StoreSpec, kind: str, params: dict, metric: str) -> None:
    """Rebuild the vector index when an update changes the index kind (``--approx``)."""
    desc = _call(spec, "describe_index", client.describe_index, spec.collection, VEC_FIELD)
    if (desc or {}).get("index_type") == MILVUS_INDEX[kind]:
        return
    if spec.lite and desc.get("index_type") == "FLAT" and _LITE_FLAT_ONLY.get(spec.uri):
        return  # this Milvus Lite has only FLAT (see _create_index)
    _call(spec, "release_collection", client.release_collection, spec.collection)
    _call(spec, "drop_index", client.drop_index, spec.collection, VEC_FIELD)
    _create_index(client, spec, kind, params, metric)


_LITE_FLAT_ONLY: dict[str, bool] = {}


def _create_index(client, spec: StoreSpec, kind: str, params: dict, metric: str) -> None:
    """Create the vector index of ``kind``; Milvus Lite 2.x, which has only FLAT / IVF_FLAT, gets FLAT.

    (Milvus Lite 2.x runs the C++ engine "in local mode"; it refuses HNSW and IVF_PQ. The manifest
    keeps the requested kind, so the same index moved to a server with ``--overwrite`` gets it.)
    """
    from sbir.index.store import IndexStoreError

    try:
        _call(spec, "create_index", client.create_index, spec.collection, _index_params(client, kind, params, metric))
    except IndexStoreError as exc:
        if not spec.lite or kind == "none" or "only support" not in str(exc):
            raise
        _LITE_FLAT_ONLY[spec.uri] = True
        _call(spec, "create_index", client.create_index, spec.collection, _index_params(client, "none", {}, metric))


def _load(client, spec: StoreSpec) -> None:
    """Load the collection for search unless loaded (``replicas`` on a server spreads it over query nodes)."""
    state = _call(spec, "get_load_state", client.get_load_state, spec.collection)
    if "Loaded" in str((state or {}).get("state", "")):
        return
    extra = {"replica_number": spec.replicas} if spec.replicas and not spec.lite else {}
    _call(spec, "load_collection", client.load_collection, spec.collection, **extra)


def drop(spec: StoreSpec) -> None:
    """Remove the collection (``sbir index build --overwrite``)."""
    client = client_for(spec)
    if _call(spec, "has_collection", client.has_collection, spec.collection):
        _call(spec, "drop_collection", client.drop_collection, spec.collection)


def milvus_params(kind: str, n: int, dim: int, params: dict[str, Any] | None) -> dict[str, Any]:
    """Index parameters recorded in the manifest (the FAISS names; Milvus gets the same values)."""
    from sbir.index.faiss_ops import default_params  # here: ``sbir --help`` parses --store without FAISS

    p = {**default_params(kind, n, dim), **(params or {})}
    if kind == "ivfpq":
        p["nlist"] = int(min(max(1, int(p["nlist"])), 65536))
    return p


def write_rows(
    spec: StoreSpec,
    *,
    fresh: bool,
    overwrite: bool,
    model_id: str,
    metric: str,
    kind: str,
    params: dict[str, Any],
    shas: list[str],
    paths: list[str],
    vectors: np.ndarray,
    upsert: set[str] | None,
    delete: set[str],
) -> None:
    """Bring the collection's rows to the generation about to be written.

    ``shas``/``paths``/``vectors`` are the generation's entries (duplicated contents
    included); ``upsert`` the contents whose rows must be (re)written (None = all);
    ``delete`` the contents that left the index. ``fresh`` (a build): the collection
    must not exist unless ``overwrite``, which drops it first.
    """
    from sbir.index.store import IndexStoreError

    client = client_for(spec)
    dim = int(vectors.shape[1])
    exists = _call(spec, "has_collection", client.has_collection, spec.collection)
    if fresh and exists:
        if not overwrite:
            raise IndexStoreError(
                f"Milvus collection {spec.collection} already exists at {spec.uri}; pass --overwrite to replace it, "
                "or choose another collection"
            )
        _call(spec, "drop_collection", client.drop_collection, spec.collection)
        exists = False
    if not exists:
        if not fresh:
            raise IndexStoreError(
                f"Milvus collection {spec.collection} is missing at {spec.uri}; rebuild with "
                "'sbir index build --overwrite'"
            )
        _create(client, spec, model_id, dim, metric, kind, params)
    else:
        check_collection(client, spec, model_id, dim, metric)
        _ensure_kind(client, spec, kind, params, metric)
    _load(client, spec)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    vecs = np.asarray(vectors, dtype=np.float32)
    for i, sha in enumerate(shas):
        if sha in seen or (upsert is not None and sha not in upsert):
            continue
        seen.add(sha)
        rows.append({PK_FIELD: sha, VEC_FIELD: vecs[i].tolist(), PATH_FIELD: paths[i][:PATH_MAX]})
        if len(rows) >= UPSERT_BATCH:
            _call(spec, "upsert", client.upsert, spec.collection, rows)
            rows = []
    if rows:
        _call(spec, "upsert", client.upsert, spec.collection, rows)
    gone = sorted(delete - set(shas))
    for s in range(0, len(gone), UPSERT_BATCH):
        _call(spec, "delete", client.delete, spec.collection, ids=gone[s : s + UPSERT_BATCH])
    # Seal the segments: durable before the pointer swap, and searched through the index (Milvus Lite searches
    # unsealed rows by brute force at ~0.5 s a query for 3000 x 512 on a busy 2-core machine, ~20 ms sealed).
    _call(spec, "flush", client.flush, spec.collection)
    if spec.lite:
        _reload_indexed(client, spec)


def _reload_indexed(client, spec: StoreSpec, timeout_s: float = 120.0) -> None:
    """Milvus Lite: wait for the vector index of the new segments, then reload the collection.

    A Milvus server hands indexed segments over to its query nodes by itself; Milvus Lite keeps
    searching the segments it loaded before they were indexed (brute force: 143 ms a query for
    30k x 512 with HNSW built, 15 ms after a reload, benchmarks/index_search.py). A reader in another
    process loads the indexed segments anyway; this is for the writing process (and ``sbir serve``
    refreshing in it).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        desc = _call(spec, "describe_index", client.describe_index, spec.collection, VEC_FIELD) or {}
        if not int(desc.get("pending_index_rows", 0) or 0):
            break
        time.sleep(0.2)
    _call(spec, "release_collection", client.release_collection, spec.collection)
    _load(client, spec)


# ---------------------------------------------------------------- search


class MilvusSearcher:
    """The :class:`sbir.index.faiss_ops.Searcher` interface over a Milvus collection.

    ``search`` returns (scores, ids) with ids = positions in this generation's
    manifest, scores as FAISS gives them (inner product; minus the euclidean
    distance for ``l2``). With csls the stored vectors carry a last ``bias``
    column and queries are searched as ``[scale * q, 1]``, as in FAISS.
    """

    #: extra rows fetched per query: hits of contents this generation does not know are dropped
    SLACK = 16

    def __init__(
        self,
        spec: StoreSpec,
        kind: str,
        params: dict[str, Any],
        shas: list[str],
        metric: str = "ip",
        csls_scale: float | None = None,
    ):
        self.spec = spec
        self.kind = kind
        self.params = dict(params)
        self.metric = metric
        self.csls_scale = csls_scale
        self.client = client_for(spec)
        self.positions: dict[str, list[int]] = {}
        for i, s in enumerate(shas):
            self.positions.setdefault(s, []).append(i)
        self.n = len(shas)

    @property
    def ntotal(self) -> int:
        return self.n

    def _search_params(self, limit: int) -> dict[str, Any]:
        p: dict[str, Any] = {}
        if self.kind == "hnsw" and "ef_search" in self.params:
            p["ef"] = max(int(self.params["ef_search"]), limit)  # Milvus refuses an HNSW ef below the limit
        if self.kind == "ivfpq" and "nprobe" in self.params:
            p["nprobe"] = int(self.params["nprobe"])
        return {"metric_type": self.metric.upper(), "params": p}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) for (Q, D) queries; rows padded with (-inf, -1) when fewer are found."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        kk = min(k, self.n)
        if kk <= 0 or not len(q):
            return scores, ids
        if self.csls_scale is not None:
            q = np.hstack([self.csls_scale * q, np.ones((len(q), 1), np.float32)])
        limit = min(MAX_TOPK, kk + self.SLACK)
        res = _call(
            self.spec,
            "search",
            self.client.search,
            self.spec.collection,
            data=q.tolist(),
            limit=limit,
            search_params=self._search_params(limit),
            output_fields=[],
        )
        for row, hits in enumerate(res):
            out = 0
            for h in hits:
                pos = self.positions.get(str(h.get(PK_FIELD, h.get("id"))))
                if pos is None:
                    continue  # a content of a newer generation
                d = float(h["distance"])
                s = d if self.metric == "ip" else -float(np.sqrt(max(d, 0.0)))  # Milvus L2 is squared
                for p in pos:
                    if out >= k:
                        break
                    scores[row, out], ids[row, out] = s, p
                    out += 1
                if out >= k:
                    break
        return scores, ids


def open_searcher(
    rec: Any, model_id: str, dim: int, metric: str, kind: str, params: dict, shas: list[str], csls_scale: float | None
) -> MilvusSearcher:
    """The searcher of a generation whose manifest has a ``store`` record; refuses another model's collection."""
    from sbir.index.store import IndexStoreError

    spec = StoreSpec.from_record(rec)
    client = client_for(spec)
    if not _call(spec, "has_collection", client.has_collection, spec.collection):
        raise IndexStoreError(
            f"Milvus collection {spec.collection} is missing at {spec.uri}; rebuild with 'sbir index build --overwrite'"
        )
    check_collection(client, spec, model_id, dim, metric)
    _load(client, spec)
    return MilvusSearcher(spec, kind, params, shas, metric, csls_scale)


def describe(rec: Any) -> str:
    """``--store`` text of a manifest's store record (for ``sbir index info``)."""
    return StoreSpec.from_record(rec).text() if rec else "faiss"
