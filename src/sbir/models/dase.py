"""Domain-aware squeeze-and-excitation (DASE), after Lu et al., "Domain-Aware SE
Network for Sketch-based Image Retrieval with Multiplicative Euclidean Margin
Softmax" (ACM MM 2021, arXiv:1812.04275; code: github.com/Ben-Louis/SBIR-DASE-MEMS).

One encoder serves both domains; every DASE block knows whether each sample is
a sketch or a photo and can emphasise different channels for each::

    s = avgpool(x)                                  # squeeze, (B, C)
    h = act(bn(W1 s + b1))                          # reduction, (B, C/r)
    z = W2 h + b2 + Wd d                            # excitation; d = one-hot domain code (B, D)
    y = x * gate(z)                                 # channel scaling

``W2 h + Wd d`` is the excitation layer applied to the concatenation
``[h; d]``, which is where the published code feeds the domain flag (after the
reduction layer, not into the squeezed vector). The published code uses a single
scalar flag (0 = sketch, 1 = photo); a one-hot code (column 0 = sketch, column 1
= photo) is the same idea with one learned bias per domain instead of one for
photos only. Domain ids follow the published convention: **0 = sketch, 1 = photo**.

Initialisation keeps the pretrained network's function:

* replacing an existing SE module (timm ``SEModule`` in SE-ResNet/SE-ResNeXt,
  ``SqueezeExcite`` in EfficientNet/MobileNet): the block *reuses* the old
  ``fc1``/``bn``/``act``/``fc2``/``gate`` modules with their weights, and ``Wd``
  (the domain-input columns) starts at zero, so its output equals the original
  SE exactly for both domains (``gate_mode="sigmoid"``);
* a new block where the network has none (plain ResNet/ResNeXt, EfficientNet-Lite,
  whose SE layers were removed): ``gate(z) = 2 * sigmoid(z)`` with ``W2``,
  ``b2`` and ``Wd`` zero, so the gate is exactly 1 and the block is the identity
  at initialisation (``gate_mode="residual"``). The gate then ranges over (0, 2):
  it can both damp and amplify channels. ``W1`` gets a normal random init so
  the gradient reaching ``W2`` is non-zero from the first step.

Passing the domain: the blocks sit deep inside timm modules whose ``forward``
takes one tensor, so the domain is stored on every DASE module before the
forward pass, with :func:`set_domain` or, preferably, the context manager
:func:`domain_context`::

    with domain_context(backbone, "sketch"):          # whole batch
        f = backbone(x)
    with domain_context(backbone, torch.tensor([0, 1, 1, 0])):   # per sample
        f = backbone(x)

A DASE block called with no domain set raises ``RuntimeError`` rather than
guessing. :func:`insert_dase` converts a backbone from
:func:`sbir.models.registry.create_backbone` in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sbir.errors import ConfigError

DOMAIN_IDS = {"sketch": 0, "photo": 1}
DomainLike = str | int | Sequence[str | int] | torch.Tensor


def domain_ids(domain: DomainLike, batch_size: int | None = None, num_domains: int = 2) -> torch.Tensor:
    """Domain ids as a LongTensor: 0-d for one domain for the whole batch, (B,) per sample.

    Accepts ``"sketch"`` / ``"photo"``, an int id, a sequence of names or ids,
    or a tensor of ids (a float 0/1 tensor as in the published code works too).
    With ``batch_size`` a per-sample tensor must have that length.
    """
    if isinstance(domain, str):
        if domain not in DOMAIN_IDS:
            raise ValueError(f"domain must be one of {tuple(DOMAIN_IDS)} or an id, got {domain!r}")
        out = torch.tensor(DOMAIN_IDS[domain], dtype=torch.long)
    elif isinstance(domain, bool):
        raise ValueError("domain must be 'sketch', 'photo' or an integer id, not a bool")
    elif isinstance(domain, int):
        out = torch.tensor(domain, dtype=torch.long)
    elif isinstance(domain, torch.Tensor):
        if domain.is_floating_point():
            if not torch.equal(domain, domain.round()):
                raise ValueError("a float domain tensor must hold whole numbers (0 = sketch, 1 = photo)")
        out = domain.detach().long()
        if out.dim() > 1:
            raise ValueError(f"domain tensor must be 0-d or (B,), got shape {tuple(domain.shape)}")
    else:
        items = list(domain)
        out = torch.tensor([DOMAIN_IDS[d] if isinstance(d, str) else int(d) for d in items], dtype=torch.long)
    if out.numel() and (int(out.min()) < 0 or int(out.max()) >= num_domains):
        raise ValueError(f"domain ids must be in [0, {num_domains}), got {out.tolist()}")
    if batch_size is not None and out.dim() == 1 and out.numel() != batch_size:
        raise ValueError(f"per-sample domain has {out.numel()} ids but the batch has {batch_size} samples")
    return out


class DomainAwareSE(nn.Module):
    """Squeeze-and-excitation whose excitation also sees a one-hot domain code.

    ``y = x * gate(W2 act(bn(W1 avgpool(x) + b1)) + b2 + Wd onehot(domain))``;
    ``gate = sigmoid`` (``gate_mode="sigmoid"``) or ``2 * sigmoid`` with ``W2 = b2 = Wd = 0``
    at init, i.e. the identity (``gate_mode="residual"``). ``Wd`` (``domain_weight``,
    shape ``(C, num_domains)``) always starts at zero. See the module docstring.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        num_domains: int = 2,
        gate_mode: str = "residual",
        rd_channels: int | None = None,
        act_layer: type[nn.Module] = nn.ReLU,
        min_channels: int = 8,
    ):
        super().__init__()
        if gate_mode not in ("sigmoid", "residual"):
            raise ValueError(f"gate_mode must be 'sigmoid' or 'residual', got {gate_mode!r}")
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        rd = int(rd_channels) if rd_channels else max(int(min_channels), int(channels) // int(reduction))
        self.channels = int(channels)
        self.num_domains = int(num_domains)
        self.gate_mode = gate_mode
        self.add_maxpool = False
        self.fc1 = nn.Conv2d(channels, rd, kernel_size=1, bias=True)
        self.bn: nn.Module = nn.Identity()
        self.act = act_layer(inplace=True) if act_layer in (nn.ReLU, nn.SiLU, nn.ReLU6) else act_layer()
        self.fc2 = nn.Conv2d(rd, channels, kernel_size=1, bias=True)
        self.gate: nn.Module = nn.Sigmoid()
        self.domain_weight = nn.Parameter(torch.zeros(channels, num_domains))
        # True when fc1/fc2 came from a pretrained SE module (only domain_weight is new).
        self.from_pretrained_se = False
        nn.init.normal_(self.fc1.weight, std=(2.0 / channels) ** 0.5)
        nn.init.zeros_(self.fc1.bias)
        if gate_mode == "residual":
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)
        # Set per forward by set_domain / domain_context; not part of the state dict.
        self.domain: torch.Tensor | None = None

    @classmethod
    def from_se(cls, se: nn.Module, num_domains: int = 2) -> DomainAwareSE:
        """Wrap a timm ``SEModule`` or EfficientNet ``SqueezeExcite``, reusing its layers.

        The result computes exactly what ``se`` computed, for every domain, until
        ``domain_weight`` is trained.
        """
        if hasattr(se, "fc1") and hasattr(se, "fc2"):
            fc1, fc2 = se.fc1, se.fc2
            bn = getattr(se, "bn", nn.Identity())
            act = se.act
            add_maxpool = bool(getattr(se, "add_maxpool", False))
        elif hasattr(se, "conv_reduce") and hasattr(se, "conv_expand"):
            fc1, fc2 = se.conv_reduce, se.conv_expand
            bn = nn.Identity()
            act = se.act1
            add_maxpool = False
        else:
            raise ConfigError(
                f"cannot convert {type(se).__name__} to a DASE block: expected fc1/fc2 or conv_reduce/conv_expand"
            )
        if not (isinstance(fc1, nn.Conv2d) and isinstance(fc2, nn.Conv2d)):
            raise ConfigError(
                f"cannot convert {type(se).__name__} to a DASE block: its layers are not 1x1 convolutions"
            )
        channels = fc1.in_channels
        block = cls(channels, num_domains=num_domains, gate_mode="sigmoid", rd_channels=fc1.out_channels)
        block.fc1, block.bn, block.act, block.fc2 = fc1, bn, act, fc2
        block.gate = se.gate
        block.add_maxpool = add_maxpool
        block.from_pretrained_se = True
        p = fc2.weight
        block.domain_weight = nn.Parameter(torch.zeros(channels, num_domains, dtype=p.dtype, device=p.device))
        return block

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters that did not exist in the pretrained network (train them at the full rate)."""
        if self.from_pretrained_se:
            return [self.domain_weight]
        return list(self.parameters())

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_domains={self.num_domains}, gate_mode={self.gate_mode!r}"

    def _domain_code(self, x: torch.Tensor) -> torch.Tensor:
        if self.domain is None:
            raise RuntimeError(
                "DomainAwareSE called without a domain: run the forward inside "
                "`with sbir.models.dase.domain_context(model, 'sketch' | 'photo' | ids):`"
            )
        d = self.domain.to(x.device)
        b = x.shape[0]
        if d.dim() == 0:
            d = d.expand(b)
        elif d.numel() != b:
            raise RuntimeError(f"DomainAwareSE: {d.numel()} domain ids were set but the batch has {b} samples")
        return F.one_hot(d, self.num_domains).to(self.domain_weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        if self.add_maxpool:  # timm SEModule's optional path, kept for exactness
            s = 0.5 * s + 0.5 * x.amax((2, 3), keepdim=True)
        h = self.act(self.bn(self.fc1(s)))
        z = self.fc2(h)
        code = self._domain_code(x)
        z = z + (code @ self.domain_weight.t()).to(z.dtype)[:, :, None, None]
        g = self.gate(z)
        if self.gate_mode == "residual":
            g = 2.0 * g
        return x * g


# ---------------------------------------------------------------- setting the domain


def dase_modules(model: nn.Module) -> list[DomainAwareSE]:
    return [m for m in model.modules() if isinstance(m, DomainAwareSE)]


def set_domain(model: nn.Module, domain: DomainLike | None, batch_size: int | None = None) -> int:
    """Store the domain ids on every DASE block of ``model``; ``None`` clears them. Returns the block count."""
    blocks = dase_modules(model)
    ids = None
    for m in blocks:
        if domain is None:
            m.domain = None
        else:
            if ids is None:
                ids = domain_ids(domain, batch_size, m.num_domains)
            m.domain = ids
    return len(blocks)


@contextlib.contextmanager
def domain_context(model: nn.Module, domain: DomainLike, batch_size: int | None = None) -> Iterator[int]:
    """Set the domain on every DASE block for the ``with`` body, then restore the previous one."""
    blocks = dase_modules(model)
    previous = [m.domain for m in blocks]
    try:
        set_domain(model, domain, batch_size)
        yield len(blocks)
    finally:
        for m, d in zip(blocks, previous, strict=False):
            m.domain = d


# ---------------------------------------------------------------- conversion


def _se_types() -> tuple[type, ...]:
    types: list[type] = []
    try:
        from timm.layers.squeeze_excite import SEModule

        types.append(SEModule)
    except ImportError:  # pragma: no cover - depends on the timm version
        pass
    try:
        from timm.models._efficientnet_blocks import SqueezeExcite

        types.append(SqueezeExcite)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _find_se(root: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    types = _se_types()
    found = []
    for _, parent in root.named_modules():
        for cname, child in parent.named_children():
            if types and isinstance(child, types) and not isinstance(child, DomainAwareSE):
                found.append((parent, cname, child))
    return found


def _trunk_stages(model: nn.Module) -> list[tuple[str, nn.Sequential]]:
    """The Sequential containers a stage-level DASE block is appended to, in order."""
    if hasattr(model, "layer1") and all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        stages = [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
    elif hasattr(model, "blocks") and isinstance(model.blocks, nn.Sequential):
        stages = [(f"blocks.{i}", s) for i, s in enumerate(model.blocks)]
    elif hasattr(model, "stages"):
        stages = []
        for i, s in enumerate(model.stages):
            if isinstance(s, nn.Sequential):
                stages.append((f"stages.{i}", s))
            elif isinstance(getattr(s, "blocks", None), nn.Sequential):
                stages.append((f"stages.{i}.blocks", s.blocks))
            else:
                stages = []
                break
    else:
        stages = []
    out = []
    for name, s in stages:
        if not isinstance(s, nn.Sequential):
            return []
        out.append((name, s))
    return out


def _stage_channels(model: nn.Module, stages: list[tuple[str, nn.Sequential]], input_size: int) -> list[int]:
    """Output channels of each stage, found with one small forward pass (eval mode, no grad)."""
    chans: dict[int, int] = {}
    hooks = [
        s.register_forward_hook(lambda mod, inp, out, i=i: chans.__setitem__(i, int(out.shape[1])))
        for i, (_, s) in enumerate(stages)
    ]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(1, 3, input_size, input_size, dtype=p.dtype, device=p.device)
        with torch.no_grad(), domain_context(model, 0):
            model.forward_features(x) if hasattr(model, "forward_features") else model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if len(chans) != len(stages):
        raise ConfigError("could not determine the output width of every stage for DASE insertion")
    return [chans[i] for i in range(len(stages))]


def insert_dase(
    backbone: nn.Module,
    where: str = "auto",
    reduction: int = 16,
    num_domains: int = 2,
    probe_size: int = 64,
) -> list[str]:
    """Make ``backbone`` domain-aware in place; returns the names of the new/replaced modules.

    ``backbone`` is a :class:`~sbir.models.registry.TimmBackbone` (or the timm
    model itself). ``where``:

    * ``"se"``: replace every SE module (SE-ResNet/SE-ResNeXt ``SEModule``,
      EfficientNet ``SqueezeExcite``) by a :class:`DomainAwareSE` built from it
      (same output at init);
    * ``"stages"``: append a pass-through DASE block (``gate_mode="residual"``)
      at the end of each trunk stage (``layer1..4`` of ResNet/ResNeXt, each
      ``blocks[i]`` of EfficientNet/EfficientNet-Lite, ``stages[i]`` of
      ConvNeXt-style nets). The block is added to the stage's ``nn.Sequential``
      as a child named ``dase``, so existing state-dict keys are unchanged;
    * ``"auto"``: ``"se"`` when the network has SE modules, else ``"stages"``.

    Run it after loading pretrained weights. ConfigError when ``where`` cannot
    apply to this architecture.
    """
    model = getattr(backbone, "model", backbone)
    if where not in ("auto", "se", "stages"):
        raise ConfigError(f"DASE placement must be 'auto', 'se' or 'stages', got {where!r}")
    name = getattr(backbone, "name", type(model).__name__)
    se = _find_se(model)
    if where == "auto":
        where = "se" if se else "stages"
    done: list[str] = []
    if where == "se":
        if not se:
            raise ConfigError(
                f"backbone {name} has no squeeze-and-excitation modules to make domain-aware; "
                "use DASE placement 'stages' (or 'auto'), or an SE backbone such as seresnext50_32x4d"
            )
        names = {id(m): n for n, m in model.named_modules()}
        for parent, cname, child in se:
            setattr(parent, cname, DomainAwareSE.from_se(child, num_domains=num_domains))
            done.append(names[id(child)])
        return done
    stages = _trunk_stages(model)
    if not stages:
        raise ConfigError(
            f"backbone {name} has no recognised stage layout (ResNet layer1..4, EfficientNet blocks, "
            "or stages) for DASE insertion; use a ResNet/ResNeXt/EfficientNet family backbone"
        )
    for sname, s in stages:
        if "dase" in s._modules:
            raise ConfigError(
                f"backbone {name} already has a DASE block in stage {sname}; insert_dase was called twice"
            )
    channels = _stage_channels(model, stages, probe_size)
    p = next(model.parameters())
    for (sname, s), c in zip(stages, channels, strict=False):
        s.add_module(
            "dase",
            DomainAwareSE(c, reduction=reduction, num_domains=num_domains, gate_mode="residual").to(p.device, p.dtype),
        )
        done.append(f"{sname}.dase")
    return done


__all__ = [
    "DOMAIN_IDS",
    "DomainAwareSE",
    "dase_modules",
    "domain_context",
    "domain_ids",
    "insert_dase",
    "set_domain",
]
