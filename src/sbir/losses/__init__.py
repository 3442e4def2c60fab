"""Training losses and their registry.

Fine-grained: NT-Xent (cross-modal and EffNet/ARNet double siamese) and
batch-hard triplet. Category-level: MEMS and CosFace. Zero-shot with CLIP: clip-prompt
(cosine triplet, text classifier, patch shuffle, relative distance). Each loss module
registers its builder (:func:`sbir.losses.factory.register_loss`) when
imported; a new loss is its own file plus one import line here.
"""

from sbir.losses.factory import FineGrainedLoss, build_loss, get_loss_spec, list_losses, register_loss

# The loss modules: importing each registers its losses.
from sbir.losses.classify import CrossEntropyLoss  # isort: skip
from sbir.losses.clip_prompt import ClipPromptLoss  # isort: skip
from sbir.losses.cosface import CosFaceLoss  # isort: skip
from sbir.losses.mems import MEMSLoss  # isort: skip
from sbir.losses.ntxent import CrossModalNTXent, DoubleSiameseNTXent, NTXent, ntxent  # isort: skip
from sbir.losses.triplet import HardTripletLoss  # isort: skip

__all__ = [
    "ClipPromptLoss",
    "CosFaceLoss",
    "CrossEntropyLoss",
    "CrossModalNTXent",
    "DoubleSiameseNTXent",
    "FineGrainedLoss",
    "HardTripletLoss",
    "MEMSLoss",
    "NTXent",
    "build_loss",
    "get_loss_spec",
    "list_losses",
    "ntxent",
    "register_loss",
]
