"""Training losses: NT-Xent (cross-modal and EffNet/ARNet double siamese), batch-hard triplet, and the factory."""

from sbir.losses.factory import LOSS_NAMES, FineGrainedLoss, build_loss
from sbir.losses.ntxent import CrossModalNTXent, DoubleSiameseNTXent, NTXent, ntxent
from sbir.losses.triplet import HardTripletLoss

__all__ = [
    "LOSS_NAMES",
    "CrossModalNTXent",
    "DoubleSiameseNTXent",
    "FineGrainedLoss",
    "HardTripletLoss",
    "NTXent",
    "build_loss",
    "ntxent",
]
