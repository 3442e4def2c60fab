"""``sbir export RUN --format onnx [--int8]``: ONNX graphs of a model's encoders, checked against PyTorch.

One graph per domain (``sketch.onnx``, ``photo.onnx``): the input is a preprocessed float32 batch
``(N, 3, H, W)`` (dynamic batch and size), the output the embedding the model's ``embed(x, domain)``
returns, L2 normalisation included when the model normalises. A model with domain-aware SE
blocks gets its domain as a constant of each graph. When both domains give byte-identical graphs
(an off-the-shelf shared encoder) one file ``encoder.onnx`` serves both. Preprocessing (pad to
square on white, resize, mean/std) is written next to the graphs in ``manifest.json``.

Checks before anything is published (:func:`export_model`):

* **fp32 parity** on the run's validation split (``split.json``; or ``--images DIR``): the
  maximum absolute embedding difference to PyTorch must be within ``atol`` (relative to the
  largest embedding value when outputs are not normalised), and every query's top-10 must be the
  same (orders that differ only between gallery items whose PyTorch scores tie within
  ``TIE_TOL`` count as the same). Otherwise :class:`ExportError` and nothing is written.
* **int8** (``--int8``): ONNX Runtime static QDQ quantisation (per-channel int8 weights, uint8
  activations calibrated on up to ``calib`` training images of the graph's domain) or dynamic
  quantisation; the run's selection metric (Acc@1 in points, or mAP@all) is measured on the
  validation split with fp32 and int8 graphs; a drop above ``max_drop`` (default 1 point / 0.01)
  refuses the int8 graphs unless ``force``. The fp32 export is still written.
* OpenVINO (when installed) reads the same files; its fp32 parity is checked the same way and
  recorded; a runtime that fails its check is never picked by ``--runtime auto``.
* Speed: images/s of every usable runtime on a batch at the run's image size, recorded in the
  manifest for :func:`sbir.engine.runtime.pick_runtime`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sbir.config import to_dict
from sbir.engine.runtime import (
    DOMAINS,
    EXPORT_FORMAT,
    MANIFEST,
    OnnxEncoder,
    OpenVinoEncoder,
    TorchEncoder,
    backend_installed,
    default_export_dir,
    default_threads,
)
from sbir.errors import DataError, SbirError
from sbir.fileio import atomic_write_text, sha256_file

OPSET = 17
TOPK = 10
TIE_TOL = 1e-4  # score differences below this (relative to the score scale) are ties
PREPROCESSING = (
    "decode to 8-bit RGB (alpha composited on white); pad to a square on white (centred); "
    "resize to image_size x image_size (bilinear, antialiased); scale to [0, 1]; (x - mean) / std per channel; "
    "layout NCHW float32"
)


class ExportError(SbirError):
    """An export cannot be made, or does not reproduce PyTorch within its tolerance."""


@dataclass
class CheckResult:
    runtime: str
    passed: bool
    max_abs_diff: float
    tolerance: float | None
    top10_same: int
    top10_queries: int
    metric: str | None = None
    metric_torch: float | None = None
    metric_value: float | None = None
    metric_change: float | None = None
    max_drop: float | None = None
    forced: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class ExportReport:
    out_dir: Path
    model_id: str
    files: dict[str, str]
    checks: dict[str, CheckResult] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    threads: int = 0
    check_data: str = ""
    refused: str = ""  # why the int8 graphs were not written (the fp32 export was)
    seconds: float = 0.0


# ---------------------------------------------------------------- graphs


class _DomainGraph(torch.nn.Module):
    """``model.embed(x, domain)`` with the domain fixed (a constant of the exported graph)."""

    def __init__(self, model, domain: str):
        super().__init__()
        self.model = model
        self.domain = domain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x, self.domain)


def export_graph(model, domain: str, image_size: int, path: Path, opset: int = OPSET) -> None:
    """Write ``model.embed(., domain)`` as an ONNX graph with dynamic batch, height and width."""
    graph = _DomainGraph(model, domain).eval()
    x = torch.rand(2, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the TorchScript exporter
        torch.onnx.export(
            graph,
            (x,),
            str(path),
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "embedding": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def quantize_graph(src: Path, dst: Path, mode: str, calib: np.ndarray | None) -> dict[str, Any]:
    """int8 copy of ``src``: ``static`` (QDQ, calibrated on ``calib``, (N,3,H,W) float32) or ``dynamic``."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice through the root logger
    try:
        return _quantize(src, dst, mode, calib)
    finally:
        root.setLevel(level)


