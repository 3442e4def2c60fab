"""A few real batches on ../shared/data/qmul_v1/shoes: loader, a decreasing loss, metric output."""

from __future__ import annotations

import torch

from sbir.config import TrainConfig
from sbir.data.formats import load_dataset
from sbir.engine.finegrained import FineGrainedTask, evaluate_finegrained
from tests.conftest import shared_data


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
    task = FineGrainedTask(cfg, tmp_path, progress=False)
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

    report = evaluate_finegrained(task.model, task.val_split, 96, progress=False)
    assert report["n_queries"] == 46 and report["n_gallery"] == 46
    assert 0.0 <= report["acc@1"] <= report["acc@5"] <= report["acc@10"] <= 100.0
    assert "%corr" in report and 0.0 <= report["%corr"] <= 100.0
