"""Building and updating an index from a folder of photos.

``build_index`` embeds every image under a folder (recursively; any extension
:func:`sbir.data.image_io.is_image_file` accepts: jpg, jpeg, png, webp, bmp,
gif, tif). ``update_index`` re-scans the folder and embeds only what is new or
changed: a file whose size and mtime are unchanged keeps its vector; a file
whose stat changed is hashed (SHA-256) and keeps its vector if the content is
the same; files with the content of another indexed file (copies, renames)
reuse that vector; deleted files are dropped. Duplicated contents are
embedded once.

Unreadable images are reported in :attr:`SyncReport.skipped` and left out;
they never stop the build. Hidden files and folders (``.name``), symbolic
links to folders, and file links that point outside the gallery are skipped
too. Every write goes through :func:`sbir.index.store.write_generation`, so a
killed build or update leaves the previous index intact.

With ``ray`` (``--ray [ADDRESS]``) the decode-and-embed step runs on a Ray
cluster (:mod:`sbir.index.ray_embed`); scanning, hashing and writing stay here,
so the manifest and the reuse rules are the same.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sbir.data.image_io import is_image_file
from sbir.data.records import FileRef
from sbir.engine.embed import EmbedResult, embed_images
from sbir.engine.inference import default_model_spec
from sbir.errors import DataError, SbirError
from sbir.fileio import sha256_file
from sbir.index.dba import DEFAULT_DBA
from sbir.index.expansion import DEFAULT_EXPAND, check_expand
from sbir.index.faiss_ops import AUTO_THRESHOLD, build_faiss, resolve_approx
from sbir.index.hubness import (
    CSLS_K,
    DEFAULT_HUBNESS,
    Hubness,
    HubnessError,
    SketchStats,
    check_dba_method,
    check_method,
    embed_sketch_dir,
    embed_sketch_refs,
    load_default_stats,
    subsample,
)
from sbir.index.milvus_store import StoreSpec, parse_store
from sbir.index.model import (
    load_encoder_for_index,
    load_index_encoder,
    metric_for,
    model_info,
    postprocess,
    runtime_fields,
)
from sbir.index.store import (
    GEN_RE,
    POINTER,
    Entry,
    Index,
    IndexStoreError,
    ModelInfo,
    ModelMismatchError,
    is_index_dir,
    write_generation,
    write_lock,
)

EmbedFn = Callable[[list[Path]], EmbedResult]  # photo paths -> vectors (positions in the list)


@dataclass
class FileStat:
    path: str  # relative, POSIX
    abspath: Path
    size: int
    mtime_ns: int


@dataclass
class SyncReport:
    """What a build or update did."""

    index_dir: str
    gallery: str
    generation: str | None  # None when an update found nothing to do
    images: int
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0  # images that went through the model
    reused: int = 0  # new/changed files whose content was already indexed
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    kind: str = "none"
    model_id: str = ""
    seconds: float = 0.0
    embed_seconds: float = 0.0
    runtime: str = "torch"  # the encoder's runtime (sbir.engine.runtime)
    runtime_note: str = ""  # why that runtime (e.g. "torch (auto: no export ...)")
    hubness: str = "none"  # the hubness correction of the written generation (sbir.index.hubness)
    hubness_note: str = ""  # where its sketch statistics came from, or why there is none
    expand: int = 0  # photos each query is expanded with (sbir.index.expansion), recorded in the index
    dba: int = 0  # neighbours averaged into each photo (sbir.index.dba), recorded in the index
    ray: str | None = None  # None: embedded in this process; else the --ray address ("" = a local cluster)

    @property
    def written(self) -> bool:
        return self.generation is not None

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        d["written"] = self.written
        d["images_per_s"] = round(self.images_per_s, 2)
        return d


def scan_gallery(gallery: Path, exclude: Sequence[Path] = ()) -> tuple[list[FileStat], list[tuple[str, str]]]:
    """All image files under ``gallery`` sorted by relative path, plus (path, reason) of skipped entries."""
    gallery = Path(gallery)
    root_real = os.path.realpath(gallery)
    excluded = {os.path.realpath(p) for p in exclude}
    files: list[FileStat] = []
    skipped: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(gallery, followlinks=False):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            rel = Path(os.path.relpath(full, gallery)).as_posix()
            if d.startswith("."):
                continue
            if os.path.realpath(full) in excluded:
                continue
            if os.path.islink(full):
                skipped.append((rel + "/", "symbolic link to a folder (not followed)"))
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith(".") or not is_image_file(name):
                continue
            full = os.path.join(dirpath, name)
            rel = Path(os.path.relpath(full, gallery)).as_posix()
            if os.path.islink(full):
                real = os.path.realpath(full)
                if os.path.commonpath([real, root_real]) != root_real:
                    skipped.append((rel, "symbolic link pointing outside the gallery"))
                    continue
            try:
                st = os.stat(full)
            except OSError as exc:
                skipped.append((rel, f"cannot stat ({exc.strerror or exc})"))
                continue
            if not os.path.isfile(full):
                skipped.append((rel, "not a regular file"))
                continue
            files.append(FileStat(rel, Path(full), int(st.st_size), int(st.st_mtime_ns)))
    files.sort(key=lambda f: f.path)
    return files, skipped


def _hash_all(files: list[FileStat], progress: bool, workers: int = 4) -> tuple[dict[str, str], list[tuple[str, str]]]:
    hashes: dict[str, str] = {}
    errors: list[tuple[str, str]] = []
    if not files:
        return hashes, errors

    def one(f: FileStat):
        try:
            return f.path, sha256_file(f.abspath), None
        except OSError as exc:
            return f.path, None, f"cannot read ({exc.strerror or exc})"

    bar = tqdm(total=len(files), desc="hash", unit="file", disable=not progress, file=sys.stderr, leave=False)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for rel, digest, err in pool.map(one, files):
            if err:
                errors.append((rel, err))
            else:
                hashes[rel] = digest
            bar.update(1)
    bar.close()
    return hashes, errors


def _leftover(p: Path) -> bool:
    """Files a killed first build may leave in an index folder (safe to reuse the folder)."""
    return (
        p.name in (".lock", "thumbs") or p.name.startswith((".tmp-gen-", f".{POINTER}.")) or bool(GEN_RE.match(p.name))
    )


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def _embed_local(
    model,
    paths: list[Path],
    image_size: int,
    batch_size: int,
    flip_tta: bool,
    num_workers: int,
    progress: bool,
    jpeg_draft: bool,
) -> EmbedResult:
    """Embed photos in this process (decoding in DataLoader workers); unreadable files are reported."""
    return embed_images(
        model,
        [FileRef(p) for p in paths],
        "photo",
        image_size,
        batch_size=batch_size,
        flip_tta=flip_tta,
        num_workers=num_workers,
        progress=progress,
        skip_errors=True,
        desc="embed photos",
        jpeg_draft=jpeg_draft,
    )


def _sync(
    index_dir: Path,
    gallery: Path,
    model,
    info_fn,
    old: Index | None,
    approx: str,
    approx_threshold: int,
    image_size: int,
    flip_tta: bool,
    batch_size: int,
    num_workers: int,
    progress: bool,
    force_write: bool,
    jpeg_draft: bool = False,
    hub_fn=None,
    embed_fn: EmbedFn | None = None,
    store: StoreSpec | None = None,
    overwrite: bool = False,
) -> SyncReport:
    """Bring the index at ``index_dir`` in line with ``gallery`` (a build is a sync from ``old=None``).

    ``embed_fn`` (paths -> :class:`EmbedResult`) replaces the in-process embedding, e.g. by Ray's.
    """
    t0 = time.perf_counter()
    index_dir = Path(index_dir)
    files, skipped = scan_gallery(gallery, exclude=[index_dir])
    old_vecs = np.asarray(old.vectors, dtype=np.float32) if old is not None else None
    old_by_path = {e.path: i for i, e in enumerate(old.entries)} if old is not None else {}
    report = SyncReport(str(index_dir), str(Path(gallery).resolve()), None, 0, skipped=skipped)

    # 1. Unchanged stat -> keep the old vector without reading the file.
    keep_vec: dict[str, int] = {}  # rel -> row in old vectors
    keep_hash: dict[str, str] = {}
    to_hash: list[FileStat] = []
    for f in files:
        i = old_by_path.get(f.path)
        if i is not None and old.entries[i].size == f.size and old.entries[i].mtime_ns == f.mtime_ns:
            keep_vec[f.path] = i
            keep_hash[f.path] = old.entries[i].sha256
        else:
            to_hash.append(f)
    report.unchanged = len(keep_vec)

    # 2. Hash new/changed files (threads; hashing releases the GIL).
    hashes, hash_errors = _hash_all(to_hash, progress)
    skipped.extend(hash_errors)
    old_by_hash: dict[str, int] = {}
    if old is not None:
        for i, e in enumerate(old.entries):
            old_by_hash.setdefault(e.sha256, i)
    to_embed: dict[str, FileStat] = {}  # hash -> representative file
    for f in to_hash:
        digest = hashes.get(f.path)
        if digest is None:
            continue
        i_old = old_by_path.get(f.path)
        if i_old is not None:
            report.changed += 1
        else:
            report.added += 1
        if digest in old_by_hash:
            keep_vec[f.path] = old_by_hash[digest]
            report.reused += 1
        else:
            to_embed.setdefault(digest, f)
        keep_hash[f.path] = digest
    current = {f.path for f in files}
    report.removed = sum(1 for p in old_by_path if p not in current) if old is not None else 0

    # 3. Embed each new content once (parallel decoding in DataLoader workers).
    new_vec: dict[str, np.ndarray] = {}  # hash -> vector
    reps = sorted(to_embed.items(), key=lambda kv: kv[1].path)
    if reps:
        t_embed = time.perf_counter()
        if embed_fn is None:
            embed_fn = partial(
                _embed_local,
                model,
                image_size=image_size,
                batch_size=batch_size,
                flip_tta=flip_tta,
                num_workers=num_workers if len(reps) > batch_size else 0,
                progress=progress,
                jpeg_draft=jpeg_draft,
            )
        res = embed_fn([f.abspath for _, f in reps])
        report.embed_seconds = time.perf_counter() - t_embed
        report.embedded = len(res.indices)
        embeddings = postprocess(res.embeddings, info_fn(res.embeddings.shape[1]))
        for row, pos in enumerate(res.indices):
            new_vec[reps[pos][0]] = embeddings[row]
        failed_hashes = set()
        for pos, _msg in res.errors:
            failed_hashes.add(reps[pos][0])
        # Every file with an unreadable content is skipped (not only the representative).
        for f in to_hash:
            d = hashes.get(f.path)
            if d in failed_hashes:
                reason = next(m for p, m in res.errors if reps[p][0] == d)
                skipped.append((f.path, reason))
                keep_hash.pop(f.path, None)
                if f.path in old_by_path:
                    report.changed -= 1
                    report.removed += 1
                else:
                    report.added -= 1

    # 4. Assemble the new generation in path order.
    dim = None
    if new_vec:
        dim = int(next(iter(new_vec.values())).shape[0])
    elif old is not None:
        dim = old.dim
    entries: list[Entry] = []
    rows: list[np.ndarray] = []
    for f in files:
        if f.path not in keep_hash:
            continue
        digest = keep_hash[f.path]
        if f.path in keep_vec:
            v = old_vecs[keep_vec[f.path]]
        else:
            v = new_vec[digest]
        entries.append(Entry(f.path, f.size, f.mtime_ns, digest))
        rows.append(v)
    if not entries and old is None:
        if files:
            raise DataError(
                f"none of the {len(files)} images under {gallery} could be read (first problem: "
                f"{skipped[0][0]}: {skipped[0][1]}); fix or replace the files"
            )
        raise DataError(
            f"no images found under {gallery} (looked for {', '.join(('jpg', 'png', 'webp', 'bmp'))} and other image "
            "files, recursively); point to the folder that holds your photos"
        )
    vectors = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim or 0), np.float32)
    kind = resolve_approx(approx, len(entries), approx_threshold)
    report.images = len(entries)
    report.kind = kind
    info = info_fn(vectors.shape[1])
    report.model_id = info.model_id
    nothing_changed = (
        old is not None
        and report.added == 0
        and report.changed == 0
        and report.removed == 0
        and kind == old.kind
        and approx == old.meta["index"].get("requested", old.kind)
        and [e for e in entries] == old.entries
        and str(Path(gallery).resolve()) == str(old.gallery)
    )
    if nothing_changed and not force_write:
        report.seconds = time.perf_counter() - t0
        return report
    params = dict(old.searcher.params) if old is not None and old.kind == kind else None
    hub = hub_fn(vectors) if hub_fn is not None else Hubness("none")
    extra: dict[str, Any] = {
        "approx_threshold": approx_threshold,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }
    if store is None:
        findex, used = build_faiss(hub.faiss_vectors(vectors), kind, params, metric=info.metric)
    else:
        findex, used = None, _write_store_rows(store, entries, hub, vectors, info, kind, params, old, overwrite)
        extra["store"] = store.record()
    report.generation = write_generation(
        index_dir,
        gallery,
        entries,
        vectors,
        info,
        findex,
        kind,
        used,
        requested=approx,
        extra=extra,
        hubness=hub,
    )
    report.hubness = hub.method
    report.seconds = time.perf_counter() - t0
    return report


def _write_store_rows(
    store: StoreSpec,
    entries: list[Entry],
    hub: Hubness,
    vectors: np.ndarray,
    info: ModelInfo,
    kind: str,
    params: dict[str, Any] | None,
    old: Index | None,
    overwrite: bool,
) -> dict[str, Any]:
    """Write the new generation's rows to its Milvus collection before the generation is published.

    Only contents new to the index are upserted and only contents that left it are deleted, unless a
    hubness correction re-centred every vector (then all rows are rewritten). Rows are keyed by content,
    so a run killed here leaves the old generation current and a re-run converges to the same rows.
    """
    from sbir.index.milvus_store import milvus_params, write_rows

    stored = hub.faiss_vectors(vectors)
    used = milvus_params(kind, len(entries), int(stored.shape[1]), params)
    old_shas = {e.sha256 for e in old.entries} if old is not None else set()
    new_shas = {e.sha256 for e in entries}
    write_rows(
        store,
        fresh=old is None,
        overwrite=overwrite,
        model_id=info.model_id,
        metric=info.metric,
        kind=kind,
        params=used,
        shas=[e.sha256 for e in entries],
        paths=[e.path for e in entries],
        vectors=stored,
        upsert=None if old is None or hub.active else new_shas - old_shas,
        delete=old_shas - new_shas,
    )
    return used


def build_index(
    photos_dir: str | os.PathLike,
    model_spec: str | None,
    out_dir: str | os.PathLike,
    approx: str = "auto",
    approx_threshold: int = AUTO_THRESHOLD,
    image_size: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    preloaded: tuple | None = None,
    runtime: str = "auto",
    export_dir: str | os.PathLike | None = None,
    jpeg_draft: bool = False,
    hubness: str | None = None,
    sketch_stats: str | os.PathLike | None = None,
    ray: str | None = None,
    ray_workers: int | None = None,
    store: str | None = None,
    expand: int | None = None,
    dba: int | None = None,
) -> SyncReport:
    """Embed every image under ``photos_dir`` with ``model_spec`` into a new index at ``out_dir``.

    ``store``: where the vectors are searched: None / ``faiss`` = ``index.faiss`` in the index folder;
    ``milvus://HOST:PORT/COLLECTION`` or ``PATH.db`` (Milvus Lite) = a Milvus collection
    (:mod:`sbir.index.milvus_store`; ``overwrite`` then replaces an existing collection too).

    ``preloaded``: ``(model, cfg, model_id)`` already returned by ``load_model(model_spec)``,
    to avoid loading it again (tests, notebooks); used by the torch runtime.
    ``runtime``: ``auto`` (the fastest exported runtime, else torch), ``torch``, ``onnx``, ``onnx-int8``,
    ``openvino``, ``openvino-int8`` (:func:`sbir.engine.runtime.pick_runtime`); recorded in the index.
    ``export_dir``: the folder ``sbir export`` wrote for this model, when it is not the default one
    (``RUN/export``): needed for the shipped models and ``pretrained``, which have none.
    ``jpeg_draft``: decode JPEGs at reduced scale (recorded; updates do the same).
    ``hubness``: ``none``, ``center`` or ``csls`` (:mod:`sbir.index.hubness`); None = :data:`DEFAULT_HUBNESS`
    when sketch statistics exist (``sketch_stats``, a folder of sketch images, or the default shipped for
    the model and image size) and the index is a cosine one, else ``none``. Recorded; updates keep it.
    ``expand``: photos each query is expanded with (:mod:`sbir.index.expansion`; 0 = none); None =
    :data:`~sbir.index.expansion.DEFAULT_EXPAND` when the index corrects hubness, else 0. Recorded.
    ``dba``: database-side augmentation, neighbours averaged into each photo (:mod:`sbir.index.dba`; 0 =
    none; needs a hubness correction); None = :data:`~sbir.index.dba.DEFAULT_DBA` when the index corrects
    hubness, else 0 (as ``expand``). Recorded; updates recompute the neighbours.
    ``ray``: embed on Ray (:mod:`sbir.index.ray_embed`): ``""`` starts a local cluster, ``auto`` or
    ``ray://host:10001`` joins one; ``ray_workers`` actors (default: one per cluster CPU) each load the
    model by its spec (``preloaded`` is then used only here, for the record). None: embed in this process.
    """
    gallery = Path(photos_dir)
    out = Path(out_dir)
    if not gallery.is_dir():
        raise DataError(
            f"photo folder {gallery} does not exist or is not a folder; pass the folder that holds your photos"
        )
    resolve_approx(approx, 0, approx_threshold)  # validate the name before loading anything
    store_spec = parse_store(store)
    if out.exists() and not out.is_dir():
        raise IndexStoreError(f"--out {out} exists and is not a folder; choose a new folder for the index")
    if is_index_dir(out) and not overwrite:
        raise IndexStoreError(
            f"{out} already holds an index; run 'sbir index update {out}' to add new photos, "
            "or pass --overwrite to rebuild it from scratch"
        )
    if out.is_dir() and not is_index_dir(out) and any(not _leftover(p) for p in out.iterdir()):
        raise IndexStoreError(
            f"--out {out} is a folder that is not empty and not an sbir index; choose a new or empty folder"
        )
    if image_size is not None and image_size < 32:
        raise IndexStoreError(f"--image-size must be >= 32, got {image_size}")
    if hubness is not None:
        check_method(hubness)
        if hubness == "none" and sketch_stats is not None:
            raise HubnessError("--sketch-stats is used only with --hubness center or csls; drop one of them")
    if expand is not None:
        check_expand(expand)
    if dba is not None:
        check_dba_method(dba, hubness or "csls")  # before the model is loaded; an unset --hubness is decided below
    if sketch_stats is not None and not Path(sketch_stats).is_dir():
        raise HubnessError(f"--sketch-stats {sketch_stats} is not a folder; pass a folder of sketch images")
    _check_ray(ray, ray_workers)
    enc, cfg, model_id, path, note = load_encoder_for_index(
        model_spec, runtime, device=device, image_size=image_size, preloaded=preloaded, export_dir=export_dir
    )
    model = enc.as_model()
    size = int(image_size or cfg.data.image_size)
    spec = default_model_spec() if model_spec is None else str(model_spec)
    rt = runtime_fields(enc)
    method, stats, hub_note = _hubness_setup(
        hubness, sketch_stats, model, cfg, model_id, size, batch_size, progress, path
    )
    # Query expansion and DBA are on by default when the index corrects hubness, except for a run whose own
    # eval.hubness is the correction: it ranks as sbir eval scores, which neither expands nor augments.
    from_run = hubness is None and path is not None and method == cfg.eval.hubness != "none"
    extras_by_default = method != "none" and not from_run
    if expand is None:
        expand = DEFAULT_EXPAND if extras_by_default else 0
    elif expand and metric_for(model, cfg)[0] != "ip":
        raise SbirError(
            f"--expand needs a cosine index, but model {model_id} ranks by euclidean distance; use --expand 0"
        )
    if dba is None:
        dba = DEFAULT_DBA if extras_by_default else 0
    else:
        check_dba_method(dba, method, hub_note)
    embed_fn = None
    if ray is not None:
        from sbir.index.ray_embed import load_spec_model

        load = partial(load_spec_model, path or spec, enc.runtime, device, image_size, model_id, export_dir)
        embed_fn = _ray_embed_fn(
            ray,
            load,
            size,
            bool(cfg.eval.flip_tta),
            batch_size=batch_size,
            jpeg_draft=jpeg_draft,
            workers=ray_workers,
            device=device,
            progress=progress,
        )
    with write_lock(out):
        report = _sync(
            out,
            gallery,
            model,
            lambda dim: replace(
                model_info(spec, path, cfg, model_id, dim, size, model=model, runtime=rt, jpeg_draft=jpeg_draft),
                hubness=method,
                hubness_k=CSLS_K,
                hubness_source=stats.source if stats is not None else "",
                expand=expand,
                dba=dba,
            ),
            None,
            approx,
            approx_threshold,
            size,
            bool(cfg.eval.flip_tta),
            batch_size,
            default_workers() if num_workers is None else num_workers,
            progress,
            force_write=True,
            jpeg_draft=jpeg_draft,
            hub_fn=lambda v: Hubness.fit(method, v, stats, dba=dba),
            embed_fn=embed_fn,
            store=store_spec,
            overwrite=overwrite,
        )
    report.runtime, report.runtime_note = enc.runtime, note
    report.ray = ray
    report.hubness_note = hub_note
    report.expand = expand
    report.dba = dba
    return report


def _check_ray(ray: str | None, ray_workers: int | None) -> None:
    """Refuse bad Ray options, and a missing Ray, before any model is loaded."""
    if ray_workers is not None and ray_workers < 1:
        raise SbirError(f"--ray-workers must be >= 1, got {ray_workers}")
    if ray_workers is not None and ray is None:
        raise SbirError("--ray-workers sets the number of Ray actors; add --ray (or drop --ray-workers)")
    if ray is not None:
        from sbir.index.ray_embed import import_ray

        import_ray()


def _ray_embed_fn(address: str, load, image_size: int, flip_tta: bool, **options) -> EmbedFn:
    """The Ray embedding step (imported here: Ray is an optional extra and slow to import); ``options`` as for
    :func:`sbir.index.ray_embed.embed_files_ray`."""
    from sbir.index.ray_embed import ray_embed_fn

    return ray_embed_fn(address, load, image_size, flip_tta, **options)


def run_training_sketches(cfg, weights_path: str | None) -> tuple[list, str] | None:
    """The training sketches of a trained run (:func:`sbir.engine.evaluate.training_sketches`) and where they
    are, or None."""
    from sbir.engine.evaluate import training_sketches

    if weights_path is None:
        return None
    run_dir = Path(weights_path) if Path(weights_path).is_dir() else Path(weights_path).parent
    refs = training_sketches(cfg, run_dir)
    return (refs, f"training sketches of {run_dir} on {Path(cfg.data.path).resolve()}") if refs else None


def _hubness_setup(
    hubness: str | None,
    sketch_stats,
    model,
    cfg,
    model_id: str,
    size: int,
    batch_size: int,
    progress: bool,
    weights_path: str | None = None,
) -> tuple[str, SketchStats | None, str]:
    """(method, sketch statistics or None, a note for the user) for a new index.

    Sketch statistics: ``--sketch-stats DIR``; else the ones shipped for the model and size; else, for an
    explicit ``--hubness center|csls`` with a trained run, or a run that evaluates with ``eval.hubness``, the
    run's training sketches: their embeddings held by the model (a fitted ridge head), else the images
    (``split.json`` replayed on ``data.path``). Without an explicit choice a trained run gets its
    ``eval.hubness`` (so it ranks exactly as ``sbir eval`` does); other models get :data:`DEFAULT_HUBNESS`
    only with given or shipped statistics.
    """
    metric, normalize = metric_for(model, cfg)
    if metric != "ip":
        if hubness in ("center", "csls"):
            raise HubnessError(
                f"--hubness {hubness} needs a cosine index, but model {model_id} ranks by euclidean distance "
                "(its run tests with eval.distance euclidean); use --hubness none"
            )
        return "none", None, "none (euclidean index)"
    if hubness == "none":
        return "none", None, "none (--hubness none)"

    def post(z):  # sketch embeddings post-processed as the index's queries will be
        return postprocess(z, ModelInfo("", "", None, {}, z.shape[1], size, False, normalize=normalize))

    if sketch_stats is not None:
        stats = embed_sketch_dir(
            sketch_stats,
            model,
            size,
            bool(cfg.eval.flip_tta),
            post,
            batch_size=batch_size,
            progress=progress,
        )
    else:
        stats = load_default_stats(model_id, size)
    # A trained run evaluated with eval.hubness gets the same correction by default, so search ranks as eval.
    run_hubness = cfg.eval.hubness if weights_path is not None else "none"
    wants_run_stats = hubness is not None or run_hubness != "none"
    stored = model.hubness_statistics() if wants_run_stats and hasattr(model, "hubness_statistics") else None
    if stats is None and stored is not None:  # a fitted ridge head holds its training sketches' embeddings
        stats = SketchStats(post(stored[subsample(list(range(len(stored))))]), f"training sketches held by {model_id}")
    if stats is None and wants_run_stats:
        found = run_training_sketches(cfg, weights_path)
        if found is not None:
            refs, where = found
            stats = embed_sketch_refs(
                subsample(refs),
                where,
                model,
                size,
                bool(cfg.eval.flip_tta),
                post,
                batch_size=batch_size,
                progress=progress,
            )
    method = hubness or (run_hubness if run_hubness != "none" else DEFAULT_HUBNESS)
    if stats is None:
        if hubness is not None:
            raise HubnessError(
                f"--hubness {hubness} needs sketch statistics and sbir ships none for {model_id} at {size} px; "
                "pass --sketch-stats DIR (a folder of sketches like your queries, e.g. the run's training sketches)"
            )
        if run_hubness != "none":
            return (
                "none",
                None,
                (
                    f"none (the run evaluates with eval.hubness={run_hubness}, but its training sketches are not found "
                    f"under data.path {cfg.data.path!r}; pass --sketch-stats DIR to correct as sbir eval does)"
                ),
            )
        return "none", None, f"none (no sketch statistics for {model_id} at {size} px; pass --sketch-stats DIR)"
    return method, stats, f"{method} (sketch statistics: {stats.source})"


def update_index(
    index_dir: str | os.PathLike,
    photos_dir: str | os.PathLike | None = None,
    model_override: str | None = None,
    approx: str | None = None,
    approx_threshold: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    preloaded: tuple | None = None,
    runtime: str | None = None,
    ray: str | None = None,
    ray_workers: int | None = None,
) -> SyncReport:
    """Bring ``index_dir`` up to date with its gallery (or ``photos_dir``, which re-roots it).

    Photos are embedded on the runtime the index records; ``runtime`` naming another is refused.
    ``ray``/``ray_workers``: embed the new and changed photos on Ray, as in :func:`build_index`; the cluster
    is started (or joined) only when there is something to embed.
    """
    index_dir = Path(index_dir)
    _check_ray(ray, ray_workers)
    with write_lock(index_dir):
        old = Index.open(index_dir)
        gallery = Path(photos_dir) if photos_dir is not None else old.gallery
        if not gallery.is_dir():
            raise DataError(
                f"the gallery {gallery} of index {index_dir} does not exist; pass its new location with --photos DIR"
            )
        requested = approx or old.meta["index"].get("requested", old.kind)
        threshold = int(approx_threshold or old.meta.get("approx_threshold", AUTO_THRESHOLD))
        resolve_approx(requested, 0, threshold)
        rec = old.model
        if preloaded is not None and (rec.runtime or "torch") == "torch" and runtime in (None, "auto", "torch"):
            model, cfg, model_id = preloaded
            if model_id != rec.model_id:
                raise ModelMismatchError(
                    f"the given model has id {model_id!r} but the index {index_dir} was built with {rec.model_id!r}"
                )
            rt_name = "torch"
        else:
            enc, cfg, model_id = load_index_encoder(rec, override=model_override, device=device, runtime=runtime)
            model, rt_name = enc.as_model(), enc.runtime
        embed_fn = None
        if ray is not None:
            from sbir.index.ray_embed import load_record_model

            load = partial(load_record_model, rec, model_override, device, runtime)
            embed_fn = _ray_embed_fn(
                ray,
                load,
                rec.image_size,
                rec.flip_tta,
                batch_size=batch_size,
                jpeg_draft=rec.jpeg_draft,
                workers=ray_workers,
                device=device,
                progress=progress,
            )
        report = _sync(
            index_dir,
            gallery,
            model,
            lambda dim: rec,
            old,
            requested,
            threshold,
            rec.image_size,
            rec.flip_tta,
            batch_size,
            default_workers() if num_workers is None else num_workers,
            progress,
            force_write=False,
            jpeg_draft=rec.jpeg_draft,
            hub_fn=old.hubness.refit,
            embed_fn=embed_fn,
            store=StoreSpec.from_record(old.meta["store"]) if old.meta.get("store") else None,
        )
    report.ray = ray
    report.runtime, report.runtime_note = rt_name, f"{rt_name} (recorded in the index)"
    report.hubness = rec.hubness
    report.hubness_note = f"{rec.hubness} (recorded in the index; photo statistics re-estimated)"
    report.expand = rec.expand
    report.dba = rec.dba
    return report
