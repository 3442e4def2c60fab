"""Inference runtimes: one encoder interface over PyTorch, ONNX Runtime and OpenVINO.

An :class:`Encoder` embeds images of one domain::

    enc = load_encoder("runs/shoes", runtime="auto")   # torch, onnx, onnx-int8, openvino, openvino-int8
    z = enc.embed(pil_images_or_preprocessed_batch, "sketch")   # (N, D) float32 numpy

* ``torch``: today's path (the model ``load_model`` returns).
* ``onnx`` / ``onnx-int8``: ONNX Runtime on the graphs ``sbir export RUN --format onnx [--int8]`` wrote
  (:mod:`sbir.engine.export`); intra-op threads are set once per session (``Encoder.threads``).
* ``openvino`` / ``openvino-int8``: OpenVINO reading the same ONNX files (f32 inference precision for
  the fp32 graph, so it matches PyTorch; not bf16).

The export folder (``RUN/export`` by default) holds a ``manifest.json`` naming the weights' model id,
the preprocessing (image size, mean, std), whether outputs are L2-normalised, the graph files, the
parity and accuracy checks and the measured speed of each runtime. :func:`pick_runtime` ("auto")
takes the fastest runtime that is installed, has an up-to-date export that passed its checks, and was
measured; with no export it falls back to torch and says so.

``Encoder.as_model()`` is a model-like view (``embed(tensor, domain) -> tensor``, ``mean``, ``std``,
``normalize``, ``device``) so :func:`sbir.engine.embed.embed_images` and the evaluations run any
runtime unchanged: batched, decoding in worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sbir.errors import SbirError

if TYPE_CHECKING:  # torch and PIL are imported where used: the CLI parser imports this module
    import torch
    from PIL import Image

EXPORT_FORMAT = "sbir-export-v1"
MANIFEST = "manifest.json"
RUNTIMES = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
RUNTIME_CHOICES = (*RUNTIMES, "auto")
DOMAINS = ("sketch", "photo")


class RuntimeUnavailableError(SbirError):
    """A requested runtime is not installed, or the model has no (current) export for it."""


def default_threads() -> int:
    """Cores this process may use (the intra-op thread count of every runtime session)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def split_runtime(runtime: str) -> tuple[str, str]:
    """``"onnx-int8"`` -> ``("onnx", "int8")``; ``"openvino"`` -> ``("openvino", "fp32")``."""
    if runtime not in RUNTIMES:
        raise RuntimeUnavailableError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {runtime!r}")
    backend, _, precision = runtime.partition("-")
    return backend, precision or "fp32"


def backend_installed(backend: str) -> bool:
    if backend == "torch":
        return True
    mod = {"onnx": "onnxruntime", "openvino": "openvino"}[backend]
    try:
        __import__(mod)
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- export folders


def default_export_dir(spec: str | os.PathLike | None) -> Path | None:
    """Where ``sbir export`` writes by default: ``RUN/export`` or ``<checkpoint>.export``; None for pretrained
    and for the shipped models (their files sit inside the package)."""
    from sbir.engine.inference import is_pretrained_spec
    from sbir.zoo import is_shipped_spec

    if spec is None or is_pretrained_spec(str(spec)) or is_shipped_spec(spec):
        return None
    p = Path(spec).expanduser()
    return p / "export" if p.is_dir() else p.with_suffix(".export")


def read_manifest(export_dir: str | os.PathLike) -> dict[str, Any]:
    p = Path(export_dir) / MANIFEST
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeUnavailableError(
            f"{export_dir} holds no export ({MANIFEST} missing); run 'sbir export RUN --format onnx'"
        ) from None
    except (OSError, ValueError) as exc:
        raise RuntimeUnavailableError(f"{p} is unreadable ({exc}); run 'sbir export RUN --format onnx' again") from exc
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise RuntimeUnavailableError(f"{p} is not an {EXPORT_FORMAT} manifest; run 'sbir export' again")
    return data


def current_model_id(spec: str | os.PathLike) -> str:
    """The model id ``load_model(spec)`` would report, without building the model (hashes the weights)."""
    from sbir.config import config_from_dict
    from sbir.engine.checkpoint import file_digest, read_weights
    from sbir.engine.inference import is_pretrained_spec, resolve_weights

    s = str(spec)
    if is_pretrained_spec(s):
        return f"pretrained:{s.split(':', 1)[1] if ':' in s else 'efficientnet_lite0'}"
    path = resolve_weights(s)
    _, meta = read_weights(path)
    cfg = config_from_dict(json.loads(meta["config"]))
    return f"{cfg.model.backbone}:{file_digest(path)}"


