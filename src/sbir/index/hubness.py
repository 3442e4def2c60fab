"""Hubness correction for cross-domain (sketch -> photo) nearest-neighbour search.

Generic features (``--model pretrained``) put sketches and photos in two
separate clusters of the embedding space; a few photos near the middle of the
sketch cluster ("hubs", e.g. collages) then come first for almost every
sketch. Two corrections, chosen with ``sbir index build --hubness``:

* ``center`` -- domain-specific centring: photos ``g`` become
  ``normalise(g - mean_photo)``, sketch queries ``q`` become
  ``normalise(q - mean_sketch)``; the score is the cosine of the centred
  vectors. ``mean_photo`` is estimated from the gallery (again on every
  ``sbir index update``); ``mean_sketch`` from a *sketch statistics set*.
* ``csls`` -- centring plus cross-domain similarity local scaling (Lample et
  al. 2018): ``score(q, g) = 2 cos(q, g) - r_g - r_q`` on the centred vectors,
  where ``r_g`` is the mean cosine of photo ``g`` to its ``k`` nearest sketches
  of the statistics set (a hub has a high ``r_g``) and ``r_q`` the mean cosine of
  the query to its ``k`` nearest photos. ``r_q`` is the same for every photo of
  one query, so it cannot change the ranking: it is left out, and the reported
  score is ``2 cos(q, g) - r_g``.

With ``--dba K`` (:mod:`sbir.index.dba`, on by default with a correction) each centred photo is then
averaged with its ``K`` nearest gallery photos, and ``r_g`` is measured on the averaged photos.

The sketch statistics set is, in order of preference, the sketch images of
``--sketch-stats DIR`` given at build time, the default shipped with sbir
for the model and image size (``sbir/index/stats/<model>@<size>.npz``, from
Sketchy sketches of the classes outside ``sketchy_unseen21`` and Quick, Draw!
drawings; see ``benchmarks/hubness.py --write-default``), or, for a trained
run and an explicit ``--hubness center|csls`` (or a run that evaluates with
``eval.hubness``), the run's training sketches: their embeddings held by the
model (a fitted ridge head, ``SBIRModel.hubness_statistics``), else the images
(its ``split.json`` replayed on ``data.path``): never validation, unseen or test
sketches. Without
``--hubness`` a trained run gets its own ``eval.hubness`` (``none`` unless set),
so it ranks exactly as ``sbir eval`` does; other models are corrected
(``csls``) only with given or shipped statistics. The math is
:mod:`sbir.metrics.hubness`, shared with ``sbir eval``. Its embeddings are
stored in the index, so an update re-estimates ``mean_photo``, ``r_g`` and
the neighbours without the sketches. Corrections need cosine indexes (metric ``ip``).

Everything is stored per generation (``hubness.npz``, written and fsynced with
the rest, see :func:`sbir.index.store.write_generation`) and applied by
:meth:`sbir.index.store.Index.search_many` to raw query embeddings, so
``sbir search``, the Python API and ``sbir serve`` rank identically.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbir.errors import SbirError
from sbir.index.dba import DBA_WEIGHT, check_dba, gallery_neighbours
from sbir.index.expansion import expand_queries
from sbir.metrics.hubness import CSLS_K, HUBNESS_METHODS, center, knn_mean_cosine, normalize_rows

HUBNESS_CHOICES = HUBNESS_METHODS
# What ``--hubness`` means when not given and sketch statistics exist (benchmarks/hubness.py decides).
DEFAULT_HUBNESS = "csls"
MAX_STAT_SKETCHES = 2000  # sketch statistics set kept in an index (evenly subsampled above this)
STATS_DIR = Path(__file__).resolve().parent / "stats"
STATS_FILE = "hubness.npz"


class HubnessError(SbirError):
    """A hubness correction cannot be set up (unknown method, no sketch statistics, wrong metric)."""


def check_method(method: str) -> str:
    if method not in HUBNESS_CHOICES:
        raise HubnessError(f"--hubness must be one of {', '.join(HUBNESS_CHOICES)}, got {method!r}")
    return method


def check_dba_method(dba: object, method: str, why: str = "") -> int:
    """``dba`` validated (:func:`sbir.index.dba.check_dba`) for an index corrected by ``method``: database-side
    augmentation averages the centred photos, so it needs ``center`` or ``csls``; ``why``: why there is none."""
    check_dba(dba)
    if dba and method == "none":
        none = f" (this index has none: {why}; add --sketch-stats DIR if the model ships no statistics)" if why else ""
        raise HubnessError(
            f"--dba {dba} averages the centred photos; it needs --hubness center or csls{none}, or use --dba 0"
        )
    return dba


@dataclass
class SketchStats:
    """Raw (post-processed, uncentred) embeddings of a sketch statistics set and where they came from."""

    vectors: np.ndarray  # (M, D) float32
    source: str

    @property
    def mean(self) -> np.ndarray:
        return self.vectors.mean(axis=0).astype(np.float32)


@dataclass
class Hubness:
    """The correction of one index generation; ``method == "none"`` is the identity."""

    method: str = "none"
    k: int = CSLS_K
    photo_mean: np.ndarray | None = None  # (D,)
    sketch_mean: np.ndarray | None = None  # (D,)
    sketch_vectors: np.ndarray | None = None  # (M, D) raw statistics set (float16 values), for updates
    r_g: np.ndarray | None = None  # (N,) csls: mean cosine of each photo as searched to its k nearest centred sketches
    # Database-side augmentation (sbir.index.dba): neighbours averaged into each photo (0 = none) and their
    # ids (N, dba), -1 where a small gallery has fewer.
    dba: int = 0
    neighbours: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def csls(self) -> bool:
        return self.method == "csls"

    @classmethod
    def fit(
        cls, method: str, photos: np.ndarray, sketches: SketchStats | None, k: int = CSLS_K, dba: int = 0
    ) -> Hubness:
        """Estimate the statistics for raw photo vectors (N, D) with a sketch statistics set.

        ``dba``: database-side augmentation with that many neighbours (:mod:`sbir.index.dba`); it works on
        the centred photos, so it needs ``center`` or ``csls``."""
        check_method(method)
        check_dba_method(dba, method)
        if method == "none":
            return cls("none", k)
        if sketches is None or not len(sketches.vectors):
            raise HubnessError(f"--hubness {method} needs sketch statistics: pass --sketch-stats DIR of sketch images")
        photos = np.asarray(photos, dtype=np.float32)
        # stored as float16 (half the size of a generation's hubness.npz): fit on the stored values, so a
        # build and a later update (which re-reads them) use the same statistics
        sk = np.asarray(sketches.vectors, dtype=np.float16).astype(np.float32)
        if photos.ndim != 2 or sk.ndim != 2 or (len(photos) and sk.shape[1] != photos.shape[1]):
            raise HubnessError(
                f"sketch statistics are {sk.shape[1] if sk.ndim == 2 else '?'}-d but the photos are "
                f"{photos.shape[1] if photos.ndim == 2 else '?'}-d; they come from another model: "
                "pass --sketch-stats DIR to embed sketches with this model"
            )
        photo_mean = photos.mean(axis=0).astype(np.float32) if len(photos) else np.zeros(sk.shape[1], np.float32)
        sketch_mean = sk.mean(axis=0).astype(np.float32)
        h = cls(method, int(k), photo_mean, sketch_mean, sk, dba=int(dba))
        centred = center(photos, photo_mean) if len(photos) else np.zeros((0, sk.shape[1]), np.float32)
        searched = centred
        if dba:
            h.neighbours = gallery_neighbours(centred, dba)
            searched = h._searched(np.arange(len(centred)), lambda rows: centred[rows])
        if method == "csls":
            h.r_g = knn_mean_cosine(searched, center(sk, sketch_mean), k) if len(photos) else np.zeros(0, np.float32)
        return h

    def refit(self, photos: np.ndarray) -> Hubness:
        """The same method, sketch statistics and augmentation for a new gallery (``sbir index update``)."""
        if not self.active:
            return Hubness("none", self.k)
        return Hubness.fit(self.method, photos, SketchStats(self.sketch_vectors, ""), self.k, self.dba)

    # ------------------------------------------------------------------ applying

    def photos(self, vectors: np.ndarray) -> np.ndarray:
        """Photo *query* vectors ("more like this") as searched: centred and normalised when active."""
        return center(vectors, self.photo_mean) if self.active else np.asarray(vectors, dtype=np.float32)

    def gallery(self, vectors: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
        """Gallery photos ``ids`` (default: all) as searched, from the raw vectors (N, D) of the whole gallery.

        Centred when active, and averaged with their stored neighbours with database-side augmentation.
        ``vectors`` may be a memory map; only the rows needed are read."""
        ids = np.arange(len(vectors)) if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
        return self._searched(ids, lambda rows: self.photos(np.asarray(vectors[rows], dtype=np.float32)))

    def _searched(self, ids: np.ndarray, centred_rows, chunk: int = 8192) -> np.ndarray:
        """Photos ``ids`` as searched, given ``centred_rows(rows)``: the centred photos ``rows``.

        In chunks: each photo reads its ``dba`` neighbours, (chunk, dba, D) floats at a time."""
        if not self.dba:
            return centred_rows(ids)
        parts = []
        for s in range(0, len(ids), chunk):
            own = centred_rows(ids[s : s + chunk])
            nb = self.neighbours[ids[s : s + chunk]]
            valid = nb >= 0
            neighbours = centred_rows(np.where(valid, nb, 0).reshape(-1)).reshape(*nb.shape, own.shape[1])
            parts.append(expand_queries(own, neighbours, valid, DBA_WEIGHT))
        return np.concatenate(parts) if parts else np.zeros((0, len(self.photo_mean)), np.float32)

    def queries(self, vectors: np.ndarray) -> np.ndarray:
        """Raw sketch query embeddings as searched (centred with the sketch mean and normalised when active)."""
        return center(vectors, self.sketch_mean) if self.active else np.asarray(vectors, dtype=np.float32)

    def faiss_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """What FAISS indexes: corrected photos, plus a last column ``-r_g`` for csls (queries get ``[2q, 1]``)."""
        v = self.gallery(vectors)
        if self.csls:
            v = np.hstack([v, -self.r_g.astype(np.float32)[:, None]])
        return np.ascontiguousarray(v, dtype=np.float32)

    def scores(self, queries: np.ndarray, photos: np.ndarray) -> np.ndarray:
        """Reference (Q, N) scores of raw queries against the raw gallery, ``2 cos - r_g`` for csls (tests,
        benchmarks)."""
        s = self.queries(queries) @ self.gallery(photos).T
        return 2 * s - self.r_g[None, :] if self.csls else s

    def summary(self) -> dict:
        out: dict = {"method": self.method}
        if self.active:
            out["stat_sketches"] = int(len(self.sketch_vectors))
            out["photo_mean_norm"] = round(float(np.linalg.norm(self.photo_mean)), 4)
            out["sketch_mean_norm"] = round(float(np.linalg.norm(self.sketch_mean)), 4)
            out["mean_cosine"] = round(float(normalize_rows(self.photo_mean) @ normalize_rows(self.sketch_mean)), 4)
        if self.csls and self.r_g is not None and len(self.r_g):
            out["k"] = self.k
            out["r_g"] = {
                "min": round(float(self.r_g.min()), 4),
                "mean": round(float(self.r_g.mean()), 4),
                "max": round(float(self.r_g.max()), 4),
            }
        if self.dba:
            out["dba"] = self.dba
        return out

    # ------------------------------------------------------------------ storage

    def to_bytes(self) -> bytes:
        arrays = {
            k: np.asarray(getattr(self, k), dtype=np.float16 if k == "sketch_vectors" else np.float32)
            for k in ("photo_mean", "sketch_mean", "sketch_vectors", "r_g")
            if getattr(self, k) is not None
        }
        if self.neighbours is not None:
            small = len(self.neighbours) < 2**31
            arrays["neighbours"] = np.asarray(self.neighbours, dtype=np.int32 if small else np.int64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def load(cls, path: Path, method: str, k: int, n: int, dim: int, dba: int = 0) -> Hubness:
        """Read a generation's ``hubness.npz`` and check it against the index (``n`` photos, ``dim``)."""
        check_method(method)
        if method == "none":
            return cls("none", k)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {
                    name: np.asarray(z[name], dtype=np.int64 if name == "neighbours" else np.float32)
                    for name in z.files
                }
        except (OSError, ValueError, KeyError) as exc:
            raise HubnessError(
                f"{path} is missing or unreadable ({exc}); rebuild the index with 'sbir index build --overwrite'"
            ) from exc
        h = cls(method, int(k), arrays.get("photo_mean"), arrays.get("sketch_mean"), arrays.get("sketch_vectors"))
        h.r_g = arrays.get("r_g")
        h.dba, h.neighbours = int(dba), arrays.get("neighbours")
        ok = (
            h.photo_mean is not None
            and h.photo_mean.shape == (dim,)
            and h.sketch_mean is not None
            and h.sketch_mean.shape == (dim,)
            and h.sketch_vectors is not None
            and h.sketch_vectors.ndim == 2
            and h.sketch_vectors.shape[1] == dim
            and (method != "csls" or (h.r_g is not None and h.r_g.shape == (n,)))
            and (
                not dba
                or (
                    h.neighbours is not None
                    and h.neighbours.shape == (n, dba)
                    and bool(((h.neighbours >= -1) & (h.neighbours < n)).all())
                )
            )
        )
        if not ok:
            raise HubnessError(
                f"{path} does not match the index ({n} photos, {dim}-d, --hubness {method}, --dba {dba}); "
                "rebuild the index with 'sbir index build --overwrite'"
            )
        return h