def _quantize(src: Path, dst: Path, mode: str, calib: np.ndarray | None) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)
        return {"mode": "dynamic", "weights": "int8 per channel", "activations": "quantised at run time"}
    if calib is None or not len(calib):
        raise ExportError("static int8 quantisation needs calibration images; none were found in the training split")

    class _Reader(CalibrationDataReader):
        def __init__(self, data: np.ndarray, batch: int = 16):
            self.batches = iter([{"image": data[i : i + batch]} for i in range(0, len(data), batch)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(src),
        str(dst),
        _Reader(np.ascontiguousarray(calib, np.float32)),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
    )
    return {
        "mode": "static",
        "format": "QDQ",
        "weights": "int8 per channel",
        "activations": "uint8, MinMax calibration",
        "ops": ["Conv", "MatMul", "Gemm"],
        "calibration_images": int(len(calib)),
    }


# ---------------------------------------------------------------- check data


@dataclass
class _CheckSet:
    """What the export is checked on: the run's validation split, or a folder of images."""

    description: str
    split: Any = None  # sbir Split (validation) or None
    images: list | None = None  # ImageRefs (--images)
    train: Any = None  # training split (calibration)


def _check_set(spec: str, cfg, images: str | None, data: str | None, need_train: bool) -> _CheckSet:
    from sbir.data.formats import load_dataset
    from sbir.data.image_io import is_image_file
    from sbir.data.records import FileRef
    from sbir.data.splits import apply_split_record, load_split_record
    from sbir.engine.inference import is_pretrained_spec
    from sbir.zoo import is_shipped_spec

    train = None
    run_dir = Path(spec) if Path(spec).is_dir() else Path(spec).parent  # a run folder or its checkpoint
    # The ImageNet features and the shipped models have no run folder (so no validation split) of their own.
    split_file = None if is_pretrained_spec(str(spec)) or is_shipped_spec(spec) else run_dir / "split.json"
    data_path = data or cfg.data.path
    val = None
    if split_file is not None and split_file.is_file() and data_path:
        if not Path(data_path).exists():
            if images is None or need_train:
                raise DataError(
                    f"the run's dataset {data_path} is not there; pass --data DIR (the training dataset) "
                    "or --images DIR (fp32 check only)"
                )
        else:
            dataset = load_dataset(data_path, cfg.data.format if data is None else None)
            train, val = apply_split_record(dataset.split("train"), load_split_record(split_file))
    if images is not None:
        root = Path(images)
        if not root.is_dir():
            raise DataError(f"--images {root} is not a folder; pass a folder of images to check the export on")
        refs = [FileRef(p) for p in sorted(root.rglob("*")) if p.is_file() and is_image_file(p.name)]
        if len(refs) < 2:
            raise DataError(f"--images {root} holds {len(refs)} image(s); the check needs at least 2")
        return _CheckSet(f"{len(refs)} images under {root}", images=refs, train=train)
    if val is None:
        raise DataError(
            f"cannot check the export of {spec}: no validation split (a run folder with split.json and its "
            "dataset); pass --images DIR to check on your own images"
        )
    return _CheckSet(
        f"validation split of {spec} ({len(val.sketches)} sketches, {len(val.photos)} photos)", split=val, train=train
    )


def _embed_set(model_like, cfg, cs: _CheckSet, progress: bool):
    """(query embeddings, gallery embeddings, metrics or None) of a check set."""
    from sbir.engine.embed import embed_images
    from sbir.engine.tasks import get_task

    if cs.split is not None:
        # eval.hubness: scored as sbir eval scores, against the training sketches embedded by this runtime
        stats = (
            {"stat_sketches": [s.image for s in cs.train.sketches]} if cfg.eval.hubness != "none" and cs.train else {}
        )
        ev = get_task(cfg.task).evaluate(
            model_like, cfg, cs.split, flip_tta=bool(cfg.eval.flip_tta), progress=progress, **stats
        )
        return ev.query_emb, ev.gallery_emb, ev.metrics, ev.distance
    kw = dict(image_size=cfg.data.image_size, flip_tta=bool(cfg.eval.flip_tta), progress=progress)
    q = embed_images(model_like, cs.images, "sketch", **kw).embeddings
    g = embed_images(model_like, cs.images, "photo", **kw).embeddings
    return q, g, None, "cosine"


def _scores(q: np.ndarray, g: np.ndarray, distance: str) -> np.ndarray:
    if distance == "euclidean":
        return -np.sqrt(np.maximum((q * q).sum(1)[:, None] + (g * g).sum(1)[None] - 2 * q @ g.T, 0))
    return q @ g.T


def top10_agreement(ref: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray], distance: str) -> int:
    """Queries whose top-10 under ``other`` embeddings equals the reference top-10 (up to reference ties)."""
    s_ref = _scores(*ref, distance)
    s_oth = _scores(*other, distance)
    k = min(TOPK, s_ref.shape[1])
    tol = TIE_TOL * max(1.0, float(np.abs(s_ref).max()) if s_ref.size else 1.0)
    same = 0
    for a, b in zip(s_ref, s_oth, strict=True):
        ref_top = np.sort(a)[::-1][:k]
        oth_top = a[np.argsort(-b, kind="stable")[:k]]
        same += bool(np.abs(ref_top - oth_top).max() <= tol)
    return same