def encoder_id(manifest: dict[str, Any], precision: str) -> str:
    """Identity of one exported variant: hash of its graph files' hashes (recorded in an index)."""
    graphs = manifest["graphs"][precision]
    h = hashlib.sha256()
    for d in DOMAINS:
        h.update(f"{d}:{graphs[d]['sha256']};".encode())
    return f"{precision}:{h.hexdigest()[:16]}"


def usable_runtimes(manifest: dict[str, Any], export_dir: Path) -> dict[str, str]:
    """{runtime: "" if usable else why not} for every non-torch runtime of an export."""
    out: dict[str, str] = {}
    for rt in RUNTIMES[1:]:
        backend, precision = split_runtime(rt)
        graphs = manifest.get("graphs", {}).get(precision)
        check = manifest.get("checks", {}).get(rt, {})
        if not backend_installed(backend):
            out[rt] = f"{ {'onnx': 'onnxruntime', 'openvino': 'openvino'}[backend] } is not installed"
        elif not graphs:
            out[rt] = f"no {precision} graphs in the export" + (" (export with --int8)" if precision == "int8" else "")
        elif any(not (export_dir / graphs[d]["file"]).is_file() for d in DOMAINS):
            out[rt] = "graph files are missing"
        elif not check.get("passed", False):
            out[rt] = check.get("reason") or "its check did not pass at export time"
        else:
            out[rt] = ""
    return out


def pick_runtime(
    requested: str, spec: str | os.PathLike | None, export_dir: str | os.PathLike | None = None
) -> tuple[str, Path | None, str]:
    """Resolve ``"auto"|"torch"|"onnx"|...`` for a model: ``(runtime, export_dir or None, note)``.

    ``auto`` takes the fastest runtime measured at export time among those installed whose export is
    current (same model id as the weights) and passed its checks (an int8 graph written with
    ``--force`` past its accuracy gate is never picked by ``auto``); without a usable export it is
    torch, and ``note`` says why. An explicit runtime that cannot be used is an error naming the fix, and so
    is an ``export_dir`` named by the caller (``--export``) that cannot serve: never a silent torch.
    """
    from sbir.engine.inference import default_model_spec

    if requested not in RUNTIME_CHOICES:
        raise RuntimeUnavailableError(f"--runtime must be one of {', '.join(RUNTIME_CHOICES)}, got {requested!r}")
    if export_dir is not None and requested == "torch":
        raise RuntimeUnavailableError(
            f"--export {export_dir} is for the exported runtimes; drop it, or use --runtime auto / onnx / openvino"
        )
    if export_dir is not None and not Path(export_dir).is_dir():
        raise RuntimeUnavailableError(
            f"--export {export_dir} is not a folder; pass the folder 'sbir export MODEL --format onnx --out DIR' wrote"
        )
    if requested == "torch":
        return "torch", None, "torch (requested)"
    edir = Path(export_dir) if export_dir is not None else default_export_dir(spec)
    name = str(spec) if spec is not None else default_model_spec()
    try:
        if edir is None:
            raise RuntimeUnavailableError(
                f"model {name} has no default export folder; export it with "
                f"'sbir export {name} --format onnx --out DIR --images SOME_PHOTOS' and pass --export DIR"
            )
        manifest = read_manifest(edir)
        want = current_model_id(name)
        if manifest.get("model_id") != want:
            raise RuntimeUnavailableError(
                f"the export in {edir} is of model {manifest.get('model_id')!r} but {name} is {want!r} (another "
                f"model, or retrained since the export); run 'sbir export {name} --format onnx' again"
            )
    except RuntimeUnavailableError as exc:
        if requested == "auto" and export_dir is None:  # an export named by the user must be usable
            return "torch", None, f"torch (auto: {exc})"
        raise
    usable = usable_runtimes(manifest, edir)
    if requested != "auto":
        if usable.get(requested):
            raise RuntimeUnavailableError(f"runtime {requested} cannot be used for {edir}: {usable[requested]}")
        return requested, edir, f"{requested} (requested)"
    speed = manifest.get("speed", {}).get("images_per_s", {})
    candidates = ["torch"] + [
        rt for rt, why in usable.items() if not why and not manifest.get("checks", {}).get(rt, {}).get("forced")
    ]
    measured = [rt for rt in candidates if isinstance(speed.get(rt), (int, float))]
    if not measured:
        return "torch", None, "torch (auto: the export has no speed measurements)"
    best = max(measured, key=lambda rt: speed[rt])
    others = ", ".join(f"{rt} {speed[rt]:.0f}" for rt in sorted(measured, key=lambda r: -speed[r]))
    return best, (edir if best != "torch" else None), f"{best} (auto: fastest measured at export, images/s: {others})"


