"""The on-disk index: generations, an atomic pointer, loading and search.

Layout of an index folder::

    INDEX_DIR/
      CURRENT                 JSON pointer {"generation": "gen-000003"}, replaced atomically
      gen-000003/             one complete, immutable generation
        index.faiss           the FAISS index (ids = positions in the manifest); absent when the manifest
                              names a Milvus store (sbir.index.milvus_store), which then holds the vectors
        vectors.npy           raw float32 (N, D) L2-normalised photo embeddings
        manifest.json         gallery root, entries [{path, size, mtime_ns, sha256}], index kind/params
        model.json            model_id, the spec as given, its absolute path, the full config,
                              image size and flip TTA used for the embeddings, the hubness correction
        hubness.npz           hubness statistics (photo / sketch means, the sketch statistics set's
                              embeddings, csls penalties r_g, the neighbour ids of database-side
                              augmentation, sbir.index.dba); only with --hubness center|csls
      gen-000002/             the previous generation (kept for readers that are still loading)
      .lock                   held (flock) by the one process writing
      thumbs/                 thumbnail cache of ``sbir serve`` (disposable)

A writer builds a whole new generation in a hidden temporary folder, fsyncs
every file, renames the folder to ``gen-NNNNNN`` and only then replaces
``CURRENT`` with ``os.replace``. A process killed at any moment therefore
leaves ``CURRENT`` naming a complete generation: the previous index, or the new
one once the pointer was swapped. Leftovers of killed writes are removed by the
next write.

``vectors.npy`` holds the model's (post-processed) photo embeddings; with a
hubness correction (:mod:`sbir.index.hubness`) ``index.faiss`` holds the
corrected vectors (centred, averaged with their neighbours with ``--dba``; for
csls with a last column ``-r_g``) and
:meth:`Index.search_many` corrects the raw query embeddings before searching.

Ids are positions in the manifest of one generation; they change when the
gallery changes (results also carry the relative path).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from sbir.errors import SbirError
from sbir.fileio import atomic_write_text, fsync_dir
from sbir.index.expansion import EXPAND_WEIGHT, check_expand, expand_queries
from sbir.index.faiss_ops import Searcher, configure
from sbir.index.hubness import STATS_FILE, Hubness

FORMAT_TAG = "sbir-index-v1"
POINTER = "CURRENT"
GEN_RE = re.compile(r"^gen-(\d{6,})$")
KILL_ENV = "SBIR_INDEX_KILL_AT"  # test hook: SIGKILL this process at the named write stage
WRITE_STAGES = (
    "before-write",
    "after-vectors",
    "after-faiss",
    "after-manifest",
    "before-rename",
    "before-pointer",
    "after-pointer",
)


class IndexStoreError(SbirError):
    """An index folder is missing, corrupt, busy, or used with the wrong model."""


class ModelMismatchError(IndexStoreError):
    """A query was embedded by a different model than the one that built the index."""


def _stage(name: str) -> None:
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- records


@dataclass
class Entry:
    """One gallery image: path relative to the gallery (POSIX separators), stat and content hash."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


@dataclass
class ModelInfo:
    model_id: str
    spec: str  # as given by the user
    path: str | None  # absolute path of the weights' run folder / file; None for pretrained
    config: dict[str, Any]
    dim: int
    image_size: int
    flip_tta: bool
    domain: str = "photo"
    # "ip": cosine similarity of L2-normalised vectors; "l2": euclidean distance (score = -distance)
    metric: str = "ip"
    # L2-normalise the model's outputs before indexing/searching (a model with raw outputs used with cosine)
    normalize: bool = False
    # The runtime that embedded the photos (sbir.engine.runtime: torch, onnx, onnx-int8, openvino, ...), the
    # identity of its graphs ("torch:<model_id>" or the export's "<precision>:<hash>"; "" in older indexes),
    # the export folder it read them from, and whether JPEGs were decoded in draft mode.
    runtime: str = "torch"
    encoder_id: str = ""
    export_dir: str | None = None
    jpeg_draft: bool = False
    # Hubness correction (sbir.index.hubness): none | center | csls, csls's k, and where the sketch
    # statistics came from; the arrays are in the generation's hubness.npz.
    hubness: str = "none"
    hubness_k: int = 10
    hubness_source: str = ""
    # Query expansion (sbir.index.expansion): photos each query is expanded with; 0 = none.
    expand: int = 0
    # Database-side augmentation (sbir.index.dba): neighbours averaged into each photo; 0 = none.
    dba: int = 0

    @property
    def load_spec(self) -> str:
        return self.path or self.spec


