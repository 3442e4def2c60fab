"""The ``sbir`` command line.

Sub-commands: ``demo``, ``train``, ``cv``, ``eval``, ``report``, ``index``, ``search``, ``serve``, ``export``.
User errors (:class:`sbir.errors.SbirError`) print one line and exit 2; they
never show a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sbir import __version__
from sbir.errors import SbirError

EXIT_USER_ERROR = 2


# ---------------------------------------------------------------- helpers


def _print_table(title: str, metrics: dict, keys: Sequence[str]) -> None:
    print(title)
    for k in keys:
        if k in metrics:
            v = metrics[k]
            print(f"  {k:<10} {v:8.2f}" if isinstance(v, float) else f"  {k:<10} {v:>8}")


FG_KEYS = ("acc@1", "acc@5", "acc@10", "%corr", "n_queries", "n_gallery")


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """Map convenience flags onto dotted config overrides."""
    mapping = {
        "data": "data.path",
        "format": "data.format",
        "task": "task",
        "method": "method",
        "epochs": "optim.epochs",
        "batch_size": "optim.batch_size",
        "lr": "optim.lr",
        "image_size": "data.image_size",
        "backbone": "model.backbone",
        "device": "device",
        "seed": "seed",
        "unseen": "data.unseen",
        "workers": "data.num_workers",
    }
    out = []
    for attr, key in mapping.items():
        val = getattr(args, attr, None)
        if val is not None:
            out.append(f"{key}={val}")
    if getattr(args, "skip_orphans", False):
        out.append("data.skip_orphans=true")
    if getattr(args, "shared_encoder", False):
        out.append("model.shared_encoder=true")
    return out + list(args.set or [])


def _add_common_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset folder (format auto-detected)")
    p.add_argument("--format", help="force the dataset format (paired, qmul_v1, sketchy, category, ...)")
    p.add_argument(
        "--skip-orphans", action="store_true", help="skip sketches whose photo is missing instead of failing"
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    """The training settings shared by ``sbir train`` and ``sbir cv``."""
    _add_common_data_args(p)
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument(
        "--task",
        help="finegrained (default), category, zeroshot or pretrain (sketch-domain pretraining; any registered task)",
    )
    p.add_argument("--method", help="the task's method when it has several, e.g. clip-prompt (zero-shot CLIP prompts)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--image-size", type=int)
    p.add_argument("--backbone", help="sbir or timm backbone name (default efficientnet_lite0)")
    p.add_argument("--shared-encoder", action="store_true", help="one encoder for sketches and photos")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int, help="data-loading worker processes")
    p.add_argument("--unseen", help="zero-shot: builtin split name, class-list file or comma-separated classes")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-4")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


# ---------------------------------------------------------------- train


def _strip_nproc(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def _launch_torchrun(args: argparse.Namespace) -> int:
    """``sbir train --nproc N ...``: run the same command under ``torch.distributed.run`` with N processes."""
    import os
    import subprocess

    from sbir.engine.distributed import env_world_size

    if env_world_size() > 1:
        raise SbirError("--nproc starts torchrun itself; drop it when the command already runs under torchrun")
    argv = _strip_nproc(args.argv)
    if not args.resume and not args.out:  # every rank must write to the same folder: name it once, here
        task = next((v.split("=", 1)[1] for v in (args.set or []) if v.startswith("task=")), args.task)
        argv += ["--out", str(Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{task or 'finegrained'}")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc)]
    cmd += ["-m", "sbir.cli", *argv]
    print("launching: " + " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, env=os.environ.copy()).returncode


def _new_trainer(trainer_class, cfg, out: Path, progress: bool):
    """The Trainer of a new run in ``out``; if it refuses the config or data, the folder it made is removed
    again (only when this call created it and nothing was written into it), so a typo leaves no litter."""
    existed = out.exists()
    try:
        return trainer_class(cfg, out, progress=progress)
    except BaseException:
        if not existed and out.is_dir() and not any(p.is_file() for p in out.rglob("*")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def cmd_train(args: argparse.Namespace) -> int:
    from sbir.config import load_config
    from sbir.engine import distributed
    from sbir.engine.trainer import Trainer

    if getattr(args, "nproc", None) is not None:
        if args.nproc < 1:
            raise SbirError(f"--nproc must be >= 1, got {args.nproc}")
        if args.nproc > 1:
            return _launch_torchrun(args)
    main_rank = os.environ.get("RANK", "0") == "0"
    progress = not args.no_progress
    finished = False
    try:
        if args.resume:
            trainer = Trainer(None, args.resume, resume=True, progress=progress)  # type: ignore[arg-type]
            if main_rank:
                print(
                    f"resuming {args.resume} at epoch {trainer.start_epoch}/{trainer.cfg.optim.epochs}",
                    file=sys.stderr,
                )
        else:
            cfg = load_config(args.config, _train_overrides(args))
            if args.out is None and distributed.env_world_size() > 1:
                raise SbirError("under torchrun every process must write to the same folder: pass --out RUN_DIR")
            out = Path(args.out) if args.out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.task}"
            trainer = _new_trainer(Trainer, cfg, out, progress)
            if main_rank:
                print(f"run folder: {out}", file=sys.stderr)
        summary = trainer.fit()
        finished = True
    finally:
        distributed.cleanup(synchronize=finished)
    if main_rank:
        sel = trainer.cfg.select_metric
        print(f"best epoch {summary['best_epoch']}: val {sel} = {summary[f'best_val_{sel}']:.2f}")
        print(f"run folder: {trainer.run_dir}")
    return 0


# ---------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from sbir.engine.evaluate import evaluate_run

    metrics, out_dir = evaluate_run(
        args.run,
        data=args.data,
        fmt=args.format,
        split=args.split,
        out_dir=args.out,
        flip_tta=args.flip_tta,
        skip_orphans=args.skip_orphans,
        progress=not args.no_progress,
        multiview=args.multiview,
        ensemble=args.ensemble,
    )
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k not in ("ranks", "rerank_ranks")}, indent=2))
    else:
        keys = [k for k in metrics if k not in ("ranks", "rerank_ranks", "split")]
        _print_table(f"{args.split} metrics ({metrics.get('n_queries')} queries):", metrics, keys)
        print(f"wrote {out_dir / 'metrics.json'}")
    return 0


# ---------------------------------------------------------------- cv


def cmd_cv(args: argparse.Namespace) -> int:
    from sbir.config import load_config
    from sbir.engine.cv import cross_validate

    cfg = load_config(args.config, _train_overrides(args))
    out = Path(args.out) if args.out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-cv"
    report = cross_validate(cfg, out, folds=args.folds, progress=not args.no_progress)
    print(f"{args.folds}-fold cross-validation (each fold tested once, never used for selection):")
    for k in (k[: -len("_mean")] for k in report if k.endswith("_mean")):
        folds = "  ".join(f"{r[k]:6.2f}" for r in report["per_fold"])
        print(f"  {k:<8} {report[k + '_mean']:6.2f} +- {report[k + '_std']:5.2f}   folds: {folds}")
    print(f"wrote {out / 'cv.json'}")
    return 0


# ---------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from sbir.viz.report import write_report

    page = write_report(args.run, data=args.data, fmt=args.format, out_dir=args.out, progress=not args.no_progress)
    print(f"wrote {page}")
    return 0


# ---------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from sbir.engine.demo import run_demo

    run_demo(
        out_dir=Path(args.out),
        data=args.data,
        fmt=args.format,
        epochs=args.epochs,
        image_size=args.image_size,
        skip_orphans=args.skip_orphans,
        progress=not args.no_progress,
        seed=args.seed,
    )
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sbir",
        description="Sketch-based image retrieval: train, evaluate, index and serve.",
    )
    parser.add_argument("--version", action="version", version=f"sbir {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="train and evaluate briefly on generated (or your) data; writes a retrieval grid",
        description="Offline demo: generate paired sketch/photo data (or use --data), print Acc@1/5/10 of the "
        "off-the-shelf ImageNet model, train briefly, print Acc@1/5/10 again and write retrieval.png.",
    )
    _add_common_data_args(p)
    p.add_argument("--out", default="sbir_demo", help="output folder (default: ./sbir_demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 10)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: 128 generated, 224 real)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train",
        help="train a model into a run folder (or --resume one)",
        description="Train an SBIR model. Settings come from the defaults, then --config YAML, then the flags "
        "below, then --set key.sub=value overrides. The full config is saved in the run folder and in every "
        "checkpoint. The best epoch is chosen on a validation split carved from the training data.",
    )
    _add_train_args(p)
    p.add_argument("--out", help="run folder (default: runs/<time>-<task>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument(
        "--nproc",
        type=int,
        help="data-parallel processes on this machine: runs torch.distributed.run (gloo on CPU, nccl with one "
        "GPU per process); optim.batch_size stays the global batch",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "cv",
        help="k-fold cross-validation by photo (zero-shot: by class): mean and std of the test metrics over folds",
        description="Train one run per fold into OUT/fold-<i>: the fold's photos and sketches are held out (with "
        "--task zeroshot, the fold's classes are the unseen ones), the best epoch is chosen on a validation split "
        "carved from the other folds, and the best checkpoint is tested on the held-out fold. Prints and writes "
        "OUT/cv.json with each fold's metrics, their mean and standard deviation. Rerunning the same command resumes.",
    )
    _add_train_args(p)
    p.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--out", help="output folder (default: runs/<time>-cv)")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser(
        "eval",
        help="evaluate a run on its validation split or a test split",
        description="Evaluate the best checkpoint of RUN_DIR. Prints a table and writes metrics.json "
        "(acc@1, acc@5, acc@10, n_queries, n_gallery, per-query ranks) and a retrieval grid.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder written by 'sbir train' (or a .safetensors checkpoint)")
    _add_common_data_args(p)
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval-<split>)")
    p.add_argument(
        "--flip-tta", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation"
    )
    p.add_argument(
        "--multiview",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fine-grained 10-view testing: 4 corners and the centre, each also mirrored, scores averaged "
        "(default: the run's eval.multiview)",
    )
    p.add_argument(
        "--ensemble",
        nargs="+",
        metavar="RUN",
        help="fine-grained: more runs (or .safetensors) whose scores are averaged with RUN_DIR's",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "report",
        help="write RUN_DIR/report/index.html: curves, retrieval grids, t-SNE, ViT attention distances",
        description="Write one HTML page (RUN_DIR/report/index.html) with the training curves, the validation "
        "(and, with --data and a test split, test) retrieval grids and metrics, a t-SNE of sketch and photo "
        "embeddings and, for ViT encoders, the mean attention distance per layer and head.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="run folder written by 'sbir train'")
    p.add_argument("--data", help="dataset with a test split to evaluate too")
    p.add_argument("--format", help="force the dataset format")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_report)

    for mod, fn in (
        ("sbir.index.commands", "add_index_commands"),
        ("sbir.serve.commands", "add_serve_command"),
        ("sbir.engine.export_commands", "add_export_command"),
    ):
        try:
            module = __import__(mod, fromlist=[fn])
        except ModuleNotFoundError as exc:  # that part is not in this build; other import errors are bugs
            if exc.name not in (mod, mod.rsplit(".", 1)[0]):
                raise
            continue
        getattr(module, fn)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except SbirError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
