"""``sbir eval``: evaluate a trained run on its validation split or a test split."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from sbir.engine.checkpoint import atomic_write_text, load_model
from sbir.engine.embed import resolve_device
from sbir.errors import CheckpointError, DataError


def evaluate_run(
    run: str | Path,
    data: Optional[str] = None,
    fmt: Optional[str] = None,
    split: str = "test",
    out_dir: Optional[str | Path] = None,
    flip_tta: Optional[bool] = None,
    skip_orphans: bool = False,
    progress: bool = True,
) -> tuple[dict[str, Any], Path]:
    """Evaluate the best checkpoint of ``run`` and write ``metrics.json`` (+ a retrieval grid)."""
    from sbir.data.formats import load_dataset
    from sbir.data.splits import apply_split_record, load_split_record

    run = Path(run)
    # Evaluate wherever is available, whatever device the run trained on.
    model, cfg, model_id = load_model(run, device=str(resolve_device("auto")))
    data_path = data or cfg.data.path
    if not data_path:
        raise DataError("no dataset given: pass --data PATH")
    dataset = load_dataset(data_path, fmt or (cfg.data.format if data is None else None), skip_orphans=skip_orphans)
    if dataset.skipped and progress:
        print(f"skipped {len(dataset.skipped)} sketch(es) with no photo (--skip-orphans)", file=sys.stderr)
    if split == "val":
        split_file = run / "split.json" if run.is_dir() else None
        if split_file is None or not split_file.is_file():
            raise CheckpointError(
                f"--split val needs the run folder's split.json (not found under {run}); pass the run folder"
            )
        _, target = apply_split_record(dataset.split("train"), load_split_record(split_file))
    else:
        target = dataset.split(split)
    use_flip = cfg.eval.flip_tta if flip_tta is None else flip_tta
    out = Path(out_dir) if out_dir else (run if run.is_dir() else run.parent) / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)

    if cfg.task == "finegrained":
        from sbir.engine.finegrained import evaluate_finegrained, write_retrieval_grid

        metrics = evaluate_finegrained(
            model, target, cfg.data.image_size, flip_tta=use_flip, distance=cfg.eval.distance,
            batch_size=cfg.eval.batch_size, progress=progress, keep_embeddings=True,
        )
        s_emb, p_emb, true_index, sketches = metrics.pop("_embeddings")
        write_retrieval_grid(target, sketches, s_emb, p_emb, true_index, out / "retrieval.png", title=f"{split} retrieval")
    else:
        from sbir.engine.category import evaluate_category

        metrics = evaluate_category(model, cfg, target, flip_tta=use_flip, progress=progress, out_dir=out)
    metrics = {
        "split": split,
        "dataset": str(Path(data_path).resolve()),
        "model_id": model_id,
        "flip_tta": use_flip,
        **metrics,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    return metrics, out