def _compare(runtime, ref, got, tol_abs: float | None, normalized: bool) -> CheckResult:
    q0, g0, m0, dist = ref
    q1, g1, m1, _ = got
    diff = float(max(np.abs(q0 - q1).max(initial=0.0), np.abs(g0 - g1).max(initial=0.0)))
    tol = None
    if tol_abs is not None:
        scale = 1.0 if normalized else max(1.0, float(np.abs(q0).max(initial=1.0)), float(np.abs(g0).max(initial=1.0)))
        tol = tol_abs * scale
    same = top10_agreement((q0, g0), (q1, g1), dist)
    return CheckResult(runtime, True, diff, tol, same, len(q0))


# ---------------------------------------------------------------- speed


def measure_speed(encoder, image_size: int, batch: int = 32, seconds: float = 1.5) -> float:
    """Images/s of ``encoder`` on random batches (one warm-up batch, then at least 2 batches or ``seconds``)."""
    x = np.random.default_rng(0).standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
    encoder.embed(x, "photo")
    n, t0 = 0, time.perf_counter()
    while n < 2 * batch or time.perf_counter() - t0 < seconds:
        encoder.embed(x, "photo")
        n += batch
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------- the export


def _metric_gate(cfg, max_drop: float | None) -> tuple[str, float]:
    from sbir.engine.tasks import select_metric

    metric = select_metric(cfg)
    default = 1.0 if metric.startswith("acc@") else 0.01
    return metric, default if max_drop is None else float(max_drop)


def _prepare_out(out: Path, overwrite_ok: bool = True) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder; choose a folder for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"--out {out} is a folder that is not empty and holds no sbir export; choose a new folder")


