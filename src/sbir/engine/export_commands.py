"""CLI command ``sbir export``: ONNX graphs (and int8 ones) of a run's encoders, checked against PyTorch."""

from __future__ import annotations

import argparse
import json


def _fmt(v, digits: int = 4) -> str:
    return "-" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v))


def cmd_pack(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sbir.engine.inference import resolve_weights
    from sbir.engine.pack import pack_weights

    out = Path(args.out) if args.out else resolve_weights(args.run).with_name("model-fp16.safetensors")
    r = pack_weights(args.run, out, int8_weights=args.int8, leave_out_pretrained=args.leave_out_pretrained)
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(r.out),
                    "model_id": r.model_id,
                    "source_model_id": r.source_model_id,
                    "bytes": r.bytes,
                    "source_bytes": r.source_bytes,
                    "unused_tensors": r.unused,
                    "pretrained_tensors": len(r.pretrained),
                    "min_cosine": r.min_cosine,
                    "max_abs_diff": r.max_abs_diff,
                    "seconds": round(r.seconds, 2),
                },
                indent=2,
            )
        )
    else:
        print(
            f"packed {r.source_model_id} to {r.out} as {'fp16 + int8 weights' if args.int8 else 'fp16'}: "
            f"{r.bytes / 1e6:.2f} MB "
            f"(was {r.source_bytes / 1e6:.2f} MB; {len(r.unused)} unused tensors left out"
            + (f", {len(r.pretrained)} taken from the installed ImageNet weights" if r.pretrained else "")
            + f"), model id {r.model_id}"
        )
        print(
            f"  checked on random inputs, both domains: lowest cosine {r.min_cosine:.6f}, "
            f"max |diff| {r.max_abs_diff:.2e}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sbir.engine.export import ExportError, export_model

    if args.format == "fp16":
        return cmd_pack(args)
    if args.leave_out_pretrained:
        raise ExportError("--leave-out-pretrained is for --format fp16 (a packed checkpoint); drop it for onnx")

    report = export_model(
        args.run,
        args.out,
        fmt=args.format,
        int8=args.int8,
        int8_mode=args.int8_mode,
        force=args.force,
        images=args.images,
        data=args.data,
        atol=args.atol,
        max_drop=args.max_drop,
        calib=args.calib,
        threads=args.threads,
        openvino=not args.no_openvino,
        speed=not args.no_speed,
        progress=not args.no_progress,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(report.out_dir),
                    "model_id": report.model_id,
                    "files": report.files,
                    "check_data": report.check_data,
                    "checks": {k: c.to_dict() for k, c in report.checks.items()},
                    "images_per_s": report.speed,
                    "threads": report.threads,
                    "refused": report.refused or None,
                    "seconds": round(report.seconds, 2),
                },
                indent=2,
            )
        )
    else:
        print(f"exported {report.model_id} to {report.out_dir} ({', '.join(sorted(set(report.files.values())))})")
        print(f"checked on the {report.check_data}; {report.threads} intra-op threads")
        for rt, c in report.checks.items():
            tol = f" (tolerance {c.tolerance:.1e})" if c.tolerance is not None else ""
            line = f"  {rt:<14} max |diff| {c.max_abs_diff:.2e}{tol}, top-10 same {c.top10_same}/{c.top10_queries}"
            if c.metric:
                line += f", {c.metric} {_fmt(c.metric_torch)} -> {_fmt(c.metric_value)} ({c.metric_change:+.4g})"
            status = "ok" if c.passed and not c.forced else ("FORCED" if c.forced else "not usable")
            print(f"{line}  [{status}]" + (f" {c.reason}" if c.reason and not c.passed else ""))
        if report.speed:
            print("  images/s (batch 32): " + ", ".join(f"{k} {v:.1f}" for k, v in report.speed.items()))
    if report.refused:
        raise ExportError(
            f"int8 model refused: {report.refused}; the fp32 export was written to {report.out_dir}. "
            "Pass --force to write the int8 model anyway (it is then never picked by --runtime auto), "
            "or raise --max-drop"
        )
    return 0


def add_export_command(subparsers) -> None:
    """Register ``export`` on the ``sbir`` sub-command parser."""
    p = subparsers.add_parser(
        "export",
        help="export a run's encoders to ONNX (optionally int8), checked against PyTorch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write one ONNX graph per encoder domain (sketch, photo) of RUN with a manifest.json (image size,\n"
            "mean/std, L2 normalisation, model id, opset), check it against PyTorch on the run's validation\n"
            "split (max abs embedding difference within --atol, the same top-10 for every query) and measure the\n"
            "speed of each runtime. --int8 adds ONNX Runtime int8 graphs, refused when the run's selection metric\n"
            "drops by more than --max-drop (Acc@1: 1 point; mAP: 0.01) unless --force."
        ),
        epilog=(
            "examples:\n"
            "  sbir export runs/shoes --format onnx              # writes runs/shoes/export/\n"
            "  sbir export runs/shoes --format onnx --int8\n"
            "  sbir index build photos/ --model runs/shoes --out shoes.idx --runtime auto\n"
            "  sbir export runs/general --format fp16 --leave-out-pretrained --out src/sbir/zoo/general.safetensors"
        ),
    )
    p.add_argument("run", metavar="RUN", help="run folder (or .safetensors) written by 'sbir train', or 'pretrained'")
    p.add_argument(
        "--format",
        choices=["onnx", "fp16"],
        default="onnx",
        help="onnx: graphs for the fast runtimes (default); fp16: one half-size safetensors checkpoint for shipping "
        "(unused tensors left out, embeddings checked against the original)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="export folder (default RUN/export); with --format fp16 the file (default RUN/model-fp16.safetensors)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="onnx: also write int8 graphs (onnxruntime quantisation), gated on accuracy; fp16: store the weight "
        "matrices as int8 with a scale per output channel (embeddings checked the same way)",
    )
    p.add_argument(
        "--leave-out-pretrained",
        action="store_true",
        help="fp16: leave out the tensors still equal to the ImageNet weights sbir's dependencies install (a frozen "
        "backbone); loading rebuilds them and checks their digest. For shipping a ridge-head model",
    )
    p.add_argument(
        "--int8-mode",
        choices=["static", "dynamic"],
        default="static",
        help="static: QDQ with activations calibrated on training images (default); dynamic: weights only",
    )
    p.add_argument("--calib", type=int, default=128, help="calibration images per domain for static int8 (default 128)")
    p.add_argument(
        "--max-drop",
        type=float,
        default=None,
        help="largest allowed metric drop for int8 (default 1 point Acc@1, 0.01 mAP)",
    )
    p.add_argument("--force", action="store_true", help="write the int8 graphs even when they fail the accuracy gate")
    p.add_argument(
        "--atol", type=float, default=1e-4, help="max abs embedding difference allowed for fp32 (default 1e-4)"
    )
    p.add_argument(
        "--images", default=None, metavar="DIR", help="check on these images instead of the validation split"
    )
    p.add_argument("--data", default=None, metavar="DIR", help="the run's dataset, when it moved since training")
    p.add_argument(
        "--threads", type=int, default=None, help="intra-op threads of the runtimes (default: all usable cores)"
    )
    p.add_argument("--no-openvino", action="store_true", help="do not check OpenVINO even when it is installed")
    p.add_argument("--no-speed", action="store_true", help="skip the speed measurement (auto then keeps torch)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_export)


__all__ = ["add_export_command", "cmd_export"]