# ---------------------------------------------------------------- encoders


class _ModelView:
    """What :func:`sbir.engine.embed.embed_images` and the evaluations need from a model."""

    def __init__(self, enc: Encoder):
        self._enc = enc
        self.mean = enc.mean
        self.std = enc.std
        self.normalize = enc.normalized
        self.embed_dim = enc.embed_dim
        import torch

        self.device = torch.device("cpu")
        self.hash_heads = None

    def eval(self):
        return self

    def embed(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        import torch

        return torch.from_numpy(self._enc.run(np.ascontiguousarray(x.detach().cpu().numpy(), np.float32), domain))


class Encoder:
    """Embeds images of one domain; subclasses implement :meth:`run` on a preprocessed batch."""

    runtime = "base"

    def __init__(
        self,
        *,
        model_id: str,
        encoder_id: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        normalized: bool,
        embed_dim: int,
        threads: int | None = None,
    ):
        self.model_id = model_id
        self.encoder_id = encoder_id
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.normalized = bool(normalized)
        self.embed_dim = int(embed_dim)
        self.threads = threads
        self._lock = threading.Lock()

    def run(self, x: np.ndarray, domain: str) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def preprocess(self, images: Sequence[Image.Image], image_size: int | None = None) -> np.ndarray:
        import torch

        from sbir.data.transforms import eval_transform

        tf = eval_transform(image_size or self.image_size, self.mean, self.std)
        return torch.stack([tf(img) for img in images]).numpy()

    def embed(self, inputs, domain: str) -> np.ndarray:
        """(N, D) float32 embeddings of PIL images or a preprocessed (N, 3, H, W) batch (numpy or tensor)."""
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if isinstance(inputs, np.ndarray):
            x = inputs
        elif hasattr(inputs, "detach"):  # a torch tensor
            x = inputs.detach().cpu().numpy()
        else:
            x = self.preprocess(list(inputs))
        if len(x) == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        with self._lock:  # sessions run one batch at a time and already use every intra-op thread
            return self.run(np.ascontiguousarray(x, dtype=np.float32), domain).astype(np.float32, copy=False)

    def as_model(self):
        return _ModelView(self)

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "encoder_id": self.encoder_id,
            "model_id": self.model_id,
            "threads": self.threads,
        }


class TorchEncoder(Encoder):
    runtime = "torch"

    def __init__(self, model, model_id: str, image_size: int, device: str | torch.device = "cpu"):
        import torch

        from sbir.engine.embed import outputs_normalized

        self.model = model.eval()
        super().__init__(
            model_id=model_id,
            encoder_id=f"torch:{model_id}",
            image_size=image_size,
            mean=model.mean,
            std=model.std,
            normalized=outputs_normalized(model),
            embed_dim=int(getattr(model, "embed_dim", 0) or 0),
            threads=torch.get_num_threads(),
        )
        self.device = torch.device(device)

    def run(self, x: np.ndarray, domain: str) -> np.ndarray:
        import torch

        with torch.no_grad():
            t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
            return self.model.embed(t, domain).float().cpu().numpy()

    def as_model(self):
        return self.model


class _ExportEncoder(Encoder):
    """Common part of the ONNX Runtime and OpenVINO encoders: the manifest and the graph files."""

    backend = ""

    def __init__(self, export_dir: Path, manifest: dict[str, Any], precision: str, threads: int | None):
        self.export_dir = Path(export_dir)
        self.manifest = manifest
        self.precision = precision
        self.runtime = self.backend if precision == "fp32" else f"{self.backend}-{precision}"
        inp, outp = manifest["input"], manifest["output"]
        super().__init__(
            model_id=manifest["model_id"],
            encoder_id=encoder_id(manifest, precision),
            image_size=inp["image_size"],
            mean=inp["mean"],
            std=inp["std"],
            normalized=outp["l2_normalized"],
            embed_dim=outp["dim"],
            threads=threads or default_threads(),
        )
        graphs = manifest["graphs"][precision]
        self.files = {d: self.export_dir / graphs[d]["file"] for d in DOMAINS}
        self._input = inp["name"]
        # One compiled graph per distinct file (a shared-encoder export may use one file for both domains).
        self._compiled: dict[Path, Any] = {}
        for f in self.files.values():
            if f not in self._compiled:
                self._compiled[f] = self._compile(f)

    def _compile(self, path: Path):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "export_dir": str(self.export_dir),
            "files": {d: f.name for d, f in self.files.items()},
        }


