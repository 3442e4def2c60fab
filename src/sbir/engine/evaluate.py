"""Evaluation: every task's metrics from embeddings, and ``sbir eval`` on a trained run.

An evaluation returns an :class:`Evaluation`: the metrics (JSON-serialisable)
*beside* the embeddings and records they came from, so the retrieval grid
(:func:`sbir.viz.grid.write_retrieval_grid`) and callers that need the vectors
use them without recomputing.

* :func:`evaluate_finegrained`: Acc@1/5/10 (and %corr with human triplets); the
  gallery is the split's unique photos; a query's only relevant photo is its own.
  A model with a trained re-ranker (``model.rerank``) also gets ``rerank_acc@K``:
  the embedding's top ``model.rerank_top_k`` photos re-ordered pairwise
  (:mod:`sbir.engine.rerank`); the plain ``acc@K`` stay the embedding's.
* :func:`evaluate_category`: mAP@all, mAP@200, P@100, P@200 (+ variants and hash
  metrics); any photo of the sketch's class is relevant. Flip TTA takes the
  minimum distance over the four (sketch, photo) flip pairings (DASE-MEMS) or
  averages embeddings (``eval.flip_mode``).

The distance is the run's (``eval.distance``; ``auto`` = the distance the loss
trains for, :func:`sbir.engine.tasks.resolve_distance`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sbir.config import TrainConfig
from sbir.data.records import Split
from sbir.engine.embed import embed_images, resolve_device
from sbir.engine.rerank import get_reranker, rerank_scores, reranked_ranks, top_k_candidates
from sbir.engine.tasks import resolve_distance, resolve_flip_mode, task_spec
from sbir.errors import CheckpointError, ConfigError, DataError
from sbir.fileio import atomic_write_text

KS_FINEGRAINED = (1, 5, 10)
KS_MAP = (200,)
KS_PREC = (10, 100, 200)  # P@10: the first page a user sees


@dataclass
class Evaluation:
    """Metrics of one evaluation and what they were computed from.

    Query ``i`` is relevant to gallery item ``j`` when ``query_keys[i] == gallery_keys[j]``
    (the photo's index for fine-grained, the class for category-level).
    """

    metrics: dict[str, Any]
    queries: list  # sketch records, in the order of query_emb
    gallery: list  # photo records, in the order of gallery_emb
    query_emb: np.ndarray
    gallery_emb: np.ndarray
    query_keys: np.ndarray
    gallery_keys: np.ndarray
    distance: str
    query_flip: np.ndarray | None = None
    gallery_flip: np.ndarray | None = None
    show_labels: bool = False  # the grid names each query's class
    # The full score matrix when it is not a plain function of the embeddings (multi-view, ensembles).
    scores: np.ndarray | None = None


def _embed_kwargs(cfg: TrainConfig, progress: bool, batch_size: int | None, num_workers: int | None) -> dict:
    return dict(
        image_size=cfg.data.image_size,
        batch_size=batch_size or cfg.eval.batch_size,
        num_workers=cfg.data.num_workers if num_workers is None else num_workers,
        progress=progress,
    )


def evaluate_finegrained(
    model,
    cfg: TrainConfig,
    split: Split,
    flip_tta: bool = False,
    progress: bool = True,
    distance: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = 0,
    multiview: bool | None = None,
    stat_sketches: list | None = None,
) -> Evaluation:
    """Acc@1/5/10 (and %corr when the split has triplets); the gallery is the split's unique photos.

    ``multiview`` (default ``cfg.eval.multiview``): 10-view testing, the view scores averaged
    (:func:`sbir.metrics.multiview_scores` with the mirrored correspondence); flip TTA is then implied.
    ``stat_sketches``: image refs of the sketch statistics set that ``cfg.eval.hubness`` (center, csls)
    needs, the run's training sketches (:func:`sbir.metrics.hubness.hubness_scores`), used when the model
    does not hold their embeddings itself (a fitted ridge head does: ``hubness_statistics``).
    """
    from sbir.data.transforms import MIRRORED_VIEWS, MULTIVIEW_NAMES
    from sbir.metrics import finegrained_report, finegrained_report_from_scores, multiview_scores, percent_correct

    photo_index = split.photo_index()
    sketches = [s for s in split.sketches if s.photo_id is not None]
    if not sketches:
        raise DataError(f"split '{split.name}' has no sketches paired with photos; fine-grained evaluation needs pairs")
    true_index = np.array([photo_index[s.photo_id] for s in sketches])
    dist = distance or resolve_distance(cfg)
    kw = _embed_kwargs(cfg, progress, batch_size, num_workers)
    use_multiview = cfg.eval.multiview if multiview is None else multiview
    scores = None
    if use_multiview and cfg.eval.hubness != "none":
        raise ConfigError(
            f"multi-view testing averages ten views' scores and eval.hubness={cfg.eval.hubness} corrects one view's; "
            "test one of them (drop --multiview, or --set eval.hubness=none)"
        )
    if use_multiview:
        kw["multiview_scale"] = cfg.eval.multiview_scale
        s_views = embed_images(model, [s.image for s in sketches], "sketch", **kw).embeddings
        p_views = embed_images(model, [p.image for p in split.photos], "photo", **kw).embeddings
        scores = multiview_scores(s_views, p_views, dist, mirror=MIRRORED_VIEWS)
        report = finegrained_report_from_scores(scores, true_index, KS_FINEGRAINED, split.triplets)
        s_emb, p_emb = s_views[:, MULTIVIEW_NAMES.index("c")], p_views[:, MULTIVIEW_NAMES.index("c")]
    else:
        reranker = get_reranker(model)
        tok = dict(return_tokens=reranker is not None)
        s_res = embed_images(model, [s.image for s in sketches], "sketch", flip_tta=bool(flip_tta), **tok, **kw)
        p_res = embed_images(model, [p.image for p in split.photos], "photo", flip_tta=bool(flip_tta), **tok, **kw)
        s_emb, p_emb = s_res.embeddings, p_res.embeddings
        if cfg.eval.hubness != "none":
            scores = _hubness_scores(model, cfg, s_emb, p_emb, stat_sketches, dist, flip_tta, kw)
            report = finegrained_report_from_scores(scores, true_index, KS_FINEGRAINED, split.triplets)
        else:
            report = finegrained_report(s_emb, p_emb, true_index, ks=KS_FINEGRAINED, distance=dist)
            if split.triplets is not None and len(split.triplets):
                report["%corr"] = percent_correct(s_emb, p_emb, split.triplets, distance=dist)
        if reranker is not None:  # (multi-view testing does not re-rank)
            report.update(_rerank_report(model, reranker, s_res, p_res, true_index, report["ranks"], dist))
    report["distance"] = dist
    report["views"] = len(MULTIVIEW_NAMES) if use_multiview else 1
    report["hubness"] = cfg.eval.hubness
    return Evaluation(
        metrics=report,
        queries=sketches,
        gallery=list(split.photos),
        query_emb=s_emb,
        gallery_emb=p_emb,
        query_keys=true_index,
        gallery_keys=np.arange(len(split.photos)),
        distance=dist,
        scores=scores,
    )


def _hubness_scores(model, cfg, s_emb, p_emb, stat_sketches, dist: str, flip_tta, kw: dict) -> np.ndarray:
    """Scores under ``cfg.eval.hubness``, with the statistics set embedded as the queries are."""
    from sbir.metrics.hubness import hubness_scores

    if dist != "cosine":
        raise ConfigError(
            f"eval.hubness={cfg.eval.hubness} corrects cosine scores, but this run ranks by {dist} distance; "
            "set eval.hubness=none or eval.distance=cosine"
        )
    stored = model.hubness_statistics() if hasattr(model, "hubness_statistics") else None
    if stored is not None:  # a fitted ridge head holds its training sketches' embeddings: no images needed
        return hubness_scores(cfg.eval.hubness, s_emb, p_emb, stored)
    if not stat_sketches:
        raise DataError(
            f"eval.hubness={cfg.eval.hubness} needs the run's training sketches as its statistics set, and none "
            "were found: pass --data with the folder the run trained on (its train split), or set eval.hubness=none"
        )
    stats = embed_images(
        model, list(stat_sketches), "sketch", flip_tta=bool(flip_tta), desc="hubness: training sketches", **kw
    ).embeddings
    return hubness_scores(cfg.eval.hubness, s_emb, p_emb, stats)


def training_sketches(cfg: TrainConfig, run_dir: Path) -> list | None:
    """Image refs of a trained run's training sketches (its ``split.json`` replayed on ``cfg.data.path``), or
    None when the record or the data is not there. The train split only: never the validation split, the
    unseen classes or a held-out test split."""
    from sbir.data.policies import prepare_splits
    from sbir.data.splits import load_split_record
    from sbir.errors import SbirError

    run_dir = Path(run_dir)
    if not cfg.data.path or not (run_dir / "split.json").is_file() or not Path(cfg.data.path).is_dir():
        return None
    try:
        record = load_split_record(run_dir / "split.json")
        _, train, _ = prepare_splits(cfg, run_dir, record, False, task_spec(cfg).split_policy)
    except SbirError:
        return None
    return [sk.image for sk in train.sketches] or None


def _stat_kwargs(cfg: TrainConfig, model, run_dir: Path, data_path: str | None) -> dict:
    """``{"stat_sketches": ...}`` for a run evaluated with ``eval.hubness`` whose model does not hold its
    training sketches' embeddings (a fitted ridge head does: no need to load the training split), else ``{}``."""
    if cfg.eval.hubness == "none":
        return {}
    if hasattr(model, "hubness_statistics") and model.hubness_statistics() is not None:
        return {}
    import copy

    replay = copy.deepcopy(cfg)
    replay.data.path = str(data_path or cfg.data.path or "")
    return {"stat_sketches": training_sketches(replay, run_dir)}


def _rerank_report(model, reranker, s_res, p_res, true_index, plain_ranks, dist: str) -> dict[str, Any]:
    """``rerank_acc@K`` and ``rerank_ranks``: the embedding top-K (``model.rerank_top_k``) re-ordered pairwise.

    Not sharded under torchrun: the tokens arrive gathered (:func:`sbir.engine.embed.embed_images`) and every
    rank rescores all top-K pairs itself (no collective, so no rank can wait on another here; rank 0's
    metrics are the ones kept). Sharding it would pay off only for a large K or validation split.
    """
    from sbir.metrics import acc_at_k, similarity_matrix

    k = int(getattr(model, "rerank_top_k", 10))
    scores = similarity_matrix(s_res.embeddings, p_res.embeddings, dist)
    cand = top_k_candidates(scores, k)
    rr = rerank_scores(reranker, s_res.tokens, p_res.tokens, cand)
    ranks = reranked_ranks(cand, rr, true_index, plain_ranks)
    out: dict[str, Any] = {f"rerank_{key}": v for key, v in acc_at_k(ranks, KS_FINEGRAINED).items()}
    out["rerank_top_k"] = int(cand.shape[1])
    out["rerank_ranks"] = [int(r) for r in ranks]
    return out


def _labels(records) -> np.ndarray:
    return np.array([r.label for r in records], dtype=object)


def evaluate_category(
    model,
    cfg: TrainConfig,
    split: Split,
    flip_tta: bool = False,
    progress: bool = True,
    distance: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> Evaluation:
    """Category-level metrics of ``split``: its sketches against its photos (same class = relevant).

    Hash metrics (``<metric>_hash<bits>``) are added for the heads in ``model.hash_heads``.
    """
    from sbir.data.policies import require_labels
    from sbir.engine.hashcodes import hash_metrics
    from sbir.metrics import category_report

    require_labels(split, "the evaluation data")
    if not split.sketches or not split.photos:
        raise DataError(
            f"split '{split.name}' has {len(split.sketches)} sketches and {len(split.photos)} photos; "
            "evaluation needs both"
        )
    dist = distance or resolve_distance(cfg)
    mode = resolve_flip_mode(cfg) if flip_tta else None
    kw = _embed_kwargs(cfg, progress, batch_size, num_workers)
    flips = dict(flip_tta=mode == "average", return_flipped=mode == "pairings")
    s_res = embed_images(model, [s.image for s in split.sketches], "sketch", **flips, **kw)
    p_res = embed_images(model, [p.image for p in split.photos], "photo", **flips, **kw)
    s_lab, p_lab = _labels(split.sketches), _labels(split.photos)
    report: dict[str, Any] = category_report(
        s_res.embeddings,
        s_lab,
        p_res.embeddings,
        p_lab,
        distance=dist,
        ks_map=KS_MAP,
        ks_prec=KS_PREC,
        sketch_flip=s_res.flipped,
        photo_flip=p_res.flipped,
    )
    report["n_classes"] = int(len(set(s_lab.tolist())))
    report["distance"] = dist
    report["flip"] = mode or "none"
    heads = getattr(model, "hash_heads", None) or {}
    if heads:
        report.update(
            hash_metrics(heads, s_res.embeddings, s_lab, p_res.embeddings, p_lab, s_res.flipped, p_res.flipped)
        )
    return Evaluation(
        metrics=report,
        queries=list(split.sketches),
        gallery=list(split.photos),
        query_emb=s_res.embeddings,
        gallery_emb=p_res.embeddings,
        query_keys=s_lab,
        gallery_keys=p_lab,
        distance=dist,
        query_flip=s_res.flipped,
        gallery_flip=p_res.flipped,
        show_labels=True,
    )


def _scores(ev: Evaluation) -> np.ndarray:
    from sbir.metrics import similarity_matrix

    return ev.scores if ev.scores is not None else similarity_matrix(ev.query_emb, ev.gallery_emb, ev.distance)


def _ensemble(
    first: Evaluation, members, spec, target: Split, flip_tta, progress: bool, extra, data_path=None
) -> Evaluation:
    """Average the score matrices of ``first`` and of each member model on the same queries and gallery."""
    import dataclasses

    from sbir.engine.inference import load_model
    from sbir.metrics import finegrained_report_from_scores

    if spec.evaluate is not evaluate_finegrained:
        raise ConfigError(f"ensembles average fine-grained scores; this run's task is {spec.name}")
    scores, ids = _scores(first).astype(np.float64), []
    device = str(resolve_device("auto"))
    for member in members:
        model, cfg, model_id = load_model(member, device=device)
        if task_spec(cfg).evaluate is not evaluate_finegrained:
            raise ConfigError(f"ensemble member {member} is a {cfg.task} model; an ensemble needs fine-grained runs")
        use_flip = cfg.eval.flip_tta if flip_tta is None else flip_tta
        member_dir = Path(member) if Path(member).is_dir() else Path(member).parent
        stats = _stat_kwargs(cfg, model, member_dir, data_path)
        scores += _scores(
            evaluate_finegrained(model, cfg, target, flip_tta=use_flip, progress=progress, **extra, **stats)
        )
        ids.append(model_id)
    scores = (scores / (len(members) + 1)).astype(np.float32)
    report = finegrained_report_from_scores(scores, first.query_keys, KS_FINEGRAINED, target.triplets)
    report.update(distance=first.distance, views=first.metrics.get("views", 1), ensemble_ids=ids)
    return dataclasses.replace(first, metrics=report, scores=scores)


def evaluate_run(run: str | Path, **kwargs) -> tuple[dict[str, Any], Path]:
    """:func:`evaluate_run_full` (same arguments), returning just ``(metrics, out_dir)``."""
    metrics, out, _result, _model = evaluate_run_full(run, **kwargs)
    return metrics, out


def evaluate_run_full(
    run: str | Path,
    data: str | None = None,
    fmt: str | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    flip_tta: bool | None = None,
    skip_orphans: bool = False,
    progress: bool = True,
    model_and_cfg: tuple | None = None,
    multiview: bool | None = None,
    ensemble: list[str | Path] | None = None,
) -> tuple[dict[str, Any], Path, Evaluation, Any]:
    """Evaluate the best checkpoint of ``run``; write ``metrics.json`` and ``retrieval.png``.

    Returns ``(metrics, out_dir, evaluation, model)``. ``split="test"`` evaluates what
    the task's split policy calls the test split (:func:`sbir.data.policies.evaluation_split`:
    for a zero-shot run, the unseen classes only); ``split="val"`` replays the run's recorded
    validation split. ``model_and_cfg`` ``(model, cfg, model_id)`` reuses an already loaded
    model. ``ensemble``: more fine-grained runs or checkpoints whose scores are averaged with
    this one's (each model with its own preprocessing). ``multiview``: 10-view testing.
    """
    from sbir.data.formats import load_dataset, skipped_message
    from sbir.data.policies import evaluation_split
    from sbir.data.splits import apply_split_record, load_split_record
    from sbir.engine.inference import load_model
    from sbir.viz.grid import write_retrieval_grid

    run = Path(run)
    # Evaluate wherever is available, whatever device the run trained on.
    model, cfg, model_id = model_and_cfg or load_model(run, device=str(resolve_device("auto")))
    spec = task_spec(cfg)
    data_path = data or cfg.data.path
    if not data_path:
        raise DataError("no dataset given: pass --data PATH")
    dataset = load_dataset(data_path, fmt or (cfg.data.format if data is None else None), skip_orphans=skip_orphans)
    if dataset.skipped and progress:
        print(skipped_message(dataset), file=sys.stderr)
    if split == "val":
        split_file = (run if run.is_dir() else run.parent) / "split.json"
        if not split_file.is_file():
            raise CheckpointError(
                f"--split val needs the run folder's split.json (not found under {run}); pass the run folder"
            )
        _, target = apply_split_record(dataset.split("train"), load_split_record(split_file))
    else:
        run_dir = run if run.is_dir() else run.parent
        target = evaluation_split(dataset, cfg, data_path, spec.split_policy, run_dir, announce=progress)
    use_flip = cfg.eval.flip_tta if flip_tta is None else flip_tta
    out = Path(out_dir) if out_dir else (run if run.is_dir() else run.parent) / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    extra = {}
    if multiview is not None:
        if spec.evaluate is not evaluate_finegrained:
            raise ConfigError(f"multi-view testing is a fine-grained evaluation; this run's task is {spec.name}")
        extra["multiview"] = multiview
    run_dir = run if run.is_dir() else run.parent
    stats = _stat_kwargs(cfg, model, run_dir, data_path)
    result = spec.evaluate(model, cfg, target, flip_tta=use_flip, progress=progress, **extra, **stats)
    if ensemble:
        result = _ensemble(result, ensemble, spec, target, use_flip, progress, extra, data_path)
    write_retrieval_grid(result, out / "retrieval.png", title=f"{split} retrieval")
    metrics = {
        "split": split,
        "dataset": str(Path(data_path).resolve()),
        "model_id": model_id,
        "flip_tta": use_flip,
        **({"ensemble": [model_id, *result.metrics.pop("ensemble_ids")]} if ensemble else {}),
        **result.metrics,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    return metrics, out, result, model


__all__ = ["Evaluation", "evaluate_category", "evaluate_finegrained", "evaluate_run", "evaluate_run_full"]
