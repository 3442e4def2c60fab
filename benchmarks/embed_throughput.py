"""Embedding throughput and latency on CPU: PyTorch vs ONNX Runtime (fp32, int8) vs OpenVINO.

For the off-the-shelf EfficientNet-Lite0 (ImageNet weights, the default backbone) at each
``--sizes`` (default 128 and 224 px) this measures

* images/s at ``--batch`` (default 64): ``--iters`` timed batches after one warm-up batch;
* single-image latency (p50 / p90 over ``--latency-iters`` calls after warm-up);

under torch eager (NCHW), torch channels_last, ONNX Runtime fp32, ONNX Runtime int8 (static QDQ,
calibrated on ``--calib`` images: the JPEGs under ``--calib-dir`` when given, else random noise,
which changes accuracy, not speed) and OpenVINO fp32 / int8 when ``openvino`` is installed; plus
timm's ``vit_base_patch16_224`` (random init) under torch as a reference point. All runtimes use
``--threads`` intra-op threads (default: all usable cores). Also JPEG decoding of a 1600x1200
photo, full size vs Pillow draft mode at each size (``sbir.data.image_io.load_image(draft=...)``).

Writes ``benchmarks/results/embed_throughput[-TAG].json`` (``--dry-run``: print only)::

    python benchmarks/embed_throughput.py                          # the full run (quiet machine)
    python benchmarks/embed_throughput.py --iters 2 --latency-iters 5 --dry-run   # smoke check
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import REPO_ROOT, machine, run_main, write_result  # noqa: E402

from sbir.engine.export import export_graph, quantize_graph  # noqa: E402
from sbir.engine.inference import load_model  # noqa: E402
from sbir.engine.runtime import (  # noqa: E402
    EXPORT_FORMAT,
    OnnxEncoder,
    OpenVinoEncoder,
    TorchEncoder,
    backend_installed,
    default_threads,
)
from sbir.fileio import sha256_file  # noqa: E402


def _bare_manifest(model_id: str, size: int, mean, std, dim: int, files: dict[str, str], folder: Path) -> dict:
    graphs = {
        p: {d: {"file": f, "sha256": sha256_file(folder / f)} for d in ("sketch", "photo")} for p, f in files.items()
    }
    return {
        "format": EXPORT_FORMAT,
        "model_id": model_id,
        "input": {"name": "image", "image_size": size, "mean": list(mean), "std": list(std)},
        "output": {"l2_normalized": True, "dim": dim},
        "graphs": graphs,
    }


class _Eager:
    """A torch model on NCHW (contiguous) input, no channels_last."""

    runtime = "torch-eager"

    def __init__(self, model):
        self.model = model.to(memory_format=torch.contiguous_format).eval()

    @torch.no_grad()
    def embed(self, x: np.ndarray, domain: str) -> np.ndarray:
        return self.model.embed(torch.from_numpy(x), domain).numpy()


class _Timm:
    runtime = "torch-eager"

    def __init__(self, model):
        self.model = model.eval()

    @torch.no_grad()
    def embed(self, x: np.ndarray, domain: str) -> np.ndarray:
        return self.model(torch.from_numpy(x)).numpy()


def measure(enc, size: int, batch: int, iters: int, latency_iters: int) -> dict:
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    x1 = xb[:1].copy()
    enc.embed(xb, "photo")
    t0 = time.perf_counter()
    for _ in range(iters):
        enc.embed(xb, "photo")
    ips = batch * iters / (time.perf_counter() - t0)
    for _ in range(3):
        enc.embed(x1, "sketch")
    lat = []
    for _ in range(latency_iters):
        t = time.perf_counter()
        enc.embed(x1, "sketch")
        lat.append((time.perf_counter() - t) * 1e3)
    return {
        "images_per_s": round(ips, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
        "latency_ms_p90": round(float(np.percentile(lat, 90)), 2),
    }


def calibration(calib_dir: str | None, n: int, size: int, mean, std) -> tuple[np.ndarray, str]:
    if calib_dir:
        from sbir.data.image_io import is_image_file, load_image
        from sbir.data.transforms import eval_transform

        files = sorted(p for p in Path(calib_dir).rglob("*") if is_image_file(p.name))[:n]
        if files:
            tf = eval_transform(size, mean, std)
            return torch.stack([tf(load_image(p)) for p in files]).numpy(), f"{len(files)} images under --calib-dir"
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 3, size, size)).astype(np.float32), f"{n} random-noise images"


def decode_times(sizes: list[int], reps: int) -> dict:
    from PIL import Image

    from sbir.data.image_io import load_image

    rng = np.random.default_rng(0)
    # A smooth, photo-like image (upsampled noise); pure noise would make entropy decoding dominate.
    small = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    img = small.resize((1600, 1200), Image.Resampling.BICUBIC)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "photo.jpg"
        img.save(p, quality=90)
        for label, draft in [("full", None)] + [(f"draft{s}", s) for s in sizes]:
            load_image(p, draft=draft)
            t = time.perf_counter()
            for _ in range(reps):
                im = load_image(p, draft=draft)
            out[label] = {"ms": round((time.perf_counter() - t) * 1e3 / reps, 2), "decoded_size": list(im.size)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10, help="timed batches per configuration")
    ap.add_argument("--latency-iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all usable cores)")
    ap.add_argument("--calib", type=int, default=64, help="int8 calibration images")
    ap.add_argument("--calib-dir", default=None, help="folder of images for int8 calibration (default: noise)")
    ap.add_argument("--no-vit", action="store_true", help="skip the ViT-B/16 reference")
    ap.add_argument("--no-openvino", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--dry-run", action="store_true", help="print the JSON, do not write benchmarks/results/")
    args = ap.parse_args(argv)

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    use_ov = backend_installed("openvino") and not args.no_openvino
    model, cfg, model_id = load_model("pretrained")
    rows = []

    def record(name: str, size: int, enc, **extra):
        r = {
            "model": name,
            "image_size": size,
            **extra,
            **measure(enc, size, args.batch, args.iters, args.latency_iters),
        }
        rows.append(r)
        print(r, file=sys.stderr, flush=True)

    for size in args.sizes:
        record("efficientnet_lite0", size, _Eager(model), runtime="torch eager (NCHW)")
        model = model.to(memory_format=torch.channels_last)
        record("efficientnet_lite0", size, TorchEncoder(model, model_id, size), runtime="torch channels_last")
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            export_graph(model, "photo", size, d / "encoder.onnx")
            cal, cal_desc = calibration(args.calib_dir, args.calib, size, model.mean, model.std)
            quantize_graph(d / "encoder.onnx", d / "encoder.int8.onnx", "static", cal)
            man = _bare_manifest(
                model_id, size, model.mean, model.std, 1280, {"fp32": "encoder.onnx", "int8": "encoder.int8.onnx"}, d
            )
            for prec in ("fp32", "int8"):
                extra = {"calibration": cal_desc} if prec == "int8" else {}
                record(
                    "efficientnet_lite0",
                    size,
                    OnnxEncoder(d, man, prec, threads),
                    runtime=f"onnxruntime {prec}",
                    **extra,
                )
                if use_ov:
                    record(
                        "efficientnet_lite0",
                        size,
                        OpenVinoEncoder(d, man, prec, threads),
                        runtime=f"openvino {prec}",
                        **extra,
                    )
    if not args.no_vit:
        import timm

        vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        record("vit_base_patch16_224 (random init)", 224, _Timm(vit), runtime="torch eager (NCHW)")

    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if use_ov:
        import openvino

        versions["openvino"] = openvino.__version__
    argv_s = sys.argv[1:] if argv is None else argv
    payload = {
        "command": " ".join(["python", "benchmarks/embed_throughput.py", *argv_s]),
        "batch": args.batch,
        "iters": args.iters,
        "latency_iters": args.latency_iters,
        "threads": threads,
        "versions": versions,
        "results": rows,
        "jpeg_decode_1600x1200": decode_times(args.sizes, reps=max(3, args.iters)),
        "note": "random input tensors (preprocessing and decoding excluded from images/s); "
        "single-image latency is one forward of one preprocessed image",
    }
    if args.dry_run:
        import datetime as _dt
        import json

        print(
            json.dumps(
                {
                    "benchmark": "embed_throughput",
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine(),
                    "dry_run": True,
                    **payload,
                },
                indent=1,
            )
        )
    else:
        path = write_result("embed_throughput" + (f"-{args.tag}" if args.tag else ""), payload)
        print(f"wrote {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