# ---------------------------------------------------------------- sketch statistics sets


def _safe_name(model_id: str, image_size: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id) + f"@{int(image_size)}"


def default_stats_path(model_id: str, image_size: int) -> Path:
    return STATS_DIR / f"{_safe_name(model_id, image_size)}.npz"


def load_default_stats(model_id: str, image_size: int) -> SketchStats | None:
    """The sketch statistics shipped with sbir for this model and input size, or None."""
    path = default_stats_path(model_id, image_size)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        vecs = np.asarray(z["sketch_vectors"], dtype=np.float32)
        note = str(z["source"]) if "source" in z.files else ""
    return SketchStats(vecs, f"default {path.name} ({len(vecs)} sketches{': ' + note if note else ''})")


def save_default_stats(model_id: str, image_size: int, vectors: np.ndarray, source: str) -> Path:
    """Write shipped sketch statistics (float16 to keep the package small)."""
    STATS_DIR.mkdir(parents=True, exist_ok=True)
    path = default_stats_path(model_id, image_size)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, sketch_vectors=np.asarray(vectors, np.float16), source=np.array(source))
    os.replace(tmp, path)
    return path


def subsample(items: list, cap: int = MAX_STAT_SKETCHES) -> list:
    """At most ``cap`` items, evenly spaced (deterministic)."""
    if len(items) <= cap:
        return list(items)
    idx = np.linspace(0, len(items) - 1, cap).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def embed_sketch_dir(
    folder: str | os.PathLike, model, image_size: int, flip_tta: bool, post, batch_size: int = 32, progress=False
) -> SketchStats:
    """Embed the sketch images under ``folder`` (recursively, at most :data:`MAX_STAT_SKETCHES`) with ``model``."""
    from sbir.data.records import FileRef
    from sbir.index.builder import scan_gallery

    folder = Path(folder)
    if not folder.is_dir():
        raise HubnessError(f"--sketch-stats {folder} is not a folder; pass a folder of sketch images")
    files, _ = scan_gallery(folder)
    if len(files) < 2:
        raise HubnessError(
            f"--sketch-stats {folder} holds {len(files)} image(s); give a folder with at least a few dozen sketches"
        )
    refs = [FileRef(f.abspath) for f in subsample(files)]
    return embed_sketch_refs(refs, str(folder.resolve()), model, image_size, flip_tta, post, batch_size, progress)


def embed_sketch_refs(
    refs: list, where: str, model, image_size: int, flip_tta: bool, post, batch_size: int = 32, progress=False
) -> SketchStats:
    """Embed sketch image refs (:mod:`sbir.data.records`) as a statistics set described by ``where``."""
    from sbir.engine.embed import embed_images

    res = embed_images(
        model,
        refs,
        "sketch",
        image_size,
        batch_size=batch_size,
        flip_tta=flip_tta,
        num_workers=0,
        progress=progress,
        skip_errors=True,
        desc="embed sketch statistics",
    )
    if len(res.indices) < 2:
        raise HubnessError(f"sketch statistics from {where}: fewer than 2 of its images could be read")
    return SketchStats(post(res.embeddings), f"{where} ({len(res.indices)} sketches)")
