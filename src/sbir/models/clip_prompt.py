"""CLIP with learnable visual prompts for zero-shot SBIR (Sain et al., "CLIP for All Things Zero-Shot
Sketch-Based Image Retrieval, Fine-Grained or Not", CVPR 2023; "Sketch_LVM").

One frozen open_clip model (``model.clip_model``, default ``ViT-B-32``) embeds
both domains. Its image tower gets ``model.prompts`` (default 3) learnable
prompt tokens per domain, a set for sketches and a set for photos (shallow
prompts, the paper's default): after the class token and the positional
embedding are in place, the tokens of an image are::

    [CLS + pos_0, P_1, ..., P_n, patch_1 + pos_1, ..., patch_N + pos_N]

(``P`` = the sketch or photo prompts, without a positional embedding), then
``ln_pre``, the transformer, ``ln_post`` of the class token and the projection,
exactly as in CLIP. Embeddings are L2-normalised (cosine distance).

Trained parts: the two prompt sets, and the image tower's LayerNorms when
``model.clip_train_norms`` is set; every other CLIP weight, the whole text
tower included, stays frozen (``requires_grad=False``, never in an optimizer).
``state_dict()`` holds **only the trained parts**, so a checkpoint is a few
KB; the frozen weights are rebuilt from the config (``clip_model`` +
``weights_path`` / ``clip_pretrained``) when the model is built again, and
``load_state_dict`` loads the trained parts onto them.

The text tower encodes the class names ("a photo of a {class}",
:meth:`ClipPromptModel.class_embeddings`) for the classification loss
(:mod:`sbir.losses.clip_prompt`).

Weights: ``model.weights_path`` (a local open_clip / OpenAI checkpoint) when
set, else ``model.clip_pretrained`` (an open_clip tag such as ``openai``;
needs the network the first time) when ``model.pretrained`` is true, else
random (for tests; seeded, so rebuilding gives the same towers).
``model.clip_model`` is an open_clip model name or the path of an open_clip
model-config JSON (registered with ``open_clip.add_model_config``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sbir.config import ModelConfig
from sbir.errors import CheckpointError, ConfigError
from sbir.models.factory import register_model

PROMPT_TEMPLATE = "a photo of a {}"
DOMAINS = ("sketch", "photo")


def import_open_clip():
    """``open_clip``, or a one-line error saying how to install it."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError(
            "the clip-prompt method needs open_clip: pip install open_clip_torch (or pip install 'sbir[clip]')"
        ) from None
    return open_clip


def resolve_clip_name(name: str) -> str:
    """An open_clip model name; a path to a model-config JSON is registered first (its file stem is the name)."""
    open_clip = import_open_clip()
    if name.endswith(".json"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.clip_model {name} does not exist (expected an open_clip model-config JSON)")
        open_clip.add_model_config(path)
        return path.stem
    if name not in open_clip.list_models():
        raise ConfigError(
            f"model.clip_model {name!r} is not an open_clip model (e.g. ViT-B-32, ViT-B-16, ViT-L-14) "
            "nor a model-config .json file"
        )
    return name


def create_clip(cfg: ModelConfig):
    """The open_clip model ``cfg`` names, with its weights (see the module docstring); returns (model, name)."""
    open_clip = import_open_clip()
    name = resolve_clip_name(cfg.clip_model)
    pretrained = None
    if cfg.weights_path:
        path = Path(cfg.weights_path).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"model.weights_path {path} does not exist; pass the CLIP weights file of {name} "
                "(e.g. open_clip's open_clip_pytorch_model.bin or OpenAI's ViT-B-32.pt)"
            )
        pretrained = str(path)
    elif cfg.pretrained:
        pretrained = cfg.clip_pretrained
    try:
        # Random weights (no pretrained, tests) are seeded, so a reload rebuilds the same frozen towers.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(name, pretrained=pretrained, device="cpu")
    except Exception as exc:  # open_clip / torch.load raise many kinds for a bad or missing file
        what = f"weights file {pretrained}" if cfg.weights_path else f"pretrained weights {pretrained!r}"
        raise CheckpointError(
            f"cannot load CLIP {name} with {what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            "Without network access download the weights elsewhere and pass model.weights_path=FILE"
        ) from exc
    return model, name