def _publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` (the manifest is written last inside ``tmp``, so a half-copied folder has none)."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time() * 1000)}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)


def _calibration(cs: _CheckSet, domain: str, image_size: int, mean, std, n: int, seed: int = 0) -> np.ndarray | None:
    from sbir.data.transforms import eval_transform

    if cs.train is None:
        return None
    recs = cs.train.sketches if domain == "sketch" else cs.train.photos
    if not recs:
        return None
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(recs), size=min(n, len(recs)), replace=False)
    tf = eval_transform(image_size, mean, std)
    return torch.stack([tf(recs[i].image.load()) for i in sorted(pick)]).numpy()


def export_model(
    spec: str,
    out: str | Path | None = None,
    *,
    fmt: str = "onnx",
    int8: bool = False,
    int8_mode: str = "static",
    force: bool = False,
    images: str | None = None,
    data: str | None = None,
    atol: float = 1e-4,
    max_drop: float | None = None,
    calib: int = 128,
    opset: int = OPSET,
    threads: int | None = None,
    openvino: bool = True,
    speed: bool = True,
    speed_seconds: float = 1.5,
    progress: bool = True,
    log=None,
) -> ExportReport:
    """Export, check and publish; see the module docstring. Raises :class:`ExportError` on a failed check."""
    from sbir.engine.inference import load_model

    say = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    if fmt != "onnx":
        raise ExportError(f"--format must be onnx, got {fmt!r}")
    if not backend_installed("onnx"):
        raise ExportError("sbir export needs onnx and onnxruntime: pip install 'sbir[fast]'")
    if int8_mode not in ("static", "dynamic"):
        raise ExportError(f"--int8-mode must be static or dynamic, got {int8_mode!r}")
    if atol <= 0:
        raise ExportError(f"--atol must be > 0, got {atol}")
    out_dir = Path(out) if out is not None else default_export_dir(spec)
    if out_dir is None:
        raise ExportError("exporting the off-the-shelf model needs --out DIR")
    _prepare_out(out_dir)
    threads = threads or default_threads()

    model, cfg, model_id = load_model(spec, device="cpu")
    cs = _check_set(spec, cfg, images, data, need_train=int8 and int8_mode == "static")
    if int8 and cs.split is None:
        raise ExportError(
            "--int8 needs the run's validation split for its accuracy gate (a run folder with split.json)"
        )
    size = int(cfg.data.image_size)
    torch_enc = TorchEncoder(model, model_id, size)
    normalized = torch_enc.normalized
    report = ExportReport(out_dir, model_id, {}, threads=threads, check_data=cs.description)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        # 1. fp32 graphs, one per domain (one file when identical).
        graphs: dict[str, dict[str, dict[str, Any]]] = {"fp32": {}}
        for d in DOMAINS:
            export_graph(model, d, size, tmp / f"{d}.onnx", opset)
        digests = {d: sha256_file(tmp / f"{d}.onnx") for d in DOMAINS}
        if digests["sketch"] == digests["photo"]:
            (tmp / "sketch.onnx").rename(tmp / "encoder.onnx")
            (tmp / "photo.onnx").unlink()
            graphs["fp32"] = {d: {"file": "encoder.onnx", "sha256": digests[d]} for d in DOMAINS}
        else:
            graphs["fp32"] = {d: {"file": f"{d}.onnx", "sha256": digests[d]} for d in DOMAINS}
        manifest: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "model_id": model_id,
            "model_spec": str(spec),
            "task": cfg.task,
            "opset": opset,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "input": {
                "name": "image",
                "layout": "NCHW",
                "dtype": "float32",
                "image_size": size,
                "mean": [float(v) for v in model.mean],
                "std": [float(v) for v in model.std],
                "preprocessing": PREPROCESSING,
            },
            "output": {
                "name": "embedding",
                "dim": int(getattr(model, "embed_dim", 0) or 0),
                "l2_normalized": normalized,
                "normalisation": "L2 inside the graph"
                if normalized
                else "none (raw embedding; see the run's distance)",
            },
            "flip_tta": bool(cfg.eval.flip_tta),
            "config": to_dict(cfg),
            "graphs": graphs,
            "checks": {},
        }

        def encoder(cls, precision):
            return cls(tmp, manifest, precision, threads)

        # 2. fp32 parity against PyTorch.
        say(f"checking the export on the {cs.description}")
        ref = _embed_set(torch_enc.as_model(), cfg, cs, progress)
        if ref[0].shape[1] and not manifest["output"]["dim"]:
            manifest["output"]["dim"] = int(ref[0].shape[1])
        metric, drop_limit = _metric_gate(cfg, max_drop)
        m_torch = ref[2][metric] if ref[2] else None
        onnx_enc = encoder(OnnxEncoder, "fp32")
        chk = _compare("onnx", ref, _embed_set(onnx_enc.as_model(), cfg, cs, progress), atol, normalized)
        bad = []
        if chk.max_abs_diff > chk.tolerance:
            bad.append(f"max abs embedding difference {chk.max_abs_diff:.2e} > tolerance {chk.tolerance:.1e}")
        if chk.top10_same != chk.top10_queries:
            bad.append(f"top-10 differs for {chk.top10_queries - chk.top10_same} of {chk.top10_queries} queries")
        if bad:
            raise ExportError(
                f"the ONNX export of {spec} does not reproduce PyTorch: {'; '.join(bad)}; nothing written"
            )
        report.checks["onnx"] = chk
        fp32_ok = {"onnx"}

        if openvino and backend_installed("openvino"):
            try:
                ov_enc = encoder(OpenVinoEncoder, "fp32")
                ov = _compare("openvino", ref, _embed_set(ov_enc.as_model(), cfg, cs, progress), atol, normalized)
                if ov.max_abs_diff > ov.tolerance or ov.top10_same != ov.top10_queries:
                    ov.passed = False
                    ov.reason = (
                        f"OpenVINO differs from PyTorch (max abs {ov.max_abs_diff:.2e}, "
                        f"top-10 same {ov.top10_same}/{ov.top10_queries})"
                    )
                else:
                    fp32_ok.add("openvino")
            except SbirError as exc:
                ov = CheckResult("openvino", False, float("nan"), atol, 0, 0, reason=str(exc))
            report.checks["openvino"] = ov

        # 3. int8 with its accuracy gate.
        if int8:
            q_graphs: dict[str, dict[str, Any]] = {}
            qinfo: dict[str, Any] = {}
            done: dict[str, str] = {}
            for d in DOMAINS:
                src = tmp / graphs["fp32"][d]["file"]
                name = src.name.replace(".onnx", ".int8.onnx")
                if src.name not in done:
                    cal = None
                    if int8_mode == "static":
                        cal = _calibration(cs, d, size, model.mean, model.std, calib, seed=cfg.seed)
                    n_cal = f", {len(cal)} calibration images" if cal is not None else ""
                    say(f"quantising {src.name} ({int8_mode}{n_cal})")
                    qinfo = quantize_graph(src, tmp / name, int8_mode, cal)
                    done[src.name] = name
                q_graphs[d] = {"file": name, "sha256": sha256_file(tmp / name)}
            manifest["graphs"]["int8"] = q_graphs
            manifest["quantization"] = qinfo
            q_enc = encoder(OnnxEncoder, "int8")
            got = _embed_set(q_enc.as_model(), cfg, cs, progress)
            q = _compare("onnx-int8", ref, got, None, normalized)
            q.metric, q.metric_torch, q.metric_value = metric, m_torch, float(got[2][metric])
            q.metric_change = q.metric_value - m_torch
            q.max_drop = drop_limit
            if -q.metric_change > drop_limit:
                q.passed = False
                q.reason = (
                    f"{metric} drops from {m_torch:.4g} to {q.metric_value:.4g} ({q.metric_change:+.4g}; "
                    f"the limit is -{drop_limit:g})"
                )
                if force:
                    q.forced = True
                    q.passed = True  # usable when asked for by name; never chosen by auto
                else:
                    report.refused = q.reason
                    del manifest["graphs"]["int8"]
                    for f in set(done.values()):
                        (tmp / f).unlink()
            report.checks["onnx-int8"] = q
            if "int8" in manifest["graphs"] and "openvino" in fp32_ok:
                try:
                    ovq_enc = encoder(OpenVinoEncoder, "int8")
                    got_ov = _embed_set(ovq_enc.as_model(), cfg, cs, progress)
                    ovq = _compare("openvino-int8", ref, got_ov, None, normalized)
                    ovq.metric, ovq.metric_torch, ovq.metric_value = metric, m_torch, float(got_ov[2][metric])
                    ovq.metric_change, ovq.max_drop = ovq.metric_value - m_torch, drop_limit
                    ovq.passed = -ovq.metric_change <= drop_limit
                    ovq.forced = q.forced
                    if not ovq.passed:
                        ovq.reason = f"{metric} drops by {-ovq.metric_change:.4g} under OpenVINO"
                except SbirError as exc:
                    ovq = CheckResult("openvino-int8", False, float("nan"), None, 0, 0, reason=str(exc))
                report.checks["openvino-int8"] = ovq

        # 4. Speed of each usable runtime (for --runtime auto).
        if speed:
            encs = {"torch": torch_enc, "onnx": onnx_enc}
            if "openvino" in fp32_ok:
                encs["openvino"] = ov_enc
            if int8 and "int8" in manifest["graphs"]:
                encs["onnx-int8"] = q_enc
                if report.checks.get("openvino-int8", CheckResult("", False, 0, 0, 0, 0)).passed:
                    encs["openvino-int8"] = ovq_enc
            for rt, enc in encs.items():
                report.speed[rt] = round(measure_speed(enc, size, seconds=speed_seconds), 1)
            manifest["speed"] = {
                "images_per_s": report.speed,
                "batch": 32,
                "image_size": size,
                "threads": threads,
                "note": "measured at export time on this machine; random input",
            }
        manifest["checks"] = {rt: c.to_dict() for rt, c in report.checks.items()}
        manifest["check_data"] = cs.description
        manifest["tolerance"] = {"atol": atol, "top_k": TOPK, "tie_tol": TIE_TOL}
        for files in manifest["graphs"].values():
            for d in DOMAINS:
                report.files[f"{d}{'' if files is graphs['fp32'] else '.int8'}"] = files[d]["file"]
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - t_start
    return report


__all__ = ["ExportError", "ExportReport", "export_graph", "export_model", "quantize_graph", "top10_agreement"]
