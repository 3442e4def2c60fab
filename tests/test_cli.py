"""The sbir command: --help everywhere, and bad input as one clear line (never a traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sbir.cli import build_parser, main


def _subcommands(parser):
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            yield name, sub
            if sub._subparsers is not None:
                for inner_name, inner in _subcommands(sub):
                    yield f"{name} {inner_name}", inner


def test_every_command_has_help():
    parser = build_parser()
    names = [n for n, _ in _subcommands(parser)]
    assert {"demo", "train", "eval"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([*name.split(), "--help"])
        assert exc.value.code == 0


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "sbir.cli", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "eval" in out.stdout


def _paired(root: Path, n: int = 4) -> Path:
    for split in ("trainA", "trainB"):
        (root / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "trainB" / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(root / "trainA" / f"{i:03d}_1.png")
    return root


def _run_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_folder_of_broken_images_names_the_file(tmp_path, capsys):
    root = _paired(tmp_path / "d")
    (root / "trainB" / "002.png").write_bytes(b"")  # 0-byte photo
    (root / "trainA" / "001_1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt sketch
    err = _run_error(
        capsys,
        [
            "train",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--no-progress",
            "--set",
            "model.pretrained=false",
        ],
    )
    assert "cannot read image" in err and ("001_1.png" in err or "002.png" in err)


def test_sketch_without_photo_and_skip_orphans(tmp_path, capsys):
    root = _paired(tmp_path / "d")
    Image.new("RGB", (30, 30), "white").save(root / "trainA" / "999_1.png")
    err = _run_error(capsys, ["train", "--data", str(root), "--epochs", "1", "--no-progress"])
    assert "999_1.png" in err and "--skip-orphans" in err


def test_empty_folder_and_missing_split(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _run_error(capsys, ["train", "--data", str(tmp_path / "empty"), "--no-progress"])
    assert str(tmp_path / "empty") in err
    err = _run_error(capsys, ["train", "--data", str(tmp_path / "nope"), "--no-progress"])
    assert "nope" in err


def test_eval_with_foreign_checkpoint_and_missing_test_split(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    err = _run_error(capsys, ["eval", str(foreign), "--data", str(tmp_path)])
    assert "not an sbir checkpoint" in err
    pth = tmp_path / "weights.pth"
    pth.write_bytes(b"not a zip")
    err = _run_error(capsys, ["eval", str(pth), "--data", str(tmp_path)])
    assert "weights.pth" in err


def test_bad_config_value_is_one_line(tmp_path, capsys):
    err = _run_error(capsys, ["train", "--data", str(tmp_path), "--set", "optim.lr=-3"])
    assert "optim.lr must be > 0" in err


def test_help_does_not_import_torch():
    """`sbir --help` stays fast: building the parser loads no torch, FastAPI or model code."""
    import subprocess
    import sys

    code = (
        "import sys; from sbir.cli import build_parser; build_parser(); "
        "print(sorted({'torch', 'fastapi'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_refused_training_leaves_no_empty_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run_error(capsys, ["train", "--data", str(tmp_path / "nope"), "--no-progress"])
    _run_error(capsys, ["train", "--data", str(tmp_path / "nope"), "--out", "mine", "--no-progress"])
    assert not list((tmp_path / "runs").glob("*")) and not (tmp_path / "mine").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    _run_error(capsys, ["train", "--data", str(tmp_path / "nope"), "--out", str(kept), "--no-progress"])
    assert kept.is_dir()  # a folder the user made is never removed
