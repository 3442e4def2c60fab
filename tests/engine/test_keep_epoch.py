"""optim.keep_epoch: best.safetensors holds the best validation epoch ("best") or the final epoch ("last")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sbir.config import load_config
from sbir.engine import trainer as trainer_mod
from sbir.errors import ConfigError

SCRIPTED_VALIDATION = [50.0, 40.0, 30.0]  # validation gets worse every epoch: "best" keeps epoch 1


def _train(data: Path, run: Path, monkeypatch, keep: str):
    scores = iter(SCRIPTED_VALIDATION)
    real_validate = trainer_mod.Trainer._validate

    def scripted_validate(self):
        evaluation, val = real_validate(self)
        val[self.cfg.select_metric] = next(scores)
        return evaluation, val

    monkeypatch.setattr(trainer_mod.Trainer, "_validate", scripted_validate)
    cfg = load_config(
        None,
        [
            f"data.path={data}", "data.image_size=64", "data.num_workers=0", "optim.batch_size=8", "optim.epochs=3",
            "optim.max_steps_per_epoch=1", "optim.lr=0.01", "optim.warmup_epochs=0", "model.pretrained=false",
            "model.backbone=resnet18", "model.embed_dim=8", f"optim.keep_epoch={keep}",
        ],
    )  # fmt: skip
    trainer = trainer_mod.Trainer(cfg, run, progress=False)
    return trainer, trainer.fit()


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("keep, kept_epoch", [("best", 1), ("last", 3)])
def test_kept_epoch(tiny_paired_dataset: Path, tmp_path: Path, monkeypatch, keep: str, kept_epoch: int):
    trainer, summary = _train(tiny_paired_dataset, tmp_path / keep, monkeypatch, keep)
    assert summary["epochs_run"] == 3
    assert summary["best_epoch"] == kept_epoch
    assert summary[f"best_val_{trainer.cfg.select_metric}"] == SCRIPTED_VALIDATION[kept_epoch - 1]
    final = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    kept = load_file(str(tmp_path / keep / "best.safetensors"))
    shared = {k: final[k] for k in kept}
    # The model trained on (lr 0.01), so epoch 1's weights differ from the final ones.
    assert _same_weights(kept, shared) == (keep == "last")


def test_keep_epoch_is_validated():
    with pytest.raises(ConfigError, match="optim.keep_epoch must be 'best' or 'last'"):
        load_config(None, ["optim.keep_epoch=final"])
