"""A few real batches on ../shared/data/qmul_v1/shoes: loader, a decreasing loss, and validation
metrics that match an independent numpy computation from independently computed embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbir.config import TrainConfig
from sbir.data.formats import load_dataset
from sbir.data.transforms import eval_transform
from sbir.engine.evaluate import evaluate_finegrained
from sbir.engine.tasks import build_task
from tests.conftest import shared_data


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _embed(model, records, domain: str, size: int) -> np.ndarray:
    """One image at a time through the plain eval transform: independent of the batched embedder."""
    tf = eval_transform(size, model.mean, model.std)
    model.eval()
    with torch.no_grad():
        return np.concatenate([model.embed(tf(r.image.load())[None], domain).float().numpy() for r in records])


def test_qmul_shoes_loss_decreases_and_metrics_are_reported(tmp_path):
    root = shared_data("qmul_v1", "shoes")
    ds = load_dataset(root)
    assert ds.format == "qmul_v1"
    train = ds.split("train")
    assert len(train.sketches) == 304 and len(train.photos) == 304

    cfg = TrainConfig()
    cfg.data.path = str(root)
    cfg.data.image_size = 96
    cfg.data.num_workers = 0
    cfg.model.embed_dim = 64
    cfg.model.freeze_stages = 2
    cfg.augment.erase_prob = 0.0
    cfg.optim.batch_size = 16
    cfg.validate()
    torch.manual_seed(0)
    task = build_task(cfg, tmp_path, progress=False)
    assert len(task.val_split.photos) == 46  # 15% of 304 photos, by photo
    assert (tmp_path / "split.json").is_file()

    # Overfit one fixed real batch: the loss must go down.
    batch = next(iter(task.train_batches(epoch=1)))
    assert batch["sketch"].shape == (16, 3, 96, 96) and batch["photo_aug"].shape == (16, 3, 96, 96)
    assert len(set(batch["group"].tolist())) == 16  # no photo twice in a batch
    opt = torch.optim.AdamW(task.model.param_groups(1e-3, 0.1, 0.0))
    task.model.train()
    losses = []
    for _ in range(6):
        loss, parts = task.compute_loss(batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert set(parts) >= {"ntxent_cross", "ntxent_sketch", "ntxent_photo"}
    assert losses[-1] < 0.7 * losses[0], losses

    val = task.val_split
    result = evaluate_finegrained(task.model, cfg, val, progress=False)
    report = result.metrics
    assert report["n_queries"] == 46 and report["n_gallery"] == 46

    # The evaluated embeddings are those of the val sketches and photos, in split order.
    s_emb, p_emb = _unit(result.query_emb), _unit(result.gallery_emb)
    np.testing.assert_allclose(s_emb, _unit(_embed(task.model, val.sketches, "sketch", 96)), atol=1e-4)
    np.testing.assert_allclose(p_emb, _unit(_embed(task.model, val.photos, "photo", 96)), atol=1e-4)

    # Acc@K recomputed with numpy: the rank of the true photo counts every photo scoring at least as well.
    photo_of = {p.id: j for j, p in enumerate(val.photos)}
    true = np.array([photo_of[s.photo_id] for s in val.sketches])
    scores = s_emb @ p_emb.T
    ranks = (scores >= scores[np.arange(len(true)), true][:, None]).sum(1)
    for k in (1, 5, 10):
        assert report[f"acc@{k}"] == pytest.approx(100.0 * np.mean(ranks <= k), abs=1e-6), k
    assert report["acc@10"] < 100.0  # 46 photos: a real ranking, not a saturated one

    # %corr from the human triplets: the photo judged more similar must score strictly higher.
    tri = np.asarray(val.triplets)
    assert len(tri) > 0
    agree = scores[tri[:, 0], tri[:, 1]] > scores[tri[:, 0], tri[:, 2]]
    assert report["%corr"] == pytest.approx(100.0 * agree.mean(), abs=1e-6)