@dataclass
class Hit:
    id: int
    path: str
    score: float
    rank: int


def safe_relpath(rel: str) -> bool:
    """True for a plain relative POSIX path with no ``..``, no absolute or drive prefix."""
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel:
        return False
    if re.match(r"^[A-Za-z]:", rel):
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def inside(path: Path, root: Path) -> bool:
    """True when the real (symlink-resolved) ``path`` lies inside the real ``root``."""
    real = os.path.realpath(path)
    root_real = os.path.realpath(root)
    return os.path.commonpath([real, root_real]) == root_real and real != root_real


# ---------------------------------------------------------------- locking


@contextlib.contextmanager
def write_lock(index_dir: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock so two writers never interleave; released on exit or death."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fh = open(index_dir / ".lock", "a+")
    try:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        except OSError:
            raise IndexStoreError(
                f"another sbir process is writing the index {index_dir}; wait for it to finish and try again"
            ) from None
        yield
    finally:
        fh.close()


# ---------------------------------------------------------------- reading


def searcher_hubness(hub: Hubness, vectors: np.ndarray) -> dict[str, Any]:
    """Searcher keyword arguments for a hubness correction (the photos as searched, csls bias ``-r_g`` and
    scale 2); ``vectors`` are the generation's raw photo vectors."""
    if not hub.active:
        return {}
    out: dict[str, Any] = {"gallery_rows": lambda ids: hub.gallery(vectors, ids)}
    if hub.csls:
        out.update(bias=-hub.r_g, scale=2.0)
    return out


def is_index_dir(path: Path) -> bool:
    return (Path(path) / POINTER).is_file()


def current_generation(index_dir: Path) -> str:
    index_dir = Path(index_dir)
    pointer = index_dir / POINTER
    if not index_dir.is_dir():
        raise IndexStoreError(
            f"index {index_dir} does not exist; build it with "
            f"'sbir index build PHOTOS_DIR --model MODEL --out {index_dir}'"
        )
    if not pointer.is_file():
        raise IndexStoreError(
            f"{index_dir} is not an sbir index (no {POINTER} file); build one with "
            f"'sbir index build PHOTOS_DIR --model MODEL --out {index_dir}'"
        )
    try:
        gen = json.loads(pointer.read_text())["generation"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexStoreError(
            f"{pointer} is corrupt ({exc}); rebuild the index with 'sbir index build --overwrite'"
        ) from exc
    if not isinstance(gen, str) or not GEN_RE.match(gen):
        raise IndexStoreError(
            f"{pointer} names an invalid generation {gen!r}; rebuild the index with 'sbir index build --overwrite'"
        )
    return gen


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexStoreError(
            f"{path} is missing; the index is damaged, rebuild it with 'sbir index build --overwrite'"
        ) from None
    except (OSError, ValueError) as exc:
        raise IndexStoreError(
            f"{path} is unreadable ({exc}); rebuild the index with 'sbir index build --overwrite'"
        ) from exc


class Index:
    """A loaded index generation: manifest, model record, raw vectors and FAISS searcher."""

    def __init__(
        self,
        root: Path,
        generation: str,
        gallery: Path,
        entries: list[Entry],
        model: ModelInfo,
        vectors: np.ndarray,
        searcher: Searcher,
        meta: dict[str, Any],
        hubness: Hubness | None = None,
    ):
        self.root = Path(root)
        self.generation = generation
        self.gallery = Path(gallery)
        self.entries = entries
        self.model = model
        self.vectors = vectors
        self.searcher = searcher
        self.meta = meta
        self.hubness = hubness or Hubness("none")

    # -------------------------------------------------------------- loading

    @classmethod
    def open(
        cls, index_dir: str | os.PathLike, ef_search: int | None = None, nprobe: int | None = None, mmap: bool = True
    ) -> Index:
        """Load the current generation of ``index_dir``; ``ef_search``/``nprobe`` override search parameters."""
        index_dir = Path(index_dir)
        gen = current_generation(index_dir)
        gdir = index_dir / gen
        if not gdir.is_dir():
            raise IndexStoreError(
                f"{index_dir}/{POINTER} points at {gen}, which is missing; rebuild with 'sbir index build --overwrite'"
            )
        manifest = _read_json(gdir / "manifest.json")
        model_raw = _read_json(gdir / "model.json")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_TAG:
            raise IndexStoreError(
                f"{gdir / 'manifest.json'} is not an {FORMAT_TAG} manifest; rebuild with 'sbir index build --overwrite'"
            )
        try:
            entries = [Entry(**e) for e in manifest["entries"]]
            model = ModelInfo(**model_raw)
            kind = manifest["index"]["kind"]
            params = dict(manifest["index"].get("params", {}))
        except (KeyError, TypeError) as exc:
            raise IndexStoreError(
                f"{gdir} has an invalid manifest or model record ({exc}); rebuild with 'sbir index build --overwrite'"
            ) from exc
        for e in entries:
            if not safe_relpath(e.path):
                raise IndexStoreError(f"{gdir / 'manifest.json'} contains an unsafe path {e.path!r}; rebuild the index")
        try:
            vectors = np.load(gdir / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexStoreError(
                f"{gdir / 'vectors.npy'} is unreadable ({exc}); rebuild with 'sbir index build --overwrite'"
            ) from exc
        if ef_search is not None:
            params["ef_search"] = int(ef_search)
        if nprobe is not None:
            params["nprobe"] = int(nprobe)
        n = len(entries)
        hub = Hubness.load(gdir / STATS_FILE, model.hubness, model.hubness_k, n, model.dim, model.dba)
        faiss_dim = model.dim + (1 if hub.csls else 0)
        if manifest.get("store"):
            # the vectors are searched in a Milvus collection (sbir.index.milvus_store), not index.faiss
            from sbir.index.milvus_store import open_searcher

            if vectors.shape != (n, model.dim):
                raise IndexStoreError(
                    f"{gdir} is inconsistent ({n} manifest entries, vectors {tuple(vectors.shape)}, model dim "
                    f"{model.dim}); rebuild with 'sbir index build --overwrite'"
                )
            msearcher = open_searcher(
                manifest["store"],
                model.model_id,
                faiss_dim,
                model.metric,
                kind,
                params,
                [e.sha256 for e in entries],
                2.0 if hub.csls else None,
            )
            return cls(index_dir, gen, Path(manifest["gallery"]), entries, model, vectors, msearcher, manifest, hub)
        try:
            findex = faiss.read_index(str(gdir / "index.faiss"))
        except RuntimeError as exc:
            raise IndexStoreError(
                f"{gdir / 'index.faiss'} is unreadable ({exc}); rebuild with 'sbir index build --overwrite'"
            ) from exc
        findex = configure(findex, kind, params)
        if vectors.shape != (n, model.dim) or findex.ntotal != n or findex.d != faiss_dim:
            raise IndexStoreError(
                f"{gdir} is inconsistent ({n} manifest entries, vectors {tuple(vectors.shape)}, "
                f"FAISS {findex.ntotal}x{findex.d}, model dim {model.dim}); rebuild with 'sbir index build --overwrite'"
            )
        searcher = Searcher(findex, kind, params, vectors, metric=model.metric, **searcher_hubness(hub, vectors))
        return cls(index_dir, gen, Path(manifest["gallery"]), entries, model, vectors, searcher, manifest, hub)

    # -------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def model_id(self) -> str:
        return self.model.model_id

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def kind(self) -> str:
        return self.searcher.kind

    def check_model(self, model_id: str) -> None:
        if model_id != self.model.model_id:
            raise ModelMismatchError(
                f"the query was embedded by model {model_id!r} but the index {self.root} was built with "
                f"{self.model.model_id!r} ({self.model.spec}); embeddings of different models are not comparable. "
                "Search with the index's own model (omit --model) or rebuild the index with this model."
            )

    def search_many(
        self, queries: np.ndarray, k: int = 10, *, model_id: str, expand: int | None = None, domain: str = "sketch"
    ) -> list[list[Hit]]:
        """Top-``k`` hits for each row of ``queries`` (Q, D); refuses embeddings of another model.

        ``queries`` are the query encoder's embeddings; the index's hubness correction (sketch centring,
        csls scores ``2 cos - r_g``) and query expansion (:mod:`sbir.index.expansion`; ``expand`` photos,
        None = the index's recorded setting) are applied here, so every caller ranks the same way.
        ``domain="photo"``: the queries are photo embeddings ("more like this"), centred like the gallery
        and not expanded unless ``expand`` says so.
        """
        self.check_model(model_id)
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ModelMismatchError(
                f"query vectors have shape {q.shape}, the index {self.root} holds {self.dim}-d vectors"
            )
        if not isinstance(k, int) or k < 1:
            raise IndexStoreError(f"k must be a positive integer, got {k!r}")
        if domain not in ("sketch", "photo"):
            raise IndexStoreError(f"domain must be 'sketch' or 'photo', got {domain!r}")
        searched = self.hubness.queries(q) if domain == "sketch" else self.hubness.photos(q)
        default_expand = self.model.expand if domain == "sketch" else 0
        expand = default_expand if expand is None else check_expand(expand)
        if expand and len(self.entries):
            searched = self._expanded(searched, expand)
        scores, ids = self.searcher.search(searched, k)
        out = []
        for srow, irow in zip(scores, ids, strict=False):
            hits = [
                Hit(int(i), self.entries[int(i)].path, float(s), r + 1)
                for r, (s, i) in enumerate(zip(srow, irow, strict=False))
                if i >= 0
            ]
            out.append(hits)
        return out

    def _expanded(self, searched: np.ndarray, expand: int) -> np.ndarray:
        """Queries (as searched) moved toward their ``expand`` best photos (:mod:`sbir.index.expansion`)."""
        if self.model.metric != "ip":
            raise IndexStoreError(
                f"query expansion needs a cosine index; {self.root} ranks by euclidean distance (use expand 0)"
            )
        _, top = self.searcher.search(searched, min(expand, len(self.entries)))
        valid = top >= 0  # IVF-PQ may find fewer candidates than asked
        neighbours = self.hubness.gallery(self.vectors, np.where(valid, top, 0))
        return expand_queries(searched, neighbours.reshape(*top.shape, self.dim), valid, EXPAND_WEIGHT)

    def search(self, query: np.ndarray, k: int = 10, *, model_id: str) -> list[Hit]:
        """Top-``k`` hits for one query vector (D,)."""
        q = np.asarray(query, dtype=np.float32)
        if q.ndim != 1:
            raise IndexStoreError(f"search() takes one (D,) vector, got shape {q.shape}; use search_many for a batch")
        return self.search_many(q[None], k, model_id=model_id)[0]

    def resolve(self, image_id: int) -> Path:
        """Absolute path of gallery image ``image_id``; refuses anything outside the gallery.

        The manifest path must be a plain relative path, and the file's real path
        (symlinks resolved) must lie inside the gallery's real path.
        """
        if not isinstance(image_id, int) or not 0 <= image_id < len(self.entries):
            raise IndexStoreError(f"no image with id {image_id!r} in the index (ids are 0..{len(self.entries) - 1})")
        rel = self.entries[image_id].path
        if not safe_relpath(rel):
            raise IndexStoreError(f"image {image_id} has an unsafe path {rel!r}")
        full = self.gallery / rel
        if not inside(full, self.gallery):
            raise IndexStoreError(f"image {image_id} ({rel}) resolves outside the gallery {self.gallery}")
        if not full.is_file():
            raise IndexStoreError(
                f"image {image_id} ({rel}) is no longer in the gallery {self.gallery}; run 'sbir index update'"
            )
        return Path(os.path.realpath(full))

    def info(self) -> dict[str, Any]:
        gdir = self.root / self.generation
        disk = sum(p.stat().st_size for p in gdir.iterdir() if p.is_file())
        return {
            "index": str(self.root),
            "generation": self.generation,
            "gallery": str(self.gallery),
            "images": len(self),
            "dim": self.dim,
            "kind": self.kind,
            "store": _store_text(self.meta.get("store")),
            "approx_requested": self.meta["index"].get("requested", self.kind),
            "params": self.searcher.params,
            "model_id": self.model.model_id,
            "model_spec": self.model.spec,
            "model_path": self.model.path,
            "runtime": self.model.runtime,
            "encoder_id": self.model.encoder_id or f"torch:{self.model.model_id}",
            "image_size": self.model.image_size,
            "flip_tta": self.model.flip_tta,
            "metric": "cosine" if self.model.metric == "ip" else "euclidean",
            "hubness": self.hubness.summary() | ({"source": self.model.hubness_source} if self.hubness.active else {}),
            "expand": self.model.expand,
            "dba": self.model.dba,
            "created": self.meta.get("created"),
            "disk_bytes": disk,
        }


def _store_text(rec: Any) -> str:
    """``faiss`` (the generation's index.faiss) or the ``--store`` value of its Milvus collection."""
    if not rec:
        return "faiss"
    from sbir.index.milvus_store import describe

    return describe(rec)


# ---------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_pointer(index_dir: Path, gen: str) -> None:
    """Atomically point ``CURRENT`` at ``gen`` (readable by others, like the rest of the index)."""
    path = index_dir / POINTER
    atomic_write_text(path, json.dumps({"generation": gen}))
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~_umask())


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _gen_number(name: str) -> int | None:
    m = GEN_RE.match(name)
    return int(m.group(1)) if m else None


def write_generation(
    index_dir: Path,
    gallery: Path,
    entries: list[Entry],
    vectors: np.ndarray,
    model: ModelInfo,
    findex: faiss.Index | None,
    kind: str,
    params: dict[str, Any],
    requested: str,
    extra: dict[str, Any] | None = None,
    keep_previous: bool = True,
    hubness: Hubness | None = None,
) -> str:
    """Write a complete new generation and atomically make it current. Caller holds :func:`write_lock`.

    ``findex`` None: the vectors are searched in the store that ``extra["store"]`` names (already written).
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if findex is None and not (extra or {}).get("store"):
        raise IndexStoreError("internal: a generation without index.faiss must name its store")
    ntotal = len(entries) if findex is None else findex.ntotal
    if vectors.shape != (len(entries), model.dim) or ntotal != len(entries):
        raise IndexStoreError(f"internal: {len(entries)} entries, vectors {vectors.shape}, FAISS {ntotal}")
    numbers = [n for n in (_gen_number(p.name) for p in index_dir.iterdir()) if n is not None]
    try:
        previous: str | None = current_generation(index_dir)
    except IndexStoreError:
        previous = None
    gen = f"gen-{max(numbers, default=0) + 1:06d}"
    _stage("before-write")
    tmp = Path(tempfile.mkdtemp(dir=index_dir, prefix=f".tmp-{gen}."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        with open(tmp / "vectors.npy", "wb") as fh:
            np.save(fh, vectors, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        _stage("after-vectors")
        if findex is not None:
            faiss.write_index(findex, str(tmp / "index.faiss"))
            _fsync_file(tmp / "index.faiss")
        _stage("after-faiss")
        if hubness is not None and hubness.active:
            with open(tmp / STATS_FILE, "wb") as fh:
                fh.write(hubness.to_bytes())
                fh.flush()
                os.fsync(fh.fileno())
        manifest = {
            "format": FORMAT_TAG,
            "gallery": str(Path(gallery).resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "count": len(entries),
            "index": {"kind": kind, "requested": requested, "params": params},
            **(extra or {}),
            "entries": [asdict(e) for e in entries],
        }
        for name, obj in (("manifest.json", manifest), ("model.json", asdict(model))):
            with open(tmp / name, "w", encoding="utf-8") as fh:
                json.dump(obj, fh)
                fh.flush()
                os.fsync(fh.fileno())
        _stage("after-manifest")
        fsync_dir(tmp)
        _stage("before-rename")
        os.rename(tmp, index_dir / gen)
        fsync_dir(index_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _stage("before-pointer")
    _publish_pointer(index_dir, gen)
    _stage("after-pointer")
    cleanup(index_dir, keep=[previous] if keep_previous and previous else [])
    return gen


LEASES = ".leases"  # <gen>.<pid>.<n> files: a running process (sbir serve) uses that generation


_LEASE_IDS = itertools.count()


def hold_generation(index_dir: Path, gen: str) -> Path | None:
    """Mark ``gen`` as in use by this process, so :func:`cleanup` keeps it; None if the index is read-only."""
    try:
        d = Path(index_dir) / LEASES
        d.mkdir(exist_ok=True)
        lease = d / f"{gen}.{os.getpid()}.{next(_LEASE_IDS)}"
        lease.touch()
        return lease
    except OSError:
        return None


def release_generation(lease: Path | None) -> None:
    if lease is not None:
        with contextlib.suppress(OSError):
            lease.unlink()


def _held_generations(index_dir: Path) -> set[str]:
    """Generations with a lease of a live process (stale leases of dead processes are removed)."""
    held: set[str] = set()
    d = Path(index_dir) / LEASES
    if not d.is_dir():
        return held
    for lease in d.iterdir():
        gen, _, rest = lease.name.partition(".")
        pid = rest.split(".")[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                lease.unlink()
            continue
        except (ValueError, PermissionError, OSError):
            pass  # not ours to judge (another user's process, odd name): keep the generation
        held.add(gen)
    return held


def cleanup(index_dir: Path, keep: list[str] | None = None) -> None:
    """Remove leftovers of killed writes and every generation but the current one, ``keep`` and those in use."""
    index_dir = Path(index_dir)
    try:
        cur = current_generation(index_dir)
    except IndexStoreError:
        return
    keep_names = {cur, *(keep or []), *_held_generations(index_dir)}
    for p in index_dir.iterdir():
        if _gen_number(p.name) is not None and p.name not in keep_names and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    for p in index_dir.glob(".tmp-gen-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in index_dir.glob(f".{POINTER}.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