class OnnxEncoder(_ExportEncoder):
    backend = "onnx"

    def _compile(self, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise RuntimeUnavailableError(f"onnxruntime cannot load {path} ({exc}); run 'sbir export' again") from exc

    def run(self, x: np.ndarray, domain: str) -> np.ndarray:
        return self._compiled[self.files[domain]].run(None, {self._input: x})[0]


class OpenVinoEncoder(_ExportEncoder):
    backend = "openvino"

    def _compile(self, path: Path):
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(str(path))
            s = self.image_size
            model.reshape({model.input(0): ov.PartialShape([-1, 3, s, s])})
            config = {"INFERENCE_NUM_THREADS": int(self.threads), "PERFORMANCE_HINT": "LATENCY"}
            if self.precision == "fp32":
                config["INFERENCE_PRECISION_HINT"] = "f32"  # never bf16: must match PyTorch
            return core.compile_model(model, "CPU", config)
        except Exception as exc:  # openvino raises RuntimeError subclasses of its own
            raise RuntimeUnavailableError(f"OpenVINO cannot load {path} ({exc}); run 'sbir export' again") from exc

    def run(self, x: np.ndarray, domain: str) -> np.ndarray:
        if x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise ValueError(f"OpenVINO graph is compiled for {self.image_size} px input, got {tuple(x.shape)}")
        compiled = self._compiled[self.files[domain]]
        return np.asarray(compiled(x)[0])


def open_export_encoder(export_dir: str | os.PathLike, runtime: str, threads: int | None = None) -> Encoder:
    """An ONNX Runtime or OpenVINO encoder on an export folder (no check that the export is current)."""
    backend, precision = split_runtime(runtime)
    if backend == "torch":
        raise ValueError("open_export_encoder is for exported runtimes; use TorchEncoder for torch")
    edir = Path(export_dir)
    manifest = read_manifest(edir)
    if not manifest["graphs"].get(precision):
        raise RuntimeUnavailableError(f"the export in {edir} has no {precision} graphs")
    if not backend_installed(backend):
        raise RuntimeUnavailableError(
            f"runtime {runtime} needs the package {'onnxruntime' if backend == 'onnx' else 'openvino'}; "
            "pip install 'sbir[fast]'"
        )
    cls = OnnxEncoder if backend == "onnx" else OpenVinoEncoder
    return cls(edir, manifest, precision, threads)


def load_encoder(
    spec: str | os.PathLike | None,
    runtime: str = "auto",
    device: str = "cpu",
    export_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    image_size: int | None = None,
    preloaded: tuple | None = None,
):
    """Load ``spec`` on a runtime: returns ``(encoder, cfg, model_id, note)``.

    ``preloaded`` = ``(model, cfg, model_id)`` from ``load_model`` (used for torch). An exported runtime
    needs ``image_size`` (when given) to equal the export's.
    """
    from sbir.config import config_from_dict
    from sbir.engine.tasks import check_config

    if device != "cpu" and runtime == "auto" and export_dir is None:
        return _torch(spec, device, image_size, preloaded) + ("torch (auto: --device is not cpu)",)
    rt, edir, note = pick_runtime(runtime, spec, export_dir)
    if rt == "torch":
        return _torch(spec, device, image_size, preloaded) + (note,)
    if device != "cpu":
        raise RuntimeUnavailableError(f"runtime {rt} runs on the CPU; drop --device {device} or use --runtime torch")
    enc = open_export_encoder(edir, rt, threads)
    if image_size is not None and int(image_size) != enc.image_size:
        raise RuntimeUnavailableError(
            f"the {rt} export was checked at {enc.image_size} px, not --image-size {image_size}; "
            "omit --image-size or use --runtime torch"
        )
    cfg = check_config(config_from_dict(enc.manifest["config"]))
    return enc, cfg, enc.model_id, note


def _torch(spec, device, image_size, preloaded):
    from sbir.engine.inference import load_model

    model, cfg, model_id = preloaded if preloaded is not None else load_model(spec, device=device)
    size = int(image_size or cfg.data.image_size)
    return TorchEncoder(model, model_id, size, device=device), cfg, model_id


__all__ = [
    "DOMAINS",
    "EXPORT_FORMAT",
    "RUNTIMES",
    "RUNTIME_CHOICES",
    "Encoder",
    "OnnxEncoder",
    "OpenVinoEncoder",
    "RuntimeUnavailableError",
    "TorchEncoder",
    "current_model_id",
    "default_export_dir",
    "default_threads",
    "load_encoder",
    "open_export_encoder",
    "pick_runtime",
    "read_manifest",
    "split_runtime",
    "usable_runtimes",
]
