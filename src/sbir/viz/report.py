"""``sbir report RUN``: one HTML page with a run's curves, retrieval grids, t-SNE and attention distances.

Writes ``RUN/report/`` (or ``--out``):

* ``curves.png``: training loss and validation metrics per epoch (:mod:`sbir.viz.curves`),
* ``val/retrieval.png`` + ``val/metrics.json``: the best checkpoint on the run's recorded
  validation split; with ``--data`` and a test split also ``test/``,
* ``tsne.png``: t-SNE of the validation sketch and photo embeddings, coloured by photo pair
  (fine-grained) or class (category-level) (:mod:`sbir.viz.embedding`),
* ``attention_distance.png`` / ``.json`` for ViT encoders: mean attention distance per layer and
  head in pixels on the 2-D patch grid (:mod:`sbir.viz.attention`),
* ``index.html``: all of it on one page with the metrics table (relative links only, no scripts).
"""

from __future__ import annotations

import html
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sbir.errors import CheckpointError
from sbir.fileio import atomic_write_text

__all__ = ["vit_attention_distances", "write_report"]

ATTN_IMAGES = 16  # validation images per encoder for the attention distances


def _encoders(model) -> dict[str, Any]:
    if hasattr(model, "sketch_encoder"):
        if model.sketch_encoder is model.photo_encoder:
            return {"shared": model.sketch_encoder}
        return {"sketch": model.sketch_encoder, "photo": model.photo_encoder}
    return {"shared": model.backbone} if hasattr(model, "backbone") else {}