class ClipPromptModel(nn.Module):
    """Frozen open_clip model + learnable visual prompts per domain (see the module docstring).

    Interface of sbir's category models: ``embed(x, domain)``, ``embed_sketch``,
    ``embed_photo``, ``mean``, ``std``, ``embed_dim``, ``normalize``,
    ``param_groups``; plus ``image_size`` (the input size the CLIP model was
    built for) and :meth:`class_embeddings`.
    """

    normalize = True

    def __init__(self, cfg: ModelConfig, clip_model: nn.Module | None = None, clip_name: str | None = None):
        super().__init__()
        if clip_model is None:
            clip_model, clip_name = create_clip(cfg)
        self.cfg = cfg
        self.clip = clip_model
        self.model_name = f"clip-prompt:{clip_name or cfg.clip_model}"
        self.clip_name = clip_name or cfg.clip_model
        visual = clip_model.visual
        for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj"):
            if not hasattr(visual, attr):
                raise ConfigError(
                    f"CLIP model {self.clip_name} has no ViT image tower ({attr} missing); "
                    "clip-prompt needs a ViT CLIP model such as ViT-B-32"
                )
        if getattr(visual, "attn_pool", None) is not None:
            raise ConfigError(
                f"CLIP model {self.clip_name} pools with attention; clip-prompt needs class-token pooling"
            )
        width = visual.conv1.out_channels
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.embed_dim = int(visual.output_dim)
        pre = getattr(visual, "preprocess_cfg", None) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.mean = tuple(pre.get("mean", OPENAI_DATASET_MEAN))
        self.std = tuple(pre.get("std", OPENAI_DATASET_STD))
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        scale = width**-0.5  # as CLIP's own class embedding
        self.sketch_prompt = nn.Parameter(scale * torch.randn(cfg.prompts, width))
        self.photo_prompt = nn.Parameter(scale * torch.randn(cfg.prompts, width))
        if cfg.clip_train_norms:
            for p in self._norm_parameters():
                p.requires_grad_(True)

    # ------------------------------------------------------------ trained parts

    def _norm_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.clip.visual.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()]

    def trained_names(self) -> list[str]:
        """State-dict keys of the trained parts: the prompts (+ the image tower's LayerNorms if trained)."""
        names = ["sketch_prompt", "photo_prompt"]
        if self.cfg.clip_train_norms:
            norm_ids = {id(p) for p in self._norm_parameters()}
            names += [f"clip.{n}" for n, p in self.clip.named_parameters() if id(p) in norm_ids]
        return names

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """Only the trained parts (see :meth:`trained_names`); the frozen CLIP weights come from the config."""
        full = super().state_dict(prefix=prefix, keep_vars=keep_vars)
        out = {prefix + n: full[prefix + n] for n in self.trained_names()}
        if destination is not None:
            destination.update(out)
            return destination
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load the trained parts; ``missing`` / ``unexpected`` are reported against :meth:`trained_names`."""
        wanted = set(self.trained_names())
        missing = sorted(wanted - set(state_dict))
        unexpected = sorted(set(state_dict) - wanted)
        if strict and (missing or unexpected):
            raise RuntimeError(f"clip-prompt state dict: missing {missing}, unexpected {unexpected}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for k in wanted & set(state_dict):
                if params[k].shape != state_dict[k].shape:
                    raise RuntimeError(
                        f"clip-prompt state dict: {k} has shape {tuple(state_dict[k].shape)}, "
                        f"the model {tuple(params[k].shape)}"
                    )
                params[k].copy_(state_dict[k])
        return nn.modules.module._IncompatibleKeys(missing, unexpected)

    def param_groups(self, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict]:
        """Prompts at ``model.prompt_lr``, unfrozen CLIP weights at ``model.clip_lr`` (the paper's 1e-4 / 1e-6).

        ``lr`` and ``backbone_lr_mult`` (optim.*) are not used: the method's two rates are model settings.
        No weight decay on the prompts or LayerNorms.
        """
        groups = [
            {
                "params": [self.sketch_prompt, self.photo_prompt],
                "lr": self.cfg.prompt_lr,
                "weight_decay": 0.0,
                "name": "prompts",
            }
        ]
        unfrozen = [p for p in self.clip.parameters() if p.requires_grad]
        if unfrozen:
            groups.append({"params": unfrozen, "lr": self.cfg.clip_lr, "weight_decay": 0.0, "name": "clip"})
        return groups

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen: no dropout / patch dropout, ever
        return self

    # ------------------------------------------------------------ forward

    def prompts_for(self, domain: str) -> nn.Parameter:
        if domain == "sketch":
            return self.sketch_prompt
        if domain == "photo":
            return self.photo_prompt
        raise ValueError(f"domain must be 'sketch' or 'photo', got {domain!r}")

    def image_tokens(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """(B, 1 + n_prompts + N, width): class token, the domain's prompts, the patches (before ``ln_pre``)."""
        v = self.clip.visual
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ConfigError(
                f"CLIP model {self.clip_name} takes {self.image_size} px images, got {tuple(x.shape[-2:])}: "
                f"set data.image_size={self.image_size}"
            )
        z = v.conv1(x)
        z = z.reshape(z.shape[0], z.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(z.dtype).expand(z.shape[0], 1, -1)
        z = torch.cat([cls, z], dim=1) + v.positional_embedding.to(z.dtype)
        p = self.prompts_for(domain).to(z.dtype).expand(z.shape[0], -1, -1)
        return torch.cat([z[:, :1], p, z[:, 1:]], dim=1)

    def encode_image(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """Un-normalised CLIP image features of ``x`` with the ``domain``'s prompts."""
        v = self.clip.visual
        z = v.ln_pre(self.image_tokens(x, domain))
        z = v.transformer(z)
        pooled = v.ln_post(z[:, 0])
        return pooled @ v.proj if v.proj is not None else pooled

    def embed(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        if not isinstance(domain, str):
            raise ValueError("clip-prompt embeds one domain per call: domain must be 'sketch' or 'photo'")
        return F.normalize(self.encode_image(x, domain), dim=-1)

    def embed_sketch(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x, "sketch")

    def embed_photo(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x, "photo")

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        return self.embed(x, domain)

    # ------------------------------------------------------------ text

    def class_prompts(self, class_names: list[str], template: str = PROMPT_TEMPLATE) -> list[str]:
        """``"a photo of a {class}"`` per class (underscores read as spaces: ``alarm_clock`` -> ``alarm clock``)."""
        return [template.format(c.replace("_", " ")) for c in class_names]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        open_clip = import_open_clip()
        return open_clip.get_tokenizer(self.clip_name)(texts)

    @torch.no_grad()
    def class_embeddings(self, class_names: list[str], template: str = PROMPT_TEMPLATE) -> torch.Tensor:
        """(C, D) L2-normalised frozen text embeddings of the class prompts (on the model's device)."""
        device = self.sketch_prompt.device
        tokens = self.tokenize(self.class_prompts(class_names, template)).to(device)
        return F.normalize(self.clip.encode_text(tokens).float(), dim=-1)

    def logit_scale(self) -> float:
        """CLIP's (frozen) logit scale, ``exp(logit_scale)`` (100 for OpenAI's weights)."""
        return float(self.clip.logit_scale.detach().exp())


@register_model("clip-prompt")
def build_clip_prompt_model(cfg: ModelConfig, pretrained: bool | None = None, **_: object) -> ClipPromptModel:
    """The prompted CLIP model of ``cfg``.

    ``pretrained`` is not an override here: the checkpoint of a run holds only the prompts, so the frozen
    CLIP weights always come from ``cfg`` (``weights_path`` / ``clip_pretrained`` when ``cfg.pretrained``).
    """
    return ClipPromptModel(cfg)


__all__ = ["PROMPT_TEMPLATE", "ClipPromptModel", "build_clip_prompt_model", "create_clip", "import_open_clip"]