def vit_attention_distances(model, cfg, split, n_images: int = ATTN_IMAGES) -> dict[str, np.ndarray]:
    """``{encoder: (layers, heads)}`` mean attention distances (pixels) of the ViT encoders of ``model`` on up
    to ``n_images`` of ``split``'s sketches (sketch / shared encoder) and photos (photo encoder). Empty for
    models without ViT encoders."""
    import torch

    from sbir.data.transforms import eval_transform
    from sbir.viz.attention import mean_attention_distance

    out: dict[str, np.ndarray] = {}
    for name, enc in _encoders(model).items():
        if not hasattr(enc, "attention_maps"):
            continue
        records = split.photos if name == "photo" else split.sketches
        if name == "shared":
            records = list(split.sketches[: n_images // 2]) + list(split.photos[: n_images - n_images // 2])
        records = list(records)[:n_images]
        if not records:
            continue
        tf = eval_transform(cfg.data.image_size, model.mean, model.std)
        device = next(model.parameters()).device
        x = torch.stack([tf(r.image.load()) for r in records]).to(device)
        x = getattr(model, "content_crop", torch.nn.Identity())(x)  # what the encoders see (model.content_crop)
        enc.eval()
        maps = enc.attention_maps(x)
        grid = enc.grid_size(x)
        out[name] = np.stack([mean_attention_distance(m, grid, enc.patch_size, enc.num_prefix_tokens) for m in maps])
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return html.escape(str(v))


def _metrics_table(columns: dict[str, dict[str, Any]]) -> str:
    keys: list[str] = []
    for m in columns.values():
        keys.extend(
            k
            for k, v in m.items()
            if k not in keys
            and isinstance(v, (int, float, str))
            and not isinstance(v, bool)
            and k not in ("dataset", "model_id", "split")
        )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for k in keys:
        cells = "".join(f"<td>{_fmt(m[k]) if k in m else ''}</td>" for m in columns.values())
        rows.append(f'<tr data-metric="{html.escape(k)}"><th scope="row">{html.escape(k)}</th>{cells}</tr>')
    return f'<table id="metrics"><thead><tr><th>metric</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _figure(src: str, caption: str, fig_id: str) -> str:
    return (
        f'<figure id="{fig_id}"><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _page(run: Path, cfg, summary: dict, columns: dict, figures: list[str], notes: list[str]) -> str:
    title = f"sbir report: {run.name}"
    info = [
        ("run", str(run)),
        ("task", cfg.task),
        ("backbone", cfg.model.backbone + (" (shared encoder)" if cfg.model.shared_encoder else "")),
        ("image size", cfg.data.image_size),
        ("loss", cfg.loss.name),
        ("re-ranker", f"top {cfg.model.rerank_top_k}" if cfg.model.rerank else "no"),
        ("best epoch", summary.get("best_epoch", "?")),
        ("epochs run", summary.get("epochs_run", "?")),
    ]
    info_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in info)
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th[scope=row], #run th {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ color: #555; font-size: 0.9em; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<table id="run">{info_html}</table>
<h2>Metrics</h2>
{_metrics_table(columns)}
{f'<ul id="notes">{notes_html}</ul>' if notes else ""}
<h2>Figures</h2>
{"".join(figures)}
</body></html>
"""


def write_report(
    run: str | Path,
    data: str | None = None,
    fmt: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Write the report of run folder ``run`` (see the module docstring); returns the path of ``index.html``."""
    from sbir.data.formats import load_dataset
    from sbir.data.splits import apply_split_record, load_split_record
    from sbir.engine.embed import resolve_device
    from sbir.engine.evaluate import evaluate_run_full
    from sbir.engine.inference import load_model
    from sbir.engine.tasks import task_spec
    from sbir.viz.attention import plot_attention_distance
    from sbir.viz.curves import plot_training_curves
    from sbir.viz.embedding import plot_tsne

    run = Path(run)
    if not run.is_dir() or not (run / "metrics.csv").is_file():
        raise CheckpointError(f"{run} is not a run folder with metrics.csv; pass a folder written by 'sbir train'")
    out = Path(out_dir) if out_dir else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(run, device=str(resolve_device("auto")))
    model, cfg, _ = loaded
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    figures: list[str] = []
    notes: list[str] = []
    columns: dict[str, dict[str, Any]] = {}

    plot_training_curves(run / "metrics.csv", out / "curves.png", title=f"training curves: {run.name}")
    figures.append(_figure("curves.png", "training loss and validation metrics per epoch", "fig-curves"))

    val_metrics, _, val_eval, _ = evaluate_run_full(
        run, split="val", out_dir=out / "val", progress=progress, model_and_cfg=loaded
    )
    columns["validation"] = val_metrics
    figures.append(
        _figure("val/retrieval.png", "validation retrieval: top 5 per sketch, true match outlined", "fig-val-grid")
    )

    if data is not None:
        dataset = load_dataset(data, fmt)
        if "test" in dataset.splits or task_spec(cfg).split_policy != "photo":
            test_metrics, _, _, _ = evaluate_run_full(
                run, data=data, fmt=fmt, split="test", out_dir=out / "test", progress=progress, model_and_cfg=loaded
            )
            columns["test"] = test_metrics
            figures.append(
                _figure("test/retrieval.png", "test retrieval: top 5 per sketch, true match outlined", "fig-test-grid")
            )
        else:
            notes.append(f"{data} has no test split (splits: {', '.join(sorted(dataset.splits))}); test skipped")

    # Fine-grained: a sketch's key is its photo's index, a photo's its own index; category: the class.
    fine = not val_eval.show_labels
    s_keys, p_keys = val_eval.query_keys, val_eval.gallery_keys
    try:
        plot_tsne(
            val_eval.query_emb,
            s_keys,
            val_eval.gallery_emb,
            p_keys,
            out / "tsne.png",
            colour_by="photo pair" if fine else "class",
            seed=cfg.seed,
        )
        figures.append(_figure("tsne.png", "t-SNE of validation sketch (x) and photo (o) embeddings", "fig-tsne"))
    except ValueError as exc:
        notes.append(f"t-SNE skipped: {exc}")

    ds = load_dataset(cfg.data.path, cfg.data.format)
    _, val_split = apply_split_record(ds.split("train"), load_split_record(run / "split.json"))
    dists = vit_attention_distances(model, cfg, val_split)
    if dists:
        plot_attention_distance(dists, out / "attention_distance.png", image_size=cfg.data.image_size)
        atomic_write_text(
            out / "attention_distance.json",
            json.dumps(
                {
                    k: {"layers_by_heads_pixels": v.round(3).tolist(), "image_size": cfg.data.image_size}
                    for k, v in dists.items()
                },
                indent=1,
            ),
        )
        figures.append(
            _figure(
                "attention_distance.png",
                "mean attention distance per layer and head (pixels on the 2-D patch grid)",
                "fig-attention",
            )
        )
    if progress:
        print(f"report: {len(figures)} figures", file=sys.stderr)
    page = out / "index.html"
    atomic_write_text(page, _page(run, cfg, summary, columns, figures, notes))
    return page
